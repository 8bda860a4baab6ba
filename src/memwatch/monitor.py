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

When the policy flags rows for masking (``AbortPolicy(actions={"pii:*": "mask"})``),
the loop also routes its labels through the monitor before the forward pass::

    labels = mon.mask(input_ids, labels)   # flagged rows' continuations -> -100
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from memwatch import distributed
from memwatch.events import Decision, ProbeRecord, RowReport
from memwatch.history import History
from memwatch.lm import vocab_size
from memwatch.masking import FlaggedWindows, MaskSpec
from memwatch.policy import AbortPolicy, Verdict, evaluate
from memwatch.probe import MODES
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
    prompt_len, cont_len, with_nll, batch_size: passed to `probe`. The forecast's
        per-row ``trajectory`` estimate (the most accurate one in
        `benchmarks/backtest_forecast.py`) follows each row's NLL: by default the first
        continuation token's, which every probe measures almost free; ``with_nll=True``
        gives it the whole continuation's (a better forecast) at the cost of one
        teacher-forced forward per probe, so the overhead budget affords fewer probes.
    compute: vectorised step -> cumulative compute (e.g. the learning rate summed up
        to each step), the clock the forecast measures progress in; None: steps (which
        forecast better than the summed learning rate in the backtest, where rows recur
        through a cosine-decayed run).
    mask_spec: how `mask` finds and masks flagged rows (`memwatch.masking.MaskSpec`);
        None: windows of min(16, cont_len) tokens, every continuation token masked.
        Rows are flagged only by an `AbortPolicy` with a ``"mask"`` action.
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
        prompt_len: int = 32,
        cont_len: int = 32,
        with_nll: bool = False,
        batch_size: int | None = None,
        compute=None,
        mask_spec: MaskSpec | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if exact_every is not None and (not isinstance(exact_every, int) or exact_every < 1):
            raise ValueError(f"exact_every counts probes: an int >= 1 or None; got {exact_every!r}")
        abort = AbortPolicy() if abort is None else abort
        if not isinstance(abort, AbortPolicy):
            raise TypeError(f"abort must be an AbortPolicy; got {type(abort).__name__}")
        watchlist.validate(prompt_len, cont_len)
        self.watchlist = watchlist
        self.schedule = Schedule(total_steps, every_n_steps, max_overhead)
        self.mode, self.exact_every, self.policy = mode, exact_every, abort
        self.sinks = list(sinks)
        self.prompt_len, self.cont_len = int(prompt_len), int(cont_len)
        self.with_nll, self.batch_size = bool(with_nll), batch_size
        self.compute = compute
        self.mask_spec = MaskSpec(window=min(16, self.cont_len)) if mask_spec is None else mask_spec
        if not isinstance(self.mask_spec, MaskSpec):
            raise TypeError(f"mask_spec must be a MaskSpec; got {type(mask_spec).__name__}")
        if self.mask_spec.window > self.cont_len:
            raise ValueError(f"MaskSpec.window={self.mask_spec.window} is longer than the "
                             f"continuation (cont_len={self.cont_len}); use window <= "
                             f"{self.cont_len}")
        self._flagged: tuple[int, ...] = ()
        self._flagged_ids: tuple[str, ...] = ()
        self._windows: FlaggedWindows | None = None
        self.history = History(watchlist.ids, watchlist.tags, cont_len=self.cont_len)
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
            self.watchlist.validate(self.prompt_len, self.cont_len, vocab)
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
        decision = self._probe(model, step, "exact" if exact else self.mode)
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
        result = distributed.probe_sharded(
            unwrap(model), self.watchlist.tokens, self.prompt_len, self.cont_len, mode,
            self.with_nll, self.batch_size)
        probe_seconds = time.perf_counter() - t0
        before = self.history.memorized.any(axis=0) if len(self.history) else None
        self.history.update(step, result, mode)
        new = self.history.memorized[-1] if before is None else self.history.memorized[-1] & ~before
        forecast = self._forecast()
        verdict = evaluate(self.policy, self.history, self._sent, self._streak, forecast,
                           self.watchlist.redacted_preview)
        self._sent, self._streak = verdict.sent, verdict.streak
        if self.policy.masks:  # every rank masks with rank 0's flagged rows
            self._flag(distributed.broadcast_ints(sorted({*self._flagged, *verdict.mask})))
        seconds = time.perf_counter() - t0
        record = ProbeRecord(step, mode, self._metrics(probe_seconds, seconds, forecast),
                             self.history.scores[-1].copy(), self._reports(new, step))
        self._emit("on_probe", record)
        for alert in verdict.alerts:
            self._emit("on_alert", alert)
        self.schedule.observe_probe(step, mode, time.perf_counter() - t0, probe_seconds)
        shared = distributed.broadcast_floats([*self.schedule.ledger(), float(verdict.abort)])
        self.schedule.set_ledger(shared[:-1])
        return self._decision(step, new, verdict, bool(shared[-1]), record)

    # ---- masking flagged rows out of the loss ------------------------------------------------
    @property
    def flagged(self) -> tuple[str, ...]:
        """Ids of the rows `mask` takes out of the loss, in watchlist order (the same tuple
        object until the set changes)."""
        return self._flagged_ids

    def mask(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The labels to train on: `labels` (default `input_ids`) with every occurrence of a
        flagged row's continuation set to the ignore index (see `memwatch.masking`).

        Runs on the batch's device. With no row flagged it returns `labels` (or
        `input_ids`) itself, untouched; it never writes into its arguments.
        """
        if self._windows is None:
            return input_ids if labels is None else labels
        return self._windows.apply(input_ids, labels)

    def _flag(self, rows) -> None:
        rows = tuple(sorted(int(i) for i in rows))
        if rows == self._flagged:
            return
        self._flagged = rows
        self._flagged_ids = tuple(self.watchlist.ids[i] for i in rows)
        start = self.prompt_len
        cont = self.watchlist.tokens[list(rows), start:start + self.cont_len]
        self._windows = FlaggedWindows(cont, self.mask_spec) if rows else None

    def _decision(self, step, new, verdict: Verdict, abort: bool, record) -> Decision:
        ids = tuple(self.history.ids[i] for i in np.flatnonzero(new))
        return Decision(step, True, ids, verdict.alerts, abort, verdict.reason, record)

    def _reports(self, new: np.ndarray, step: int) -> tuple[RowReport, ...]:
        h = self.history
        return tuple(
            RowReport(h.ids[i], h.tags[i], step, float(h.scores[-1, i]),
                      int(h.match_prefix[-1, i]), self.watchlist.redacted_preview(int(i)))
            for i in np.flatnonzero(new))

    def _metrics(self, probe_seconds: float, seconds: float, forecast) -> dict[str, float]:
        h, sched = self.history, self.schedule
        mem = h.memorized[-1]
        train = sched.train_seconds
        metrics = {
            "memorized_count": float(mem.sum()),
            "memorized_fraction": float(mem.mean()),
            "mean_score": float(h.scores[-1].mean()),
            "mean_match_prefix": float(h.match_prefix[-1].mean()),
            "probe_seconds": probe_seconds,
            "overhead": (sched.monitor_seconds + seconds) / train if train else float("nan"),
        }
        for tag in self._tags:
            rows = h.tag_mask(tag)
            metrics[f"memorized_count/{tag}"] = float(mem[rows].sum())
            metrics[f"memorized_fraction/{tag}"] = float(mem[rows].mean())
        overall = None if forecast is None else forecast.tags.get("*")
        if overall is not None:
            for name in ("expected_final_memorized", "recall_now", "precision_now"):
                metrics[f"forecast/{name}"] = float(getattr(overall, name))
        return metrics

    def _forecast(self):
        """The point forecast of the final memorized counts, when the run length is known.

        No bootstrap bands: with them a forecast costs seconds per probe on 1000 rows,
        without them milliseconds (`memwatch analyze` draws the bands). The risk ranking
        (fitted either way) is attached when the policy masks rows at risk.
        """
        if self.total_steps is None:
            return None
        try:
            from memwatch.forecast import forecast
        except ImportError:
            return None
        try:
            return forecast(self.history, self.total_steps, n_boot=0,
                            with_risk=self.policy.mask_risk is not None, compute=self.compute)
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
            "flagged": list(self.flagged),
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
        index = {row_id: i for i, row_id in enumerate(self.watchlist.ids)}
        unknown = [row_id for row_id in state.get("flagged", ()) if row_id not in index]
        if unknown:
            raise ValueError(f"monitor state flags rows {unknown[:5]} for masking that this "
                             "watchlist does not have; load it with the run's watchlist")
        self._flag(index[row_id] for row_id in state.get("flagged", ()))
        self._last_time = self._last_step = None
        self._finished = False
