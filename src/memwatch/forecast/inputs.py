"""What `forecast` is told, checked once: `ForecastInputs`, and when each row is trained on.

Every check of the forecast's inputs lives here, so a bad input fails with one message
that names the input and the fix, before any arithmetic runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from memwatch.forecast.ratio import checked_prior

__all__ = ["Exposures", "ForecastInputs", "checked_clock", "checked_duplicates",
           "checked_first_seen", "learning_rates"]


@dataclass(frozen=True)
class Exposures:
    """When each watchlist row is trained on: one (row, step) pair per copy trained on.

    rows, steps: int64 [E]: the row index (into the watchlist) and the optimizer step of
        every copy.
    num_rows: rows of the watchlist.
    complete: True when the pairs cover the whole run, future steps included (rows
        planted at known steps; Pythia's fixed order, where row i is trained at step
        ``i // 1024``); False when they are only those recorded so far (`MemWatch.seen`):
        the forecast then reads no exposure ahead of the latest probe.
    """

    rows: np.ndarray = field(compare=False)
    steps: np.ndarray = field(compare=False)
    num_rows: int
    complete: bool = True

    def __post_init__(self) -> None:
        rows = np.asarray(self.rows, np.int64).ravel()
        steps = np.asarray(self.steps, np.int64).ravel()
        if rows.shape != steps.shape:
            raise ValueError(f"Exposures needs one step per row index; got {rows.size} rows "
                             f"and {steps.size} steps")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise ValueError(f"Exposures row indices must be in [0, {self.num_rows}); got "
                             f"{rows.min()}..{rows.max()}")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "steps", steps)

    @classmethod
    def from_first_seen(cls, first_seen, total_steps: int | None = None) -> Exposures:
        """Each row trained on once, at its `first_seen` step (inf or past `total_steps`:
        never), as in Pythia's single epoch; complete."""
        first = np.asarray(first_seen, np.float64).ravel()
        last = np.inf if total_steps is None else total_steps
        ok = np.isfinite(first) & (first <= last)
        return cls(np.flatnonzero(ok), first[ok].astype(np.int64), len(first), True)

    def counts(self, step) -> np.ndarray:
        """int64 [n]: copies of each row trained on at or before `step`."""
        return np.bincount(self.rows[self.steps <= step], minlength=self.num_rows)

    def first_seen(self) -> np.ndarray:
        """float64 [n]: each row's first step (inf: never)."""
        out = np.full(self.num_rows, np.inf)
        np.minimum.at(out, self.rows, self.steps.astype(np.float64))
        return out

    def last_seen(self, step) -> np.ndarray:
        """float64 [n]: each row's last step at or before `step` (NaN: not yet seen)."""
        out = np.full(self.num_rows, -np.inf)
        sel = self.steps <= step
        np.maximum.at(out, self.rows[sel], self.steps[sel].astype(np.float64))
        return np.where(np.isfinite(out), out, np.nan)

    def rate_sums(self, step, rate: np.ndarray) -> np.ndarray:
        """float64 [n]: Σ rate[s] over each row's copies at or before `step` (`rate`
        indexed by step)."""
        sel = self.steps <= step
        s = np.clip(self.steps[sel], 0, len(rate) - 1)
        return np.bincount(self.rows[sel], weights=rate[s], minlength=self.num_rows)


def checked_duplicates(duplicates, n: int) -> np.ndarray | None:
    """float64 [n] duplicate counts (or None), checked finite and >= 0."""
    if duplicates is None:
        return None
    dups = np.asarray(duplicates, np.float64).ravel()
    if dups.shape != (n,) or (dups < 0).any() or not np.isfinite(dups).all():
        raise ValueError(f"duplicates must be {n} finite counts >= 0; got shape {dups.shape}")
    return dups


def checked_clock(compute, steps: np.ndarray, total_steps: int) -> tuple[np.ndarray, float]:
    """(clock of every probe, clock at total_steps): compute(...) checked cumulative."""
    at = np.append(steps, total_steps)
    values = np.asarray(compute(at), np.float64)
    if values.shape != at.shape or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(
            "compute(steps) must return one finite value >= 0 per step (cumulative compute, "
            f"e.g. the summed learning rate); got {values!r} for steps {at!r}"
        )
    if (np.diff(values) < 0).any() or values[-1] <= 0:
        raise ValueError("compute must be cumulative: non-decreasing in the step, and > 0 "
                         f"at total_steps; got {values!r} for steps {at!r}")
    return values[:-1], float(values[-1])


def checked_first_seen(first_seen, n: int) -> np.ndarray:
    """float64 [n]: each row's first-seen step, checked (a number per row, not NaN)."""
    steps = np.asarray(first_seen, np.float64).ravel()
    if steps.shape != (n,) or np.isnan(steps).any():
        raise ValueError(f"first_seen must give one step per row ({n} rows, inf for rows "
                         f"never seen); got shape {steps.shape}")
    return steps


def learning_rates(learning_rate, total_steps: int) -> np.ndarray | None:
    """float64 [total_steps + 1]: learning_rate(0..total_steps), checked finite and >= 0
    (None without a learning rate)."""
    if learning_rate is None:
        return None
    steps = np.arange(int(total_steps) + 1)
    rates = np.asarray(learning_rate(steps), np.float64)
    if rates.shape != steps.shape or not np.isfinite(rates).all() or (rates < 0).any():
        raise ValueError("learning_rate(steps) must return one finite value >= 0 per step; got "
                         f"shape {rates.shape} for {len(steps)} steps")
    return rates


@dataclass(frozen=True)
class ForecastInputs:
    """Everything `forecast` is told, checked at construction.

    history: the run's `History` (or anything with its attributes).
    total_steps: the step training will end at (>= the latest probe's step).
    Rows (each optional, one value per watchlist row):
        duplicates: copies of the row in the whole training data (the risk model's
            feature; with `exposures` incomplete, the copies still to come are
            ``duplicates - seen so far``).
        first_seen: the step training first sees the row (inf: never); with it the ratio
            method's recall is the paper's (over rows already seen). Derived from
            `exposures` when not given. For `Watchlist.from_pythia`: ``index // 1024``.
        exposures: `Exposures`, every (row, step) trained on (planting, Pythia's order,
            or `MemWatch.seen`): the exposure signals (count, first / last seen, the
            learning rate at each copy).
    Schedule (each optional, vectorised step -> value):
        compute: cumulative compute, the clock every ratio is measured in (None: steps).
        learning_rate: the learning rate (any unit): flags a decay ahead
            (`FinalCount.decay_ahead`) and weighs each exposure by the rate it was
            trained at.
    Settings:
        prior: (compute fraction, precision, recall) rows; None: `PYTHIA_PRIOR`.
        level: interval coverage; n_boot: bootstrap replicates over rows (0: none);
        max_probes: probes used for the pairwise fits; with_risk: attach
        ``Forecast.risk``; seed: the bootstrap's seed.
    """

    history: object
    total_steps: int
    duplicates: Sequence[float] | np.ndarray | None = field(default=None, compare=False)
    first_seen: Sequence[float] | np.ndarray | None = field(default=None, compare=False)
    exposures: Exposures | None = field(default=None, compare=False)
    compute: Callable | None = field(default=None, compare=False)
    learning_rate: Callable | None = field(default=None, compare=False)
    prior: Sequence[Sequence[float]] | None = field(default=None, compare=False)
    level: float = 0.9
    n_boot: int = 100
    max_probes: int = 32
    with_risk: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        steps = np.asarray(self.history.steps, np.int64)
        n = self.history.num_rows
        if int(self.total_steps) <= 0 or (len(steps) and self.total_steps < steps[-1]):
            last = int(steps[-1]) if len(steps) else 0
            raise ValueError(f"total_steps={self.total_steps} must be positive and >= the "
                             f"latest probe step {last}")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1); got {self.level}")
        if self.n_boot < 0 or self.max_probes < 2:
            raise ValueError(f"need n_boot >= 0 and max_probes >= 2; got {self.n_boot}, "
                             f"{self.max_probes}")
        checked_prior(self.prior)
        checked_duplicates(self.duplicates, n)
        if self.first_seen is not None:
            checked_first_seen(self.first_seen, n)
        if self.exposures is not None:
            if not isinstance(self.exposures, Exposures):
                raise TypeError("exposures must be a memwatch.forecast.Exposures; got "
                                f"{type(self.exposures).__name__}")
            if self.exposures.num_rows != n:
                raise ValueError(f"exposures cover {self.exposures.num_rows} rows; the "
                                 f"history has {n}")
        if self.compute is not None:
            checked_clock(self.compute, steps, int(self.total_steps))
        learning_rates(self.learning_rate, int(self.total_steps))
