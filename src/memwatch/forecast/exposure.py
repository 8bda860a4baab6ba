"""The ``exposure`` estimate: each row's chance of being memorized from when it is trained on.

How often a row is trained on, at which learning rate, and how much training follows
its last copy decide whether the final model can reproduce it: duplicates raise
extraction steeply (Kandpal et al. 2022; Carlini et al. 2022), and the step of each
exposure relative to the learning-rate schedule predicts retention (TREC, Bergsma et
al., ICLR 2026); rows not seen again are forgotten (Hubble, 2025). So, per row:

1. the state at every recent probe (clock >= ``WINDOW`` x the latest; `RowSignals.state`):
   log1p(copies so far), the learning rate summed since the last copy (over the run's),
   log1p(Σ learning rate / peak over the copies);
2. a logistic model of "memorized at that probe" on the state (ridge, Newton), fit on
   the (row, probe) pairs of the window, with the probe's clock (log of its share of the
   run) as one more feature, so that a run still getting better at memorizing says so;
3. the row's probability of being memorized at the end: the model read at the state at
   the end of training (the copies still to come: known when the exposures are
   complete, else estimated, see `RowSignals`) and at the end's clock.

It needs exposures and a window whose labels are not all equal; None otherwise.
"""

from __future__ import annotations

import numpy as np

from memwatch.forecast.risk import logistic_fit, sigmoid

WINDOW = 0.5
RIDGE = 1.0


def end_probabilities(mem: np.ndarray, steps: np.ndarray, clock: np.ndarray,
                      total_clock: float, signals, total_step: int) -> np.ndarray | None:
    """float64 [n]: each row's probability of being memorized at `total_step` (clock
    `total_clock`; the end of training, or a later probe in a backtest), or None.

    `mem` (bool [P, n]), `steps` and `clock` (float [P]) describe the probes so far;
    `signals` is the forecast's `RowSignals` (with exposures)."""
    if signals.exposures is None or len(steps) == 0 or clock[-1] <= 0:
        return None
    window = np.flatnonzero(clock >= WINDOW * clock[-1])
    window = window[clock[window] > 0]
    if len(window) == 0:
        return None
    x = np.concatenate([_with_clock(signals.state(int(steps[i])), clock[i] / total_clock)
                        for i in window])
    y = mem[window].reshape(-1).astype(np.float64)
    if not 0 < y.sum() < len(y):
        return None
    if np.ptp(clock[window]) == 0:
        x = x[:, :-1]
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    beta = logistic_fit((x - mu) / sd, y, ridge=RIDGE)
    end = _with_clock(signals.state(total_step), 1.0)[:, : x.shape[1]]
    z = np.column_stack([np.ones(len(end)), (end - mu) / sd]) @ beta
    return sigmoid(z)


def _with_clock(state: np.ndarray, share: float) -> np.ndarray:
    return np.column_stack([state, np.full(len(state), np.log(max(share, 1e-6)))])
