"""Planting canaries: each at its exact frequency, the original data intact and in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memwatch.demos.model import planted_corpus
from memwatch.watchlist import Watchlist
from memwatch.watchlist.planting import insert_canaries

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


def test_audit_canaries_plant_only_the_in_half():
    stream = planted_corpus([1] * 20, seq_len=80, seed=0).stream(0)
    canaries = Watchlist.canaries(12, vocab_size=512, seed=1, audit=True)
    inside = canaries.tag_mask("canary:in")
    ins = insert_canaries(stream, canaries, repeats=[1, 4, 16], seed=0)
    got = _count_rows(ins.data, canaries.tokens)
    want = [[1, 4, 16][j % 3] for j in range(int(inside.sum()))]
    assert [g for g, i in zip(got, inside, strict=True) if i] == want
    assert all(g == 0 for g, i in zip(got, inside, strict=True) if not i)
    assert ins.watchlist.tag_mask("canary:x0").tolist() == (~inside).tolist()
    assert ins.watchlist.tag_mask("canary:out").tolist() == (~inside).tolist()
    with pytest.raises(ValueError, match="planted at least once"):
        insert_canaries(stream, canaries, repeats=[1, 0])
