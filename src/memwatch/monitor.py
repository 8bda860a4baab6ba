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

import logging
import time
import warnings
from collections.abc import MutableMapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from memwatch import distributed
from memwatch.audit import audit_rows
from memwatch.events import (
    Alert,
    Decision,
    ProbeRecord,
    newly_memorized,
    probe_metrics,
    row_reports,
)
from memwatch.forecast import ForecastInputs, forecast
from memwatch.forecast.signals import ExposureLog
from memwatch.history import History
from memwatch.lm import device_of, eos_ids, vocab_size
from memwatch.masking import FlaggedWindows, MaskSpec
from memwatch.policy import AbortPolicy, Verdict, evaluate
from memwatch.probe import BatchSize, ProbeSpec
from memwatch.prompt_groups import check_prompt_lens, probe_rows
from memwatch.resume import compare_resumed, resume_sample
from memwatch.schedule import Schedule
from memwatch.sinks.fanout import Fanout
from memwatch.watchlist import Watchlist
from memwatch.watchlist.tags import tag_set
from memwatch.watchlist.tokenizer import check_same as check_tokenizer

STATE_FORMAT = 1
PROBE_FAILURE = ("warn", "raise")
FAILING_PROBES = 3  # failures in a row, for one reason, that make the monitor say so loudly
logger = logging.getLogger("memwatch")


class ProbeError(RuntimeError):
    """A probe failed under ``MemWatch(on_probe_failure="raise")``."""


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

    The parameters come in groups:

    - what: ``watchlist``, the `Watchlist` to probe (validated against the probe's
      lengths here, and against the model's vocabulary at `check` / the first `step`).
    - when (the `Schedule`): ``total_steps``, optimizer steps in the run if known (enables
      the forecast and an exact probe at the last step; adapters fill it in);
      ``every_n_steps``, a fixed cadence instead of the overhead-bounded schedule;
      ``max_overhead``, the share of training wall time the monitor may use;
      ``exact_every``, make every k-th scheduled probe exact.
    - acting: ``abort``, the `AbortPolicy` (alerts, masking, stopping); ``sinks``, the
      `Sink`s that receive records, alerts and the final history (rank 0 only);
      ``mask_spec``, how `mask` finds and masks flagged rows (`memwatch.masking.MaskSpec`;
      None: windows of min(16, cont_len) tokens, every continuation token masked);
      ``on_probe_failure``, ``"warn"`` (default: a failed probe warns once and is retried
      later; one failing FAILING_PROBES = 3 times in a row for the same reason logs an
      error and sends an ERROR ``probe_failing`` alert) or ``"raise"`` (the first failed
      probe raises `ProbeError` on every rank, for runs that must not train unmonitored).
    - how to probe: ``probe``, one `ProbeSpec` (default ``ProbeSpec(mode="extractable")``:
      memorized and match_prefix exact, cheap; the final probe is always exact). The
      forecast's per-row ``trajectory`` estimate follows each row's NLL: by default the
      first continuation token's, which every probe measures almost free;
      ``with_nll=True`` gives it the whole continuation's (a better forecast in
      `benchmarks/backtest_forecast.py`) at the cost of one teacher-forced forward per
      probe, so the overhead budget affords fewer probes.
    - what the forecast knows of the run: ``clock``, vectorised step -> cumulative
      compute (e.g. the summed learning rate), the clock the forecast measures progress
      in (None: steps, which forecast better in the backtest; named ``compute`` before,
      which also meant a metric's compute step and the FLOPs of `memwatch analyze`);
      ``first_seen``, per row the step at which training first sees it (inf: never), for
      the recall over rows already seen (`TagForecast.recall_seen`; ``index // 1024``
      for `Watchlist.from_pythia` rows in Pythia's order); ``learning_rate``, vectorised
      step -> learning rate, so the forecast flags a decay ahead
      (`TagForecast.decay_ahead`) and widens its interval.

    The probe's settings given loose (``mode``, ``prompt_len``, ``cont_len``,
    ``with_nll``, ``batch_size``) and ``compute=`` (now ``clock=``) still work, with a
    DeprecationWarning, for one release.
    """

    def __init__(
        self,
        watchlist: Watchlist,
        total_steps: int | None = None,  # when: the Schedule's settings
        every_n_steps: int | None = None,
        max_overhead: float = 0.01,
        abort: AbortPolicy | None = None,  # acting: the policy and where it reports
        sinks: Sequence = (),
        *,
        probe: ProbeSpec | None = None,  # how to probe
        exact_every: int | None = None,
        clock=None,  # what the forecast knows of the run
        first_seen=None,
        learning_rate=None,
        mask_spec: MaskSpec | None = None,
        on_probe_failure: str = "warn",
        **retired,
    ):
        if not isinstance(watchlist, Watchlist):
            raise TypeError(f"MemWatch needs a Watchlist; got a {type(watchlist).__name__}: wrap "
                            "token rows with memwatch.Watchlist.from_tokens(rows)")
        clock_name = "compute" if "compute" in retired else "clock"  # as the caller named it
        clock = _retired_clock(clock, retired)
        spec = _probe_spec(probe, retired)
        _check_clock(clock, clock_name)
        _check_clock(learning_rate, "learning_rate")
        if first_seen is not None:
            first_seen = np.asarray(first_seen, dtype=np.float64)
            if first_seen.shape != (len(watchlist),):
                raise ValueError(f"first_seen gives each watchlist row's first training step: "
                                 f"{len(watchlist)} values; got shape {first_seen.shape}")
        abort = AbortPolicy() if abort is None else abort
        if not isinstance(abort, AbortPolicy):
            raise TypeError(f"abort must be an AbortPolicy; got {type(abort).__name__}")
        if on_probe_failure not in PROBE_FAILURE:
            raise ValueError(f"on_probe_failure must be one of {PROBE_FAILURE}; got "
                             f"{on_probe_failure!r}")
        watchlist.validate(spec.context_len, spec.cont_len)
        check_prompt_lens(watchlist.ids, watchlist.prompt_lens, spec)
        abort.check(watchlist.tags)  # a key naming no row would never act
        _check_audit(watchlist, abort, spec)
        self.watchlist = watchlist
        self.spec = spec
        self._batch_size = BatchSize(spec.batch_size)  # remembers a size that ran out of memory
        self.schedule = Schedule(total_steps, every_n_steps, max_overhead, exact_every)
        self.policy = abort
        self._fanout = Fanout(sinks)
        self.sinks = self._fanout.sinks
        self.on_probe_failure = on_probe_failure
        self.clock, self.first_seen, self.learning_rate = clock, first_seen, learning_rate
        self.mask_spec = MaskSpec(window=min(16, spec.cont_len)) if mask_spec is None else mask_spec
        if not isinstance(self.mask_spec, MaskSpec):
            raise TypeError(f"mask_spec must be a MaskSpec; got {type(mask_spec).__name__}")
        if self.mask_spec.window > spec.cont_len:
            raise ValueError(f"MaskSpec.window={self.mask_spec.window} is longer than the "
                             f"continuation (cont_len={spec.cont_len}); use window <= "
                             f"{spec.cont_len}")
        self._flagged: tuple[int, ...] = ()
        self._flagged_ids: tuple[str, ...] = ()
        self._windows: FlaggedWindows | None = None
        self.history = History(watchlist.ids, watchlist.tags, cont_len=spec.cont_len,
                               span_tokens=watchlist.span_tokens, prompt_lens=spec.prompt_lens)
        self.exposure_log = ExposureLog(len(watchlist))
        self._tags = tag_set(watchlist.tags)
        self._sent: frozenset[str] = frozenset()
        self._streak = 0
        self._checked_vocab: int | None = None
        self._last_time: float | None = None
        self._last_step: int | None = None
        self._probe_failures = 0
        self._failing: tuple[str, int] = ("", 0)  # the last failure's reason, times in a row
        self._warned: set[str] = set()  # one-off warnings already given
        self._sync_ranks = True  # compare state across ranks at the next step
        self._resumed = False  # re-probe a sample at the next step (memwatch.resume)
        self._finished = self._closed = False

    # ---- configuration the adapters complete ------------------------------------------------
    @property
    def total_steps(self) -> int | None:
        return self.schedule.total_steps

    @total_steps.setter
    def total_steps(self, value: int | None) -> None:
        self.schedule.total_steps = value

    def check(self, model: torch.nn.Module, tokenizer=None) -> None:
        """Raise before training if this run would go unmonitored or be counted wrong.

        The model's parameters are on the meta device; its vocabulary is unknown; a
        watchlist row has a token id outside it; an EOS id of the model lies outside it
        (every probe would fail); `tokenizer` (the model's, when known: the adapters
        pass the Trainer's) is not the one the watchlist was built with; or a part of
        the policy needs the run's length and `total_steps` is unknown. Adapters call it
        at setup; a plain loop's first `step` calls it.
        """
        _check_model(model, "check")
        self.policy.check(self.watchlist.tags, self.total_steps, run_length=True)
        check_tokenizer(self.watchlist.tokenizer, tokenizer)
        inner = unwrap(model)
        if device_of(inner).type == "meta":
            raise ValueError(f"{type(inner).__name__} has its parameters on the meta device (not "
                             "materialised): attach memwatch once the weights are loaded")
        vocab = vocab_size(inner)
        if vocab is None:
            raise ValueError(
                f"memwatch cannot tell the vocabulary size of {type(inner).__name__}, so it "
                "cannot check the watchlist's token ids: give the model a config.vocab_size "
                "or a get_output_embeddings() (transformers models have both)")
        if vocab != self._checked_vocab:
            self.watchlist.validate(self.spec.context_len, self.spec.cont_len, vocab)
            outside = [i for i in eos_ids(inner) if not 0 <= i < vocab]
            if outside:
                raise ValueError(
                    f"{type(inner).__name__}'s EOS id {outside[0]} (generation_config / "
                    f"config.eos_token_id) lies outside its vocabulary of {vocab} ids, so every "
                    "probe would fail: set model.generation_config.eos_token_id and "
                    "model.config.eos_token_id to the tokenizer's eos_token_id")
            if self._checked_vocab is None:
                self._emit("on_start")  # e.g. wandb.init: a one-off, not a probe's cost
            self._checked_vocab = vocab
        self._last_time = time.perf_counter()

    # ---- the training-loop hooks -------------------------------------------------------------
    def step(self, model: torch.nn.Module, step: int) -> Decision:
        """Return the `Decision` at optimizer step `step` (1-based), probing if it is due."""
        _check_model(model, "step")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"MemWatch.step(model, step): step is the optimizer step, an int; "
                            f"got {step!r}")
        now = time.perf_counter()
        if self._last_time is not None and self._last_step is not None:
            self.schedule.observe_training(now - self._last_time, step - self._last_step)
        if self._checked_vocab is None:
            self.check(model)
        if self._sync_ranks:
            self._sync_ranks = False
            self._check_ranks_agree(step)
        resume_alerts = self._check_resume(model, step) if self._resumed else ()
        if self._last_step is not None and step < self._last_step:
            self._warn_once("backwards", (
                f"memwatch got step {step} after step {self._last_step} without a "
                "load_state_dict to explain it: the step counter went back (an epoch-local batch "
                "index? a second fit with the same monitor?). memwatch probes no step at or "
                f"below {self.history.steps[-1] if len(self.history) else self._last_step} "
                "again; pass a global optimizer step, and give each run its own MemWatch"))
        self._last_step = step
        done = len(self.history) and step <= self.history.steps[-1]  # resumed before a probe
        if done or not self.schedule.due(step):
            self._last_time = time.perf_counter()
            return Decision(step, alerts=resume_alerts)
        decision = self._probe(model, step, self.schedule.mode(step, self.spec.mode))
        self._last_time = time.perf_counter()
        return replace(decision, alerts=(*resume_alerts, *decision.alerts))

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
        self.close()
        self.schedule.observe_other(time.perf_counter() - t0)
        lost = self._fanout.failure_summary()
        if lost:
            warnings.warn(f"memwatch sinks failed during this run, so they lack: {lost}",
                          RuntimeWarning, stacklevel=2)
        distributed.barrier()
        return decision

    def close(self) -> None:
        """Close every sink (rank 0), once; `finish` does it after the run's summary."""
        if not self._closed:
            self._closed = True
            self._emit("close")

    # ---- one probe ---------------------------------------------------------------------------
    def _probe(self, model: torch.nn.Module, step: int, mode: str) -> Decision:
        t0 = time.perf_counter()
        try:
            # Short-record PII rows have shorter prompts: probed in groups, never padded.
            result = probe_rows(unwrap(model), self.watchlist.tokens, self.watchlist.prompt_lens,
                                replace(self.spec, mode=mode), distributed.probe_sharded,
                                self._batch_size)
        except distributed.ProbeFailed as err:  # every rank gets it: all skip this probe
            return self._skipped(step, err, time.perf_counter() - t0)
        probe_seconds = time.perf_counter() - t0
        if bool(torch.isnan(result.nll_first).any()):
            self._warn_once("nan", (
                f"memwatch: the model's logits are NaN at step {step} for "
                f"{int(torch.isnan(result.nll_first).sum())} of {len(result)} rows (NaN or inf "
                "weights?); such rows match nothing, so they count as not memorized"))
        self.history.update(step, result, mode)
        new = newly_memorized(self.history)
        predicted = self._forecast()
        verdict = evaluate(self.policy, self.history, self._sent, self._streak, predicted,
                           self.watchlist.redacted_preview)
        self._sent, self._streak = verdict.sent, verdict.streak
        if self.policy.masks:  # every rank masks with rank 0's flagged rows
            self._flag(distributed.broadcast_ints(sorted({*self._flagged, *verdict.flagged})))
        metrics = probe_metrics(
            self.history, self._tags, predicted, probe_seconds=probe_seconds,
            monitor_seconds=self.schedule.monitor_seconds + time.perf_counter() - t0,
            train_seconds=self.schedule.train_seconds)
        record = ProbeRecord(step, mode, metrics, self.history.scores[-1].copy(),
                             row_reports(self.history, new, self.watchlist.redacted_preview),
                             self.total_steps)
        self._emit("on_probe", record)
        for alert in verdict.alerts:
            self._emit("on_alert", alert)
        self.schedule.observe_probe(step, mode, time.perf_counter() - t0, probe_seconds)
        shared = distributed.broadcast_floats([*self.schedule.ledger(), float(verdict.abort)])
        self.schedule.set_ledger(shared[:-1])
        return self._decision(step, new, verdict, bool(shared[-1]), record)

    def _skipped(self, step: int, err: Exception, seconds: float) -> Decision:
        """A probe that failed (on any rank): warn once, alert, retry later; training goes on.

        FAILING_PROBES failures in a row for the same reason: one error and an ERROR alert.
        With ``on_probe_failure="raise"``: raise `ProbeError` instead, at the first.
        """
        if self.on_probe_failure == "raise":
            raise ProbeError(f"memwatch probe at step {step} failed: {err} (on_probe_failure="
                             "'raise'; the default 'warn' skips the probe and trains on)") from err
        self._probe_failures += 1
        reason = _failure_reason(err)
        same = self._failing[1] + 1 if self._failing[0] == reason else 1
        self._failing = (reason, same)
        self._warn_once("probe", f"memwatch probe at step {step} failed: {err}; every rank "
                                 "skips it and training goes on (later failures are only "
                                 "counted, in probe_failed alerts)")
        alert = Alert("probe_failed", "WARN", "memwatch: a probe failed",
                      f"step {step}: {err}; skipped on every rank ({self._probe_failures} "
                      "failed so far); training goes on", step)
        self._emit("on_alert", alert)
        alerts = (alert,)
        if same == FAILING_PROBES:
            text = (f"the probe failed {same} times in a row, last at step {step}, for the same "
                    f"reason: {err}. This run is not monitored until a probe succeeds; fix the "
                    "cause (or pass MemWatch(on_probe_failure='raise') to stop such runs)")
            logger.error("memwatch: %s", text)
            loud = Alert("probe_failing", "ERROR", "memwatch: the probe keeps failing", text,
                         step)
            self._emit("on_alert", loud)
            alerts += (loud,)
        self.schedule.observe_other(seconds)
        self.schedule.back_off(step)
        return Decision(step, alerts=alerts)

    def _check_resume(self, model: torch.nn.Module, step: int) -> tuple[Alert, ...]:
        """After load_state_dict: re-probe a sample of the rows the saved model reproduced and
        alert (``resume_mismatch``) when the model lost more than training since explains."""
        self._resumed = False
        rows = resume_sample(self.history.match_prefix[-1])
        if not len(rows):
            return ()
        t0 = time.perf_counter()
        try:
            result = distributed.probe_sharded(
                unwrap(model), self.watchlist.tokens[torch.from_numpy(rows)],
                replace(self.spec, mode="extractable", with_nll=False), self._batch_size)
        except distributed.ProbeFailed:  # the scheduled probes report failures
            return ()
        finally:
            self.schedule.observe_other(time.perf_counter() - t0)
        found = compare_resumed(self.history.match_prefix[:, rows], self.history.steps,
                                result.match_prefix.numpy(), step)
        if found is None or not found.mismatch:
            return ()
        why = ("the model after resume does not reproduce the model that was saved: weights "
               "not restored? ")
        warnings.warn(f"memwatch: {why}{found.describe()}. Check that the checkpoint loads "
                      "every weight (a head re-initialised on load, a model built but never "
                      "loaded)", RuntimeWarning, stacklevel=3)
        alert = Alert("resume_mismatch", "ERROR", "memwatch: resumed model does not match the "
                      "saved one", why + found.describe(), step)
        self._emit("on_alert", alert)
        return (alert,)

    def _check_ranks_agree(self, step: int) -> None:
        """Raise on every rank if the ranks' monitor states differ (a resume on some ranks)."""
        h = self.history
        digest = [len(h), float(h.steps[-1]) if len(h) else -1.0, float(self.schedule.next_step),
                  float(self.schedule.probes), float(len(self._sent))]
        if not distributed.agree(digest):
            raise RuntimeError(
                f"memwatch's state differs across ranks at step {step} (this rank: {len(h)} "
                f"probes, next probe at step {self.schedule.next_step}): load_state_dict was "
                "called on some ranks only. Call it on every rank with the same checkpoint "
                "(Lightning and the transformers Trainer do), before the first step")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

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

    def mask_batch(self, batch) -> bool:
        """Mask a dict batch's ``labels`` (by its ``input_ids``) in place, as the adapters do;
        False when the batch is not a mapping with both keys (nothing is masked then)."""
        if not (isinstance(batch, MutableMapping) and "input_ids" in batch and "labels" in batch):
            return False
        batch["labels"] = self.mask(batch["input_ids"], batch["labels"])
        return True

    def _flag(self, rows) -> None:
        rows = tuple(sorted(int(i) for i in rows))
        if rows == self._flagged:
            return
        self._flagged = rows
        self._flagged_ids = tuple(self.watchlist.ids[i] for i in rows)
        start = self.spec.context_len
        cont = self.watchlist.tokens[list(rows), start:start + self.spec.cont_len]
        self._windows = FlaggedWindows(cont, self.mask_spec) if rows else None

    def _decision(self, step, new, verdict: Verdict, abort: bool, record) -> Decision:
        ids = tuple(self.history.ids[i] for i in np.flatnonzero(new))
        return Decision(step, True, ids, verdict.alerts, abort, verdict.reason, record)

    def seen(self, rows, step: int) -> None:
        """Note that training trained on watchlist `rows` (indices; one entry per copy) at
        `step`: the forecast then knows each row's exposures so far, first and last seen
        step and, with ``learning_rate``, the rate of every copy (`memwatch.forecast.
        signals`). Adapters call it where they know which rows a batch held (planting,
        Pythia's step -> index map); it rides in `state_dict`."""
        self.exposure_log.record(rows, step)

    def _forecast(self):
        """The point forecast of the final memorized counts, when the run length is known.

        No bootstrap bands: with them a forecast costs seconds per probe on 1000 rows,
        without them milliseconds (`memwatch analyze` draws the bands). The risk ranking
        (fitted either way) is attached when the policy masks rows at risk.
        """
        if self.total_steps is None:
            return None
        try:
            return forecast(ForecastInputs(
                self.history, self.total_steps, n_boot=0,
                with_risk=self.policy.mask_risk is not None, compute=self.clock,
                first_seen=self.first_seen, exposures=self.exposure_log.exposures(),
                learning_rate=self.learning_rate))
        except (ValueError, np.linalg.LinAlgError):  # too few probes to fit yet
            return None

    def _emit(self, method: str, *args) -> None:
        self._fanout.emit(method, *args)

    # ---- persistence: tensors and plain types, loadable with torch.load(weights_only=True) ---
    def state_dict(self) -> dict:
        """The monitor's state: history, schedule ledger, alerts already sent."""
        return {
            "format": STATE_FORMAT,
            "prompt_len": self.spec.prompt_len,
            "cont_len": self.spec.cont_len,
            "history": self.history.state_dict(),
            "schedule": self.schedule.state_dict(),
            "alerts_sent": sorted(self._sent),
            "streak": self._streak,
            "flagged": list(self.flagged),
            "exposures": self.exposure_log.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`: probes extend its history; alerts are not resent.

        Under torch.distributed call it on every rank (the first `step` after it checks that
        the ranks agree). Sinks get a ``resume`` event: what they logged after the saved
        state's last probe is superseded by what the resumed run logs.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"monitor state has format {state.get('format')!r}; this memwatch "
                             f"reads format {STATE_FORMAT}")
        missing = [k for k in ("history", "schedule", "alerts_sent", "streak") if k not in state]
        if missing:
            raise ValueError(f"monitor state lacks {missing}; it has {sorted(state)}")
        hist = state["history"]
        saved = (state.get("prompt_len", self.spec.prompt_len), hist.get("cont_len"))
        if saved != (self.spec.prompt_len, self.spec.cont_len):
            raise ValueError(
                f"monitor state was saved with prompt_len={saved[0]}, cont_len={saved[1]}; this "
                f"monitor has prompt_len={self.spec.prompt_len}, cont_len={self.spec.cont_len}: "
                "build the MemWatch with the saved lengths (match counts at other lengths mean "
                "nothing)")
        self.history.load_state_dict(hist)
        if "exposures" in state:  # states saved before `seen` existed have none
            self.exposure_log.load_state_dict(state["exposures"])
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
        self._finished = self._closed = False
        self._sync_ranks = True
        self._resumed = len(self.history) > 0
        self._emit("on_resume", int(self.history.steps[-1]) if len(self.history) else 0)


def _check_model(model, where: str) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"MemWatch.{where}(model, ...) needs the model being trained (a "
                        f"torch.nn.Module); got {type(model).__name__}")


def _failure_reason(err: Exception) -> str:
    """A failure's reason without its numbers (steps, sizes), so that repeats compare equal."""
    cause = err.__cause__ or err
    return type(cause).__name__ + ":" + "".join(c for c in str(cause) if not c.isdigit())[:200]


def _check_audit(watchlist, policy: AbortPolicy, spec: ProbeSpec) -> None:
    """Refuse an ε budget that can never act; warn when audit canaries will not be audited."""
    rows_in, rows_out = audit_rows(watchlist.tags)
    has_audit = bool(rows_in.any() and rows_out.any())
    if policy.max_epsilon is not None and not has_audit:
        raise ValueError("AbortPolicy(max_epsilon=...) needs audit canaries on the watchlist "
                         "(rows tagged canary:in and canary:out): add "
                         "Watchlist.canaries(n, audit=True) and plant the canary:in rows")
    if has_audit and not spec.with_nll:
        message = ("the privacy audit scores the canary:in / canary:out rows by log p_z, "
                   "which the probe measures only with with_nll=True: pass "
                   "MemWatch(..., probe=ProbeSpec(with_nll=True))")
        if policy.max_epsilon is not None:
            raise ValueError(f"AbortPolicy(max_epsilon=...) can never act: {message}")
        warnings.warn(f"memwatch: no audit/* metrics in this run: {message}", RuntimeWarning,
                      stacklevel=3)


def _check_clock(fn, name: str) -> None:
    """Raise unless `fn` maps an array of steps to an array of as many numbers."""
    if fn is None:
        return
    steps = np.array([1.0, 2.0, 4.0])
    try:
        out = np.asarray(fn(steps), dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - reported with the fix, before training
        raise TypeError(f"{name} must be vectorised (an array of steps -> an array of numbers, "
                        f"e.g. numpy arithmetic); {name}(np.array([1., 2., 4.])) raised "
                        f"{type(err).__name__}: {err}") from err
    if out.shape != steps.shape:
        raise TypeError(f"{name} must be vectorised (an array of steps -> an array of "
                        f"numbers); {name}(np.array([1., 2., 4.])) returned shape "
                        f"{out.shape}, not (3,)")


_RETIRED_PROBE_SETTINGS = ("mode", "prompt_len", "cont_len", "with_nll", "batch_size")


def _probe_spec(spec: ProbeSpec | None, retired: dict) -> ProbeSpec:
    """The monitor's `ProbeSpec`: `spec`, or one built from the retired loose settings."""
    unknown = sorted(set(retired) - set(_RETIRED_PROBE_SETTINGS))
    if unknown:
        raise TypeError(f"MemWatch got unexpected keyword argument(s) {unknown}; it takes "
                        "watchlist, total_steps, every_n_steps, max_overhead, abort, sinks, "
                        "probe, exact_every, clock, first_seen, learning_rate, mask_spec, "
                        "on_probe_failure")
    if spec is not None and not isinstance(spec, ProbeSpec):
        raise TypeError(f"probe must be a ProbeSpec; got {type(spec).__name__}")
    if not retired:
        return ProbeSpec(mode="extractable") if spec is None else spec
    if spec is not None:
        raise TypeError(f"MemWatch takes the probe's settings in probe=ProbeSpec(...); give "
                        f"{sorted(retired)} there, not beside it")
    warnings.warn(f"MemWatch({', '.join(f'{k}=' for k in sorted(retired))}...) is deprecated: "
                  "pass probe=ProbeSpec(...) (memwatch.ProbeSpec)", DeprecationWarning,
                  stacklevel=3)
    settings = {"mode": "extractable", **retired}
    settings["with_nll"] = bool(settings.get("with_nll", False))
    return ProbeSpec(**settings)


def _retired_clock(clock, retired: dict):
    """`clock`, or the value of the retired ``compute=`` keyword (with a DeprecationWarning)."""
    if "compute" not in retired:
        return clock
    if clock is not None:
        raise TypeError("MemWatch got both clock= and its old name compute=; pass clock= only")
    warnings.warn("MemWatch(compute=...) is deprecated: pass clock=... (the same vectorised "
                  "step -> cumulative compute)", DeprecationWarning, stacklevel=3)
    return retired.pop("compute")
