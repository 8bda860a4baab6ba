"""The ``curve`` and ``saturating`` estimates: the memorized count vs. the clock, extrapolated.

- ``curve``: the count from the first probe with a memorized row on, fitted in two
  unbounded forms (power law, log-linear; `fits.fit_curve` keeps the better) and read
  at the clock of the end of training.
- ``saturating``: a logistic curve in log clock under a ceiling between the largest
  count seen and the rows of the tag (`fits.fit_saturating`): memorization levels off
  once the rows seen often enough are memorized, which the unbounded forms cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memwatch.forecast import fits
from memwatch.forecast.fits import ScalingFit

SATURATION_GRID = 24


@dataclass(frozen=True)
class CurveEstimate:
    """The count-vs-clock fit and the final count it reads at the end of training."""

    final_memorized: float
    fit: ScalingFit


def curve_estimate(counts: np.ndarray, clock: np.ndarray, total_clock: float,
                   n_rows: int) -> CurveEstimate | None:
    """The ``curve`` estimate, or None with fewer than two probes with a memorized row.

    A "constant" fit (the points support no slope) reads the latest count.
    """
    hit = np.flatnonzero(counts > 0)
    if len(hit) < 2:
        return None
    s, c = clock[hit[0]:].astype(np.float64), counts[hit[0]:].astype(np.float64)
    fit = fits.fit_curve(s, c, lower=0.0, upper=float(n_rows))
    if fit.kind == "constant":
        return CurveEstimate(float(counts[-1]), fit)
    return CurveEstimate(float(fit.predict(float(total_clock))), fit)


def saturating_estimate(counts: np.ndarray, clock: np.ndarray, total_clock: float,
                        n_rows: int) -> float | None:
    """The ``saturating`` estimate at `total_clock`, or None with fewer than 3 positive counts."""
    hit = (counts > 0) & (clock > 0)
    if hit.sum() < 3 or n_rows <= 0:
        return None
    if counts[hit].max() >= n_rows:
        return float(n_rows)
    fit = fits.fit_saturating(clock[hit], counts[hit], float(n_rows), SATURATION_GRID)
    return fit.predict(total_clock)
