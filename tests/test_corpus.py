"""Corpus inputs of a PII scan: every format gives the same rows; sampling; bad input."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from memwatch.cli import main
from memwatch.watchlist import Watchlist
from memwatch.watchlist.corpus import CorpusError, check_lines, open_corpus

WORDS = "alpha beta gamma delta river stone light paper window garden train market".split()
VALUES = ["maria.lopez@outlook.com", "536-22-8014", "4539 1488 0343 6467", "10.42.7.201"]


def corpus_texts(n=12, seed=0):
    """`n` texts, every third with a PII value in the middle (room on both sides)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(120)]
        if i % 3 == 0:
            words.insert(60, VALUES[(i // 3) % len(VALUES)])
        texts.append(" ".join(words))
    return texts


def scan(source, tok, **kw):
    return Watchlist.scan_pii(source, tok, backend="regex", **kw)


def _write_formats(tmp_path: Path, texts: list[str]) -> dict[str, object]:
    """The same rows in every file format a scan reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    from datasets import Dataset

    lines = "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts))
    (tmp_path / "c.jsonl").write_text(lines, encoding="utf-8")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pq.write_table(pa.table({"text": texts}), tmp_path / "c.parquet")
    ds = Dataset.from_dict({"text": texts})
    ds.save_to_disk(str(tmp_path / "disk"))
    arrow = next((tmp_path / "disk").glob("*.arrow"))
    plain = []
    for i, t in enumerate(texts):
        (tmp_path / f"t{i:02d}.txt").write_text(t, encoding="utf-8")
        plain.append(tmp_path / f"t{i:02d}.txt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "part.jsonl").write_text(lines, encoding="utf-8")
    return {"jsonl": tmp_path / "c.jsonl", "jsonl.gz": tmp_path / "c.jsonl.gz",
            "jsonl.zst": tmp_path / "c.jsonl.zst", "parquet": tmp_path / "c.parquet",
            "arrow": arrow, "save_to_disk": tmp_path / "disk", "text files": plain,
            "dataset": ds, "load_dataset folder (streaming)": str(tmp_path / "folder")}


def test_every_format_gives_the_same_rows(tiny_tokenizer, tmp_path):
    from datasets import load_dataset

    texts = corpus_texts()
    want = scan(texts, tiny_tokenizer)
    assert len(want) == 4 and [s[0] for s in want.spans] == [0, 3, 6, 9]
    sources = _write_formats(tmp_path, texts)
    sources["streaming IterableDataset"] = load_dataset(
        "json", data_files=str(tmp_path / "c.jsonl"), split="train", streaming=True)
    for name, source in sources.items():
        corpus = open_corpus(source)
        if name.endswith("(streaming)"):
            assert corpus.kind == "stream"
        got = scan(corpus, tiny_tokenizer)
        assert got.ids == want.ids and got.spans == want.spans, name
        assert bool((got.tokens == want.tokens).all()), name


def test_sampling_is_seeded_and_keeps_corpus_order(tiny_tokenizer):
    texts = corpus_texts(60)
    a = open_corpus(texts, fraction=0.5, seed=1)
    b = open_corpus(texts, fraction=0.5, seed=1)
    assert len(a.rows) == 30 and (a.rows == b.rows).all() and (np.diff(a.rows) > 0).all()
    assert not (open_corpus(texts, fraction=0.5, seed=2).rows == a.rows).all()
    assert len(open_corpus(texts, fraction=0.5, max_rows=7).rows) == 7
    five = open_corpus(texts, max_rows=5, seed=4).rows  # a seeded sample, not the first rows
    assert len(five) == 5 and (five == open_corpus(texts, max_rows=5, seed=4).rows).all()
    wl = scan(texts, tiny_tokenizer, fraction=0.5, seed=1)
    assert {s[0] for s in wl.spans} <= set(a.rows.tolist())
    with pytest.raises(ValueError, match="fraction"):
        open_corpus(texts, fraction=1.5)


def test_stream_sampling_is_seeded(tiny_tokenizer, tmp_path):
    from datasets import load_dataset

    texts = corpus_texts(30)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    def stream():
        return load_dataset("json", data_files=str(tmp_path / "c.jsonl"), split="train",
                            streaming=True)

    rows = [list(open_corpus(stream(), fraction=0.5, seed=3).shard_texts(0)) for _ in range(2)]
    assert rows[0] == rows[1] and 5 < len(rows[0]) < 25
    capped = list(open_corpus(stream(), max_rows=4).shard_texts(0))
    assert [t for _, t in capped] == texts[:4]


def test_bad_input_fails_with_the_file_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl: byte 30 is not UTF-8"):
        open_corpus(bad)
    long = tmp_path / "long.jsonl"
    long.write_text('{"text": "short"}\n' + json.dumps({"text": "x" * 5000}) + "\n")
    with pytest.raises(CorpusError, match=r"long.jsonl: a line .* longer than 1000 bytes"):
        check_lines(str(long), max_line_bytes=1000, chunk_bytes=256)
    check_lines(str(long), max_line_bytes=6000, chunk_bytes=256)
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"body": "a"}\n')
    with pytest.raises(CorpusError, match=r"no column 'text'.*\['body'\]"):
        open_corpus(nocol)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CorpusError, match=r"broken.parquet: unreadable as parquet"):
        open_corpus(broken)
    with pytest.raises(CorpusError, match="no such file"):
        open_corpus(Path(tmp_path / "missing.jsonl"))


def test_a_long_line_is_found_across_chunks(tmp_path):
    path = tmp_path / "one.txt"
    path.write_bytes(b"a" * 3000)  # no newline at all
    with pytest.raises(CorpusError, match="longer than 1000 bytes"):
        check_lines(str(path), max_line_bytes=1000, chunk_bytes=256)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b'{"text": "\xff\xfe"}\n'), "is not UTF-8"),
    (lambda p: p.write_text('{"body": "no text here"}\n'), "no column 'text'"),
])
def test_cli_bad_corpus_is_one_line_and_exit_2(tiny_tokenizer, tmp_path, capsys, make, message):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    path = tmp_path / "in.jsonl"
    make(path)
    code = main(["watchlist", "build", "--pii", "--windows", "0", "--texts", str(path),
                 "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "wl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("memwatch watchlist build")
    assert not (tmp_path / "wl").exists()
