"""`MemWatch`: the framework-agnostic monitor every adapter drives.

A plain training loop calls ``mon.step(model, step)`` after ``optimizer.step()``
and ``mon.finish(model, step)`` at the end::

    mon = mw.MemWatch(watchlist, total_steps=10_000, sinks=[mw.ConsoleSink()])
    for step in range(1, 10_001):
        ...; optimizer.step()
        if mon.step(model, step).abort:
            break
    mon.finish(model, step)

The monitor orchestrates and adds no arithmetic of its own: `Schedule` says
when, `probe` measures, `History` remembers, `forecast` extrapolates,
`policy.evaluate` judges, sinks report (on rank 0, never fatally).
``state_dict()`` / ``load_state_dict()`` carry history, schedule and the alerts
already sent through a checkpoint (tensors and plain types only).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from memwatch import distributed
from memwatch.events import Decision, ProbeRecord, newly_memorized, probe_metrics, row_reports
from memwatch.forecast import forecast
from memwatch.history import History
from memwatch.lm import vocab_size
from memwatch.policy import AbortPolicy, Verdict, evaluate
from memwatch.probe import CONT_LEN, PROMPT_LEN, ProbeSpec
from memwatch.schedule import Schedule

STATE_FORMAT = 1


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module that computes logits, out of DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class MemWatch:
    """Probes a model on a watchlist during training; see the module docstring for the loop.

    watchlist: the `Watchlist` to probe (validated against the lengths here, and
        against the model's vocabulary at `check` / the first `step`).
    total_steps: optimizer steps in the run, if known (enables the forecast and
        an exact probe at the last step); adapters fill it in from the framework.
    every_n_steps: probe at every multiple of this step instead of the
        overhead-bounded schedule.
    max_overhead: the share of training wall time the monitor may use.
    mode: ``"extractable"`` (cheap; memorized and match_prefix exact) or ``"exact"``
        (full Pythia scores) for scheduled probes; the final probe is always exact.
    exact_every: make every k-th scheduled probe exact.
    abort: the `AbortPolicy`.
    sinks: `Sink`s that receive records, alerts and the final history (rank 0 only).
    prompt_len, cont_len, with_nll, batch_size: passed to `probe`; with `mode` they
        make the monitor's `spec`, one `ProbeSpec` validated here. The forecast's
        per-row ``trajectory`` estimate (the most accurate one in
        `benchmarks/backtest_forecast.py`) follows each row's NLL: by default the first
        continuation token's, which every probe measures almost free; ``with_nll=True``
        gives it the whole continuation's (a better forecast) at the cost of one
        teacher-forced forward per probe, so the overhead budget affords fewer probes.
    compute: vectorised step -> cumulative compute (e.g. the learning rate summed up
        to each step), the clock the forecast measures progress in; None: steps (which
        forecast better than the summed learning rate in the backtest, where rows recur
        through a cosine-decayed run).
    """

    def __init__(
        self,
        watchlist,
        total_steps: int | None = None,
        every_n_steps: int | None = None,
        max_overhead: float = 0.01,
        mode: str = "extractable",
        exact_every: int | None = None,
        abort: AbortPolicy | None = None,
        sinks: Sequence = (),
        prompt_len: int = PROMPT_LEN,
        cont_len: int = CONT_LEN,
        with_nll: bool = False,
        batch_size: int | None = None,
        compute=None,
    ):
        spec = ProbeSpec(prompt_len, cont_len, mode, bool(with_nll), batch_size)
        if exact_every is not None and (not isinstance(exact_every, int) or exact_every < 1):
            raise ValueError(f"exact_every counts probes: an int >= 1 or None; got {exact_every!r}")
        abort = AbortPolicy() if abort is None else abort
        if not isinstance(abort, AbortPolicy):
            raise TypeError(f"abort must be an AbortPolicy; got {type(abort).__name__}")
        watchlist.validate(spec.prompt_len, spec.cont_len)
        self.watchlist = watchlist
        self.spec = spec
        self.schedule = Schedule(total_steps, every_n_steps, max_overhead)
        self.exact_every, self.policy = exact_every, abort
        self.sinks = list(sinks)
        self.compute = compute
        self.history = History(watchlist.ids, watchlist.tags, cont_len=spec.cont_len)
        self._tags = sorted({t for row in watchlist.tags for t in row})
        self._sent: frozenset[str] = frozenset()
        self._streak = 0
        self._checked_vocab: int | None = None
        self._last_time: float | None = None
        self._last_step: int | None = None
        self._failed_sinks: set[int] = set()
        self._finished = False

    # ---- configuration the adapters complete ------------------------------------------------
    @property
    def total_steps(self) -> int | None:
        return self.schedule.total_steps

    @total_steps.setter
    def total_steps(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"total_steps must be >= 1 or None; got {value}")
        self.schedule.total_steps = None if value is None else int(value)

    def check(self, model: torch.nn.Module) -> None:
        """Raise before training if a watchlist row has a token id outside the model's vocab."""
        vocab = vocab_size(unwrap(model))
        if vocab != self._checked_vocab:
            self.watchlist.validate(self.spec.prompt_len, self.spec.cont_len, vocab)
            if self._checked_vocab is None:
                self._emit("on_start")  # e.g. wandb.init: a one-off, not a probe's cost
            self._checked_vocab = vocab
        self._last_time = time.perf_counter()

    # ---- the training-loop hooks -------------------------------------------------------------
    def step(self, model: torch.nn.Module, step: int) -> Decision:
        """Return the `Decision` at optimizer step `step` (1-based), probing if it is due."""
        now = time.perf_counter()
        if self._last_time is not None and self._last_step is not None:
            self.schedule.observe_training(now - self._last_time, step - self._last_step)
        if self._checked_vocab is None:
            self.check(model)
        self._last_step = step
        done = len(self.history) and step <= self.history.steps[-1]  # resumed before a probe
        if done or not self.schedule.due(step):
            self._last_time = time.perf_counter()
            return Decision(step)
        last = self.total_steps is not None and step >= self.total_steps
        nth = self.exact_every is not None and (self.schedule.probes + 1) % self.exact_every == 0
        exact = last or nth
        decision = self._probe(model, step, "exact" if exact else self.spec.mode)
        self._last_time = time.perf_counter()
        return decision

    def finish(self, model: torch.nn.Module, step: int | None = None) -> Decision:
        """Run the final exact probe at `step` (default: the last step seen) and end the sinks.

        Under torch.distributed every rank must call it: the probe is sharded, and every
        rank returns only once rank 0 has ended its sinks, so that no rank tears down the
        process group (or exits) while rank 0 is still writing the run's summary.
        """
        step = self._last_step if step is None else step
        if self._finished or step is None:
            return Decision(step or 0)
        self._finished = True
        decision = Decision(step)
        if not len(self.history) or step > self.history.steps[-1]:
            decision = self._probe(model, step, "exact")
        t0 = time.perf_counter()
        self._emit("on_end", self.history, self.watchlist)
        self.schedule.observe_other(time.perf_counter() - t0)
        distributed.barrier()
        return decision

    def close(self) -> None:
        """Close every sink (rank 0)."""
        self._emit("close")

    # ---- one probe ---------------------------------------------------------------------------
    def _probe(self, model: torch.nn.Module, step: int, mode: str) -> Decision:
        t0 = time.perf_counter()
        spec = self.spec
        result = distributed.probe_sharded(
            unwrap(model), self.watchlist.tokens, spec.prompt_len, spec.cont_len, mode,
            spec.with_nll, spec.batch_size)
        probe_seconds = time.perf_counter() - t0
        self.history.update(step, result, mode)
        new = newly_memorized(self.history)
        predicted = self._forecast()
        verdict = evaluate(self.policy, self.history, self._sent, self._streak, predicted,
                           self.watchlist.redacted_preview)
        self._sent, self._streak = verdict.sent, verdict.streak
        metrics = probe_metrics(
            self.history, self._tags, predicted, probe_seconds=probe_seconds,
            monitor_seconds=self.schedule.monitor_seconds + time.perf_counter() - t0,
            train_seconds=self.schedule.train_seconds)
        record = ProbeRecord(step, mode, metrics, self.history.scores[-1].copy(),
                             row_reports(self.history, new, self.watchlist.redacted_preview))
        self._emit("on_probe", record)
        for alert in verdict.alerts:
            self._emit("on_alert", alert)
        self.schedule.observe_probe(step, mode, time.perf_counter() - t0, probe_seconds)
        shared = distributed.broadcast_floats([*self.schedule.ledger(), float(verdict.abort)])
        self.schedule.set_ledger(shared[:-1])
        return self._decision(step, new, verdict, bool(shared[-1]), record)

    def _decision(self, step, new, verdict: Verdict, abort: bool, record) -> Decision:
        ids = tuple(self.history.ids[i] for i in np.flatnonzero(new))
        return Decision(step, True, ids, verdict.alerts, abort, verdict.reason, record)

    def _forecast(self):
        """The point forecast of the final memorized counts, when the run length is known.

        No bootstrap bands and no risk ranking: with them a forecast costs seconds per
        probe on 1000 rows, without them milliseconds (`memwatch analyze` draws the bands).
        """
        if self.total_steps is None:
            return None
        try:
            return forecast(self.history, self.total_steps, n_boot=0, with_risk=False,
                            compute=self.compute)
        except (ValueError, np.linalg.LinAlgError):  # too few probes to fit yet
            return None

    def _emit(self, method: str, *args) -> None:
        """Call `method` on every sink, on rank 0; a failing sink warns once and is skipped."""
        if distributed.rank_world()[0] != 0:
            return
        for sink in self.sinks:
            try:
                with torch.random.fork_rng(devices=[]):  # a sink must not shift training's RNG
                    getattr(sink, method)(*args)
            except Exception as err:  # noqa: BLE001 - a sink must never stop training
                if id(sink) not in self._failed_sinks:
                    self._failed_sinks.add(id(sink))
                    warnings.warn(f"memwatch sink {type(sink).__name__}.{method} failed "
                                  f"({type(err).__name__}: {err}); training goes on",
                                  RuntimeWarning, stacklevel=3)

    # ---- persistence: tensors and plain types, loadable with torch.load(weights_only=True) ---
    def state_dict(self) -> dict:
        """The monitor's state: history, schedule ledger, alerts already sent."""
        return {
            "format": STATE_FORMAT,
            "history": self.history.state_dict(),
            "schedule": self.schedule.state_dict(),
            "alerts_sent": sorted(self._sent),
            "streak": self._streak,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`: probes extend its history; alerts are not resent."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"monitor state has format {state.get('format')!r}; this memwatch "
                             f"reads format {STATE_FORMAT}")
        self.history.load_state_dict(state["history"])
        self.schedule.load_state_dict(state["schedule"])
        self._sent = frozenset(state["alerts_sent"])
        self._streak = int(state["streak"])
        self._last_time = self._last_step = None
        self._finished = False
