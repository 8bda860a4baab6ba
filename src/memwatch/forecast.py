"""Forecast the final model's memorization from the run's own history (Biderman et al. 2023).

Biderman et al. measured on Pythia how well the set memorized by an intermediate
checkpoint predicts the set memorized at the end: precision stays high (~0.9),
recall grows smoothly with the share of compute spent. `forecast` measures the
same two curves inside the run and reads them at the share spent so far:

1. For every pair of probes t_i < t_j: precision and recall of the memorized set
   at t_i against the set at t_j, at compute ratio x = t_i / t_j.
2. Fit recall(x) and precision(x) with `scaling.fit_form` in two forms, a power
   law (y = a x^b) and a log-linear law (y = a + b log x), weighted by the size of
   the set in the denominator, and keep the form with the higher weighted R² on
   y (`TagForecast.recall_fit.kind` says which). Bands: Poisson bootstrap over
   rows (every row weighted by a Poisson(1) draw, sets recounted, same form refit).
3. Read both at r = t_now / total_steps (assuming, as the paper's plots suggest,
   that the curves depend on the ratio): ``recall_now``, ``precision_now``, and
   ``expected_final_memorized = memorized_now * precision_now / recall_now``.
4. Independently, fit the memorized count vs. step (same two forms) and
   extrapolate it to ``total_steps`` (``curve_final_memorized``); ``agreement``
   is the ratio of the smaller to the larger of the two estimates. The interval
   ``[expected_final_low, expected_final_high]`` is the bootstrap interval widened
   to contain the curve estimate, so disagreement between the two widens it.

The prior (default `PYTHIA_PRIOR`) is blended in linearly:
``value = w * own + (1 - w) * prior`` with
``w = pairs / (pairs + 10) * rows / (rows + 5)``, where ``pairs`` counts probe
pairs whose later set is non-empty and ``rows`` is the largest memorized set seen.
So one probe gives the prior alone; 10 probes (45 pairs) with 20 memorized rows
give w = 0.65; 30 probes and 100 rows give w = 0.93. The prior's own uncertainty
enters the bootstrap as a log-normal spread (sd 0.3) on recall and on 1 - precision.

Degenerate histories have defined answers (never NaN): no probe, or no memorized
row yet, gives ``expected_final_memorized = 0`` with a zero-width interval (there is
nothing to scale up; the forecast says nothing until the first row is memorized);
one probe gives the prior alone; rows memorized at every probe give recall 1.
Estimates are clipped to [0, rows of the tag].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from memwatch import scaling
from memwatch.risk import RiskRanking, rank_at_risk
from memwatch.scaling import ScalingFit

# Pythia-12B intermediate checkpoints vs. the final model (Biderman et al. 2023,
# "Emergent and Predictable Memorization in Large Language Models", NeurIPS 2023,
# table of intermediate-checkpoint precision/recall). Values are approximate, read
# from the paper to two digits: precision stays ~0.9, recall roughly tracks the
# compute fraction. Rows: (compute fraction, precision, recall).
PYTHIA_PRIOR: tuple[tuple[float, float, float], ...] = (
    (0.16, 0.92, 0.15),
    (0.31, 0.91, 0.29),
    (0.45, 0.91, 0.43),
    (0.59, 0.91, 0.57),
    (0.72, 0.91, 0.70),
    (1.00, 1.00, 1.00),
)

PRIOR_PAIRS = 10.0
PRIOR_ROWS = 5.0
PRIOR_SPREAD = 0.3
MIN_RECALL = 1e-3


@dataclass(frozen=True)
class TagForecast:
    """The forecast for one tag (or "*" for all rows); counts are rows of the watchlist.

    step / compute_fraction: the latest probe's step and step / total_steps.
    num_rows / memorized_now: rows with the tag; of those, memorized at the latest probe.
    recall_now (low, high): share of the final memorized set already memorized.
    precision_now (low, high): share of the memorized set still memorized at the end.
    expected_final_memorized (low, high): memorized_now * precision / recall, with the
        central `level` bootstrap interval.
    curve_final_memorized: the count-vs-step fit extrapolated to total_steps.
    agreement: min / max of the two final estimates (1 when both are 0).
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


def _tag_forecast(tag, mem, steps, total_steps, prior, level, n_boot, rng) -> TagForecast:
    n_rows = mem.shape[1]
    t_now = int(steps[-1]) if len(steps) else 0
    r_now = min(1.0, t_now / total_steps)
    prior_p, prior_r = _prior_at(prior, r_now)
    pos = steps > 0
    mem_pos, steps_pos = mem[pos], steps[pos].astype(np.float64)
    counts = mem.sum(1)
    now = int(counts[-1]) if len(counts) else 0
    rfit, pfit, pairs = (None, None, 0)
    if n_rows and len(steps_pos) >= 2:
        rfit, pfit, pairs = _fit_pairs(mem_pos, steps_pos, n_boot, rng)
    biggest = float(counts.max()) if len(counts) else 0.0
    w = pairs / (pairs + PRIOR_PAIRS) * biggest / (biggest + PRIOR_ROWS)
    own_r = float(rfit.predict(r_now)) if rfit else prior_r
    own_p = float(pfit.predict(r_now)) if pfit else prior_p
    own_rs = rfit.predict_samples(r_now) if rfit and len(rfit.samples) else np.full(n_boot, own_r)
    own_ps = pfit.predict_samples(r_now) if pfit and len(pfit.samples) else np.full(n_boot, own_p)
    spread_r = np.exp(rng.normal(0.0, PRIOR_SPREAD, n_boot))
    spread_p = np.exp(rng.normal(0.0, PRIOR_SPREAD, n_boot))
    prior_rs = np.clip(prior_r * spread_r, 0.0, 1.0)
    prior_ps = np.clip(1 - (1 - prior_p) * spread_p, 0.0, 1.0)
    rec = w * own_r + (1 - w) * prior_r
    prec = w * own_p + (1 - w) * prior_p
    recs = w * own_rs + (1 - w) * prior_rs
    precs = w * own_ps + (1 - w) * prior_ps
    q = (1 - level) / 2

    def final(p, r):
        return np.clip(now * p / np.maximum(r, MIN_RECALL), 0.0, n_rows) if now else 0.0 * r

    finals = final(precs, recs)
    expected = float(final(np.float64(prec), np.float64(rec)))
    lo, hi = (float(v) for v in np.quantile(finals, [q, 1 - q])) if n_boot else (expected,) * 2
    curve, cfit = _curve_estimate(counts, steps, total_steps, n_rows)
    if cfit is not None and cfit.kind != "constant":
        # The two estimates rest on different assumptions; where they disagree, that
        # disagreement is uncertainty the row bootstrap cannot see.
        lo, hi = min(lo, curve), max(hi, curve)
    big = max(expected, curve)
    agreement = 1.0 if big <= 0 else min(expected, curve) / big
    return TagForecast(
        tag=tag, step=t_now, compute_fraction=r_now, num_rows=n_rows, memorized_now=now,
        recall_now=rec, recall_low=float(np.quantile(recs, q)) if n_boot else rec,
        recall_high=float(np.quantile(recs, 1 - q)) if n_boot else rec,
        precision_now=prec, precision_low=float(np.quantile(precs, q)) if n_boot else prec,
        precision_high=float(np.quantile(precs, 1 - q)) if n_boot else prec,
        expected_final_memorized=expected, expected_final_low=min(lo, expected),
        expected_final_high=max(hi, expected), curve_final_memorized=curve,
        agreement=float(agreement), recall_fit=rfit, precision_fit=pfit, curve_fit=cfit,
        prior_weight=float(1 - w), pairs=pairs,
    )


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
    seed: int = 0,
) -> Forecast:
    """The `Forecast` of final memorization for all rows ("*") and every tag in `history`.

    `total_steps`: the step training will end at (>= the latest probe's step).
    `prior`: (compute fraction, precision, recall) rows; None uses `PYTHIA_PRIOR`.
    `level`: interval coverage; `n_boot`: bootstrap replicates (0: no intervals);
    `max_probes`: probes used for the pairwise fits (evenly spread; bounds the cost);
    `duplicates`: per-row duplicate counts for the risk ranking; `with_risk`: compute
    ``Forecast.risk``. Deterministic for a given `seed`.
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
    mem = history.memorized[keep] if len(keep) else np.zeros((0, history.num_rows), bool)
    groups = {"*": np.ones(history.num_rows, bool)}
    for tag in sorted({t for row in history.tags for t in row}):
        groups[tag] = np.array([tag in row for row in history.tags], bool)
    tags = {}
    for tag, mask in groups.items():
        rng = np.random.default_rng(seed)
        tags[tag] = _tag_forecast(tag, mem[:, mask], steps, int(total_steps), table, level,
                                  n_boot, rng)
    risk = rank_at_risk(history, int(total_steps), duplicates) if with_risk else None
    step = int(steps_all[-1]) if len(steps_all) else 0
    return Forecast(step=step, total_steps=int(total_steps), tags=tags, risk=risk)
