"""`MemWatchCallback`: drives a `MemWatch` from a Lightning `Trainer`, like `EarlyStopping`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from memwatch.monitor import MemWatch


class MemWatchCallback(Callback):
    """Probes at optimizer-step boundaries (``trainer.global_step``) and stops the run on abort.

    `model_getter(pl_module)` returns the module to probe; by default the
    LightningModule's ``model`` attribute when it is a transformers model, else
    the LightningModule itself. Metrics go to the trainer's loggers as
    ``memwatch/<name>`` as well as to the monitor's sinks. `state_key` names the
    monitor's state in the checkpoint: give each callback its own when two monitors
    share a Trainer. Lightning keeps training after a stop until ``min_steps`` /
    ``min_epochs`` are met; an abort then says so, and until when, in `reason`.

    When the policy masks rows, a dict batch with ``input_ids`` and ``labels`` gets its
    labels masked in ``on_train_batch_start`` (`MemWatch.mask`); any other batch needs
    ``labels = monitor.mask(input_ids, labels)`` in ``training_step`` (warned once).
    """

    def __init__(self, monitor: MemWatch,
                 model_getter: Callable[[LightningModule], torch.nn.Module] | None = None,
                 state_key: str | None = None):
        self.monitor = monitor
        self.model_getter = model_getter
        self.reason = ""
        self._key = state_key
        self._seen_step: int | None = None
        self._told_mask = False

    @property
    def state_key(self) -> str:
        return super().state_key if self._key is None else self._generate_state_key(
            key=self._key)

    def _model(self, pl_module: LightningModule) -> torch.nn.Module:
        if self.model_getter is not None:
            return self.model_getter(pl_module)
        inner = getattr(pl_module, "model", None)
        is_hf = isinstance(inner, torch.nn.Module) and hasattr(inner, "generate")
        return inner if is_hf else pl_module

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if self.monitor.total_steps is None and math.isfinite(total):
            self.monitor.total_steps = int(total)
        tokenizer = getattr(pl_module, "tokenizer", None)  # the module's, by convention
        self.monitor.check(self._model(pl_module), tokenizer)  # bad input fails here
        self.reason = ""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._seen_step = trainer.global_step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch,
                             batch_idx: int) -> None:
        if not self.monitor.policy.masks:
            return
        if not self.monitor.mask_batch(batch) and not self._told_mask:
            self._told_mask = True
            rank_zero_warn("memwatch masks flagged rows only in dict batches with 'input_ids' "
                           "and 'labels'; for this batch call `labels = monitor.mask(input_ids, "
                           "labels)` in training_step")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._seen_step:  # an accumulation batch: no optimizer step happened
            return
        self._seen_step = step
        decision = self.monitor.step(self._model(pl_module), step)
        self._log(trainer, decision)
        stop = trainer.strategy.reduce_boolean_decision(decision.abort, all=False)
        if stop and not self.reason:  # the first abort says why (and, if deferred, until when)
            self.reason = decision.reason + _deferral(trainer, step)
            trainer.should_stop = True
            # a plain line on Lightning's console logger, not a warning with a source prefix
            rank_zero_info(f"memwatch stops training at {self.reason}")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, self.monitor.finish(self._model(pl_module), trainer.global_step))

    @staticmethod
    def _log(trainer: Trainer, decision) -> None:
        if decision.record is None:
            return
        metrics = {f"memwatch/{k}": v for k, v in decision.record.metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=decision.step)

    def state_dict(self) -> dict:
        return self.monitor.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.monitor.load_state_dict(state_dict)


def _deferral(trainer: Trainer, step: int) -> str:
    """Lightning ignores ``should_stop`` until min_steps / min_epochs are met: say until when."""
    loop, until = trainer.fit_loop, []
    if loop.min_steps and step < loop.min_steps:
        until.append(f"min_steps={loop.min_steps}")
    if loop.min_epochs and trainer.current_epoch < loop.min_epochs:
        until.append(f"min_epochs={loop.min_epochs}")
    return f" (deferred: Lightning trains on until {' and '.join(until)})" if until else ""
