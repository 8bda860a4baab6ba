"""Per-row trajectories: each row's NLL trend carried to the end of training.

The forecast's ``trajectory`` estimate. A row is memorized once its continuation
NLL is low enough, and a row the run keeps seeing keeps lowering it. So, for
every row:

1. the window: of the probes that measured every row's NLL, those whose clock is
   at least ``WINDOW`` times the latest such probe's (the recent trend, not the
   noisy start);
2. a least-squares line of log NLL against the clock over the window, read at the
   clock of the end of training, and never above the latest log NLL (a rising
   trend is drift before the row is seen, not a row being unlearned);
3. the calibration: a logistic model of "memorized" on log NLL, fit on the
   (row, probe) pairs of the window (every ``stride``-th of them beyond
   ``MAX_CALIBRATION`` pairs, which bounds the cost);
4. the row's probability of being memorized at the end: the calibration read at
   the extrapolated log NLL.

The sum of the probabilities over a tag's rows is that tag's expected final count.
The NLL followed is `History.nll_signal`: the continuation's mean NLL when the
probes run ``with_nll=True``, else the NLL of the first continuation token, which
every probe measures almost free (a noisier signal: see docs/performance.md for what
the forecast loses). Probes without it are skipped. `end_probabilities` returns None
when the history cannot support it: fewer than two window probes with distinct
positive clocks, or window labels all equal (nothing to calibrate on).
"""

from __future__ import annotations

import numpy as np

from memwatch.forecast.risk import logistic_fit, sigmoid

WINDOW = 0.5
NLL_FLOOR = 1e-3
MAX_CALIBRATION = 20_000


def end_probabilities(mem: np.ndarray, nll: np.ndarray, clock: np.ndarray,
                      total_clock: float) -> np.ndarray | None:
    """float64 [n]: each row's probability of being memorized at clock `total_clock`, or None.

    `mem` (bool [P, n]), `nll` (float [P, n], NaN where not measured) and `clock`
    (float [P], non-decreasing) describe the probes so far.
    """
    measured = np.flatnonzero(np.isfinite(nll).all(1) & (clock > 0))
    if len(measured) < 2 or mem.shape[1] == 0:
        return None
    window = measured[clock[measured] >= WINDOW * clock[measured[-1]]]
    if len(window) < 2 or clock[window[0]] == clock[window[-1]]:
        return None
    logs = np.log(np.maximum(nll[window].astype(np.float64), NLL_FLOOR))
    labels = mem[window].reshape(-1).astype(np.float64)
    c = clock[window].astype(np.float64)
    dc = c - c.mean()
    slope = dc @ (logs - logs.mean(0)) / float(dc @ dc)
    at_end = np.minimum(logs.mean(0) + slope * (total_clock - c.mean()), logs[-1])
    stride = -(-labels.size // MAX_CALIBRATION)
    x, labels = logs.reshape(-1)[::stride], labels[::stride]
    if not 0 < labels.sum() < len(labels):
        return None
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    b0, b1 = logistic_fit(((x - mu) / sd)[:, None], labels)
    z = b0 + b1 * (at_end - mu) / sd
    return sigmoid(z)
