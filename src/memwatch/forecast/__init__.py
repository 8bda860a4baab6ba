"""Forecast the final model's memorization from the run's own history (Biderman et al. 2023).

Biderman et al. measured on Pythia how well the set memorized by an intermediate
checkpoint predicts the set memorized at the end: precision stays high, recall
grows with the share of compute spent. `forecast` turns the run's probes into
five estimates of the final memorized count and combines them:

1. ``ratio`` (the paper's view): for every pair of probes t_i < t_j, precision and
   recall of the memorized set at t_i against the set at t_j, at compute ratio
   x = c(t_i) / c(t_j). Fit recall(x) and precision(x) with `scaling.fit_form`
   in two forms, a power law (y = a x^b) and a log-linear law (y = a + b log x),
   weighted by the size of the set in the denominator, and keep the form with the
   higher weighted R² on y (`TagForecast.recall_fit.kind` says which); read them
   at r = c(t_now) / c(total_steps) (``recall_now``, ``precision_now``) and scale
   up: ``memorized_now * precision_now / recall_now``.
2. ``curve``: the memorized count vs. c(t), fitted in the same two forms and
   extrapolated to c(total_steps) (``curve_final_memorized``).
3. ``saturating``: a logistic curve in log c, count = K / (1 + (c / c0)^-b),
   K between the largest count seen and the tag's rows (memorization plateaus once
   the rows seen often enough are memorized; the unbounded forms cannot say so).
4. ``risk``: the sum over rows of the risk model's probability that the row is
   memorized at the end (`memwatch.forecast.risk`; a calibrated classifier's expected count).
5. ``trajectory``: each row's log-NLL trend over the recent probes carried to the
   end, turned into a probability by the NLL -> memorized relation of those probes,
   and summed (`memwatch.forecast.trajectory`; the continuation's NLL with ``with_nll=True``,
   else the first token's, which every probe measures).

The clock c is the step itself, or the cumulative compute the caller passes as
``compute`` (e.g. the summed learning rate). Which clock forecasts better is an
empirical question: in `benchmarks/backtest_forecast.py` (cosine decay to 10 %,
rows repeated through the run) the step clock did, at 50 % of training.

Combination by backtested reliability (a model average: prior times the
likelihood of a backtest). Each of the latest ``BACKTESTS`` = 3 probes t_j is a
target; its cut t_b is the earlier probe, among those with at least
``MIN_CUT_ROWS`` = 5 memorized rows (a forecast from nothing tests nothing), whose
ratio c(t_b) / c(t_j) best matches c(t_now) / c(total_steps). Each method forecasts
the count at t_j from what was known at t_b, with the log error
e_m = |log(1 + forecast) - log(1 + actual)| (1.0 for a method that could not run
at t_b). The misfit of a method is the mean of e_m² / (0.2² + 1 / (1 + actual))
over the pairs: a log-normal error of sd ``BACKTEST_SD`` = 0.2 plus the Poisson
noise of the actual count, so a backtest on a handful of rows cannot single out a
method. The weight is w_m ∝ prior_m · exp(-misfit_m / 2), with prior 4 for
``trajectory`` and 1 for the others (``PRIOR_WEIGHT``: the per-row trend was the
most accurate single estimate in `benchmarks/backtest_forecast.py`).
``expected_final_memorized`` is the weighted mean of log(1 + estimate)
(``weights`` lists them). Without a backtest (no cut with 5 memorized rows yet)
the weights are the priors alone. The interval is
log-normal around it: sd² = 0.1² + Σ w_m e_m² (the backtest RMS error; 1.0 for
every method when there is no backtest yet)
+ Σ w_m (log estimate_m - center)² (disagreement) + the ratio method's bootstrap
variance (Poisson bootstrap over rows, sets recounted, same form refit) times
w_ratio², at normal quantiles for `level`, clipped to [0, rows of the tag].
``agreement`` is the smallest over the largest of the available estimates.

The prior (default `PYTHIA_PRIOR`) enters the ratio method, blended linearly:
``value = w * own + (1 - w) * prior`` with
``w = pairs / (pairs + 10) * rows / (rows + 5)``, where ``pairs`` counts probe
pairs whose later set is non-empty and ``rows`` is the largest memorized set seen.
So one probe gives the prior alone; 10 probes (45 pairs) with 20 memorized rows
give w = 0.65; 30 probes and 100 rows give w = 0.93. The prior's own uncertainty
enters the bootstrap as a log-normal spread (sd 0.3) on recall and on 1 - precision.

Degenerate histories have defined answers (never NaN): no probe, or no memorized
row of the tag at the latest probe and no other method than ``ratio`` able to run,
gives ``expected_final_memorized = 0`` with a zero-width interval (there is nothing
to scale up). With no row memorized now but another method able to run (e.g. the
NLL trends already point at rows on their way), ``ratio`` is left out and the
others forecast; ``recall_now`` and ``precision_now`` then come from the ratio
method (the prior, early on). One probe gives the ratio method on the prior alone;
rows memorized at every probe give recall 1. The ``curve`` method needs two probes
with a memorized row and a non-constant fit, ``saturating`` three, ``risk`` a fitted risk
model (two probes, both outcomes seen); ``risk_final_memorized`` is the memorized
count itself when there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from memwatch.forecast import fits as scaling
from memwatch.forecast.fits import ScalingFit
from memwatch.forecast.risk import (
    RiskRanking,
    checked_clock,
    checked_duplicates,
    risk_at,
    tag_columns,
)
from memwatch.forecast.trajectory import end_probabilities

# The prior: how well an intermediate checkpoint's memorized set predicts the same
# model's final memorized set, as Biderman et al. 2023 measured it on Pythia
# ("Emergent and Predictable Memorization in Large Language Models", arXiv 2304.11158,
# NeurIPS 2023, Tables 2 and 3). Rows: (share of training, precision, recall). The
# share is the earlier checkpoint's rows seen over the final's (23 M ... 126 M of
# 146.4 M rows); at a constant batch it is the compute fraction. The paper counts
# only rows both checkpoints had seen (the first 23 M): its recall is over rows
# already seen, not over rows still to come (see `forecast`, ``first_seen``).
PYTHIA_PRIORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    # Table 2, Pythia-12B (the default prior)
    "12b": ((0.16, 0.918, 0.500), (0.30, 0.915, 0.575), (0.44, 0.913, 0.641),
            (0.58, 0.911, 0.711), (0.72, 0.916, 0.809), (0.86, 0.943, 0.916)),
    # Table 2, Pythia-6.9B
    "6.9b": ((0.16, 0.919, 0.513), (0.30, 0.913, 0.587), (0.44, 0.910, 0.658),
             (0.58, 0.910, 0.721), (0.72, 0.915, 0.816), (0.86, 0.945, 0.918)),
    # Table 3, Pythia-12B trained on the deduplicated Pile
    "12b-deduped": ((0.16, 0.920, 0.523), (0.30, 0.917, 0.595), (0.44, 0.915, 0.658),
                    (0.58, 0.915, 0.724), (0.72, 0.922, 0.820), (0.86, 0.949, 0.920)),
}
PYTHIA_PRIOR = PYTHIA_PRIORS["12b"]

PRIOR_PAIRS = 10.0
PRIOR_ROWS = 5.0
PRIOR_SPREAD = 0.3
MIN_RECALL = 1e-3
ERROR_FLOOR = 0.1
MISSING_ERROR = 1.0
BACKTEST_SD = 0.2
BACKTESTS = 3
MIN_CUT_ROWS = 5
PRIOR_WEIGHT = {"trajectory": 4.0}
SATURATION_GRID = 24


@dataclass(frozen=True)
class TagForecast:
    """The forecast for one tag (or "*" for all rows); counts are rows of the watchlist.

    step / compute_fraction: the latest probe's step and c(step) / c(total_steps).
    num_rows / memorized_now: rows with the tag; of those, memorized at the latest probe.
    recall_now (low, high): share of the final memorized set already memorized.
    precision_now (low, high): share of the memorized set still memorized at the end.
        Both are the weighted mean (the combination's weights) of the ratio method's
        fits and the per-row methods' view (recall = Σ_now p / Σ p, precision = mean p
        over the rows memorized now, p = a row's end-of-training probability); the
        intervals come from a Poisson bootstrap over rows.
    expected_final_memorized (low, high): the reliability-weighted combination of the
        estimates below, with its central `level` interval.
    curve_final_memorized: the count-vs-clock fit extrapolated to total_steps.
    ratio_final_memorized: memorized_now * precision_now / recall_now.
    risk_final_memorized: the sum of the risk model's per-row probabilities.
    agreement: min / max of the available estimates (1 when all are 0).
    estimates / weights: (method, final count) and (method, weight) of the methods
        the history supports (weights sum to 1).
    recall_fit / precision_fit / curve_fit: the fits (None without enough data).
    prior_weight: 1 - w, the prior's share in recall_now and precision_now.
    pairs: probe pairs with a non-empty later set (the fits' evidence).
    """

    tag: str
    step: int
    compute_fraction: float
    num_rows: int
    memorized_now: int
    recall_now: float
    recall_low: float
    recall_high: float
    precision_now: float
    precision_low: float
    precision_high: float
    expected_final_memorized: float
    expected_final_low: float
    expected_final_high: float
    curve_final_memorized: float
    agreement: float
    ratio_final_memorized: float = 0.0
    risk_final_memorized: float = 0.0
    trajectory_final_memorized: float = 0.0
    estimates: tuple[tuple[str, float], ...] = ()
    weights: tuple[tuple[str, float], ...] = ()
    recall_fit: ScalingFit | None = field(default=None, compare=False)
    precision_fit: ScalingFit | None = field(default=None, compare=False)
    curve_fit: ScalingFit | None = field(default=None, compare=False)
    prior_weight: float = 1.0
    pairs: int = 0


@dataclass(frozen=True)
class Forecast:
    """`TagForecast` per tag ("*" = all rows) and the per-row `RiskRanking` (or None)."""

    step: int
    total_steps: int
    tags: dict[str, TagForecast]
    risk: RiskRanking | None = field(default=None, compare=False)


def _check_prior(prior) -> np.ndarray:
    table = np.asarray(PYTHIA_PRIOR if prior is None else prior, np.float64)
    if table.ndim != 2 or table.shape[1] != 3 or len(table) == 0:
        raise ValueError(
            "prior must be a non-empty table of (compute fraction, precision, recall) rows; "
            f"got shape {table.shape}"
        )
    f, p, r = table.T
    if not (np.isfinite(table).all() and (f > 0).all() and (f <= 1).all()
            and ((p >= 0) & (p <= 1) & (r >= 0) & (r <= 1)).all()):
        raise ValueError(
            "prior rows need 0 < compute fraction <= 1 and precision, recall in [0, 1]"
        )
    table = table[np.argsort(f)]
    if table[-1, 0] < 1:
        table = np.vstack([table, [1.0, 1.0, 1.0]])
    return table


def _prior_at(table: np.ndarray, r: float) -> tuple[float, float]:
    """(precision, recall) of the prior at compute fraction r; recall -> 0 linearly below."""
    f = np.concatenate([[0.0], table[:, 0]])
    p = np.concatenate([[table[0, 1]], table[:, 1]])
    rec = np.concatenate([[0.0], table[:, 2]])
    return float(np.interp(r, f, p)), float(np.interp(r, f, rec))


def _pair_points(mem: np.ndarray, steps: np.ndarray, weights=None):
    """(x, recall, w_recall, precision, w_precision) over pairs i < j of probes [P, n]."""
    m = mem.astype(np.float64)
    mw = m if weights is None else m * weights
    inter = mw @ m.T
    count = np.diag(inter).copy()
    i, j = np.triu_indices(len(steps), k=1)
    x = steps[i] / steps[j]
    ci, cj, cij = count[i], count[j], inter[i, j]
    recall = np.where(cj > 0, cij / np.maximum(cj, 1e-12), 1.0)
    precision = np.where(ci > 0, cij / np.maximum(ci, 1e-12), 1.0)
    return x, recall, cj, precision, ci


def _fit_pairs(mem, steps, n_boot, rng):
    """(recall fit, precision fit, pairs) with Poisson-bootstrap samples over rows."""
    x, rec, wr, prec, wp = _pair_points(mem, steps)
    pairs = int((wr > 0).sum())
    if pairs == 0:
        return None, None, 0
    rfit = max((scaling.fit_form(k, x, rec, wr, 0.0, 1.0) for k in scaling.KINDS),
               key=lambda f: (f.kind != "constant", f.r2))
    pfit = max((scaling.fit_form(k, x, prec, wp, 0.0, 1.0) for k in scaling.KINDS),
               key=lambda f: (f.kind != "constant", f.r2))
    active = mem.any(0)
    sub = mem[:, active]
    rs, ps = np.empty((n_boot, 2)), np.empty((n_boot, 2))
    for b in range(n_boot):
        w = rng.poisson(1.0, sub.shape[1]).astype(np.float64)
        bx, brec, bwr, bprec, bwp = _pair_points(sub, steps, w)
        rs[b] = _refit(rfit, bx, brec, bwr)
        ps[b] = _refit(pfit, bx, bprec, bwp)
    return rfit.with_samples(rs), pfit.with_samples(ps), pairs


def _refit(fit: ScalingFit, x, y, w) -> tuple[float, float]:
    if fit.kind == "constant":
        tot = w.sum()
        return ((w * y).sum() / tot if tot > 0 else fit.a), 0.0
    f = scaling.fit_form(fit.kind, x, y, w, fit.lower, fit.upper)
    return (f.a, f.b) if f.kind == fit.kind else (fit.a, fit.b)


def _curve_estimate(counts, steps, total_steps, n_rows) -> tuple[float, ScalingFit | None]:
    """Count-vs-step fit from the first probe with a memorized row on, read at total_steps."""
    hit = np.flatnonzero(counts > 0)
    now = float(counts[-1]) if len(counts) else 0.0
    if len(hit) < 2:
        return now, None
    s, c = steps[hit[0]:].astype(np.float64), counts[hit[0]:].astype(np.float64)
    fit = scaling.fit_curve(s, c, lower=0.0, upper=float(n_rows))
    if fit.kind == "constant":
        return now, fit
    return float(fit.predict(float(total_steps))), fit


def _saturating_estimate(counts, clock, total_clock, n_rows) -> float | None:
    """A logistic curve in log-clock, count = K / (1 + (c / c0)^-b), read at total_clock.

    K is searched on a grid between the largest count seen and `n_rows`; for each K
    the logit of count / K is linear in log c (least squares); the K with the
    smallest squared error on the counts wins. None with fewer than 3 positive counts.
    """
    hit = (counts > 0) & (clock > 0)
    if hit.sum() < 3 or n_rows <= 0:
        return None
    c, y = np.log(clock[hit]), counts[hit].astype(np.float64)
    top = float(y.max())
    if top >= n_rows:
        return float(n_rows)
    k = np.geomspace(top * 1.02 + 0.5, max(n_rows, top * 1.02 + 0.5), SATURATION_GRID)[:, None]
    logit = np.log(y / (k - y))
    cm = c - c.mean()
    slope = (logit * cm).sum(1, keepdims=True) / max(float((cm * cm).sum()), 1e-12)
    icpt = logit.mean(1, keepdims=True) - slope * c.mean()
    err = ((k / (1 + np.exp(-(icpt + slope * c))) - y) ** 2).sum(1)
    g = int(np.argmin(err))
    end = k[g, 0] / (1 + np.exp(-(icpt[g, 0] + slope[g, 0] * np.log(total_clock))))
    return float(np.clip(end, 0.0, n_rows))


def _ratio_parts(mem, clock, r_now, prior, n_boot, rng):
    """Blended (recall, precision), their bootstrap samples, the fits, pairs and own weight."""
    prior_p, prior_r = _prior_at(prior, r_now)
    pos = clock > 0
    counts = mem.sum(1)
    rfit, pfit, pairs = (None, None, 0)
    if mem.shape[1] and pos.sum() >= 2:
        rfit, pfit, pairs = _fit_pairs(mem[pos], clock[pos], n_boot, rng)
    biggest = float(counts.max()) if len(counts) else 0.0
    w = pairs / (pairs + PRIOR_PAIRS) * biggest / (biggest + PRIOR_ROWS)
    own_r = float(rfit.predict(r_now)) if rfit else prior_r
    own_p = float(pfit.predict(r_now)) if pfit else prior_p
    own_rs = rfit.predict_samples(r_now) if rfit and len(rfit.samples) else np.full(n_boot, own_r)
    own_ps = pfit.predict_samples(r_now) if pfit and len(pfit.samples) else np.full(n_boot, own_p)
    prior_rs = np.clip(prior_r * np.exp(rng.normal(0.0, PRIOR_SPREAD, n_boot)), 0.0, 1.0)
    prior_ps = np.clip(1 - (1 - prior_p) * np.exp(rng.normal(0.0, PRIOR_SPREAD, n_boot)), 0, 1)
    rec = w * own_r + (1 - w) * prior_r
    prec = w * own_p + (1 - w) * prior_p
    recs = w * own_rs + (1 - w) * prior_rs
    precs = w * own_ps + (1 - w) * prior_ps
    return rec, prec, recs, precs, rfit, pfit, pairs, w


def _scale_up(now: int, n_rows: int, precision, recall):
    """memorized_now * precision / recall, clipped to [0, n_rows] (0 when nothing is memorized)."""
    if not now:
        return 0.0 * np.asarray(recall, np.float64)
    return np.clip(now * np.asarray(precision) / np.maximum(recall, MIN_RECALL), 0.0, n_rows)


def _estimates(mem, clock, total_clock, prior, sums, n_boot, rng):
    """({method: final count} for the methods the history supports, ratio-method parts).

    `sums`: {method: final count} of the per-row methods (risk, trajectory) that could run.
    """
    n_rows = mem.shape[1]
    r_now = min(1.0, float(clock[-1]) / total_clock)
    parts = _ratio_parts(mem, clock, r_now, prior, n_boot, rng)
    counts = mem.sum(1)
    now = int(counts[-1])
    out = {"ratio": float(_scale_up(now, n_rows, parts[1], parts[0]))}
    curve, cfit = _curve_estimate(counts, clock, total_clock, n_rows)
    if cfit is not None and cfit.kind != "constant":
        out["curve"] = curve
    saturating = _saturating_estimate(counts, clock, total_clock, n_rows)
    if saturating is not None:
        out["saturating"] = saturating
    out.update({m: float(v) for m, v in sums.items()})
    if now == 0 and len(out) > 1:
        del out["ratio"]  # nothing to scale up: its 0 is no estimate when another method has one
    return out, (parts, curve, cfit)


def _weights(methods, misfit) -> dict[str, float]:
    """Prior times backtest likelihood: w_m ∝ PRIOR_WEIGHT[m] exp(-misfit_m / 2)."""
    misfit = misfit or {}
    best = min(misfit.get(m, 0.0) for m in methods)
    raw = {m: PRIOR_WEIGHT.get(m, 1.0) * float(np.exp(-0.5 * (misfit.get(m, 0.0) - best)))
           for m in methods}
    total = sum(raw.values())
    return {m: v / total for m, v in raw.items()}


def _row_view(p: np.ndarray, now: np.ndarray, n_boot: int, rng):
    """(recall, precision, recall samples, precision samples) of "memorized now" against
    the final set as a per-row method sees it: p = each row's probability of being
    memorized at the end, so recall = Σ_now p / Σ p and precision = mean of p over the
    rows memorized now; samples from a Poisson bootstrap over rows."""
    recall = float(p[now].sum() / p.sum()) if p.sum() > 0 else 1.0
    precision = float(p[now].mean())
    w = rng.poisson(1.0, (n_boot, len(p))).astype(np.float64)
    hit, total, count = w[:, now] @ p[now], w @ p, w[:, now].sum(1)
    recalls = np.where(total > 0, hit / np.maximum(total, 1e-12), recall)
    precisions = np.where(count > 0, hit / np.maximum(count, 1e-12), precision)
    return recall, precision, recalls, precisions


def _tag_forecast(tag, mem, steps, clock, total_clock, prior, level, n_boot, rng,
                  rows, backtests) -> TagForecast:
    """`rows`: {method: float [n] end-of-training probabilities} of the per-row methods
    that could run; `backtests`: a list of
    (mem, clock, sums, target clock, actual count): what was known at an earlier probe
    and the count at a later target probe, the horizon between them matching the
    latest probe's horizon to the end (see `_backtest_pairs`)."""
    n_rows = mem.shape[1]
    t_now = int(steps[-1]) if len(steps) else 0
    if len(steps) == 0:
        mem, clock = np.zeros((1, n_rows), bool), np.zeros(1)
    r_now = min(1.0, float(clock[-1]) / total_clock)
    now = int(mem[-1].sum())
    sums = {m: float(p.sum()) for m, p in rows.items()}
    found, (parts, curve, cfit) = _estimates(mem, clock, total_clock, prior, sums, n_boot, rng)
    rec, prec, recs, precs, rfit, pfit, pairs, w_own = parts
    views = {"ratio": (rec, prec, recs, precs)}
    if now:
        views.update({m: _row_view(p, mem[-1], n_boot, rng) for m, p in rows.items()})
    errors = misfit = None
    if backtests:
        squares: dict[str, list[float]] = {m: [] for m in found}
        scaled: dict[str, list[float]] = {m: [] for m in found}
        for b_mem, b_clock, b_sums, target, actual in backtests:
            past, _ = _estimates(b_mem, b_clock, target, prior, b_sums, 0,
                                 np.random.default_rng(0))
            noise = BACKTEST_SD ** 2 + 1.0 / (1.0 + actual)  # + the count's Poisson noise
            for m, errs in squares.items():
                e = abs(np.log1p(past[m]) - np.log1p(actual)) if m in past else MISSING_ERROR
                errs.append(e ** 2)
                scaled[m].append(e ** 2 / noise)
        errors = {m: float(np.sqrt(np.mean(v))) for m, v in squares.items()}
        misfit = {m: float(np.mean(v)) for m, v in scaled.items()}
    weights = _weights(found, misfit)
    logs = {m: np.log1p(v) for m, v in found.items()}
    center = sum(weights[m] * logs[m] for m in found)
    spread = sum(weights[m] * (logs[m] - center) ** 2 for m in found)
    errors = errors or {}  # without a backtest every method's error is unknown: MISSING_ERROR
    past_err = ERROR_FLOOR ** 2 + sum(weights[m] * errors.get(m, MISSING_ERROR) ** 2
                                      for m in found)
    boot = 0.0
    if n_boot:
        finals = np.log1p(_scale_up(now, n_rows, precs, recs))
        boot = float(np.var(finals)) * weights.get("ratio", 0.0) ** 2
    z = NormalDist().inv_cdf(0.5 + level / 2)
    sigma = float(np.sqrt(spread + past_err + boot))
    q = (1 - level) / 2
    if now == 0 and list(found) == ["ratio"]:
        expected = lo = hi = 0.0
    else:
        expected = float(np.clip(np.expm1(center), 0.0, n_rows))
        lo = float(np.clip(np.expm1(center - z * sigma), 0.0, expected))
        hi = float(np.clip(np.expm1(center + z * sigma), expected, n_rows))
    values = list(found.values())
    big = max(values)
    agreement = 1.0 if big <= 0 else min(values) / big
    share = {m: weights.get(m, 0.0) for m in views}
    total = sum(share.values())
    share = ({m: w / total for m, w in share.items()} if total > 0
             else {m: float(m == "ratio") for m in views})
    rec = sum(share[m] * v[0] for m, v in views.items())
    prec = sum(share[m] * v[1] for m, v in views.items())
    recs = sum(share[m] * v[2] for m, v in views.items())
    precs = sum(share[m] * v[3] for m, v in views.items())
    return TagForecast(
        tag=tag, step=t_now, compute_fraction=r_now, num_rows=n_rows, memorized_now=now,
        recall_now=rec, recall_low=float(np.quantile(recs, q)) if n_boot else rec,
        recall_high=float(np.quantile(recs, 1 - q)) if n_boot else rec,
        precision_now=prec, precision_low=float(np.quantile(precs, q)) if n_boot else prec,
        precision_high=float(np.quantile(precs, 1 - q)) if n_boot else prec,
        expected_final_memorized=expected, expected_final_low=lo, expected_final_high=hi,
        curve_final_memorized=curve, agreement=float(agreement),
        ratio_final_memorized=found.get("ratio", 0.0),
        risk_final_memorized=found.get("risk", float(now)),
        trajectory_final_memorized=found.get("trajectory", float(now)),
        estimates=tuple(sorted((m, float(v)) for m, v in found.items())),
        weights=tuple(sorted((m, float(v)) for m, v in weights.items())),
        recall_fit=rfit, precision_fit=pfit, curve_fit=cfit,
        prior_weight=float(1 - w_own), pairs=pairs,
    )


def _row_probabilities(ranking, memorized, nll, keep, clock_all, total_clock
                       ) -> dict[str, np.ndarray]:
    """{method: float64 [n]} per-row end-of-training probabilities of the per-row methods
    that could run on the probes `keep` of `memorized` / `nll` ([P, n]; risk: a fitted
    ranking; trajectory: see `memwatch.forecast.trajectory`)."""
    out = {}
    if ranking.fitted:
        out["risk"] = ranking.score
    if len(keep):
        traj = end_probabilities(memorized[keep], nll[keep], clock_all[keep], total_clock)
        if traj is not None:
            out["trajectory"] = traj
    return out


def _backtest_pairs(clock: np.ndarray, total_clock: float, counts: np.ndarray
                    ) -> list[tuple[int, int]]:
    """(cut, target) probe indices for the backtest: each of the last `BACKTESTS` probes
    (with at least two probes before it) as a target, with the earlier probe whose clock
    ratio to the target best matches the latest probe's ratio to the end."""
    if len(clock) < 3 or clock[-1] <= 0:
        return []
    horizon = np.log(min(1.0, clock[-1] / total_clock))
    pairs = []
    for target in range(len(clock) - 1, max(1, len(clock) - 1 - BACKTESTS), -1):
        cand = np.flatnonzero((clock[:target] > 0) & (counts[:target] >= MIN_CUT_ROWS))
        if len(cand) == 0 or clock[target] <= 0:
            continue
        gap = np.abs(np.log(clock[cand] / clock[target]) - horizon)
        cut = int(cand[np.argmin(gap)])
        if (cut, target) not in pairs:
            pairs.append((cut, target))
    return pairs


def _probe_subset(steps: np.ndarray, max_probes: int) -> np.ndarray:
    """Indices of at most `max_probes` probes, evenly spread, always keeping the latest."""
    if len(steps) <= max_probes:
        return np.arange(len(steps))
    return np.unique(np.round(np.linspace(0, len(steps) - 1, max_probes)).astype(np.int64))


def forecast(
    history,
    total_steps: int,
    prior: Sequence[Sequence[float]] | None = None,
    *,
    level: float = 0.9,
    n_boot: int = 100,
    max_probes: int = 32,
    duplicates=None,
    with_risk: bool = True,
    compute=None,
    seed: int = 0,
) -> Forecast:
    """The `Forecast` of final memorization for all rows ("*") and every tag in `history`.

    `total_steps`: the step training will end at (>= the latest probe's step).
    `prior`: (compute fraction, precision, recall) rows; None uses `PYTHIA_PRIOR`.
    `level`: interval coverage; `n_boot`: bootstrap replicates over rows, for the ratio
    method and the recall/precision intervals (0: sampling noise is left out: the
    recall/precision intervals collapse to the point, and the final count's interval
    still carries the backtest error and the methods' disagreement);
    `max_probes`: probes used for the pairwise fits (evenly spread; bounds the cost);
    `duplicates`: per-row duplicate counts for the risk model; `with_risk`: attach
    ``Forecast.risk`` (the risk model is fitted either way: its sum is an estimate);
    `compute`: vectorised step -> cumulative compute (e.g. the summed learning-rate
    multiplier up to the step), the clock every ratio is measured in; None: steps.
    Deterministic for a given `seed`.
    """
    steps_all = np.asarray(history.steps, np.int64)
    if int(total_steps) <= 0 or (len(steps_all) and total_steps < steps_all[-1]):
        last = int(steps_all[-1]) if len(steps_all) else 0
        raise ValueError(
            f"total_steps={total_steps} must be positive and >= the latest probe step {last}"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if n_boot < 0 or max_probes < 2:
        raise ValueError(f"need n_boot >= 0 and max_probes >= 2; got {n_boot}, {max_probes}")
    table = _check_prior(prior)
    keep = _probe_subset(steps_all, max_probes)
    steps = steps_all[keep]
    memorized, nll = history.memorized, history.nll_signal()  # derived: derive them once
    mem = memorized[keep] if len(keep) else np.zeros((0, history.num_rows), bool)
    clock_all = steps_all.astype(np.float64)
    total_clock = float(total_steps)
    if compute is not None:
        clock_all, total_clock = checked_clock(compute, steps_all, int(total_steps))
    dups = checked_duplicates(duplicates, history.num_rows)
    last = len(steps_all) - 1
    columns = tag_columns(history.tags)
    ranking = risk_at(history, last, clock_all, total_clock, dups, columns)
    rows_now = _row_probabilities(ranking, memorized, nll, keep, clock_all, total_clock)
    past = []
    for cut, target in _backtest_pairs(clock_all, total_clock, memorized.sum(1)):
        past_keep = _probe_subset(steps_all[: cut + 1], max_probes)
        at = float(clock_all[target])
        b_rank = risk_at(history, cut, clock_all, at, dups, columns)
        past.append((memorized[past_keep], clock_all[past_keep],
                     _row_probabilities(b_rank, memorized, nll, past_keep, clock_all, at), at,
                     memorized[target]))
    groups = {"*": np.ones(history.num_rows, bool)}
    for tag in sorted({t for row in history.tags for t in row}):
        groups[tag] = np.array([tag in row for row in history.tags], bool)
    tags = {}
    for tag, mask in groups.items():
        rng = np.random.default_rng(seed)
        backtests = [(b_mem[:, mask], b_clock, {m: float(p[mask].sum()) for m, p in b_rows.items()},
                      at, int(actual[mask].sum()))
                     for b_mem, b_clock, b_rows, at, actual in past]
        tags[tag] = _tag_forecast(tag, mem[:, mask], steps, clock_all[keep], total_clock, table,
                                  level, n_boot, rng, {m: p[mask] for m, p in rows_now.items()},
                                  backtests)
    risk = ranking if with_risk else None
    step = int(steps_all[-1]) if len(steps_all) else 0
    return Forecast(step=step, total_steps=int(total_steps), tags=tags, risk=risk)
