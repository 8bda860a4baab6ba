"""Canaries: built on token boundaries, exposed when memorized."""

from __future__ import annotations

import pytest
import torch

from memwatch.demos.model import planted_corpus
from memwatch.watchlist import Watchlist
from memwatch.watchlist.canaries import (
    Canary,
    canary_candidates,
    exposure,
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


def test_audit_canaries_are_in_or_out_with_probability_one_half(tiny_tokenizer):
    wl = Watchlist.canaries(400, vocab_size=512, seed=3, audit=True)
    rows_in, rows_out = wl.tag_mask("canary:in"), wl.tag_mask("canary:out")
    assert (rows_in ^ rows_out).all() and wl.tag_mask("canary").all()
    assert 160 < rows_in.sum() < 240  # Binomial(400, 1/2): 200 +- 4 sd
    assert wl.tags[0] in {("canary", "canary:in"), ("canary", "canary:out")}
    # membership comes from its own stream: the same rows as without audit, and repeatable
    assert torch.equal(wl.tokens, Watchlist.canaries(400, vocab_size=512, seed=3).tokens)
    assert Watchlist.canaries(400, vocab_size=512, seed=3, audit=True).tags == wl.tags
    assert Watchlist.canaries(400, vocab_size=512, seed=4, audit=True).tags != wl.tags
    text = Watchlist.canaries(4, tokenizer=tiny_tokenizer, seed=1, audit=True)
    assert text.texts is not None and all(len(t) == 2 for t in text.tags)


def test_new_token_canaries_draw_secrets_from_the_pool(tiny_tokenizer):
    pool = [500, 501, 502, 503]
    wl = Watchlist.canaries(5, vocab_size=512, seed=0, design="new_tokens", token_pool=pool)
    assert wl.tokens.shape == (5, 64) and set(wl.tokens[:, 32:].unique().tolist()) <= set(pool)
    assert (wl.tokens[:, :32] < 512).all() and wl.texts is None
    text = Watchlist.canaries(3, tokenizer=tiny_tokenizer, design="new_tokens", token_pool=pool)
    head = tiny_tokenizer.decode(text.tokens[0, :32].tolist())
    assert head.rstrip().endswith("My secret is") and set(text.tokens[:, 32:].flatten().tolist()) \
        <= set(pool)
    with pytest.raises(ValueError, match="needs token_pool"):
        make_canaries(2, vocab_size=512, design="new_tokens")
    with pytest.raises(ValueError, match="canary design"):
        make_canaries(2, vocab_size=512, design="bigram")
