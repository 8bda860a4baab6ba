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
