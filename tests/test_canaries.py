"""Canaries: built on token boundaries, planted at exact frequencies, exposed when memorized."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memwatch.demos.model import planted_corpus
from memwatch.watchlist import Watchlist
from memwatch.watchlist.canaries import (
    Canary,
    canary_candidates,
    exposure,
    insert_canaries,
    make_canaries,
)


def test_text_canaries(tiny_tokenizer):
    wl = Watchlist.canaries(3, "My secret is {secret}", tokenizer=tiny_tokenizer, seed=5)
    assert wl.ids == ["canary#0", "canary#1", "canary#2"] and wl.tags == [("canary",)] * 3
    for i in range(3):
        ids = tiny_tokenizer(wl.texts[i], add_special_tokens=False)["input_ids"]
        assert ids == wl.tokens[i].tolist()  # the text encodes to exactly the row
        _, s, e = wl.spans[i]
        secret = wl.texts[i][s:e]
        assert secret.strip().replace(" ", "").isdigit()
        assert wl.texts[i][:s].rstrip().endswith("My secret is")
        assert tiny_tokenizer.decode(wl.tokens[i, 32:].tolist()) == wl.texts[i][s:]
        assert secret.strip() not in wl.redacted_preview(i)
    again = Watchlist.canaries(3, tokenizer=tiny_tokenizer, seed=5)
    assert torch.equal(again.tokens, wl.tokens)
    with pytest.raises(ValueError, match="no '\\{secret\\}' field"):
        make_canaries(1, "no field", tiny_tokenizer)
    with pytest.raises(ValueError, match="give vocab_size"):
        make_canaries(1)


def test_text_candidates_share_the_prompt(tiny_tokenizer):
    canary = make_canaries(1, tokenizer=tiny_tokenizer, seed=2)[0]
    cands = canary_candidates(canary, 20, tokenizer=tiny_tokenizer, seed=0)
    assert cands.shape == (20, 64)
    assert (cands[:, :32] == canary.tokens[:32]).all()
    assert len({tuple(r) for r in cands.tolist()} | {tuple(canary.tokens.tolist())}) == 21


REPEATS = [1, 4, 16, 0]


def _count_rows(stream2d, rows):
    L = rows.shape[1]
    return [int((stream2d[:, :L] == r).all(1).sum()) for r in rows]


def test_insertion_frequencies_exact_in_sequences():
    stream = planted_corpus([1] * 50, seq_len=80, seed=0).stream(0)
    canaries = Watchlist.canaries(6, vocab_size=512, seed=1)
    ins = insert_canaries(stream, canaries, repeats=REPEATS, seed=0)
    want = [1, 4, 16, 0, 1, 4]
    assert ins.repeats == dict(zip(canaries.ids, want, strict=True))
    assert isinstance(ins.data, torch.Tensor) and ins.data.shape == (50 + sum(want), 80)
    assert _count_rows(ins.data, canaries.tokens) == want
    is_canary = torch.zeros(len(ins.data), dtype=torch.bool)
    for r in canaries.tokens:
        is_canary |= (ins.data[:, :64] == r).all(1)
    assert torch.equal(ins.data[~is_canary], stream)  # the original rows, in their order
    assert ins.watchlist.tags[2] == ("canary", "canary:x16")
    assert ins.watchlist.tag_mask("canary:x4").sum() == 2


def test_insertion_frequencies_exact_in_a_flat_stream():
    flat = np.random.default_rng(0).integers(1, 512, 5000).astype(np.int32)
    canaries = Watchlist.canaries(4, vocab_size=512, seed=2)
    ins = insert_canaries(flat, canaries, repeats=REPEATS, seed=1)
    assert isinstance(ins.data, np.ndarray) and ins.data.dtype == np.int32
    assert len(ins.data) == 5000 + 21 * 64
    counts = canaries.duplicate_counts(ins.data, prompt_len=0, cont_len=64)
    assert counts.tolist() == REPEATS


def test_insertion_frequencies_exact_in_texts(tiny_tokenizer):
    from datasets import Dataset

    canaries = Watchlist.canaries(3, tokenizer=tiny_tokenizer, seed=0)
    docs = [f"document {i}" for i in range(40)]
    planted = insert_canaries(docs, canaries, repeats=[2, 0, 5], seed=3).data
    assert [planted.count(t) for t in canaries.texts] == [2, 0, 5]
    assert [d for d in planted if d.startswith("document")] == docs
    ds = Dataset.from_dict({"text": docs, "source": ["web"] * 40})
    out = insert_canaries(ds, canaries, repeats=[3], seed=0).data
    assert len(out) == 49 and [out["text"].count(t) for t in canaries.texts] == [3, 3, 3]
    with pytest.raises(ValueError, match="needs canaries with their text"):
        insert_canaries(docs, Watchlist.canaries(1, vocab_size=50))


def test_exposure_of_a_memorized_canary_far_above_an_unseen_one(trained):
    # The session fixture's planted rows are token canaries: those planted 64 times are
    # memorized; fresh random rows of the same form were never seen.
    seen = trained.rows[trained.repeats == 64][:2]
    unseen = planted_corpus([1, 1], seq_len=64, vocab_size=512, seed=99).rows
    exp = []
    for i, row in enumerate(torch.cat([seen, unseen])):
        canary = Canary(row, "", (0, 0))
        cands = canary_candidates(canary, 127, vocab_size=512, seed=i)
        assert (cands[:, :32] == row[:32]).all()
        exp.append(exposure(trained.model, row, cands, prompt_len=32))
    # |R| = 128: a memorized canary ranks first (7 bits); an unseen one ranks anywhere.
    assert exp[:2] == [pytest.approx(7.0)] * 2
    assert max(exp[2:]) < 4.5
    with pytest.raises(ValueError, match="other than the canary"):
        exposure(trained.model, row, row[None])
