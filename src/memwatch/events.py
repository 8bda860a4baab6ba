"""What the monitor tells the outside world: per-probe records, alerts, decisions.

Everything here is safe to hand to a sink: rows are named by id, tags and a
redacted preview, never by their raw text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RowReport:
    """One watchlist row, as a sink may show it."""

    id: str
    tags: tuple[str, ...]
    step: int
    score: float
    match_prefix: int
    preview: str  # redacted unless the user opted into raw text


@dataclass(frozen=True)
class Alert:
    """Something a person should look at; `text` never holds raw watchlist text."""

    kind: str  # "memorized" | "fraction" | "forecast" | "mask" | "abort"
    level: str  # "INFO" | "WARN" | "ERROR" (wandb.AlertLevel names)
    title: str
    text: str
    step: int
    row_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeRecord:
    """The result of one probe, summarised for sinks.

    `metrics` keys are flat names such as ``memorized_count``,
    ``memorized_fraction``, ``memorized_fraction/pii:EMAIL_ADDRESS``,
    ``mean_score``, ``mean_match_prefix``, ``probe_seconds``, ``overhead``,
    ``forecast/expected_final_memorized``; sinks prefix them (``memwatch/``).
    """

    step: int
    mode: str
    metrics: dict[str, float]
    scores: np.ndarray  # float32 [n], for histograms
    new_rows: tuple[RowReport, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What `MemWatch.step` returns; each adapter maps it to its framework."""

    step: int
    probed: bool = False
    newly_memorized: tuple[str, ...] = ()
    alerts: tuple[Alert, ...] = ()
    abort: bool = False
    reason: str = ""
    record: ProbeRecord | None = field(default=None, repr=False)
