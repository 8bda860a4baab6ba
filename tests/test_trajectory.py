"""trajectory.end_probabilities: per-row NLL trends carried to the end of training."""

from __future__ import annotations

import numpy as np

from memwatch.forecast.trajectory import end_probabilities

THRESHOLD = np.log(0.5)


def linear_rows(n=400, probes=10, total=1000.0, seed=0):
    """Rows whose log NLL falls linearly in the step at row-specific rates (with noise);
    a row is memorized when its log NLL is below log 0.5. Returns the first half of the
    run (mem, nll, clock) and the final memorized set."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0.5, 1.5, n)
    rate = rng.uniform(0.0, 3.0, n) / total
    clock = np.linspace(total / 2 / probes, total / 2, probes)
    logs = start - rate * clock[:, None] + rng.normal(0, 0.05, (probes, n))
    final = start - rate * total < THRESHOLD
    return logs < THRESHOLD, np.exp(logs), clock, final


def test_extrapolated_trends_forecast_the_final_count_and_rank_the_rows():
    mem, nll, clock, final = linear_rows()
    p = end_probabilities(mem, nll, clock, 1000.0)
    assert p.shape == (400,) and ((p >= 0) & (p <= 1)).all()
    assert mem[-1].sum() < 0.5 * final.sum()  # most of the final set is still to come
    assert abs(p.sum() - final.sum()) / final.sum() < 0.1
    # the rows it is surest of are the ones memorized at the end
    top = np.argsort(-p)[: final.sum()]
    assert final[top].mean() > 0.9


def test_a_row_whose_nll_rises_is_not_forecast_to_unlearn():
    mem, nll, clock, _ = linear_rows()
    nll[:, 0] = np.geomspace(0.2, 0.4, len(clock))  # memorized, drifting up
    mem[:, 0] = True
    p = end_probabilities(mem, nll, clock, 1000.0)
    assert p[0] > 0.9


def test_the_horizon_matters():
    mem, nll, clock, _ = linear_rows()
    now = end_probabilities(mem, nll, clock, clock[-1]).sum()
    later = end_probabilities(mem, nll, clock, 1000.0).sum()
    assert abs(now - mem[-1].sum()) < 0.1 * mem[-1].sum() + 3
    assert later > 1.5 * now


def test_histories_it_cannot_read_give_none():
    mem, nll, clock, _ = linear_rows()
    assert end_probabilities(mem[:1], nll[:1], clock[:1], 1000.0) is None  # one probe
    unmeasured = np.full_like(nll, np.nan)  # probes run without NLL
    assert end_probabilities(mem, unmeasured, clock, 1000.0) is None
    none = np.zeros_like(mem)
    assert end_probabilities(none, nll, clock, 1000.0) is None  # nothing to calibrate on
    assert end_probabilities(mem[:, :0], nll[:, :0], clock, 1000.0) is None  # no rows
    same = np.full_like(clock, clock[-1])
    assert end_probabilities(mem, nll, same, 1000.0) is None  # no trend to fit


def test_probes_without_nll_are_skipped():
    mem, nll, clock, _ = linear_rows()
    gaps = nll.copy()
    gaps[1::2, :] = np.nan  # every other probe ran without NLL
    gaps[-2, 5] = np.nan  # and one probe measured only some rows
    keep = np.isfinite(gaps).all(1)
    assert keep.sum() == 4
    np.testing.assert_array_equal(end_probabilities(mem, gaps, clock, 1000.0),
                                  end_probabilities(mem[keep], nll[keep], clock[keep], 1000.0))


def test_a_capped_calibration_sample_gives_the_same_answer(monkeypatch):
    from memwatch.forecast import trajectory  # (mw.forecast is the function, not the package)

    mem, nll, clock, final = linear_rows(n=5000)  # 6 window probes x 5000 rows > the cap
    capped = end_probabilities(mem, nll, clock, 1000.0)
    monkeypatch.setattr(trajectory, "MAX_CALIBRATION", 10 ** 9)
    full = end_probabilities(mem, nll, clock, 1000.0)
    assert not np.array_equal(capped, full)  # the cap did subsample
    assert abs(capped.sum() - full.sum()) < 0.02 * full.sum()
    assert abs(full.sum() - final.sum()) < 0.1 * final.sum()
