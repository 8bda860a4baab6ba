"""The interface every sink implements; the monitor calls it on rank 0 only."""

from __future__ import annotations

from memwatch.events import Alert, ProbeRecord


class Sink:
    """Receives what the monitor reports. Methods must not raise into training:
    the monitor wraps every call, but a sink should warn and degrade on its own."""

    def on_start(self) -> None:
        """Training is about to start: open runs and files here, off the probes' clock."""

    def on_probe(self, record: ProbeRecord) -> None:
        """One probe finished: metrics, score histogram, newly memorized rows."""

    def on_alert(self, alert: Alert) -> None:
        """A row matching an alert pattern became memorized, or an abort fired."""

    def on_resume(self, step: int) -> None:
        """The monitor resumed from a state whose last probe was at `step`: what this sink
        reported for later steps before the resume is superseded by what follows."""

    def on_end(self, history, watchlist) -> None:
        """Training ended: summary tables and plots from the full `History`."""

    def close(self) -> None:
        """Flush and release resources."""

    def lost(self) -> str:
        """What this sink failed to record so far, in words ("" if nothing): a sink that
        catches its own errors says here what they cost, and `MemWatch.finish` reports it."""
        return ""


HOOKS = ("on_start", "on_probe", "on_alert", "on_resume", "on_end", "close")
_BY_NAME = {"wandb": "memwatch.WandbSink(project=...)", "console": "memwatch.ConsoleSink()",
            "local": "memwatch.LocalSink(folder)"}


def check_sinks(sinks) -> list:
    """`sinks` as a list, after checking each is a `Sink` (or has a Sink's hooks).

    Raises TypeError naming the entry and the fix: a name such as ``"wandb"`` or an
    object with none of the hooks would log nothing, silently, for the whole run.
    """
    if isinstance(sinks, (str, Sink)) or not hasattr(sinks, "__iter__"):
        raise TypeError(f"sinks must be a list of Sinks, e.g. [memwatch.ConsoleSink()]; got "
                        f"{sinks!r}")
    sinks = list(sinks)
    for i, sink in enumerate(sinks):
        if isinstance(sink, Sink):
            continue
        if isinstance(sink, str):
            fix = _BY_NAME.get(sink.lower(), "memwatch.WandbSink(...), ConsoleSink() or "
                                             "LocalSink(folder)")
            raise TypeError(f"sinks[{i}] is the string {sink!r}, not a Sink: pass the sink "
                            f"object, e.g. {fix}")
        if isinstance(sink, type) and issubclass(sink, Sink):
            raise TypeError(f"sinks[{i}] is the class {sink.__name__}, not a Sink object: "
                            f"write {sink.__name__}(...)")
        if not any(callable(getattr(sink, hook, None)) for hook in HOOKS):
            raise TypeError(f"sinks[{i}] is a {type(sink).__name__} with none of a Sink's "
                            f"methods {HOOKS}: it would receive nothing; subclass "
                            "memwatch.Sink")
    return sinks
