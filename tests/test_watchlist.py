"""Watchlist: sources, validation naming the row, exact save/load, sampling, duplicate counts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from memwatch.demos.model import tiny_model
from memwatch.watchlist import Watchlist
from memwatch.watchlist.dedup import duplicate_counts

WORDS = "alpha beta gamma delta river stone light paper window garden train market".split()


def _texts(n=4, words=150, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, words)) for _ in range(n)]


def _tagged(n=12, width=64, seed=0):
    rows = torch.randint(1, 500, (n, width), generator=torch.Generator().manual_seed(seed))
    tags = [("pii:EMAIL_ADDRESS",) if i % 3 == 0 else ("canary",) if i % 3 == 1 else ("sample",)
            for i in range(n)]
    return Watchlist(rows, [f"r{i}" for i in range(n)], tags)


# ------------------------------------------------------------------------------------------
# Validation: every error names the row
# ------------------------------------------------------------------------------------------


def test_validation_errors_name_the_row():
    ok = torch.randint(1, 100, (3, 64))
    with pytest.raises(ValueError, match="'b' has 40 tokens; prompt_len \\+ cont_len = 64"):
        Watchlist.from_tokens([np.arange(64), np.arange(40), np.arange(70)], ids=["a", "b", "c"],
                              prompt_len=32, cont_len=32)
    floats = ok.double()
    floats[2, 5] = 1.5
    with pytest.raises(ValueError, match="sequence 'row-2' is not integer token ids"):
        Watchlist.from_tokens(floats)
    neg = ok.clone()
    neg[1, 7] = -3
    with pytest.raises(ValueError, match="'row-1' has a negative token id -3 at position 7"):
        Watchlist.from_tokens(neg)
    big = ok.clone()
    big[2, 10] = 600
    wl = Watchlist.from_tokens(big)
    with pytest.raises(ValueError, match="'row-2' has token id 600 at position 10.*512 ids"):
        wl.validate(model=tiny_model(vocab_size=512, hidden_size=32, num_layers=1))
    with pytest.raises(ValueError, match="id 'x' is used by rows 0 and 2"):
        Watchlist(ok, ["x", "y", "x"], [()] * 3)
    with pytest.raises(ValueError, match="empty"):
        Watchlist.from_tokens(torch.zeros(0, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="2 ids for 3 watchlist rows"):
        Watchlist(ok, ["a", "b"], [()] * 3)
    with pytest.raises(ValueError, match="2 tag lists for 3"):
        Watchlist(ok, ["a", "b", "c"], [(), ()])
    with pytest.raises(ValueError, match="'row-0' has 64 tokens; prompt_len \\+ cont_len = 96"):
        Watchlist.from_tokens(ok).validate(64, 32)
    with pytest.raises(TypeError):
        Watchlist.from_texts(["x"], None, promt_len=3)


def test_ragged_rows_cut_to_the_needed_length():
    wl = Watchlist.from_tokens([np.arange(70), np.arange(64) + 1], prompt_len=32, cont_len=32,
                               tags="sample")
    assert wl.tokens.shape == (2, 64) and wl.tags == [("sample",)] * 2
    assert wl.tokens[1, 0] == 1


# ------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------


def test_from_texts_windows_and_spans(tiny_tokenizer):
    texts = _texts()
    wl = Watchlist.from_texts(texts, tiny_tokenizer, prompt_len=16, cont_len=16, keep_text=True)
    n_windows = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) // 32
                 for t in texts]
    assert len(wl) == sum(n_windows) and wl.tokens.shape[1] == 32
    assert wl.ids[:2] == ["text:0:0", "text:0:1"] and wl.tags[0] == ("text",)
    for i, (t, s, e) in enumerate(wl.spans):
        w = int(wl.ids[i].rsplit(":", 1)[1])
        full = tiny_tokenizer(texts[t], add_special_tokens=False)["input_ids"]
        assert wl.tokens[i].tolist() == full[32 * w : 32 * w + 32]
        assert tiny_tokenizer.decode(wl.tokens[i].tolist()) == texts[t][s:e] == wl.texts[i]
    assert Watchlist.from_texts(texts, tiny_tokenizer).texts is None
    with pytest.raises(ValueError, match="no text has prompt_len \\+ cont_len = 64"):
        Watchlist.from_texts(["alpha beta"], tiny_tokenizer)


@pytest.mark.parametrize("streaming", [False, True])
def test_from_dataset_samples_rows_of_the_dataset(tiny_tokenizer, streaming):
    from datasets import Dataset

    texts = _texts(n=30, words=100, seed=1) + ["too short"]
    ds = Dataset.from_dict({"text": texts, "n": list(range(len(texts)))})
    src = ds.to_iterable_dataset() if streaming else ds
    wl = Watchlist.from_dataset(src, text_column="text", tokenizer=tiny_tokenizer, sample=5,
                                seed=3)
    assert len(wl) == 5 and wl.tags == [("sample",)] * 5
    again = Watchlist.from_dataset(src, text_column="text", tokenizer=tiny_tokenizer, sample=5,
                                   seed=3)
    other = Watchlist.from_dataset(src, text_column="text", tokenizer=tiny_tokenizer, sample=5,
                                   seed=4)
    assert again.ids == wl.ids and torch.equal(again.tokens, wl.tokens)
    assert not torch.equal(other.tokens, wl.tokens)
    if not streaming:
        for i, row_id in enumerate(wl.ids):
            _, t, w = row_id.split(":")
            full = tiny_tokenizer(texts[int(t)], add_special_tokens=False)["input_ids"]
            assert wl.tokens[i].tolist() == full[64 * int(w) : 64 * int(w) + 64]
    with pytest.raises(ValueError, match="no column 'body'"):
        Watchlist.from_dataset(ds, text_column="body", tokenizer=tiny_tokenizer)


# ------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------


def test_sample_select_add():
    wl = _tagged()
    s = wl.sample(3, seed=1)
    assert len(s) == 3 and s.ids == sorted(s.ids, key=wl.ids.index)
    assert s.ids == wl.sample(3, seed=1).ids and wl.sample(20).ids == wl.ids
    per = wl.sample(2, by_tag=["pii:*", "canary"], seed=0)
    assert sorted(t for row in per.tags for t in row) == ["canary"] * 2 + ["pii:EMAIL_ADDRESS"] * 2
    assert wl.sample(10, by_tag="sample").tag_counts() == {"sample": 4}
    with pytest.raises(ValueError, match="picks no row"):
        wl.sample(2, by_tag="nope")
    both = wl.select(wl.tag_mask("canary")) + wl.select([0, 3])
    assert both.ids == ["r1", "r4", "r7", "r10", "r0", "r3"]
    assert torch.equal(both.tokens[4], wl.tokens[0])
    with pytest.raises(ValueError, match="'r0' is used by rows"):
        wl + wl.select([0])


def test_tag_patterns_mean_the_same_everywhere():
    """One meaning of a tag pattern for the watchlist, the history and the policy: fnmatch on
    each tag, and "*" names every row, the untagged one included."""
    from memwatch.history import History
    from memwatch.policy import AbortPolicy, evaluate
    from memwatch.probe import ProbeResult

    tags = [("pii:EMAIL_ADDRESS",), (), ("canary", "canary:x4"), ("sample",)]
    wl = Watchlist.from_tokens(torch.arange(4 * 64).reshape(4, 64), tags=tags)
    history = History(wl.ids, wl.tags)
    expected = {"*": [1, 1, 1, 1], "pii:*": [1, 0, 0, 0], "canary": [0, 0, 1, 0],
                "canary:x*": [0, 0, 1, 0], "*a*": [0, 0, 1, 1], "PII:*": [0, 0, 0, 0]}
    for pattern, rows in expected.items():
        assert wl.tag_mask(pattern).tolist() == [bool(r) for r in rows], pattern
        assert history.tag_mask(pattern).tolist() == [bool(r) for r in rows], pattern
    assert wl.sample(4, by_tag="*").ids == wl.ids
    # Only the untagged row is memorized: "*" counts it, as the forecast's "*" key does.
    memorized = torch.tensor([False, True, False, False])
    history.update(1, ProbeResult(memorized.float(), memorized, memorized.to(torch.int16) * 32),
                   "extractable")
    verdict = evaluate(AbortPolicy(tags=(), max_fraction={"*": 0.2}), history)
    assert verdict.abort and "'*' is 0.250 > 0.2" in verdict.reason


# ------------------------------------------------------------------------------------------
# Storage
# ------------------------------------------------------------------------------------------


def test_save_load_round_trip_exact(tmp_path, tiny_tokenizer):
    texts = _texts(2)
    wl = (Watchlist.from_texts(texts, tiny_tokenizer, keep_text=True)
          + Watchlist.canaries(2, tokenizer=tiny_tokenizer, seed=0)
          + Watchlist.from_tokens(torch.tensor([[70000] + [5] * 63]), ids=["big"], tags="sample"))
    back = Watchlist.load(wl.save(tmp_path / "wl"))
    assert torch.equal(back.tokens, wl.tokens) and back.tokens.dtype == torch.long
    assert back.ids == wl.ids and back.tags == wl.tags
    assert back.spans == wl.spans and back.texts == wl.texts
    assert [back.redacted_preview(i) for i in range(len(wl))] == \
        [wl.redacted_preview(i) for i in range(len(wl))]
    # Without keep_text no raw text reaches the disk.
    plain = Watchlist.from_texts(texts, tiny_tokenizer)
    plain.save(tmp_path / "plain")
    meta = json.loads((tmp_path / "plain" / "watchlist.json").read_text())
    assert meta["texts"] is None and texts[0][:30] not in json.dumps(meta)
    small = Watchlist.load(plain.save(tmp_path / "plain"))
    assert torch.equal(small.tokens, plain.tokens)


def test_load_rejects_other_files(tmp_path):
    _tagged().save(tmp_path / "wl")
    meta = tmp_path / "wl" / "watchlist.json"
    meta.write_text(meta.read_text().replace('"version": 1', '"version": 9'))
    with pytest.raises(ValueError, match="version 9"):
        Watchlist.load(tmp_path / "wl")
    with pytest.raises(FileNotFoundError, match="not a saved watchlist"):
        Watchlist.load(tmp_path / "nothing")


@pytest.mark.slow
def test_tokenizer_free_paths_do_not_import_transformers(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from memwatch.watchlist import Watchlist\n"
        "from memwatch.watchlist.pythia import write_indexed_dataset\n"
        f"p = write_indexed_dataset({str(tmp_path / 'd')!r}, [np.arange(80)] * 3)\n"
        "wl = Watchlist.from_pythia(p, '0:3') + Watchlist.canaries(2, vocab_size=50)\n"
        f"wl = Watchlist.load(wl.save({str(tmp_path / 'wl')!r}))\n"
        "wl.duplicate_counts(np.arange(100))\n"
        "bad = [m for m in ('transformers', 'datasets', 'presidio_analyzer') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr + res.stdout


# ------------------------------------------------------------------------------------------
# Duplicate counts
# ------------------------------------------------------------------------------------------


def _naive_counts(rows, seqs, M, N):
    out = []
    for r in rows:
        cont = list(r[M : M + N])
        out.append(sum(list(s[j : j + N]) == cont for s in seqs for j in range(len(s) - N + 1)))
    return out


def test_duplicate_counts_match_brute_force():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 3, rng.integers(2, 40)) for _ in range(30)]  # tiny vocab: many repeats
    rows = np.stack([np.concatenate([rng.integers(0, 3, 4), s[:3]]) for s in seqs[:10]
                     if len(s) >= 3] + [np.array([9, 9, 9, 9, 9, 9, 9])])
    want = _naive_counts(rows, seqs, 4, 3)
    assert duplicate_counts(rows, iter(seqs), 4, 3).tolist() == want
    assert want[-1] == 0 and max(want) > 1
    flat = np.concatenate(seqs)
    assert duplicate_counts(rows, flat, 4, 3).tolist() == _naive_counts(rows, [flat], 4, 3)


def test_duplicate_counts_of_planted_rows():
    from memwatch.demos.model import planted_corpus

    corpus = planted_corpus([5, 1, 0, 3], seq_len=64, vocab_size=512, seed=0)
    stream = corpus.stream(seed=1)
    wl = Watchlist.from_tokens(corpus.rows)
    assert wl.duplicate_counts(stream).tolist() == [5, 1, 0, 3]
    assert wl.duplicate_counts(torch.cat([stream.reshape(-1)] * 2)).tolist() == [10, 2, 0, 6]


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def test_cli_build_and_show(tmp_path, tiny_tokenizer, capsys):
    from memwatch.cli import main

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    email = "maria.lopez@outlook.com"
    (tmp_path / "a.txt").write_text(" ".join(WORDS * 6) + f" mail {email} then " +
                                    " ".join(WORDS * 6))
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": " ".join(WORDS * 12)}) + "\n")
    out = tmp_path / "wl"
    assert main(["watchlist", "build", "--texts", str(tmp_path / "a.txt"),
                 str(tmp_path / "b.jsonl"), "--tokenizer", str(tmp_path / "tok"), "--pii",
                 "--canaries", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["watchlist", "show", str(out), "--limit", "50"]) == 0
    shown = capsys.readouterr().out
    wl = Watchlist.load(out)
    assert "pii:EMAIL_ADDRESS" in shown and "canary" in shown and "m***@o***.com" in shown
    assert email not in shown and wl.tag_counts()["pii:EMAIL_ADDRESS"] == 1
    assert wl.tag_counts()["canary"] == 2 and wl.tag_counts()["text"] >= 2


def test_unsigned_token_arrays_are_token_ids():
    rows = np.arange(128, dtype=np.uint64).reshape(2, 64)
    wl = Watchlist.from_tokens(rows)
    assert wl.tokens.dtype == torch.int64 and wl.tokens.tolist() == rows.astype(np.int64).tolist()
    assert Watchlist.from_tokens(torch.from_numpy(rows.astype(np.uint32))).tokens.dtype == \
        torch.int64
    rows[1, 3] = 2**63 + 5
    with pytest.raises(ValueError, match="'row-1' has token id 9223372036854775813"):
        Watchlist.from_tokens(rows)


def test_from_tokens_tags_mean_the_same_whatever_the_row_count():
    two, three = torch.ones(2, 64, dtype=torch.long), torch.ones(3, 64, dtype=torch.long)
    assert Watchlist.from_tokens(two, tags=["a", "b"]).tags == [("a",), ("b",)]
    with pytest.raises(ValueError, match="tags has 2 entries for 3 watchlist rows"):
        Watchlist.from_tokens(three, tags=["a", "b"])
    assert Watchlist.from_tokens(three, tags=[("a", "b")] * 3).tags == [("a", "b")] * 3
    assert Watchlist.from_tokens(three, tags="a").tags == [("a",)] * 3


@pytest.mark.parametrize("field, value, message", [
    ("ids", "abcdef", "'ids' must be a list, got str"),
    ("ids", None, "'ids' must be a list, got NoneType"),
    ("tags", None, "'tags' must be a list, got NoneType"),
    ("tags", [["a"], "b", ["c"]], "'tags' must hold one list of strings per row"),
    ("spans", "0:1:2", "'spans' must be null or a list of 3 entries"),
    ("spans", [[0, 1, 2], "0:1:2", None], "'spans' entry 1 is '0:1:2'"),
    ("previews", [1, 2, 3], "'previews' entry 0 is 1"),
])
def test_load_names_the_file_and_field_of_a_bad_watchlist(tmp_path, field, value, message):
    path = Watchlist.from_tokens(torch.ones(3, 64, dtype=torch.long)).save(tmp_path / "wl")
    meta_path = tmp_path / "wl" / "watchlist.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"watchlist.json: {message}"):
        Watchlist.load(path)


def test_load_rejects_truncated_files_float_ids_and_missing_keys(tmp_path):
    from safetensors.torch import save_file

    path = Watchlist.from_tokens(torch.ones(3, 64, dtype=torch.long)).save(tmp_path / "wl")
    meta_path, tok_path = tmp_path / "wl" / "watchlist.json", tmp_path / "wl" / "tokens.safetensors"
    good_meta, good_tokens = meta_path.read_text(), tok_path.read_bytes()
    meta_path.write_text(good_meta[: len(good_meta) // 2])
    with pytest.raises(ValueError, match="watchlist.json is not valid JSON .*truncated"):
        Watchlist.load(path)
    meta = json.loads(good_meta)
    del meta["tags"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="watchlist.json: 'tags' is missing"):
        Watchlist.load(path)
    meta_path.write_text(good_meta)
    tok_path.write_bytes(good_tokens[: len(good_tokens) // 2])
    with pytest.raises(ValueError, match="tokens.safetensors is unreadable .*truncated"):
        Watchlist.load(path)
    floats = torch.full((3, 64), 3.7)
    save_file({"tokens": floats}, tok_path)
    with pytest.raises(ValueError, match="tokens.safetensors: 'tokens' has dtype torch.float32"):
        Watchlist.load(path)  # once cast to 3


def test_watchlist_json_records_the_tokenizer_and_width(tmp_path, tiny_tokenizer):
    from memwatch.watchlist.tokenizer import describe

    texts = ["alpha beta gamma delta river stone light paper " * 12]
    wl = Watchlist.from_texts(texts, tiny_tokenizer, prompt_len=8, cont_len=8)
    assert wl.tokenizer == describe(tiny_tokenizer)
    assert wl.tokenizer["size"] == tiny_tokenizer.vocab_size
    extended = copy.deepcopy(tiny_tokenizer)  # a pad token added later: the same ids
    extended.add_special_tokens({"pad_token": "<pad>"})
    assert describe(extended)["fingerprint"] == wl.tokenizer["fingerprint"]
    wl.save(tmp_path / "wl")
    meta = json.loads((tmp_path / "wl" / "watchlist.json").read_text())
    assert meta["width"] == 16 and meta["tokenizer"]["fingerprint"] == wl.tokenizer["fingerprint"]
    loaded = Watchlist.load(tmp_path / "wl")
    assert loaded.tokenizer == wl.tokenizer
    assert (loaded + Watchlist.from_tokens(wl.tokens[:1], ids=["x"])).tokenizer == wl.tokenizer
    assert wl.select([0]).tokenizer == wl.tokenizer
