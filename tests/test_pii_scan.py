"""The sharded PII scan: same rows with any number of workers, resumable, atomic, input checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_corpus import corpus_texts

import memwatch.watchlist.pii_scan as pii_scan
from memwatch.cli import main
from memwatch.watchlist import Watchlist
from memwatch.watchlist.corpus import CorpusError, open_corpus
from memwatch.watchlist.pii import find_pii, find_pii_many


def scan(source, tok, **kw):
    return Watchlist.scan_pii(source, tok, backend="regex", **kw)


def _record_loads(monkeypatch):
    """The keyword arguments of every AutoTokenizer.from_pretrained call, recorded."""
    from transformers import AutoTokenizer

    calls = []
    load = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        lambda *a, **k: calls.append(k) or load(*a, **k))
    return calls


def test_a_hub_tokenizer_offline_fails_at_once_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = _record_loads(monkeypatch)
    with pytest.raises(ValueError, match=r"tokenizer 'memwatch-tests/none': not in the local "
                       r"Hugging Face cache, and HF_HUB_OFFLINE is set; give the directory "
                       r".*save_pretrained"):
        Watchlist.scan_pii(["mail maria.lopez@outlook.com now"], "memwatch-tests/none")
    assert calls == [{"local_files_only": True}]  # the cache only: no hub request, no retries


def test_an_unreachable_hub_fails_at_once(monkeypatch):
    import socket

    from huggingface_hub import constants

    def no_route(*args, **kwargs):
        raise OSError("no route to host")

    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", no_route)
    calls = _record_loads(monkeypatch)
    with pytest.raises(ValueError, match=r"cannot be reached \(no route to host\)"):
        Watchlist.scan_pii(["mail maria.lopez@outlook.com now"], "memwatch-tests/none")
    assert calls == [{"local_files_only": True}]


def same(a: Watchlist, b: Watchlist) -> bool:
    return a.ids == b.ids and a.spans == b.spans and bool((a.tokens == b.tokens).all()) \
        and [a.redacted_preview(i) for i in range(len(a))] == \
        [b.redacted_preview(i) for i in range(len(b))]


def test_scan_pii_input_checks(tiny_tokenizer, tmp_path):
    with pytest.raises(TypeError, match=r"one string: give a list of texts \(\[text\]\)"):
        Watchlist.scan_pii("mail maria.lopez@outlook.com now", tiny_tokenizer)
    with pytest.raises(ValueError, match="tokenizer '/no/such/dir': no such directory"):
        Watchlist.scan_pii(corpus_texts(), "/no/such/dir")
    with pytest.raises(TypeError, match="tokenizer is a int"):
        Watchlist.scan_pii(corpus_texts(), 3)
    with pytest.raises(ValueError, match="engine='spark'"):
        scan(corpus_texts(), tiny_tokenizer, engine="spark")
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    by_name = scan(corpus_texts(), str(tmp_path / "tok"))  # a tokenizer named like the CLI's
    assert same(by_name, scan(corpus_texts(), tiny_tokenizer))


def test_scan_pii_takes_a_dataset(tiny_tokenizer):
    from datasets import Dataset

    texts = corpus_texts()
    ds = Dataset.from_dict({"body": texts, "n": list(range(len(texts)))})
    assert same(scan(ds, tiny_tokenizer, text_column="body"), scan(texts, tiny_tokenizer))
    with pytest.raises(CorpusError, match=r"no column 'text'; it has \['body', 'n'\]"):
        scan(ds, tiny_tokenizer)


def test_batched_find_pii_equals_one_call_per_text():
    texts = corpus_texts(9) + ["", "a\nb 10.0.0.1\n", "x@gmail.com", "\n\n"]
    assert find_pii_many(texts, backend="regex") == [find_pii(t, backend="regex") for t in texts]


def test_shards_give_the_rows_of_one_pass(tiny_tokenizer):
    texts = corpus_texts(30)
    whole = scan(texts, tiny_tokenizer)
    sharded = scan(open_corpus(texts, rows_per_shard=4), tiny_tokenizer)
    assert open_corpus(texts, rows_per_shard=4).num_shards == 8 and same(sharded, whole)


def test_a_killed_scan_resumes_without_redoing_finished_shards(tiny_tokenizer, tmp_path,
                                                               monkeypatch):
    texts = corpus_texts(30)
    want = scan(open_corpus(texts, rows_per_shard=4), tiny_tokenizer)
    work = tmp_path / "work"
    real = pii_scan.scan_shard
    ran = []

    def killed_at_3(job, k):
        if k == 3:
            raise KeyboardInterrupt  # the scan is killed while shard 3 runs
        ran.append(k)
        real(job, k)

    monkeypatch.setattr(pii_scan, "scan_shard", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        scan(open_corpus(texts, rows_per_shard=4), tiny_tokenizer, work_dir=work)
    assert ran == [0, 1, 2] and sorted(os.listdir(work)) == \
        ["scan.json"] + [f"shard-{k:06d}.parquet" for k in range(3)]
    ran.clear()
    monkeypatch.setattr(pii_scan, "scan_shard", lambda job, k: (ran.append(k), real(job, k)))
    got = scan(open_corpus(texts, rows_per_shard=4), tiny_tokenizer, work_dir=work)
    assert ran == [3, 4, 5, 6, 7] and same(got, want)
    with pytest.raises(ValueError, match="holds the shards of another scan"):
        scan(open_corpus(texts[:20], rows_per_shard=4), tiny_tokenizer, work_dir=work)


def test_a_killed_save_leaves_the_old_watchlist(tiny_tokenizer, tmp_path, monkeypatch):
    old = scan(corpus_texts(), tiny_tokenizer)
    path = tmp_path / "wl"
    old.save(path)
    new = old.select([0, 1])
    from memwatch.watchlist import storage

    real = storage._write

    def dies_half_way(wl, where):
        real(wl, where)
        os.remove(os.path.join(where, "watchlist.json"))
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "_write", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    assert same(Watchlist.load(path), old)
    assert sorted(os.listdir(tmp_path)) == ["wl"]  # no temporary directory left behind
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    monkeypatch.setattr(storage, "_write", real)
    new.save(path)
    assert same(Watchlist.load(path), new)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files other than a watchlist"):
        new.save(tmp_path / "other")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_same_rows(tiny_tokenizer, workers, tmp_path):
    import pyarrow.parquet as pq

    texts = corpus_texts(40)
    want = scan(open_corpus(texts, rows_per_shard=5), tiny_tokenizer)
    got = scan(open_corpus(texts, rows_per_shard=5), tiny_tokenizer, num_proc=workers,
               work_dir=tmp_path)
    assert same(got, want)
    pids = {pq.read_schema(p).metadata[b"pid"] for p in tmp_path.glob("shard-*.parquet")}
    assert len(pids) == workers and str(os.getpid()).encode() not in pids


@pytest.mark.slow
def test_ray_in_local_mode_gives_the_same_rows(tiny_tokenizer):
    ray = pytest.importorskip("ray")
    texts = corpus_texts(40)
    want = scan(open_corpus(texts, rows_per_shard=5), tiny_tokenizer)
    try:
        got = scan(open_corpus(texts, rows_per_shard=5), tiny_tokenizer, num_proc=2,
                   engine="ray")
    finally:
        ray.shutdown()
    assert same(got, want)


def _pythia_files(tiny_tokenizer, tmp_path):
    from memwatch.watchlist.pythia import write_indexed_dataset

    eos = tiny_tokenizer.eos_token_id
    stream = []
    for text in corpus_texts(12):
        stream += tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    seqs = [stream[i:i + 129] for i in range(0, len(stream) - 129, 129)]
    prefix = str(tmp_path / "pile")
    write_indexed_dataset(prefix, seqs)
    return prefix, seqs


def test_pythia_pii_rows_are_the_training_tokens(tiny_tokenizer, tmp_path):
    prefix, seqs = _pythia_files(tiny_tokenizer, tmp_path)
    wl = scan(open_corpus(f"pythia:{prefix}", tokenizer=tiny_tokenizer), tiny_tokenizer)
    assert len(wl) >= 2
    for i, (seq, start, end) in enumerate(wl.spans):
        row = wl.tokens[i].tolist()
        found = [k for k in range(len(seqs[seq]) - 63) if seqs[seq][k:k + 64] == row]
        assert found, "a row is a window of its sequence's own tokens"
        text = tiny_tokenizer.decode(seqs[seq])
        assert text[start:end] in {"maria.lopez@outlook.com", "536-22-8014",
                                   "4539 1488 0343 6467", "10.42.7.201"}


def test_pythia_with_a_tokenizer_too_small_is_an_error(tiny_tokenizer, tmp_path, capsys):
    from memwatch.watchlist.pythia import write_indexed_dataset

    prefix = str(tmp_path / "big")
    write_indexed_dataset(prefix, [list(range(60)) + [5000] + list(range(60))])
    with pytest.raises(CorpusError, match=r"big.bin: sequence 0 holds token id 5000, but the "
                                          r"tokenizer has \d+ ids"):
        open_corpus(f"pythia:{prefix}", tokenizer=tiny_tokenizer)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    code = main(["watchlist", "build", "--pythia", prefix, "--pii", "--tokenizer",
                 str(tmp_path / "tok"), "--out", str(tmp_path / "wl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "holds token id 5000" in err[-1]


@pytest.mark.slow  # the CLI loads Presidio
def test_cli_pythia_pii(tiny_tokenizer, tmp_path, capsys):
    prefix, _ = _pythia_files(tiny_tokenizer, tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "wl"
    assert main(["watchlist", "build", "--pythia", prefix, "--pii", "--tokenizer",
                 str(tmp_path / "tok"), "--out", str(out)]) == 0
    wl = Watchlist.load(out)
    assert len(wl) >= 2 and all(t[0].startswith("pii:") for t in wl.tags)
    assert not (tmp_path / "wl.scan").exists()  # the shards are gone once the list is saved
    assert np.all(wl.tokens.numpy() < len(tiny_tokenizer))
