"""Rows with shorter prompts of their own: probed by group, unpadded, equal to the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memwatch.probe import ProbeSpec, probe, reference_probe
from memwatch.prompt_groups import probe_rows, prompt_groups

M, N = 32, 32
LENS = [32, 5, 17, 1, 5, None, 40, 17]  # None: a full prompt; 40: more than prompt_len, cut


def _padded(rows: torch.Tensor, lens, pad: int) -> torch.Tensor:
    """Rows whose first M - p tokens are `pad` (a short record's left padding)."""
    out = rows.clone()
    for i, p in enumerate(lens):
        out[i, :M - min(p or M, M)] = pad
    return out


def test_prompt_groups_longest_first():
    groups = prompt_groups(LENS, len(LENS), M)
    assert [(p, rows.tolist()) for p, rows in groups] == \
        [(32, [0, 5, 6]), (17, [2, 7]), (5, [1, 4]), (1, [3])]
    assert [(p, r.tolist()) for p, r in prompt_groups(None, 3, M)] == [(32, [0, 1, 2])]
    with pytest.raises(ValueError, match="row 1 has prompt length 0"):
        prompt_groups([3, 0], 2, M)


@pytest.mark.parametrize("mode", ["exact", "extractable"])
def test_short_rows_score_as_the_reference_on_their_own_tokens(trained, one_thread, mode):
    rows = trained.rows[[0, 1, 40, 41, 2, 42, 3, 43]]  # memorized and not, mixed
    tokens = _padded(rows, LENS, pad=0)
    res = probe_rows(trained.model, tokens, LENS, ProbeSpec(M, N, mode))
    for i, p in enumerate(LENS):
        p = min(p or M, M)
        own = rows[i:i + 1, M - p:M + N]  # the row as the record gives it: no padding
        ref = reference_probe(trained.model, own, prompt_len=p, cont_len=N)
        single = probe(trained.model, own, p, N, mode=mode)
        assert res.match_prefix[i] == single.match_prefix[0]
        if mode == "exact":
            assert res.scores[i] == ref[0]
        assert bool(res.memorized[i]) == bool(ref[0] == 1)
    # the padding is never read: other padding, the same results
    again = probe_rows(trained.model, _padded(rows, LENS, pad=7), LENS,
                       ProbeSpec(M, N, mode))
    assert torch.equal(again.scores, res.scores)
    assert torch.equal(again.match_prefix, res.match_prefix)


def test_short_prompts_change_scores(trained, one_thread):
    """The grouping matters: probing the padded rows as full prompts gives other scores."""
    rows = trained.rows[:6]
    lens = [1] * 6
    grouped = probe_rows(trained.model, _padded(rows, lens, 0), lens, ProbeSpec(M, N))
    padded = probe(trained.model, _padded(rows, lens, 0), M, N)
    assert not torch.equal(grouped.scores, padded.scores)
    assert np.array_equal(grouped.nll_first.isnan().numpy(), np.zeros(6, bool))


def test_one_group_is_one_plain_call(trained):
    calls = []

    def counting(model, tokens, spec):
        calls.append((tokens.shape, spec.prompt_len))
        return probe(model, tokens, spec=spec)

    probe_rows(trained.model, trained.rows[:4], [32, None, 40, 32],
               ProbeSpec(M, N, "extractable"), counting)
    assert calls == [(torch.Size([4, 64]), 32)]


def test_the_monitor_probes_short_rows_by_group(trained, one_thread):
    from memwatch import MemWatch
    from memwatch.watchlist import Watchlist

    rows = trained.rows[[0, 1, 40, 41, 2, 42, 3, 43]]
    lens = [32, 5, 17, 1, 5, None, 32, 17]  # a watchlist's prompts fit its prompt_len
    tokens = _padded(rows, lens, pad=0)
    wl = Watchlist(tokens, [f"r{i}" for i in range(8)], [("pii:X",)] * 8, prompt_lens=lens)
    with pytest.raises(ValueError, match="'r6' has a 40-token prompt.*built with prompt_len=40"):
        MemWatch(Watchlist(tokens, wl.ids, wl.tags, prompt_lens=LENS))
    mon = MemWatch(wl, every_n_steps=1, abort=None)
    mon.step(trained.model, 1)
    expected = probe_rows(trained.model, tokens, lens, ProbeSpec(M, N, "extractable"))
    assert np.array_equal(mon.history.match_prefix[-1], expected.match_prefix.numpy())
    plain = probe(trained.model, tokens, M, N, mode="extractable")
    assert not np.array_equal(mon.history.match_prefix[-1], plain.match_prefix.numpy())
