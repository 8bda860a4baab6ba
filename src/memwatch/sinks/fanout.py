"""`Fanout`: one event to every sink, on rank 0, never fatally.

The monitor says what happened (``fanout.emit("on_probe", record)``); this module
owns how it reaches the sinks: only on rank 0, each call under a forked RNG (a sink
must not shift training's random stream), a duck-typed sink that lacks a newer hook
skipped, and a failing call warned about once per (sink, hook), counted and skipped,
so that W&B being down never stops training.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from memwatch import distributed


class Fanout:
    """Calls one hook on every sink of `sinks` (rank 0 only); see the module docstring."""

    def __init__(self, sinks: Sequence = ()):
        self.sinks = list(sinks)
        self.failures: dict[tuple[int, str], int] = {}  # (id(sink), hook) -> failed calls

    def emit(self, method: str, *args) -> None:
        """Call ``sink.<method>(*args)`` on every sink that has it, on rank 0."""
        if distributed.rank_world()[0] != 0:
            return
        for sink in self.sinks:
            try:
                hook = getattr(sink, method, None)  # a duck-typed sink may lack newer hooks
                if hook is None:
                    continue
                with torch.random.fork_rng(devices=[]):  # a sink must not shift training's RNG
                    hook(*args)
            except Exception as err:  # noqa: BLE001 - a sink must never stop training
                key = (id(sink), method)
                self.failures[key] = self.failures.get(key, 0) + 1
                if self.failures[key] == 1:
                    warnings.warn(f"memwatch sink {type(sink).__name__}.{method} failed "
                                  f"({type(err).__name__}: {err}); training goes on",
                                  RuntimeWarning, stacklevel=4)

    def failure_counts(self) -> dict[str, int]:
        """``"<SinkClass>.<hook>"`` -> failed calls, for the end-of-run summary."""
        names = {id(s): type(s).__name__ for s in self.sinks}
        return {f"{names[sink]}.{method}": n for (sink, method), n in self.failures.items()}
