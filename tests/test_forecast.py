"""forecast(): recovers known scaling from synthetic histories; degenerate histories are defined."""

from __future__ import annotations

import math

import numpy as np
import pytest
from probe_results import probe_result

import memwatch as mw
from memwatch.forecast import (
    PRIOR_ERROR,
    PYTHIA_PRIOR,
    Exposures,
    Forecast,
    ForecastInputs,
    TagForecast,
    forecast,
)
from memwatch.forecast.signals import loss_trace_spread
from memwatch.history import History

N = 32


def _result(prefix: np.ndarray, nll=None, nll_first=None):
    return probe_result(prefix, nll=nll, nll_first=nll_first, cont_len=N)


def power_history(n=2000, memorizable=600, beta=0.7, total=1000, probe_steps=None, seed=0):
    """Rows memorized from time tau on (never forgotten), tau chosen so count(t) ∝ t**beta.

    Then the memorized set at t_i is a subset of the set at t_j and
    recall(t_i / t_j) = (t_i / t_j) ** beta, precision = 1.
    """
    rng = np.random.default_rng(seed)
    tau = np.full(n, np.inf)
    tau[:memorizable] = total * rng.uniform(size=memorizable) ** (1 / beta)
    tags = [("pii:email",) if k % 2 else ("canary", "pii:phone") for k in range(n)]
    h = History([f"r{k}" for k in range(n)], tags, cont_len=N)
    for t in probe_steps if probe_steps is not None else range(50, 501, 50):
        prefix = np.where(tau <= t, N, rng.integers(0, N, n))
        h.update(t, _result(prefix), "extractable")
    final = int((tau <= total).sum())
    return h, final


def forecast_of(history, total_steps, **settings) -> Forecast:
    """`forecast` of `ForecastInputs(history, total_steps, **settings)`."""
    return forecast(ForecastInputs(history, total_steps, **settings))


def found_by_method(t: TagForecast) -> dict[str, float]:
    return {e.method: e.final_memorized for e in t.estimates}


def _finite(tf: TagForecast) -> bool:
    parts = [vars(tf), vars(tf.final), vars(tf.recall), vars(tf.precision)]
    values = [v for part in parts for v in part.values() if isinstance(v, (int, float))]
    return all(math.isfinite(v) for v in values)


def test_package_exports_forecast():
    assert mw.forecast is forecast and mw.Forecast is Forecast
    assert {"forecast", "Forecast"} <= set(mw.__all__)


def test_power_law_recall_is_recovered_and_final_count_forecast():
    h, final = power_history(beta=0.7)
    fc = forecast_of(h, 1000)
    t = fc.tags["*"]
    assert t.ratio.recall_fit.kind == "power"
    assert t.ratio.recall_fit.b == pytest.approx(0.7, abs=0.05)
    assert t.ratio.recall_fit.a == pytest.approx(1.0, abs=0.05)
    assert t.ratio.precision_fit.predict(0.5) == pytest.approx(1.0)
    # recall at half the compute: 0.5**0.7 = 0.616 from the run, 0.671 from the prior
    # (Pythia-12B between 44 % and 58 % of training)
    assert t.ratio.prior_weight < 0.25
    assert t.ratio.recall_fit.predict(0.5) == pytest.approx(0.5 ** 0.7, abs=0.02)
    # recall_now blends that (and the prior) with the per-row methods' view: between the
    # truth (358 / 600) and the prior
    truth, f, _, r = t.memorized_now / final, *np.array(PYTHIA_PRIOR).T
    prior_r = np.interp(0.5, f, r)
    assert truth - 0.02 <= t.recall.value <= prior_r
    assert t.final.low <= final <= t.final.high
    assert abs(t.final.expected - final) / final < 0.15
    assert abs(t.final_memorized("curve") - final) / final < 0.15
    assert t.curve_fit.kind == "power" and t.curve_fit.b == pytest.approx(0.7, abs=0.1)
    assert 0.8 < t.final_memorized("curve") / t.final_memorized("ratio") < 1.25
    found = found_by_method(t).values()
    assert t.final.agreement == pytest.approx(min(found) / max(found))
    # backtested one horizon back, the ratio method is the reliable one on this history
    assert max(t.estimates, key=lambda e: e.weight).method == "ratio"
    assert t.memorized_now == int(h.memorized[-1].sum())


def test_without_prior_the_forecast_is_the_fit_itself():
    h, final = power_history(beta=1.2, memorizable=800)
    flat = ((0.5, 1.0, 0.5 ** 1.2),)
    t = forecast_of(h, 1000, prior=flat).tags["*"]
    assert t.ratio.recall == pytest.approx(0.5 ** 1.2, abs=0.03)
    assert t.final_memorized("ratio") == pytest.approx(final, rel=0.1)


def test_one_key_per_tag_plus_star_and_tag_counts_add_up():
    h, _ = power_history()
    fc = forecast_of(h, 1000)
    assert set(fc.tags) == {"*", "canary", "pii:email", "pii:phone"}
    assert fc.tags["canary"].num_rows + fc.tags["pii:email"].num_rows == h.num_rows
    assert fc.tags["canary"].memorized_now == fc.tags["pii:phone"].memorized_now
    parts = [fc.tags[t].final.expected for t in ("canary", "pii:email")]
    assert sum(parts) == pytest.approx(fc.tags["*"].final.expected, rel=0.1)
    assert fc.step == 500 and fc.total_steps == 1000


def test_prior_is_blended_out_as_probes_accumulate():
    weights = []
    for last in (100, 200, 500):
        h, _ = power_history(probe_steps=range(50, last + 1, 50))
        weights.append(forecast_of(h, 1000, n_boot=0).tags["*"].ratio.prior_weight)
    assert 1.0 > weights[0] > weights[1] > weights[2] > 0.0


def test_interval_brackets_the_estimate_and_is_reproducible():
    h, _ = power_history(n=400, memorizable=150)
    a = forecast_of(h, 1000, seed=3).tags["pii:email"]
    b = forecast_of(h, 1000, seed=3).tags["pii:email"]
    assert a == b
    assert a.final.low <= a.final.expected <= a.final.high
    assert a.recall.low <= a.recall.value <= a.recall.high
    assert a.final.high > a.final.low
    wide = forecast_of(h, 1000, seed=3, level=0.99).tags["pii:email"]
    assert wide.final.high >= a.final.high


def test_empty_history_is_all_zero():
    h = History(["a", "b"], [("x",), ()])
    fc = forecast_of(h, 100)
    t = fc.tags["*"]
    assert set(fc.tags) == {"*", "x"}
    assert t.memorized_now == 0 and t.final.expected == 0.0
    assert t.final.high == 0.0 and t.final_memorized("curve") is None
    assert t.final.agreement == 1.0 and t.ratio.recall_fit is None and t.ratio.prior_weight == 1.0
    assert found_by_method(t) == {"ratio": 0.0}
    assert _finite(t)


def test_nothing_memorized_yet_forecasts_zero():
    h, _ = power_history(probe_steps=[5, 10, 15], memorizable=0)
    t = forecast_of(h, 1000).tags["*"]
    assert t.memorized_now == 0 and t.ratio.pairs == 0
    assert t.final.expected == t.final.low == t.final.high == 0.0
    assert _finite(t)


def test_single_probe_uses_the_prior_alone():
    h = History([f"r{k}" for k in range(10)], [()] * 10, cont_len=N)
    h.update(300, _result(np.array([N] * 3 + [0] * 7)), "extractable")
    t = forecast_of(h, 1000).tags["*"]
    assert t.ratio.prior_weight == 1.0 and t.ratio.pairs == 0
    f, p, r = np.array(PYTHIA_PRIOR).T
    prec, rec = np.interp(0.3, f, p), np.interp(0.3, f, r)
    assert t.recall.value == pytest.approx(rec)
    assert t.final.expected == pytest.approx(3 * prec / rec)
    assert t.final_memorized("curve") is None  # a curve needs two probes
    assert t.final.low < t.final.expected < t.final.high
    assert _finite(t)


def test_all_memorized_forecasts_every_row():
    h = History([f"r{k}" for k in range(20)], [("t",)] * 20, cont_len=N)
    for step in (0, 10, 20, 40):
        h.update(step, _result(np.full(20, N)), "extractable")
    t = forecast_of(h, 80, n_boot=20).tags["t"]
    assert t.ratio.recall_fit.predict(0.5) == pytest.approx(1.0)
    assert t.final.expected <= 20.0
    assert t.final.high == 20.0
    assert _finite(t)


def test_history_without_rows_is_defined():
    fc = forecast_of(History([], [], cont_len=N), 100)
    assert list(fc.tags) == ["*"]
    assert fc.tags["*"].num_rows == 0 and _finite(fc.tags["*"])


def test_abort_policy_reads_upper_bound_per_tag():
    h, _ = power_history()
    fc = forecast_of(h, 1000)
    for tag in ("canary", "pii:email"):
        t = fc.tags[tag]
        assert t.final.expected <= t.final.high <= t.num_rows


def test_probe_subset_keeps_cost_bounded_and_uses_latest():
    h, final = power_history(probe_steps=range(5, 501, 5))
    t = forecast_of(h, 1000, max_probes=12).tags["*"]
    assert t.ratio.pairs <= 12 * 11 // 2
    assert t.memorized_now == int(h.memorized[-1].sum())
    assert abs(t.final.expected - final) / final < 0.2


def test_bad_arguments_are_rejected_with_the_fix():
    h, _ = power_history()
    with pytest.raises(ValueError, match="latest probe step 500"):
        forecast_of(h, 400)
    with pytest.raises(ValueError, match="compute fraction, precision, recall"):
        forecast_of(h, 1000, prior=[(0.5, 0.9)])
    with pytest.raises(ValueError, match="0 < compute fraction"):
        forecast_of(h, 1000, prior=[(1.5, 0.9, 0.5)])
    with pytest.raises(ValueError, match="level"):
        forecast_of(h, 1000, level=1.0)
    with pytest.raises(TypeError):
        forecast_of(h, 1000, budget=3)


def test_forecast_carries_risk_ranking():
    h, _ = power_history()
    fc = forecast_of(h, 1000)
    assert fc.risk is not None and fc.risk.score.shape == (h.num_rows,)
    assert forecast_of(h, 1000, with_risk=False).risk is None


def cosine_compute(total=1000):
    """Vectorised step -> summed learning rate of a cosine decay to 10 % over `total` steps."""
    lr = 0.1 + 0.45 * (1 + np.cos(np.pi * np.arange(total) / total))
    table = np.concatenate([[0.0], np.cumsum(lr)])
    return lambda steps: table[np.clip(np.asarray(steps, np.int64), 0, total)]


def compute_history(beta=0.7, n=2000, memorizable=600, total=1000, seed=0):
    """Like `power_history`, with count ∝ compute(t)**beta under a cosine learning rate."""
    rng = np.random.default_rng(seed)
    compute = cosine_compute(total)
    c_tau = np.full(n, np.inf)
    c_tau[:memorizable] = compute(total) * rng.uniform(size=memorizable) ** (1 / beta)
    h = History([f"r{k}" for k in range(n)], [()] * n, cont_len=N)
    for t in range(50, 501, 50):
        prefix = np.where(c_tau <= compute(t), N, rng.integers(0, N, n))
        h.update(t, _result(prefix), "extractable")
    return h, int((c_tau <= compute(total)).sum()), compute


def test_compute_clock_recovers_scaling_in_compute_units():
    h, final, compute = compute_history()
    by_compute = forecast_of(h, 1000, compute=compute).tags["*"]
    by_step = forecast_of(h, 1000).tags["*"]
    assert by_compute.compute_fraction == pytest.approx(compute(500) / compute(1000))
    assert by_compute.ratio.recall_fit.kind == "power"
    assert by_compute.ratio.recall_fit.b == pytest.approx(0.7, abs=0.05)
    err = abs(by_compute.final.expected - final) / final
    assert err < 0.1
    assert by_compute.final.low <= final <= by_compute.final.high
    # the step clock mistakes the decaying schedule's slow second half for a fast one
    assert abs(by_step.final.expected - final) / final > 2 * err


def test_compute_must_be_cumulative_and_one_value_per_step():
    h, _, compute = compute_history()
    with pytest.raises(ValueError, match="one finite value >= 0 per step"):
        forecast_of(h, 1000, compute=lambda s: np.ones(3))
    with pytest.raises(ValueError, match="non-decreasing"):
        forecast_of(h, 1000, compute=lambda s: 1000.0 - np.asarray(s, np.float64))


def test_risk_sum_wins_where_rows_show_their_progress():
    from test_risk import drifting_history

    h, final = drifting_history(now=700)
    t = forecast_of(h, 1000).tags["*"]
    truth = int(final.sum())
    weights = {e.method: e.weight for e in t.estimates}
    assert sum(weights.values()) == pytest.approx(1.0)
    assert abs(t.final_memorized("risk") - truth) / truth < 0.1
    # the pairwise ratio method cannot see rows that are about to arrive; its
    # backtest error one horizon back says so, and the combination follows the risk sum
    assert abs(t.final_memorized("ratio") - truth) / truth > 0.5
    assert weights["risk"] > weights["ratio"]
    assert abs(t.final.expected - truth) / truth < 0.15
    assert t.final.low <= truth <= t.final.high


def test_saturating_curve_reads_a_plateau_from_its_rise():
    n, cap, total = 1000, 300, 1000
    rng = np.random.default_rng(5)
    # count(t) = cap / (1 + (t / 300)^-3): the rows' memorization times are its quantiles
    tau = np.full(n, np.inf)
    tau[:cap] = 300 * (1 / rng.uniform(size=cap) - 1) ** (-1 / 3)
    h = History([f"r{k}" for k in range(n)], [()] * n, cont_len=N)
    for t in range(50, 451, 50):
        h.update(t, _result(np.where(tau <= t, N, rng.integers(0, N, n))), "extractable")
    truth = int((tau <= total).sum())
    t = forecast_of(h, total).tags["*"]
    found = found_by_method(t)
    assert abs(found["saturating"] - truth) / truth < 0.1
    # the unbounded forms keep rising past the plateau
    assert abs(found["curve"] - truth) > 2 * abs(found["saturating"] - truth)
    assert {e.method for e in t.estimates if e.weight > 0} == set(found)


def test_compute_must_reach_past_zero_by_the_end():
    h, _, _ = compute_history()
    with pytest.raises(ValueError, match="> 0 at total_steps"):
        forecast_of(h, 1000, compute=lambda s: np.zeros(len(s)))


def nll_trend_history(n=400, probes=10, total=1000, seed=0, nll="continuation"):
    """Rows whose log NLL falls linearly in the step at row-specific rates (with noise),
    memorized below NLL 0.5, probed over the first half of the run; and the final count.
    Rows starting above 1.1 are tagged "slow": none can be memorized by step 500.
    `nll`: which NLL the probes measured ("continuation", "first" token, or "none")."""
    rng = np.random.default_rng(seed)
    start, rate = rng.uniform(0.3, 1.3, n), rng.uniform(0.0, 3.0, n) / total
    tags = [("pii:email", "slow") if s > 1.1 else ("pii:email",) for s in start]
    h = History([f"r{k}" for k in range(n)], tags, cont_len=N)
    for t in np.linspace(total / 2 / probes, total / 2, probes).astype(int):
        logs = start - rate * t + rng.normal(0, 0.05, n)
        prefix = np.where(logs < np.log(0.5), N, rng.integers(0, N, n))
        measured = {nll: np.exp(logs)}
        h.update(int(t), _result(prefix, measured.get("continuation"), measured.get("first")),
                 "extractable")
    final = start - rate * total < np.log(0.5)
    h.final_slow = int(final[start > 1.1].sum())
    return h, int(final.sum())


def test_nll_trends_give_the_trajectory_estimate_and_it_carries_the_forecast():
    h, final = nll_trend_history()
    t = forecast_of(h, 1000).tags["*"]
    assert t.memorized_now < 0.5 * final  # most of the final set is still to come
    found = found_by_method(t)
    assert t.final_memorized("trajectory") == found["trajectory"]
    assert abs(found["trajectory"] - final) / final < 0.1
    assert max(t.estimates, key=lambda e: e.weight).method == "trajectory"
    assert abs(t.final.expected - final) / final < 0.25
    assert t.final.low <= final <= t.final.high
    # no row is ever forgotten: precision 1 and recall = memorized now / final
    assert t.precision.value > 0.9
    assert t.recall.low <= t.recall.value <= t.recall.high
    assert t.recall.value == pytest.approx(t.memorized_now / final, abs=0.05)
    # with the first token's NLL only (a monitor's default probes), it follows that NLL
    first, _ = nll_trend_history(nll="first")
    assert np.isnan(first.nll).all()
    assert found_by_method(forecast_of(first, 1000).tags["*"])["trajectory"] == found["trajectory"]
    # without any NLL the estimate cannot run and is not reported
    blind, _ = nll_trend_history(nll="none")
    assert "trajectory" not in found_by_method(forecast_of(blind, 1000).tags["*"])


def test_rows_on_their_way_are_forecast_before_any_is_memorized():
    h, _ = nll_trend_history()
    slow = forecast_of(h, 1000).tags["slow"]
    assert slow.memorized_now == 0 and h.final_slow > 10
    assert "ratio" not in found_by_method(slow)  # nothing to scale up
    assert abs(slow.final.expected - h.final_slow) / h.final_slow < 0.3
    assert slow.final.low <= h.final_slow <= slow.final.high


def test_without_a_backtest_the_interval_owns_up_to_not_knowing():
    h, final = nll_trend_history(probes=2)  # too few probes to backtest anything
    t = forecast_of(h, 1000).tags["*"]
    assert t.memorized_now > 0 and "trajectory" in found_by_method(t)
    # every method's error is its prior one (1.0 in log where none is known): the 90 %
    # interval reaches at least 1.645 of their weighted RMS below the estimate, whatever
    # the methods' agreement
    z = 1.6448536
    prior = np.sqrt(sum(e.weight * PRIOR_ERROR.get(e.method, 1.0) ** 2 for e in t.estimates))
    assert prior > 0.5
    assert np.log1p(t.final.expected) - np.log1p(t.final.low) >= z * prior


def arriving_history(n=2000, total=1000, last=500, seed=0):
    """Rows first seen uniformly over the run; 30 % of them are memorized between once and
    twice their first-seen step (a delay that scales with the clock, so recall depends on
    the clock ratio alone) and stay so. (history, first_seen, final set)."""
    rng = np.random.default_rng(seed)
    first_seen = rng.uniform(0, total, n)
    tau = np.where(rng.uniform(size=n) < 0.3, first_seen * rng.uniform(1, 2, n), np.inf)
    h = History([f"r{k}" for k in range(n)], [()] * n, cont_len=N)
    for t in range(50, last + 1, 50):
        h.update(t, _result(np.where(tau <= t, N, rng.integers(0, N, n))), "extractable")
    return h, first_seen, tau <= total


def test_first_seen_gives_the_papers_recall_beside_the_watchlists():
    h, first_seen, final = arriving_history()
    t = forecast_of(h, 1000, first_seen=first_seen).tags["*"]
    now, seen = h.memorized[-1], first_seen <= 500
    assert t.rows_seen == int(seen.sum())
    # the ratio method's pairs count, for the earlier probe, only the rows it had seen: its
    # recall is the paper's, over rows already seen
    truth_seen = (now & final).sum() / (final & seen).sum()
    assert t.ratio.recall == pytest.approx(truth_seen, abs=0.05)
    assert t.ratio.seen_share == pytest.approx(seen.mean())
    assert t.recall_seen > t.recall.value + 0.1  # half the rows are still to come
    blind = forecast_of(h, 1000).tags["*"]
    assert blind.recall_seen is None and blind.rows_seen is None
    # knowing that half the rows are still to come, the ratio method scales up more
    assert blind.final_memorized("ratio") < t.final_memorized("ratio")


def test_first_seen_needs_one_step_per_row():
    h, first_seen, _ = arriving_history(n=50)
    with pytest.raises(ValueError, match="one step per row"):
        forecast_of(h, 1000, first_seen=first_seen[:10])
    with pytest.raises(ValueError, match="one step per row"):
        forecast_of(h, 1000, first_seen=np.full(50, np.nan))


def test_end_probability_ranks_and_counts_the_final_set():
    rng = np.random.default_rng(0)
    start, rate = rng.uniform(0.3, 1.3, 400), rng.uniform(0.0, 3.0, 400) / 1000
    h, final_count = nll_trend_history()
    final = start - rate * 1000 < np.log(0.5)  # nll_trend_history's rows, same seed
    assert final.sum() == final_count
    p = forecast_of(h, 1000).end_probability
    assert p.shape == (h.num_rows,) and ((p >= 0) & (p <= 1)).all()
    assert abs(p.sum() - final_count) / final_count < 0.15
    # a row memorized at the end outranks one that is not, nearly always (AUC)
    auc = (p[final][:, None] > p[~final][None, :]).mean()
    assert auc > 0.95


def test_end_probability_without_per_row_methods_spreads_the_ratio_view():
    h = History([f"r{k}" for k in range(10)], [()] * 10, cont_len=N)
    h.update(300, _result(np.array([N] * 3 + [0] * 7)), "extractable")
    fc = forecast_of(h, 1000)
    t, p = fc.tags["*"], fc.end_probability
    np.testing.assert_allclose(p[:3], t.precision.value)
    np.testing.assert_allclose(p[3:], (t.final.expected - 3 * t.precision.value) / 7)
    assert p.sum() == pytest.approx(t.final.expected)


def wsd_rate(steps):
    """A warmup-stable-decay learning rate over 1000 steps: constant, then to 0 from 850."""
    return np.clip((1000 - np.asarray(steps, np.float64)) / 150, 0.0, 1.0)


def test_a_decay_ahead_the_probes_have_not_seen_widens_the_upper_side_only():
    h, _ = nll_trend_history()  # probed up to step 500 of 1000
    plain = forecast_of(h, 1000).tags["*"]
    flat = forecast_of(h, 1000, learning_rate=lambda s: np.ones(len(s))).tags["*"]
    assert not flat.final.decay_ahead and flat == plain
    wsd = forecast_of(h, 1000, learning_rate=wsd_rate).tags["*"]
    assert wsd.final.decay_ahead
    assert wsd.final.expected == plain.final.expected
    assert wsd.final.low == plain.final.low
    z = 1.6448536  # the upper side carries an extra log sd of 1.0
    assert (np.log1p(min(wsd.final.high, wsd.num_rows - 1)) - np.log1p(
        wsd.final.expected) >= z * 1.0 or wsd.final.high == wsd.num_rows)
    # once the decay is under way the probes have seen it
    late, _ = power_history(probe_steps=range(850, 951, 25))
    assert not forecast_of(late, 1000, learning_rate=wsd_rate).tags["*"].final.decay_ahead
    with pytest.raises(ValueError, match="one finite value >= 0 per step"):
        forecast_of(h, 1000, learning_rate=lambda s: np.ones(3))


def test_the_old_call_still_works_and_warns():
    h, _ = power_history(n=200, memorizable=60)
    with pytest.warns(DeprecationWarning, match="ForecastInputs"):
        old = forecast(h, 1000, n_boot=0, level=0.8)
    new = forecast(ForecastInputs(h, 1000, n_boot=0, level=0.8))
    assert old.tags["*"] == new.tags["*"]
    with pytest.warns(DeprecationWarning, match="final.expected"):
        assert old.tags["*"].expected_final_memorized == new.tags["*"].final.expected
    with pytest.raises(TypeError, match="alone"):
        forecast(ForecastInputs(h, 1000), level=0.5)
    with pytest.raises(AttributeError):
        _ = new.tags["*"].no_such_field


def exposed_history(n=600, total=1000, last=500, seed=0):
    """Rows trained on at graded counts over the whole run (copies at random steps); a row
    is memorized from its 8th copy on, forgotten 300 steps after its last copy. The probes
    see only the first half. (history, Exposures (complete), final set)."""
    rng = np.random.default_rng(seed)
    counts = rng.choice([1, 2, 4, 8, 16, 32], n)
    rows = np.repeat(np.arange(n), counts)
    steps = rng.integers(1, total + 1, len(rows))

    def memorized_at(t):
        upto = steps <= t
        k = np.bincount(rows[upto], minlength=n)
        last_copy = np.full(n, -np.inf)
        np.maximum.at(last_copy, rows[upto], steps[upto].astype(float))
        return (k >= 8) & (t - last_copy <= 300)

    h = History([f"r{k}" for k in range(n)], [()] * n, cont_len=N)
    for t in range(50, last + 1, 50):
        h.update(t, _result(np.where(memorized_at(t), N, rng.integers(0, N, n))),
                 "extractable")
    return h, Exposures(rows, steps, n), memorized_at(total)


def test_exposures_forecast_the_rows_still_to_come_and_are_named():
    h, exposures, final = exposed_history()
    blind = forecast_of(h, 1000, n_boot=0).tags["*"]
    told = forecast_of(h, 1000, n_boot=0, exposures=exposures, learning_rate=np.ones_like)
    t = told.tags["*"]
    truth = int(final.sum())
    assert t.memorized_now < 0.7 * truth  # much of the final set is still to come
    assert "exposures" in t.signals and "learning rate at exposure" in t.signals
    assert told.signals == t.signals and "exposures" not in blind.signals
    assert abs(t.final_memorized("exposure") - truth) / truth < 0.15
    assert abs(t.final.expected - truth) / truth < 0.1
    assert t.final.high / t.final.low < blind.final.high / blind.final.low
    # per row: the exposure model ranks the final set (AUC) from half-way
    p = told.end_probability
    assert (p[final][:, None] > p[~final][None, :]).mean() > 0.9
    # the paper's recall over rows seen comes with the exposures' first-seen steps
    assert t.recall_seen is not None and t.rows_seen == int((exposures.first_seen() <= 500).sum())


def test_exposures_recorded_so_far_are_read_as_incomplete():
    h, exposures, _ = exposed_history(n=200)
    upto = exposures.steps <= 500
    so_far = Exposures(exposures.rows[upto], exposures.steps[upto], 200, complete=False)
    t = forecast_of(h, 1000, n_boot=0, exposures=so_far).tags["*"]
    assert "exposures" in t.signals and t.final_memorized("exposure") is not None


def test_exposures_are_checked():
    h, exposures, _ = exposed_history(n=50)
    with pytest.raises(ValueError, match="history has 50"):
        ForecastInputs(h, 1000, exposures=Exposures(exposures.rows, exposures.steps, 60))
    with pytest.raises(ValueError, match=r"in \[0, 50\)"):
        Exposures(np.array([0, 50]), np.array([1, 2]), 50)
    with pytest.raises(TypeError, match="Exposures"):
        ForecastInputs(h, 1000, exposures=[(0, 1)])


def test_loss_trace_spread_is_the_nll_interquartile_range():
    nll = np.array([[1.0, 2.0], [2.0, np.nan], [3.0, np.nan], [4.0, np.nan], [5.0, 2.0]])
    np.testing.assert_allclose(loss_trace_spread(nll), [2.0, 0.0])
    h, _ = nll_trend_history(probes=6)
    assert "lt_iqr" in forecast_of(h, 1000, n_boot=0).tags["*"].signals
