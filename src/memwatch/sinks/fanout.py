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
from memwatch.sinks.base import check_sinks

# What a sink lacks when a hook of it failed, for the end-of-run summary.
SINK_LOSSES = {"on_start": "its start (the run may not exist)", "on_probe": "probe records",
               "on_alert": "alerts", "on_resume": "the resume event",
               "on_end": "the end summary (tables, plots)",
               "close": "its final flush (the file or run may be incomplete)"}


class Fanout:
    """Calls one hook on every sink of `sinks` (rank 0 only); see the module docstring."""

    def __init__(self, sinks: Sequence = ()):
        self.sinks = check_sinks(sinks)
        self.failures: dict[tuple[int, str], int] = {}  # (id(sink), hook) -> failed calls
        self.calls: dict[str, int] = {}  # calls of each hook, to say what a failure lost

    def emit(self, method: str, *args) -> None:
        """Call ``sink.<method>(*args)`` on every sink that has it, on rank 0."""
        if distributed.rank_world()[0] != 0:
            return
        self.calls[method] = self.calls.get(method, 0) + 1
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

    def failure_summary(self) -> str:
        """What each failing sink lost, e.g. ``LocalSink: 3 of 5 probe records, the end
        summary (tables, plots)``; empty when nothing failed."""
        names = {id(s): type(s).__name__ for s in self.sinks}
        lost: dict[str, list[str]] = {}
        for (sink, method), n in self.failures.items():
            what = SINK_LOSSES.get(method, method)
            count = f"{n} of {self.calls.get(method, n)} " \
                if method in ("on_probe", "on_alert") else ""
            lost.setdefault(names[sink], []).append(f"{count}{what}")
        for sink in self.sinks:  # what sinks that catch their own errors lost
            said = _lost_by(sink)
            if said:
                lost.setdefault(names[id(sink)], []).append(said)
        return "; ".join(f"{name}: {', '.join(items)}" for name, items in lost.items())


def _lost_by(sink) -> str:
    try:
        return str(sink.lost()) if callable(getattr(sink, "lost", None)) else ""
    except Exception:  # noqa: BLE001 - a report about a sink must not fail the run's end
        return ""
