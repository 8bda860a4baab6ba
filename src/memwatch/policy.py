"""When to alert and when to stop: `AbortPolicy` (config) and `evaluate` (a pure function).

Three triggers, checked at every probe: a row with a watched tag is memorized;
the memorized fraction of a tag pattern passes a threshold; the forecast of
the final memorized count passes a budget. Each alert is sent once per run
(the caller keeps the keys of the alerts already sent, and they ride in the
checkpoint); the abort fires once the triggers have held for ``patience``
consecutive probes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from memwatch.events import Alert
from memwatch.watchlist.tags import ALL_ROWS

ACTIONS = ("stop", "alert")


@dataclass(frozen=True)
class AbortPolicy:
    """What makes the monitor alert and stop.

    Tag patterns are fnmatch patterns; ``"*"`` names every row (`memwatch.watchlist.tags`).

    tags: tag patterns whose rows must never be memorized: each such row
        alerts once, and any of them memorized is an abort trigger. ``()`` disables.
    max_fraction: tag pattern -> highest tolerated memorized fraction of its rows
        (``"*"`` = all rows); passing it alerts and is an abort trigger.
    forecast_budget: highest tolerated forecast of memorized rows at the end of
        training, for all rows (an int) or per forecast key (``"*"`` or a tag).
    patience: consecutive probes a trigger must hold before the abort fires.
    action: ``"stop"`` aborts the run; ``"alert"`` only sends the abort alert.
    """

    tags: tuple[str, ...] = ("pii:*", "canary")
    max_fraction: Mapping[str, float] = field(default_factory=dict)
    forecast_budget: Mapping[str, int] | int | None = None
    patience: int = 1
    action: str = "stop"

    def __post_init__(self):
        tags = (self.tags,) if isinstance(self.tags, str) else tuple(self.tags)
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "max_fraction", dict(self.max_fraction))
        for pattern, share in self.max_fraction.items():
            if not 0 <= share <= 1:
                raise ValueError(f"max_fraction[{pattern!r}] = {share} is not a fraction in "
                                 "[0, 1]")
        budget = self.forecast_budget
        if budget is not None:
            budget = {ALL_ROWS: budget} if isinstance(budget, int) else dict(budget)
            for key, count in budget.items():
                if not isinstance(count, int) or count < 0:
                    raise ValueError(f"forecast_budget[{key!r}] = {count!r}; give a row count "
                                     ">= 0")
            object.__setattr__(self, "forecast_budget", budget)
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience counts probes and must be an int >= 1; got "
                             f"{self.patience!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}; got {self.action!r}")


@dataclass(frozen=True)
class Verdict:
    """What `evaluate` concludes at the latest probe."""

    alerts: tuple[Alert, ...] = ()
    abort: bool = False
    reason: str = ""
    sent: frozenset[str] = frozenset()  # keys of every alert sent so far, these included
    streak: int = 0  # consecutive probes, up to this one, at which a trigger held


def evaluate(
    policy: AbortPolicy,
    history,
    sent: frozenset[str] = frozenset(),
    streak: int = 0,
    forecast=None,
    preview: Callable[[int], str] | None = None,
) -> Verdict:
    """Return the `Verdict` of `policy` at the last probe of `history`.

    `sent` holds the keys of alerts already sent (none is sent twice); `streak`
    is the previous probe's `Verdict.streak`; `forecast` is a
    `memwatch.forecast.Forecast` or None; `preview(i)` gives row i's redacted preview.
    """
    if not len(history):
        return Verdict(sent=frozenset(sent), streak=streak)
    step = int(history.steps[-1])
    memorized = history.memorized[-1]
    alerts: list[Alert] = []
    keys = set(sent)
    triggers: list[str] = []

    def send(key: str, alert: Alert) -> None:
        if key not in keys:
            keys.add(key)
            alerts.append(alert)

    if policy.tags:
        watched = np.zeros(history.num_rows, dtype=bool)
        for pattern in policy.tags:
            watched |= history.tag_mask(pattern)
        hits = np.flatnonzero(watched & memorized)
        for i in hits:
            send(f"row:{history.ids[i]}", _row_alert(history, int(i), step, preview))
        if len(hits):
            named = "; ".join(_row_named(history, int(i), preview) for i in hits[:5])
            more = f"; and {len(hits) - 5} more" if len(hits) > 5 else ""
            triggers.append(f"rule tags={list(policy.tags)}: {len(hits)} watched row(s) "
                            f"memorized: {named}{more}")

    for pattern, limit in policy.max_fraction.items():
        rows = history.tag_mask(pattern)
        if not rows.any():
            continue
        share = float(memorized[rows].mean())
        if share > limit:
            text = (f"rule max_fraction[{pattern!r}]: memorized fraction of {pattern!r} is "
                    f"{share:.3f} > {limit}")
            triggers.append(text)
            send(f"fraction:{pattern}", Alert("fraction", "WARN",
                 f"memwatch: {pattern!r} memorized fraction passed {limit}", text, step))

    if policy.forecast_budget and forecast is not None:
        for key, budget in policy.forecast_budget.items():
            tag = forecast.tags.get(key)
            if tag is None:
                continue
            expected = float(tag.expected_final_memorized)
            if expected > budget:
                text = (f"rule forecast_budget[{key!r}]: forecast for {key!r}: {expected:.0f} "
                        f"rows memorized by the end "
                        f"(range {tag.expected_final_low:.0f}-{tag.expected_final_high:.0f}) > "
                        f"budget {budget}")
                triggers.append(text)
                send(f"forecast:{key}", Alert("forecast", "WARN",
                     f"memwatch: forecast for {key!r} passes its budget", text, step))

    streak = streak + 1 if triggers else 0
    fire = streak >= policy.patience
    reason = f"step {step}: " + "; ".join(triggers) if fire else ""
    if fire:
        stop = policy.action == "stop"
        title = "memwatch stops the run" if stop else "memwatch would stop the run"
        send("abort", Alert("abort", "ERROR" if stop else "WARN", title, reason, step))
    return Verdict(tuple(alerts), fire and policy.action == "stop", reason, frozenset(keys),
                   streak)


def _row_named(history, i: int, preview) -> str:
    """``id [tags] preview``: a row as alerts name it, never with raw text."""
    tags = ",".join(history.tags[i]) or "untagged"
    shown = preview(i) if preview is not None else ""
    return f"{history.ids[i]} [{tags}]" + (f" {shown}" if shown and not shown.startswith("[")
                                           else "")


def _row_alert(history, i: int, step: int, preview) -> Alert:
    row_id, tags = history.ids[i], ",".join(history.tags[i]) or "untagged"
    shown = preview(i) if preview is not None else f"[{tags}]"
    text = (f"{row_id} ({tags}) reproduces all {history.cont_len} continuation tokens at step "
            f"{step}: {shown}")
    return Alert("memorized", "WARN", f"memwatch: watched row {row_id} memorized", text, step,
                 (row_id,))
