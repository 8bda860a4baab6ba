"""The forecast's statistics: intervals, and how a forecast is judged.

- `lognormal_interval`: the final count's interval, log-normal around the combination.
- `interval_score`: Gneiting & Raftery 2007 ("Strictly Proper Scoring Rules, Prediction,
  and Estimation", JASA 102, eq. 43): width plus the miss scaled by 2 / alpha, so an
  interval is judged by its width as well as its coverage.
- `width_ratio`: upper over lower end (the count's interval is multiplicative).
- `calibration_error`: expected calibration error of per-row probabilities (equal-width
  bins; Naeini et al. 2015).
- `precision_recall`, `recall_at_precision`: a per-row predictor judged the way Biderman
  et al. 2023 judge "memorized now" against the final memorized set.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

__all__ = ["calibration_error", "interval_score", "lognormal_interval", "precision_recall",
           "recall_at_precision", "width_ratio"]


def lognormal_interval(center_log: float, sigma: float, level: float, upper_sigma: float,
                       cap: float) -> tuple[float, float, float]:
    """(expected, low, high) of a count whose log(1 + count) is normal around `center_log`:
    sd `sigma` below, `upper_sigma` above, the central `level` interval, clipped to
    [0, cap] and around the expected count."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    expected = float(np.clip(np.expm1(center_log), 0.0, cap))
    low = float(np.clip(np.expm1(center_log - z * sigma), 0.0, expected))
    high = float(np.clip(np.expm1(center_log + z * upper_sigma), expected, cap))
    return expected, low, high


def interval_score(low: float, high: float, truth: float, level: float) -> float:
    """Gneiting & Raftery's interval score of the central `level` interval [low, high]:
    ``(high - low) + 2/alpha * (low - truth)+ + 2/alpha * (truth - high)+``, alpha = 1 -
    level (lower is better; a proper score: it rewards honest quantiles)."""
    alpha = 1.0 - level
    return float((high - low) + 2 / alpha * max(low - truth, 0.0)
                 + 2 / alpha * max(truth - high, 0.0))


def width_ratio(low: float, high: float) -> float:
    """high / low of a count's interval (inf when low is 0 and high is not; 1 when both are)."""
    if low <= 0:
        return 1.0 if high <= 0 else float("inf")
    return float(high / low)


def calibration_error(p: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: Σ_b (n_b / n) |mean(truth_b) - mean(p_b)| over `bins`
    equal-width bins of p."""
    p, truth = np.asarray(p, np.float64), np.asarray(truth, np.float64)
    if len(p) == 0:
        return 0.0
    which = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(which, minlength=bins)
    gap = np.bincount(which, weights=truth - p, minlength=bins)
    return float(np.abs(gap).sum() / len(p)) if n.sum() else 0.0


def precision_recall(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of the boolean set `pred` against `truth` (1.0 for empty sets)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    hit = int((pred & truth).sum())
    return hit / max(int(pred.sum()), 1) if pred.any() else 1.0, hit / max(int(truth.sum()), 1)


def recall_at_precision(p: np.ndarray, truth: np.ndarray, precision: float
                        ) -> tuple[float, float]:
    """(precision, recall) of the ranking by `p` cut at the largest k whose top k reach
    `precision` (read off the precision-recall curve; (1, 0) if no k does)."""
    truth = np.asarray(truth, bool)
    order = np.argsort(-np.asarray(p), kind="stable")
    hits = np.cumsum(truth[order])
    prec = hits / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(prec >= precision - 1e-12)
    if len(ok) == 0:
        return 1.0, 0.0
    k = ok[-1]
    return float(prec[k]), float(hits[k] / max(int(truth.sum()), 1))
