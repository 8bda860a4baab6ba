"""What the monitor tells the outside world: per-probe records, alerts, decisions.

Everything here is safe to hand to a sink: rows are named by id, tags and a
redacted preview, never by their raw text. The functions at the end derive a
probe's record from the `History` (pure: the monitor only calls them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from memwatch.audit import audit_metrics
from memwatch.measures import extraction_summary
from memwatch.watchlist.tags import ALL_ROWS


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

    # "memorized" | "leaked" | "fraction" | "forecast" | "epsilon" | "mask" | "abort" |
    # "probe_failed" | "resume_mismatch"
    kind: str
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
    ``leaked_count/pii:EMAIL_ADDRESS`` (rows whose PII came out verbatim),
    ``mean_score``, ``mean_match_prefix``, ``probe_seconds``, ``overhead``,
    ``forecast/expected_final_memorized``, ``audit/epsilon_lb``, and with ``with_nll``
    the probability of extraction ``mean_pz`` and (n, p) rates such as
    ``extractable_n100_p90`` (all rows and ``/<tag>``; `memwatch.measures`), and with several
    prompt lengths ``memorized_fraction_p<M>`` per length M (all rows and ``/<tag>``); sinks
    prefix them (``memwatch/``).
    """

    step: int
    mode: str
    metrics: dict[str, float]
    scores: np.ndarray  # float32 [n], for histograms
    new_rows: tuple[RowReport, ...] = ()
    total_steps: int | None = None  # the run's length when known ("step N of M")


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


# ---- a probe's record, derived from the history ---------------------------------------------
def newly_memorized(history) -> np.ndarray:
    """bool [n]: rows memorized at the latest probe and at no earlier one."""
    mem = history.memorized
    return mem[-1] & ~mem[:-1].any(axis=0)


def probe_metrics(history, tags: Sequence[str], forecast=None, *,
                  probe_seconds: float | None = None, monitor_seconds: float = 0.0,
                  train_seconds: float = 0.0) -> dict[str, float]:
    """The `ProbeRecord.metrics` of the latest probe in `history`.

    tags: the tags to count rows of (``memorized_count/<tag>``, ``memorized_fraction/<tag>``,
        ``memorized_fraction_p<M>/<tag>`` with several prompt lengths, and for tags of PII
        rows ``leaked_count/<tag>``, ``leaked_fraction/<tag>``).
    forecast: a `memwatch.forecast.Forecast` (its all-rows ``forecast/*`` numbers), or None.
    probe_seconds: the probe's own time; with it come ``probe_seconds`` and ``overhead``,
        the monitor's seconds (this probe's included) over training's (NaN before any).
    """
    mem = history.memorized[-1]
    metrics = {
        "memorized_count": float(mem.sum()),
        "memorized_fraction": float(mem.mean()),
        "mean_score": float(history.scores[-1].mean()),
        "mean_match_prefix": float(history.match_prefix[-1].mean()),
    }
    if probe_seconds is not None:
        metrics["probe_seconds"] = probe_seconds
        metrics["overhead"] = monitor_seconds / train_seconds if train_seconds else float("nan")
    leaked = history.leaked[-1]
    has_span = history.span_tokens > 0
    if has_span.any():
        metrics["leaked_count"] = float(leaked.sum())
    for tag in tags:
        rows = history.tag_mask(tag)
        metrics[f"memorized_count/{tag}"] = float(mem[rows].sum())
        metrics[f"memorized_fraction/{tag}"] = float(mem[rows].mean())
        if has_span[rows].any():  # a tag of PII rows (one per entity): leaked beside memorized
            metrics[f"leaked_count/{tag}"] = float(leaked[rows].sum())
            metrics[f"leaked_fraction/{tag}"] = float(leaked[rows].mean())
    if len(history.prompt_lens) > 1:  # memorization vs prompt length (Carlini et al., ICLR 2023)
        by_len = history.memorized_by_prompt_len[-1]
        for j, m in enumerate(history.prompt_lens):
            metrics[f"memorized_fraction_p{m}"] = float(by_len[:, j].mean())
            for tag in tags:
                metrics[f"memorized_fraction_p{m}/{tag}"] = float(
                    by_len[history.tag_mask(tag), j].mean())
    log_pz = history.log_pz[-1]
    summary = extraction_summary(log_pz)  # empty unless the probe measured log p_z
    metrics.update(summary)
    for tag in tags if summary else ():
        for name, value in extraction_summary(log_pz[history.tag_mask(tag)]).items():
            metrics[f"{name}/{tag}"] = value
    metrics.update(audit_metrics(history))  # audit/*: only with audit canaries and log p_z
    overall = None if forecast is None else forecast.tags.get(ALL_ROWS)
    if overall is not None:
        metrics["forecast/expected_final_memorized"] = float(overall.final.expected)
        metrics["forecast/recall_now"] = float(overall.recall.value)
        metrics["forecast/precision_now"] = float(overall.precision.value)
    return metrics


def row_reports(history, rows: np.ndarray,
                preview: Callable[[int], str]) -> tuple[RowReport, ...]:
    """`RowReport`s of the latest probe for the rows picked by the bool mask `rows`."""
    step = int(history.steps[-1])
    return tuple(
        RowReport(history.ids[i], history.tags[i], step, float(history.scores[-1, i]),
                  int(history.match_prefix[-1, i]), preview(int(i)))
        for i in np.flatnonzero(rows))
