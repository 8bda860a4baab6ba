"""Per-row risk ranking: fit on the run's own history, beats "memorized now" at equal k."""

from __future__ import annotations

import numpy as np
import pytest
from probe_results import probe_result

from memwatch.forecast.inputs import checked_clock, checked_duplicates
from memwatch.forecast.risk import risk_at
from memwatch.history import History

N = 32
TOTAL = 1000


def rank_at_risk(history, total_steps, duplicates=None, compute=None):
    """The ranking at the latest probe, as the forecast computes it (`risk_at`)."""
    dups = checked_duplicates(duplicates, history.num_rows)
    clock, total = history.steps.astype(np.float64), float(total_steps)
    if compute is not None:
        clock, total = checked_clock(compute, history.steps, int(total_steps))
    return risk_at(history, len(history) - 1, clock, total, dups)


def _result(prefix, nll=None):
    return probe_result(prefix, nll=nll, cont_len=N)


def drifting_history(n=600, seed=0, now=500):
    """Row k's match_prefix and NLL progress at speed v_k; memorized once v_k t / TOTAL >= 1.

    The prefix is noisy (random drops) so the NLL and the trend carry information too.
    Returns the history and the rows memorized at TOTAL.
    """
    rng = np.random.default_rng(seed)
    # a third of the rows progress fast enough to be memorized some day; the rest never are
    v = np.where(np.arange(n) % 3 == 0, rng.uniform(0, 3, n), rng.uniform(0, 0.8, n))
    tags = [("fast",) if k % 3 == 0 else ("slow",) for k in range(n)]
    h = History([f"r{k}" for k in range(n)], tags, cont_len=N)
    for t in range(50, now + 1, 50):
        progress = np.minimum(1.0, v * t / TOTAL)
        drop = rng.random(n) < 0.3
        prefix = np.where(progress >= 1, N, np.floor(N * progress * np.where(drop, 0.3, 1.0)))
        nll = (3.0 * (1 - progress) + rng.normal(0, 0.05, n)).astype(np.float32)
        h.update(t, _result(prefix, nll), "extractable")
    return h, v >= 1


def recall_at(ranking, final, k):
    return final[ranking.top(k, include_memorized=True)].sum() / final.sum()


def test_logistic_ranking_beats_memorized_now_at_equal_k():
    h, final = drifting_history()
    risk = rank_at_risk(h, TOTAL)
    assert risk.fitted
    now = h.memorized[-1]
    k = int(final.sum())
    rest = ~now
    baseline = ((now & final).sum() + (k - now.sum()) * (final & rest).mean()) / final.sum()
    assert recall_at(risk, final, k) >= 1.5 * baseline
    assert recall_at(risk, final, k) > 0.9


def test_top_skips_memorized_rows_and_respects_mask():
    h, final = drifting_history()
    risk = rank_at_risk(h, TOTAL)
    now = h.memorized[-1]
    top = risk.top(50)
    assert len(top) == 50 and not now[top].any()
    assert np.all(np.diff(risk.score[top]) <= 0)
    fast = h.tag_mask("fast")
    assert fast[risk.top(20, mask=fast)].all()
    assert len(risk.top(0)) == 0
    assert len(risk.top(10_000)) == int((~now).sum())
    with pytest.raises(ValueError, match="mask has 3 entries"):
        risk.top(5, mask=[True, False, True])


def test_duplicate_counts_are_used_when_given():
    rng = np.random.default_rng(2)
    n = 500
    dups = rng.integers(1, 40, n)
    tau = 10 * TOTAL / dups  # memorized at the end iff dups >= 10, now (t=500) iff >= 20
    h = History([f"r{k}" for k in range(n)], [()] * n, cont_len=N)
    for t in range(50, 501, 50):
        prefix = np.where(tau <= t, N, rng.integers(0, 4, n))
        h.update(t, _result(prefix, rng.normal(2, 0.1, n).astype(np.float32)), "extractable")
    final = tau <= TOTAL
    with_dups = rank_at_risk(h, TOTAL, duplicates=dups)
    without = rank_at_risk(h, TOTAL)
    assert "log_dups" in with_dups.features and "log_dups" not in without.features
    later = final & ~h.memorized[-1]
    k = int(later.sum())
    found_with, found_without = later[with_dups.top(k)].mean(), later[without.top(k)].mean()
    assert found_with > 0.9 and found_with > found_without + 0.3
    with pytest.raises(ValueError, match="duplicates must be 500"):
        rank_at_risk(h, TOTAL, duplicates=dups[:5])


def test_single_probe_falls_back_to_the_prefix_heuristic():
    h = History(["a", "b", "c", "d"], [()] * 4, cont_len=N)
    h.update(10, _result([5, 31, 0, N], np.array([2, 1, 3, 0], np.float32)), "extractable")
    risk = rank_at_risk(h, TOTAL)
    assert not risk.fitted
    assert risk.top(3).tolist() == [1, 0, 2]
    assert risk.top(1, include_memorized=True).tolist() == [3]


def test_equal_labels_fall_back_and_empty_history_is_defined():
    h = History(["a", "b"], [()] * 2, cont_len=N)
    for t in (10, 20, 30):
        h.update(t, _result([3, 7]), "extractable")
    risk = rank_at_risk(h, TOTAL)
    assert not risk.fitted and risk.top(2).tolist() == [1, 0]
    assert np.isfinite(risk.score).all()
    empty = rank_at_risk(History(["a"], [()]), TOTAL)
    assert not empty.fitted and empty.score.tolist() == [0.0]


def test_ranking_is_deterministic():
    h, _ = drifting_history(seed=4)
    a, b = rank_at_risk(h, TOTAL), rank_at_risk(h, TOTAL)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.coef, b.coef)


def test_ranking_at_an_earlier_probe_sees_only_what_was_known_then():
    from memwatch.forecast.risk import risk_at

    h, _ = drifting_history(now=500)
    clock = h.steps.astype(np.float64)
    back = risk_at(h, 5, clock, float(TOTAL))
    then = rank_at_risk(h.head(6), TOTAL)
    np.testing.assert_allclose(back.score, then.score)
    np.testing.assert_array_equal(back.memorized_now, h.memorized[5])
    # a clock that runs twice as fast changes nothing: only ratios matter
    np.testing.assert_allclose(rank_at_risk(h, TOTAL, compute=lambda s: 2.0 * s).score,
                               rank_at_risk(h, TOTAL).score)
