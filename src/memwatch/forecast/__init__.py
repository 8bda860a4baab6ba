"""Forecast the final model's memorization from the run's own history (Biderman et al. 2023).

`forecast(ForecastInputs(...))` turns the run's probes, and what the caller knows of
each row (`memwatch.forecast.inputs`: duplicates, first-seen steps, exposures; the
schedule), into up to six estimates of the final memorized count, one module each, and
combines them with prior weights times how well each forecast the run itself one
horizon back (`memwatch.forecast.stats` holds the interval and the scores that judge it):

- ``ratio`` (`memwatch.forecast.ratio`): memorized now / recall, the paper's view;
- ``curve`` and ``saturating`` (`memwatch.forecast.curve`): the count vs. the clock,
  extrapolated (unbounded forms; a logistic curve under a ceiling);
- ``risk`` (`memwatch.forecast.risk`): the sum of a per-row classifier's probabilities;
- ``trajectory`` (`memwatch.forecast.trajectory`): each row's NLL trend carried to the end;
- ``exposure`` (`memwatch.forecast.exposure`): each row's chance from its exposures (copies,
  the learning rate at each, the training after the last), read at the end of training.

The per-row signals (exposures, loss-trace spread, the probe's min-k % and log p_z) are
in `memwatch.forecast.signals`; `TagForecast.signals` names those a forecast used.

The derivation (the clock, the backtest, the weights, the interval, degenerate
histories) is in docs/concepts.md, "How the forecast is made".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from memwatch.forecast.curve import curve_estimate, saturating_estimate
from memwatch.forecast.exposure import end_probabilities as exposure_probabilities
from memwatch.forecast.fits import ScalingFit
from memwatch.forecast.inputs import (
    Exposures,
    ForecastInputs,
    checked_clock,
    checked_duplicates,
    checked_first_seen,
    learning_rates,
)
from memwatch.forecast.ratio import (
    PYTHIA_PRIOR,
    PYTHIA_PRIORS,
    RatioEstimate,
    checked_prior,
    ratio_estimate,
)
from memwatch.forecast.risk import RiskRanking, risk_at, tag_columns
from memwatch.forecast.signals import ExposureLog, RowSignals
from memwatch.forecast.stats import lognormal_interval
from memwatch.forecast.trajectory import end_probabilities
from memwatch.watchlist.tags import tag_set

__all__ = ["PYTHIA_PRIOR", "PYTHIA_PRIORS", "Band", "Estimate", "ExposureLog", "Exposures",
           "FinalCount", "Forecast", "ForecastInputs", "TagForecast", "forecast"]

ERROR_FLOOR = 0.1
MISSING_ERROR = 1.0
BACKTEST_SD = 0.5
BACKTESTS = 3
MIN_CUT_ROWS = 5
# A cut must hold this share of the target's memorized count: a backtest from a cut that
# had memorized almost nothing (early in a run) tests a regime the forecast is not in,
# and would favour what was right when nothing was memorized.
MIN_CUT_SHARE = 0.5
# Prior weights and errors (log sd) of the methods, before the run's own backtest: the
# per-row methods see rows on their way, the exposure model the copies still to come;
# the count-only methods (ratio, curve, saturating) see neither.
PRIOR_WEIGHT = {"exposure": 16.0, "trajectory": 4.0}
PRIOR_ERROR = {"exposure": 0.3, "trajectory": 0.5}
DECAY_AHEAD = 0.5
DECAY_SD = MISSING_ERROR
DECAY_SD_EXPOSURE = 0.3


@dataclass(frozen=True)
class Estimate:
    """One method's forecast of a tag's final memorized count, and its say in the combination.

    method: "ratio", "curve", "saturating", "risk" or "trajectory".
    final_memorized: the method's final count.
    weight: its weight in ``expected_final_memorized`` (the weights of a tag sum to 1).
    backtest_error: the RMS log error of the method forecasting the run itself one
        horizon back (None when no backtest could be run yet).
    """

    method: str
    final_memorized: float
    weight: float
    backtest_error: float | None = None


@dataclass(frozen=True)
class Band:
    """A value with its central interval: value, low, high."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class FinalCount:
    """The forecast final memorized count of a tag.

    expected (low, high): the reliability-weighted combination of the estimates, with its
        central `level` interval.
    agreement: min / max of the estimates (1 when all are 0).
    decay_ahead: the learning rate (``ForecastInputs.learning_rate``) is still above
        DECAY_AHEAD = 0.5 of its peak so far at the latest probe and falls below that
        before the end (a decay the probes have not seen begin): rows seen in a decay
        become more extractable than the run so far shows, which no method here can
        forecast from before it, so the interval's upper side carries an unknown error
        (log sd DECAY_SD) on top of the others.
    """

    expected: float
    low: float
    high: float
    agreement: float = 1.0
    decay_ahead: bool = False


# The flat names of memwatch <= 0.x, read through `TagForecast.__getattr__` for one release.
_FLAT_NAMES = {
    "expected_final_memorized": ("final", "expected"),
    "expected_final_low": ("final", "low"),
    "expected_final_high": ("final", "high"),
    "agreement": ("final", "agreement"),
    "decay_ahead": ("final", "decay_ahead"),
    "recall_now": ("recall", "value"),
    "recall_low": ("recall", "low"),
    "recall_high": ("recall", "high"),
    "precision_now": ("precision", "value"),
    "precision_low": ("precision", "low"),
    "precision_high": ("precision", "high"),
}


@dataclass(frozen=True)
class TagForecast:
    """The forecast for one tag (or "*" for all rows); counts are rows of the watchlist.

    step / compute_fraction: the latest probe's step and c(step) / c(total_steps).
    num_rows / memorized_now: rows with the tag; of those, memorized at the latest probe.
    final: the final count (`FinalCount`: expected, low, high, agreement, decay_ahead).
    recall: share of the final memorized set already memorized, over the whole watchlist
        (rows still to come included), with its interval (`Band`).
    precision: share of the memorized set still memorized at the end (`Band`). Both are
        the weighted mean (the combination's weights) of the ratio method's view and the
        per-row methods' view (recall = Σ_now p / Σ p, precision = mean p over the rows
        memorized now, p = a row's end-of-training probability); the intervals come from
        a Poisson bootstrap over rows.
    recall_seen: the same share over the rows already seen (the paper's recall: it
        counts only rows the earlier checkpoint had seen); None unless the forecast knew
        when rows are first seen (``first_seen`` or ``exposures``). rows_seen: the tag's
        rows seen by the latest probe (None likewise).
    estimates: one `Estimate` per method the history supports, by method name.
    signals: the per-row signals the forecast used beyond the probe's verdict and NLL
        (`memwatch.forecast.signals.RowSignals.used`; e.g. "exposures", "lt_iqr").
    ratio: the ratio method's precision, recall, fits and prior weight.
    curve_fit: the count-vs-clock fit (None before two probes with a memorized row).

    The flat names of earlier releases (``expected_final_memorized``, ``recall_now``,
    ...) still read, with a DeprecationWarning, for one release.
    """

    tag: str
    step: int
    compute_fraction: float
    num_rows: int
    memorized_now: int
    final: FinalCount
    recall: Band
    precision: Band
    recall_seen: float | None = None
    rows_seen: int | None = None
    estimates: tuple[Estimate, ...] = ()
    signals: tuple[str, ...] = ()
    ratio: RatioEstimate | None = field(default=None, compare=False)
    curve_fit: ScalingFit | None = field(default=None, compare=False)

    def __getattr__(self, name: str):
        if name in _FLAT_NAMES:
            group, part = _FLAT_NAMES[name]
            warnings.warn(f"TagForecast.{name} is deprecated; read TagForecast.{group}.{part}",
                          DeprecationWarning, stacklevel=2)
            return getattr(getattr(self, group), part)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def final_memorized(self, method: str) -> float | None:
        """The final count `method` forecasts, or None where it could not run."""
        return next((e.final_memorized for e in self.estimates if e.method == method), None)


@dataclass(frozen=True)
class Forecast:
    """`TagForecast` per tag ("*" = all rows), the per-row `RiskRanking` (or None), and
    each row's probability of being memorized at the end of training.

    signals: the per-row signals used beyond the probe's verdict and NLL (as
        `TagForecast.signals`).

    end_probability: float64 [n]: the per-row methods' probabilities (risk, trajectory)
        averaged with their weights in the "*" forecast; when neither could run, the
        ratio method's view spread over rows: precision_now for a row memorized now,
        the rest of the expected final count shared evenly by the others.
    """

    step: int
    total_steps: int
    tags: dict[str, TagForecast]
    risk: RiskRanking | None = field(default=None, compare=False)
    end_probability: np.ndarray = field(default_factory=lambda: np.zeros(0), compare=False)
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Settings:
    """What every tag's forecast shares: the end of training, the prior, the interval."""

    total_clock: float
    prior: np.ndarray
    level: float
    n_boot: int
    decay_ahead: bool = False
    signals: tuple[str, ...] = ()
    rate_known: bool = False


@dataclass(frozen=True)
class _Probes:
    """One tag's probes: memorized (bool [P, n]), their steps and clock (float [P]), and
    the rows each had seen (bool [P, n]; None when unknown)."""

    memorized: np.ndarray
    steps: np.ndarray
    clock: np.ndarray
    seen: np.ndarray | None = None


@dataclass(frozen=True)
class _Backtest:
    """What was known at an earlier probe, and the count at a later target probe.

    row_sums: {per-row method: its final count} forecast at the cut for the target.
    latest: the count at the latest probe (>= the target's), what an early forecast of
        the target may have been right about.
    """

    probes: _Probes
    row_sums: dict[str, float]
    target_clock: float
    actual: int
    latest: int = 0


@dataclass(frozen=True)
class _RecallView:
    """Recall and precision of "memorized now" against the final set, as one method sees
    them, with Poisson-bootstrap replicates over rows."""

    recall: float
    precision: float
    recall_samples: np.ndarray
    precision_samples: np.ndarray
    recall_seen: float | None = None


@dataclass(frozen=True)
class _Found:
    """{method: final count} of the methods the history supports, and the parts behind them."""

    counts: dict[str, float]
    ratio: RatioEstimate
    curve_fit: ScalingFit | None


def _estimates(probes: _Probes, total_clock: float, prior: np.ndarray,
               row_sums: dict[str, float], n_boot: int, rng) -> _Found:
    """The estimates the probes support; `row_sums`: the per-row methods' final counts."""
    mem, clock = probes.memorized, probes.clock
    n_rows = mem.shape[1]
    r_now = min(1.0, float(clock[-1]) / total_clock)
    ratio = ratio_estimate(mem, clock, r_now, prior, n_boot, rng, probes.seen)
    counts = mem.sum(1)
    now = int(counts[-1])
    out = {"ratio": ratio.final_memorized(now, n_rows)}
    curve = curve_estimate(counts, clock, total_clock, n_rows)
    if curve is not None and curve.fit.kind != "constant":
        out["curve"] = curve.final_memorized
    saturating = saturating_estimate(counts, clock, total_clock, n_rows)
    if saturating is not None:
        out["saturating"] = saturating
    out.update({m: float(v) for m, v in row_sums.items()})
    if now == 0 and len(out) > 1:
        del out["ratio"]  # nothing to scale up: its 0 is no estimate when another method has one
    return _Found(out, ratio, None if curve is None else curve.fit)


def _backtest(found: dict[str, float], backtests: list[_Backtest], prior: np.ndarray
              ) -> tuple[dict[str, float], dict[str, float]]:
    """({method: RMS log error}, {method: misfit}) of each method forecasting the targets
    from their cuts; the misfit scales each squared error by the noise expected of it.

    A forecast between the target's count and the latest count (when that is higher)
    was right too early, not wrong: its error is 0 (the run got there, later).
    """
    squares: dict[str, list[float]] = {m: [] for m in found}
    scaled: dict[str, list[float]] = {m: [] for m in found}
    for case in backtests:
        past = _estimates(case.probes, case.target_clock, prior, case.row_sums, 0,
                          np.random.default_rng(0)).counts
        noise = BACKTEST_SD ** 2 + 1.0 / (1.0 + case.actual)  # + the count's Poisson noise
        low, high = np.log1p(case.actual), np.log1p(max(case.actual, case.latest))
        for m, errs in squares.items():
            e = (float(np.log1p(past[m]) - np.clip(np.log1p(past[m]), low, high))
                 if m in past else MISSING_ERROR)
            errs.append(e ** 2)
            scaled[m].append(e ** 2 / noise)
    errors = {m: float(np.sqrt(np.mean(v))) for m, v in squares.items()}
    misfit = {m: float(np.mean(v)) for m, v in scaled.items()}
    return errors, misfit


def _weights(methods, misfit) -> dict[str, float]:
    """Prior times backtest likelihood: w_m ∝ PRIOR_WEIGHT[m] exp(-misfit_m / 2)."""
    misfit = misfit or {}
    best = min(misfit.get(m, 0.0) for m in methods)
    raw = {m: PRIOR_WEIGHT.get(m, 1.0) * float(np.exp(-0.5 * (misfit.get(m, 0.0) - best)))
           for m in methods}
    total = sum(raw.values())
    return {m: v / total for m, v in raw.items()}


def _row_view(p: np.ndarray, now: np.ndarray, n_boot: int, rng, seen=None) -> _RecallView:
    """"Memorized now" against the final set as a per-row method sees it: p = each row's
    probability of being memorized at the end, so recall = Σ_now p / Σ p (over the rows
    already seen: Σ_now p / Σ_seen p) and precision = mean of p over the rows memorized
    now; replicates from a Poisson bootstrap over rows."""
    recall = float(p[now].sum() / p.sum()) if p.sum() > 0 else 1.0
    recall_seen = None
    if seen is not None:
        total_seen = p[seen | now].sum()
        recall_seen = float(p[now].sum() / total_seen) if total_seen > 0 else 1.0
    precision = float(p[now].mean())
    w = rng.poisson(1.0, (n_boot, len(p))).astype(np.float64)
    hit, total, count = w[:, now] @ p[now], w @ p, w[:, now].sum(1)
    recalls = np.where(total > 0, hit / np.maximum(total, 1e-12), recall)
    precisions = np.where(count > 0, hit / np.maximum(count, 1e-12), precision)
    return _RecallView(recall, precision, recalls, precisions, recall_seen)


def _combined_view(views: dict[str, _RecallView], weights: dict[str, float]) -> _RecallView:
    """The views averaged with the combination's weights (renormalised over the views)."""
    share = {m: weights.get(m, 0.0) for m in views}
    total = sum(share.values())
    share = ({m: w / total for m, w in share.items()} if total > 0
             else {m: float(m == "ratio") for m in views})
    return _RecallView(
        sum(share[m] * v.recall for m, v in views.items()),
        sum(share[m] * v.precision for m, v in views.items()),
        sum(share[m] * v.recall_samples for m, v in views.items()),
        sum(share[m] * v.precision_samples for m, v in views.items()),
        None if any(v.recall_seen is None for v in views.values())
        else sum(share[m] * v.recall_seen for m, v in views.items()),
    )


def _combination(found: _Found, weights: dict[str, float], errors: dict[str, float],
                 now: int, n_rows: int, settings: _Settings) -> tuple[float, float, float]:
    """(expected final count, low, high): the weighted mean of the estimates in log, and
    its log-normal interval (see docs/concepts.md, "Interval")."""
    if now == 0 and list(found.counts) == ["ratio"]:
        return 0.0, 0.0, 0.0  # nothing memorized and nothing on its way: nothing to scale up
    logs = {m: np.log1p(v) for m, v in found.counts.items()}
    center = sum(weights[m] * logs[m] for m in found.counts)
    spread = sum(weights[m] * (logs[m] - center) ** 2 for m in found.counts)
    # without a backtest a method's error is its prior one (unknown: MISSING_ERROR)
    past_err = ERROR_FLOOR ** 2 + sum(weights[m] * errors.get(
        m, PRIOR_ERROR.get(m, MISSING_ERROR)) ** 2
                                      for m in found.counts)
    boot = 0.0
    if settings.n_boot:
        finals = np.log1p(found.ratio.final_samples(now, n_rows))
        boot = float(np.var(finals)) * weights.get("ratio", 0.0) ** 2
    sigma = float(np.sqrt(spread + past_err + boot))
    # the exposure model reads the learning rate of the copies still to come and of the
    # training after them; the others extrapolate the run so far
    decay_sd = DECAY_SD_EXPOSURE if "exposure" in found.counts and settings.rate_known \
        else DECAY_SD
    up = np.sqrt(sigma ** 2 + decay_sd ** 2) if settings.decay_ahead else sigma
    return lognormal_interval(center, sigma, settings.level, float(up), n_rows)


def _tag_forecast(tag: str, probes: _Probes, rows: dict[str, np.ndarray],
                  backtests: list[_Backtest], settings: _Settings, rng) -> TagForecast:
    """`rows`: {per-row method: float [n] end-of-training probabilities} of the methods
    that could run; `backtests`: the run forecasting itself one horizon back."""
    n_rows = probes.memorized.shape[1]
    t_now = int(probes.steps[-1]) if len(probes.steps) else 0
    if len(probes.steps) == 0:
        probes = _Probes(np.zeros((1, n_rows), bool), probes.steps, np.zeros(1),
                         None if probes.seen is None else np.zeros((1, n_rows), bool))
    mem, n_boot = probes.memorized, settings.n_boot
    r_now = min(1.0, float(probes.clock[-1]) / settings.total_clock)
    now = int(mem[-1].sum())
    sums = {m: float(p.sum()) for m, p in rows.items()}
    found = _estimates(probes, settings.total_clock, settings.prior, sums, n_boot, rng)
    ratio = found.ratio
    share = 1.0 if ratio.seen_share is None else ratio.seen_share
    views = {"ratio": _RecallView(ratio.watchlist_recall, ratio.precision,
                                  ratio.recall_samples * share, ratio.precision_samples,
                                  None if ratio.seen_share is None else ratio.recall)}
    seen_now = None if probes.seen is None else probes.seen[-1]
    if now:
        views.update({m: _row_view(p, mem[-1], n_boot, rng, seen_now)
                      for m, p in rows.items()})
    errors, misfit = _backtest(found.counts, backtests, settings.prior) if backtests else ({}, None)
    weights = _weights(found.counts, misfit)
    expected, lo, hi = _combination(found, weights, errors, now, n_rows, settings)
    big = max(found.counts.values())
    agreement = 1.0 if big <= 0 else min(found.counts.values()) / big
    view = _combined_view(views, weights)
    q = (1 - settings.level) / 2

    def band(value: float, samples: np.ndarray) -> Band:
        if not n_boot:
            return Band(value, value, value)
        return Band(value, float(np.quantile(samples, q)), float(np.quantile(samples, 1 - q)))

    return TagForecast(
        tag=tag, step=t_now, compute_fraction=r_now, num_rows=n_rows, memorized_now=now,
        final=FinalCount(expected, lo, hi, float(agreement), settings.decay_ahead),
        recall=band(view.recall, view.recall_samples),
        precision=band(view.precision, view.precision_samples),
        recall_seen=view.recall_seen,
        rows_seen=None if seen_now is None else int(seen_now.sum()),
        estimates=tuple(Estimate(m, float(v), float(weights[m]), errors.get(m))
                        for m, v in sorted(found.counts.items())),
        signals=settings.signals, ratio=ratio, curve_fit=found.curve_fit,
    )


def _end_probability(star: TagForecast, rows: dict[str, np.ndarray], now: np.ndarray
                     ) -> np.ndarray:
    """float64 [n]: each row's probability of being memorized at the end (`Forecast`)."""
    weights = {e.method: e.weight for e in star.estimates if e.method in rows}
    total = sum(weights.values())
    if total > 0:
        return sum(w / total * rows[m] for m, w in weights.items())
    rest = star.final.expected - star.precision.value * now.sum()
    share = np.clip(rest / max(len(now) - int(now.sum()), 1), 0.0, 1.0)
    return np.where(now, star.precision.value, share)


def _row_probabilities(ranking, memorized, nll, keep, steps, clock_all, total_clock,
                       signals, total_step) -> dict[str, np.ndarray]:
    """{method: float64 [n]} per-row probabilities of being memorized at `total_step`
    (clock `total_clock`) of the per-row methods that could run on the probes `keep` of
    `memorized` / `nll` ([P, n]; risk: a fitted ranking; trajectory, exposure: see
    `memwatch.forecast.trajectory` and `memwatch.forecast.exposure`)."""
    out = {}
    if ranking.fitted:
        out["risk"] = ranking.score
    if len(keep):
        traj = end_probabilities(memorized[keep], nll[keep], clock_all[keep], total_clock)
        if traj is not None:
            out["trajectory"] = traj
        dose = exposure_probabilities(memorized[keep], steps[keep], clock_all[keep],
                                      total_clock, signals, total_step)
        if dose is not None:
            out["exposure"] = dose
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
        enough = max(MIN_CUT_ROWS, MIN_CUT_SHARE * counts[target])
        cand = np.flatnonzero((clock[:target] > 0) & (counts[:target] >= enough))
        if len(cand) == 0 or clock[target] <= 0:
            continue
        gap = np.abs(np.log(clock[cand] / clock[target]) - horizon)
        cut = int(cand[np.argmin(gap)])
        if (cut, target) not in pairs:
            pairs.append((cut, target))
    return pairs


def _decay_ahead(rates: np.ndarray | None, steps: np.ndarray, total_steps: int) -> bool:
    """Whether a decay lies ahead that has not begun: the rate at the latest probe is at
    least DECAY_AHEAD times the peak so far, and it falls below that before the end
    (False without a rate or probe). `rates`: the learning rate at steps 0..total_steps."""
    if rates is None or len(steps) == 0:
        return False
    first, last = int(steps[0]), int(steps[-1])
    past, ahead = rates[first:last + 1], rates[last + 1:total_steps + 1]
    floor = DECAY_AHEAD * past.max()
    return bool(len(ahead)) and past[-1] >= floor and ahead.min() < floor


def _probe_subset(steps: np.ndarray, max_probes: int) -> np.ndarray:
    """Indices of at most `max_probes` probes, evenly spread, always keeping the latest."""
    if len(steps) <= max_probes:
        return np.arange(len(steps))
    return np.unique(np.round(np.linspace(0, len(steps) - 1, max_probes)).astype(np.int64))


def _inputs(args: tuple, kwargs: dict) -> ForecastInputs:
    """The `ForecastInputs` of a call: ``forecast(inputs)``, or the deprecated
    ``forecast(history, total_steps, prior=None, **settings)``."""
    if len(args) == 1 and not kwargs and isinstance(args[0], ForecastInputs):
        return args[0]
    if args and isinstance(args[0], ForecastInputs):
        raise TypeError("forecast(inputs) takes the ForecastInputs alone; set everything "
                        "else on it (dataclasses.replace(inputs, level=0.8))")
    if len(args) > 3:
        raise TypeError(f"forecast() takes at most 3 positional arguments ({len(args)} given)")
    warnings.warn("forecast(history, total_steps, ...) is deprecated; call "
                  "forecast(ForecastInputs(history, total_steps, ...))",
                  DeprecationWarning, stacklevel=3)
    names = ("history", "total_steps", "prior")
    for name, value in zip(names, args, strict=False):
        if name in kwargs:
            raise TypeError(f"forecast() got multiple values for argument {name!r}")
        kwargs[name] = value
    return ForecastInputs(**kwargs)


def forecast(*args, **kwargs) -> Forecast:
    """The `Forecast` of final memorization for all rows ("*") and every tag of the history.

    ``forecast(ForecastInputs(history, total_steps, ...))``: see `ForecastInputs` for
    everything a forecast can be told (row facts: duplicates, first_seen, exposures;
    schedule: compute, learning_rate; settings: prior, level, n_boot, max_probes,
    with_risk, seed). The call of earlier releases, ``forecast(history, total_steps,
    prior=None, **settings)``, still works for one release, with a DeprecationWarning.
    Deterministic for a given seed.
    """
    return _forecast(_inputs(args, dict(kwargs)))


def _forecast(inputs: ForecastInputs) -> Forecast:
    """`forecast` of checked inputs."""
    history, total_steps = inputs.history, int(inputs.total_steps)
    n_rows = history.num_rows
    steps_all = np.asarray(history.steps, np.int64)
    table = checked_prior(inputs.prior)
    keep = _probe_subset(steps_all, inputs.max_probes)
    memorized, nll = history.memorized, history.nll_signal()  # derived: derive them once
    mem = memorized[keep] if len(keep) else np.zeros((0, n_rows), bool)
    clock_all = steps_all.astype(np.float64)
    total_clock = float(total_steps)
    if inputs.compute is not None:
        clock_all, total_clock = checked_clock(inputs.compute, steps_all, total_steps)
    rates = learning_rates(inputs.learning_rate, total_steps)
    dups = checked_duplicates(inputs.duplicates, n_rows)
    exposures = inputs.exposures
    first_seen = inputs.first_seen
    if first_seen is None and exposures is not None:
        first_seen = exposures.first_seen()
        if not exposures.complete:  # rows not recorded yet are not known to be unseen
            first_seen = np.where(np.isfinite(first_seen), first_seen, total_steps + 1.0)
    signals = RowSignals(history, total_steps, exposures, rates, dups)
    settings = _Settings(total_clock, table, inputs.level, inputs.n_boot,
                         _decay_ahead(rates, steps_all, total_steps), signals.used,
                         rates is not None)
    seen = None
    if first_seen is not None:
        seen = checked_first_seen(first_seen, n_rows)[None, :] <= steps_all[:, None]
    columns = tag_columns(history.tags)
    extra = (signals.names, signals.features) if signals.names else None
    ranking = risk_at(history, len(steps_all) - 1, clock_all, total_clock, dups, columns,
                      extra, total_steps)
    rows_now = _row_probabilities(ranking, memorized, nll, keep, steps_all, clock_all,
                                  total_clock, signals, total_steps)
    past = []  # (probes at the cut, per-row probabilities at the cut, target clock, target set)
    for cut, target in _backtest_pairs(clock_all, total_clock, memorized.sum(1)):
        past_keep = _probe_subset(steps_all[: cut + 1], inputs.max_probes)
        at = float(clock_all[target])
        b_rank = risk_at(history, cut, clock_all, at, dups, columns, extra,
                         int(steps_all[target]))
        b_rows = _row_probabilities(b_rank, memorized, nll, past_keep, steps_all, clock_all,
                                    at, signals, int(steps_all[target]))
        past.append((past_keep, b_rows, at, memorized[target], memorized[-1]))
    groups = {"*": np.ones(n_rows, bool)}
    for tag in tag_set(history.tags):
        groups[tag] = np.array([tag in row for row in history.tags], bool)
    tags = {}
    for tag, mask in groups.items():
        backtests = [_Backtest(_Probes(memorized[b_keep][:, mask], steps_all[b_keep],
                                       clock_all[b_keep],
                                       None if seen is None else seen[b_keep][:, mask]),
                               {m: float(p[mask].sum()) for m, p in b_rows.items()},
                               at, int(actual[mask].sum()), int(latest[mask].sum()))
                     for b_keep, b_rows, at, actual, latest in past]
        probes = _Probes(mem[:, mask], steps_all[keep], clock_all[keep],
                         None if seen is None else seen[keep][:, mask])
        tags[tag] = _tag_forecast(tag, probes, {m: p[mask] for m, p in rows_now.items()},
                                  backtests, settings, np.random.default_rng(inputs.seed))
    risk = ranking if inputs.with_risk else None
    step = int(steps_all[-1]) if len(steps_all) else 0
    now = memorized[-1] if len(steps_all) else np.zeros(n_rows, bool)
    return Forecast(step=step, total_steps=total_steps, tags=tags, risk=risk,
                    end_probability=_end_probability(tags["*"], rows_now, now),
                    signals=signals.used)
