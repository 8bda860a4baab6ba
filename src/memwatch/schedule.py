"""When to probe: log-spaced early, regular later, within a share of training wall time.

Pure bookkeeping: the monitor measures seconds and passes them in. The schedule
keeps a ledger of training seconds and monitor seconds and, after each probe,
plans the step of the next one so that the monitor's total stays within
``max_overhead`` of training time (the first probe, which measures the cost,
is the one exception: it is left out of the ledger). Early probes fall on powers
of two when the budget allows them (a log-spaced grid is what a scaling fit in
log-step needs); later ones are evenly spaced, at most about
`MAX_REGULAR_PROBES` over a run of known length. ``every_n_steps`` replaces all
of this with a fixed cadence.

Planning happens only at probe steps, from numbers that rank 0 broadcasts, so
every distributed rank agrees on when to probe without talking in between.
"""

from __future__ import annotations

import math
import numbers

MAX_REGULAR_PROBES = 200
# Exact probes decode every diverged row to the end; until one is measured, assume it costs
# this many extractable probes (a vocabulary projection per decoded token instead of one).
EXACT_COST_GUESS = 4.0
_EMA = 0.5
_LEDGER = ("train_seconds", "monitor_seconds", "seconds_per_step", "cost_extractable",
           "cost_exact", "next_step", "probes")


class Schedule:
    """Decides, step by step, whether the monitor probes (``due``); re-plans after each probe."""

    def __init__(self, total_steps: int | None = None, every_n_steps: int | None = None,
                 max_overhead: float = 0.01, exact_every: int | None = None):
        for name, value, unit in (("total_steps", total_steps, "optimizer steps"),
                                  ("every_n_steps", every_n_steps, "optimizer steps"),
                                  ("exact_every", exact_every, "probes")):
            _check_count(name, value, unit)
        if not 0 < max_overhead < 1:
            raise ValueError(f"max_overhead is a share of training time in (0, 1); got "
                             f"{max_overhead}")
        self._total_steps = None if total_steps is None else int(total_steps)
        self.every_n_steps = every_n_steps
        self.max_overhead = float(max_overhead)
        self.exact_every = exact_every
        self.train_seconds = 0.0
        self.monitor_seconds = 0.0
        self.seconds_per_step = math.nan
        self.cost = {"extractable": math.nan, "exact": math.nan}
        self.probes = 0
        # The first probe waits for the second step so that one training step has been timed.
        self.next_step = every_n_steps or 2

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps in the run, when known (adapters fill it in from the framework)."""
        return self._total_steps

    @total_steps.setter
    def total_steps(self, value: int | None) -> None:
        _check_count("total_steps", value, "optimizer steps")
        self._total_steps = None if value is None else int(value)

    def mode(self, step: int, scheduled: str) -> str:
        """The mode of a probe due at `step`: ``"exact"`` at the run's last step and at every
        `exact_every`-th probe, else the `scheduled` mode."""
        last = self.total_steps is not None and step >= self.total_steps
        nth = self.exact_every is not None and (self.probes + 1) % self.exact_every == 0
        return "exact" if last or nth else scheduled

    def back_off(self, step: int) -> None:
        """After a probe at `step` failed: try again later, further off after each failure
        (the fixed cadence of ``every_n_steps`` simply goes on)."""
        if not self.every_n_steps:
            self.next_step = max(self.next_step, step + max(1, step // 2))

    def due(self, step: int) -> bool:
        """True when the monitor should probe at training `step`."""
        if self.every_n_steps:
            return step % self.every_n_steps == 0
        return step >= self.next_step

    def observe_training(self, seconds: float, steps: int) -> None:
        """Count `seconds` of training spent on `steps` optimizer steps."""
        if steps <= 0 or seconds < 0:
            return
        self.train_seconds += seconds
        rate = seconds / steps
        old = self.seconds_per_step
        self.seconds_per_step = rate if math.isnan(old) else _EMA * old + (1 - _EMA) * rate

    def observe_probe(self, step: int, mode: str, seconds: float,
                      compute_seconds: float | None = None) -> None:
        """Count a probe at `step` that took `seconds` in `mode`, and plan the next one.

        The first probe calibrates: it is left out of the ledger, and its cost estimate is
        its `compute_seconds` (the probe alone), since its sinks pay one-off set-up costs.
        """
        if self.probes == 0:
            seconds = seconds if compute_seconds is None else compute_seconds
        else:
            self.monitor_seconds += seconds
        old = self.cost[mode]
        self.cost[mode] = seconds if math.isnan(old) else _EMA * old + (1 - _EMA) * seconds
        self.probes += 1
        self.next_step = self.plan(step)

    def observe_other(self, seconds: float) -> None:
        """Count monitor time that was not a probe (the final probe, sinks at the end)."""
        self.monitor_seconds += seconds

    def plan(self, step: int) -> int:
        """The step of the next probe after one at `step`, given the ledger so far."""
        if self.every_n_steps:
            return (step // self.every_n_steps + 1) * self.every_n_steps
        rate = self.seconds_per_step
        if math.isnan(rate) or rate <= 0:
            return step + 1  # no step timed yet: probe again once one is
        cost = self.cost["extractable"]
        if math.isnan(cost):
            cost = self.cost["exact"] / EXACT_COST_GUESS
        reserve = 0.0
        if self.total_steps is not None:
            # The final exact probe is paid from the same budget, saved up as the run goes
            # (all of it by the last step), so that it does not delay the early probes.
            reserve = self.cost["exact"]
            reserve = EXACT_COST_GUESS * cost if math.isnan(reserve) else reserve
            reserve *= min(1.0, step / self.total_steps)
        owed = self.monitor_seconds + cost + reserve - self.max_overhead * self.train_seconds
        budget_gap = max(1, math.ceil(owed / (self.max_overhead * rate)))
        # Regular cadence: about MAX_REGULAR_PROBES over a run of known length; otherwise a gap
        # of 2 % of the steps so far, so history grows with log(steps), not steps.
        cadence = self.total_steps // MAX_REGULAR_PROBES if self.total_steps else step // 50
        cadence = max(1, cadence)
        # Before the cadence is reached, powers of two give the early, log-spaced probes.
        regular = step + cadence
        nxt = min(regular, 1 << step.bit_length()) if step < cadence else regular
        return max(step + budget_gap, nxt)

    # ---- persistence (plain types only) ---------------------------------------------------
    def ledger(self) -> list[float]:
        """The schedule's measured state as floats, in `_LEDGER` order (for broadcasting)."""
        return [self.train_seconds, self.monitor_seconds, self.seconds_per_step,
                self.cost["extractable"], self.cost["exact"], float(self.next_step),
                float(self.probes)]

    def set_ledger(self, values: list[float]) -> None:
        """Adopt a `ledger()` (rank 0's, so that every rank plans the same steps)."""
        t, m, r, ce, cx, nxt, probes = (float(v) for v in values)
        self.train_seconds, self.monitor_seconds, self.seconds_per_step = t, m, r
        self.cost = {"extractable": ce, "exact": cx}
        self.next_step, self.probes = int(nxt), int(probes)

    def state_dict(self) -> dict:
        return dict(zip(_LEDGER, self.ledger(), strict=True))

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in _LEDGER if k not in state]
        if missing:
            raise ValueError(f"schedule state lacks {missing}; it has {sorted(state)}")
        self.set_ledger([state[k] for k in _LEDGER])


def _check_count(name: str, value, unit: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or value < 1):
        raise ValueError(f"{name} counts {unit}: an int >= 1 or None; got {value!r}")
