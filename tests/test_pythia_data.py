"""Megatron MMapIndexedDataset files: the documented layout, read back exactly, damage rejected."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from memwatch.watchlist import Watchlist
from memwatch.watchlist.pythia import (
    PYTHIA_ID,
    IndexedDataset,
    parse_index_range,
    steps_range,
    write_indexed_dataset,
)


def _sequences(n=6, seq_len=2049, vocab=50304, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, seq_len) for _ in range(n)]


def test_written_file_has_the_documented_layout(tmp_path):
    seqs = [np.array([1, 2, 3]), np.array([65535, 0]), np.array([7, 8, 9, 10])]
    prefix = write_indexed_dataset(tmp_path / "d", seqs, dtype=np.uint16)
    raw = (tmp_path / "d.idx").read_bytes()
    magic, version, code, n, d = struct.unpack_from("<9sQBQQ", raw)
    assert (magic, version, code, n, d) == (b"MMIDIDX\x00\x00", 1, 8, 3, 4)
    off = 34
    assert np.frombuffer(raw, np.int32, 3, off).tolist() == [3, 2, 4]
    assert np.frombuffer(raw, np.int64, 3, off + 12).tolist() == [0, 6, 10]
    assert np.frombuffer(raw, np.int64, 4, off + 36).tolist() == [0, 1, 2, 3]
    assert len(raw) == off + 12 + 24 + 32
    assert np.fromfile(prefix + ".bin", np.uint16).tolist() == [1, 2, 3, 65535, 0, 7, 8, 9, 10]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_read_back_exactly(tmp_path, dtype):
    vocab = 256 if dtype == np.uint8 else 50304
    seqs = _sequences(5, seq_len=100, vocab=vocab) + [np.arange(3) % vocab]
    write_indexed_dataset(tmp_path / "d", seqs, dtype=dtype)
    data = IndexedDataset(tmp_path / "d")
    assert len(data) == 6 and data.dtype == np.dtype(dtype)
    for i, seq in enumerate(seqs):
        np.testing.assert_array_equal(data[i], seq)
    np.testing.assert_array_equal(data[-1], seqs[-1])
    np.testing.assert_array_equal(data.read([4, 0], 50), np.stack([seqs[4][:50], seqs[0][:50]]))
    assert data.doc_idx.tolist() == list(range(7))


def test_from_pythia_takes_the_first_prompt_plus_continuation_tokens(tmp_path):
    seqs = _sequences(8)
    write_indexed_dataset(tmp_path / "pile", seqs)
    wl = Watchlist.from_pythia(str(tmp_path / "pile"), "1:8:3")
    assert wl.ids == ["pythia:1", "pythia:4", "pythia:7"]
    assert wl.tags == [("sample",)] * 3
    np.testing.assert_array_equal(wl.tokens.numpy(), np.stack([seqs[i][:64] for i in (1, 4, 7)]))
    wl = Watchlist.from_pythia(tmp_path / "pile.idx", steps_range(1, 3, seqs_per_step=2),
                               prompt_len=16, cont_len=8)
    assert wl.ids == [f"pythia:{i}" for i in (2, 3, 4, 5)] and wl.tokens.shape == (4, 24)
    # `memwatch eval` reads the sequence index back from the id
    assert [int(PYTHIA_ID.fullmatch(i).group(1)) for i in wl.ids] == [2, 3, 4, 5]


def test_index_specs_and_steps():
    assert parse_index_range("0:10:3").tolist() == [0, 3, 6, 9]
    assert parse_index_range("5").tolist() == [5]
    assert parse_index_range("0:2, 7:9").tolist() == [0, 1, 7, 8]
    assert len(parse_index_range("0:1000000:97")) == len(range(0, 1000000, 97))
    assert steps_range(2, 4) == range(2048, 4096)
    for bad in ("a:b", "1:2:3:4", "-1:5", "0:10:0", ""):
        with pytest.raises(ValueError, match="index range"):
            parse_index_range(bad)
    with pytest.raises(ValueError):
        steps_range(5, 2)


def test_wrong_magic_rejected(tmp_path):
    write_indexed_dataset(tmp_path / "d", _sequences(2, 80))
    raw = bytearray((tmp_path / "d.idx").read_bytes())
    raw[:9] = b"NOTMAGIC!"
    (tmp_path / "d.idx").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="magic"):
        IndexedDataset(tmp_path / "d")


@pytest.mark.parametrize("cut", [10, 40, -3])
def test_truncated_index_rejected(tmp_path, cut):
    write_indexed_dataset(tmp_path / "d", _sequences(3, 80))
    raw = (tmp_path / "d.idx").read_bytes()
    (tmp_path / "d.idx").write_bytes(raw[:cut])
    with pytest.raises(ValueError, match="truncated"):
        IndexedDataset(tmp_path / "d")


def test_truncated_bin_rejected(tmp_path):
    write_indexed_dataset(tmp_path / "d", _sequences(3, 80))
    raw = (tmp_path / "d.bin").read_bytes()
    (tmp_path / "d.bin").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="d.bin is truncated.*sequence 2"):
        IndexedDataset(tmp_path / "d")


def test_bad_version_and_float_dtype_rejected(tmp_path):
    write_indexed_dataset(tmp_path / "d", _sequences(1, 80))
    raw = bytearray((tmp_path / "d.idx").read_bytes())
    (tmp_path / "v.idx").write_bytes(bytes(raw[:9] + struct.pack("<Q", 2) + raw[17:]))
    (tmp_path / "v.bin").write_bytes((tmp_path / "d.bin").read_bytes())
    with pytest.raises(ValueError, match="version 2"):
        IndexedDataset(tmp_path / "v")
    raw[17] = 6
    (tmp_path / "d.idx").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not token ids"):
        IndexedDataset(tmp_path / "d")


def test_short_sequence_and_bad_index_named(tmp_path):
    write_indexed_dataset(tmp_path / "d", [np.arange(100), np.arange(40)])
    with pytest.raises(ValueError, match="'pythia:1' has 40 tokens"):
        Watchlist.from_pythia(tmp_path / "d", [0, 1])
    with pytest.raises(ValueError, match="index 5 is out of range"):
        Watchlist.from_pythia(tmp_path / "d", [0, 5])
    with pytest.raises(FileNotFoundError, match="missing.idx"):
        Watchlist.from_pythia(tmp_path / "missing", [0])


def test_index_ranges_take_any_slice_without_materialising():
    from memwatch.watchlist.pythia import IndexRanges

    spec = "3:20:4,100,7:9"
    ranges = IndexRanges.parse(spec)
    full = parse_index_range(spec)
    assert len(ranges) == len(full) == 8 and full.tolist() == [3, 7, 11, 15, 19, 100, 7, 8]
    for lo in range(9):
        for hi in range(lo, 9):
            assert ranges.take(lo, hi).tolist() == full[lo:hi].tolist()
    paper = IndexRanges.parse("0:146432000")  # the paper's rows, held as one range
    assert len(paper) == 146_432_000 and paper.take(146_431_998, 146_432_000).tolist() == \
        [146_431_998, 146_431_999]


@pytest.mark.parametrize("span", [1 << 22, 4])  # one read of the span / a read per index
def test_streamed_rows_equal_the_memmap_rows(tmp_path, monkeypatch, span):
    import memwatch.watchlist.pythia as pythia
    from memwatch.posthoc.rows import PythiaRows

    monkeypatch.setattr(pythia, "_SPAN_ENTRIES", span)
    seqs = _sequences(300, seq_len=80)
    write_indexed_dataset(tmp_path / "d", seqs)
    data = IndexedDataset(tmp_path / "d")
    for idx in ([5, 6, 7], [299, 0, 150], list(range(0, 300, 97))):  # dense, sparse, strided
        np.testing.assert_array_equal(data.read_rows(idx, 64), data.read(idx, 64))
        assert data.read_rows(idx, 64).dtype == np.uint16  # converted per batch, not on disk
    rows = PythiaRows(tmp_path / "d", "10:300:7")
    assert rows.check(64)[0] == int(max(s[:64].max() for s in seqs[10:300:7][:1024]))
    wl = Watchlist.from_pythia(tmp_path / "d", "10:300:7")
    index, ids, tags, tokens = rows.batch(3, 20, 64)
    assert ids == wl.ids[3:20] and tags == wl.tags[3:20]
    assert index.tolist() == [int(i[7:]) for i in wl.ids[3:20]]
    assert tokens.dtype == wl.tokens.dtype and bool((tokens == wl.tokens[3:20]).all())
    with pytest.raises(IndexError, match="sequence index 300 is out of range"):
        PythiaRows(tmp_path / "d", "290:310").check(64)
    write_indexed_dataset(tmp_path / "s", [np.arange(100), np.arange(40), np.arange(100)])
    with pytest.raises(ValueError, match="'pythia:1' has 40 tokens"):
        PythiaRows(tmp_path / "s", "0:3").check(64)
    with pytest.raises(ValueError, match="'pythia:1' has 40 tokens"):
        IndexedDataset(tmp_path / "s").read_rows([0, 1], 64)
