"""When to alert, mask and stop: `AbortPolicy` (config) and `evaluate` (a pure function).

Four triggers, checked at every probe: a row with a watched tag is memorized (or,
for PII rows, leaked: the PII's own tokens reproduced verbatim);
the memorized fraction of a tag pattern passes a threshold; the forecast of
the final memorized count passes a budget; the one-run ε lower bound of the audit
canaries passes a privacy budget (`memwatch.audit`). Each alert is sent once per run
(the caller keeps the keys of the alerts already sent, and they ride in the
checkpoint); the abort fires once the triggers have held for ``patience``
consecutive probes.

Per tag pattern, `AbortPolicy.actions` picks what a memorized row does instead:
``"alert"`` (alert once, no abort), ``"mask"`` (flag the row: `MemWatch.mask` takes its
continuation out of the loss from then on, and the run goes on; with ``mask_risk`` a
row is flagged as soon as the forecast's risk model ranks it at that probability,
before it is memorized) or ``"abort"`` (alert and trigger the abort, what `tags` does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from memwatch.audit import audit_metrics
from memwatch.events import Alert
from memwatch.watchlist.tags import ALL_ROWS, check_patterns, matching_keys, tag_label

ACTIONS = ("stop", "alert")
DEFAULT_TAGS = ("pii:*", "canary")  # not checked against the watchlist: a default names no row
DEFAULT_LEAK = ("pii:*",)
ROW_ACTIONS = ("alert", "mask", "abort")  # weakest to strongest: a row takes its strongest


@dataclass(frozen=True)
class AbortPolicy:
    """What makes the monitor alert and stop.

    Every tag key here (in `tags`, `max_fraction`, `actions`, `forecast_budget`) is a tag
    pattern, an fnmatch pattern matched case-sensitively against each row's tags; ``"*"``
    names every row (`memwatch.watchlist.tags`). `MemWatch` refuses, at construction, a
    key that names no row of its watchlist (`check`), and before training a part that
    can never act (a forecast budget, or `mask_risk`, without the run's length).

    tags: tag patterns whose rows must never be memorized: each such row
        alerts once, and any of them memorized is an abort trigger. ``()`` disables.
    max_fraction: tag pattern -> highest tolerated memorized fraction of its rows
        (``"*"`` = all rows); passing it alerts and is an abort trigger.
    forecast_budget: highest tolerated forecast of memorized rows at the end of
        training, for all rows (an int) or per tag pattern (a pattern's forecast is the
        sum of the forecasts of the tags it names; ``"*"``: all rows).
    patience: consecutive probes a trigger must hold before the abort fires.
    action: ``"stop"`` aborts the run; ``"alert"`` only sends the abort alert.
    actions: tag pattern -> ``"alert"`` | ``"mask"`` | ``"abort"``, what a memorized row
        with a matching tag does; it overrides `tags` for the patterns it names
        (`tags` patterns mean ``"abort"``), and a row matching several patterns takes
        the strongest action (abort > mask > alert). ``"mask"`` rows are flagged for
        `MemWatch.mask` (one ``"mask"`` alert per probe lists them, redacted).
    mask_risk: also flag a ``"mask"`` row once the forecast's risk model gives it at
        least this probability of being memorized at the end (needs ``total_steps``);
        None: flag rows when memorized only.
    leak: tag patterns whose rows act once *leaked* as well as once memorized: the
        model reproduced the row's PII itself (``match_prefix >= span_tokens``, see
        `Watchlist.scan_pii`), usually long before all ``cont_len`` tokens of the row.
        A leaked row sends a ``"leaked"`` alert (redacted) and then does what its
        action says (alert, mask or abort), as a memorized one does. Rows without a PII
        span never leak. ``()``: memorized only.
    max_epsilon: the privacy budget: passing it is an abort trigger when the audit's ε
        lower bound (Steinke et al. 2023, at δ = 1e-5 and significance 0.05, from the
        ``canary:in`` / ``canary:out`` rows of `Watchlist.canaries(n, audit=True)` scored by
        log p_z) exceeds it. The bound is checked at every probe, so over many probes a
        false trigger is likelier than the significance says; `patience` guards.
    """

    tags: tuple[str, ...] = DEFAULT_TAGS
    max_fraction: Mapping[str, float] = field(default_factory=dict)
    forecast_budget: Mapping[str, int] | int | None = None
    patience: int = 1
    action: str = "stop"
    actions: Mapping[str, str] = field(default_factory=dict)
    mask_risk: float | None = None
    leak: tuple[str, ...] = DEFAULT_LEAK
    max_epsilon: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "tags", _patterns(self.tags, "tags"))
        object.__setattr__(self, "leak", _patterns(self.leak, "leak"))
        object.__setattr__(self, "max_fraction", _mapping(self.max_fraction, "max_fraction",
                                                          "{'pii:*': 0.0}"))
        for pattern, share in self.max_fraction.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) \
                    or not 0 <= share <= 1:
                raise ValueError(f"max_fraction[{pattern!r}] = {share!r} is not a fraction in "
                                 "[0, 1]")
        budget = self.forecast_budget
        if budget is not None:
            if _is_count(budget) or not isinstance(budget, Mapping):
                budget = {ALL_ROWS: budget}
            budget = _mapping(budget, "forecast_budget", "{'pii:*': 5}")
            for key, count in budget.items():
                if not _is_count(count):
                    shown = "forecast_budget" if key == ALL_ROWS and \
                        not isinstance(self.forecast_budget, Mapping) else \
                        f"forecast_budget[{key!r}]"
                    raise ValueError(f"{shown} = {count!r}; give a whole row count >= 0 (an "
                                     "int, e.g. 5), or a mapping tag pattern -> count")
            object.__setattr__(self, "forecast_budget", budget)
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience counts probes and must be an int >= 1; got "
                             f"{self.patience!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}; got {self.action!r}")
        object.__setattr__(self, "actions", _mapping(self.actions, "actions",
                                                     "{'pii:*': 'mask'}"))
        for pattern, act in self.actions.items():
            if act not in ROW_ACTIONS:
                raise ValueError(f"actions[{pattern!r}] = {act!r}; give one of {ROW_ACTIONS}")
        if self.mask_risk is not None:
            if isinstance(self.mask_risk, bool) or not isinstance(self.mask_risk, (int, float)) \
                    or not 0 <= self.mask_risk <= 1:
                raise ValueError(f"mask_risk = {self.mask_risk!r} is not a probability in "
                                 "[0, 1]")
            if not self.masks:
                raise ValueError("mask_risk applies to rows whose action is 'mask', and no "
                                 "pattern has it: add e.g. actions={'pii:*': 'mask'}")
        if self.max_epsilon is not None and not (isinstance(self.max_epsilon, (int, float))
                                                 and self.max_epsilon >= 0):
            raise ValueError(f"max_epsilon = {self.max_epsilon!r}; give a privacy budget ε >= 0")

    def check(self, tags, total_steps: int | None = None, *, run_length: bool = False) -> None:
        """Raise ValueError if a part of the policy can never act on this watchlist / run.

        `tags`: the watchlist's rows' tags; every tag key (`tags` and `leak` unless left at
        their defaults, `max_fraction`, `actions`, `forecast_budget`) must name a row (see
        `memwatch.watchlist.tags.check_patterns`). With `run_length` (the monitor's
        check before training, once adapters have filled in the run's length), a
        forecast budget or a `mask_risk` without `total_steps` is refused: no forecast
        is ever made without it.
        """
        if self.tags != DEFAULT_TAGS:
            check_patterns(self.tags, tags, "AbortPolicy.tags")
        if self.leak != DEFAULT_LEAK:
            check_patterns(self.leak, tags, "AbortPolicy.leak")
        check_patterns(self.max_fraction, tags, "AbortPolicy.max_fraction")
        check_patterns(self.actions, tags, "AbortPolicy.actions")
        check_patterns(self.forecast_budget or (), tags, "AbortPolicy.forecast_budget")
        if run_length and total_steps is None:
            for name, given in (("forecast_budget", self.forecast_budget),
                                ("mask_risk", self.mask_risk)):
                if given is not None:
                    raise ValueError(
                        f"AbortPolicy.{name} needs the forecast, and the forecast needs the "
                        "run's length, which this monitor does not know: give "
                        "MemWatch(total_steps=...) (the Lightning and transformers adapters "
                        f"fill it in from the trainer), or drop {name}")

    @property
    def masks(self) -> bool:
        """Whether any tag pattern's action is ``"mask"`` (else the monitor never masks)."""
        return "mask" in self.actions.values()

    def row_actions(self, tag_mask: Callable[[str], np.ndarray], n: int) -> np.ndarray:
        """int8 [n]: each row's action, an index into `ROW_ACTIONS` (-1: none)."""
        strength = np.full(n, -1, dtype=np.int8)
        for pattern, act in {**{p: "abort" for p in self.tags}, **self.actions}.items():
            rows = tag_mask(pattern)
            strength[rows] = np.maximum(strength[rows], ROW_ACTIONS.index(act))
        return strength

    def leaking(self, history) -> np.ndarray:
        """bool [n]: rows of a `leak` pattern whose PII leaked at the latest probe."""
        rows = np.zeros(history.num_rows, dtype=bool)
        for pattern in self.leak:
            rows |= history.tag_mask(pattern)
        return rows & history.leaked[-1]


@dataclass(frozen=True)
class Verdict:
    """What `evaluate` concludes at the latest probe."""

    alerts: tuple[Alert, ...] = ()
    abort: bool = False
    reason: str = ""
    sent: frozenset[str] = frozenset()  # keys of every alert sent so far, these included
    streak: int = 0  # consecutive probes, up to this one, at which a trigger held
    flagged: tuple[int, ...] = ()  # rows newly flagged for masking at this probe (indices)


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
    leaked = policy.leaking(history)
    alerts: list[Alert] = []
    keys = set(sent)
    triggers: list[str] = []

    def send(key: str, alert: Alert) -> None:
        if key not in keys:
            keys.add(key)
            alerts.append(alert)

    strength = policy.row_actions(history.tag_mask, history.num_rows)
    alerting = np.isin(strength, [ROW_ACTIONS.index("alert"), ROW_ACTIONS.index("abort")])
    for i in np.flatnonzero(alerting & leaked):
        send(f"leak:{history.ids[i]}", _leak_alert(history, int(i), step, preview))
    for i in np.flatnonzero(alerting & memorized):
        send(f"row:{history.ids[i]}", _row_alert(history, int(i), step, preview))
    hits = np.flatnonzero((strength == ROW_ACTIONS.index("abort")) & (memorized | leaked))
    if len(hits):
        watched = [p for p in policy.tags if policy.actions.get(p, "abort") == "abort"]
        watched += [p for p, act in policy.actions.items() if act == "abort" and p not in watched]
        named = "; ".join(_row_named(history, int(i), preview) for i in hits[:5])
        more = f"; and {len(hits) - 5} more" if len(hits) > 5 else ""
        what = "memorized" if not leaked[hits].any() else "memorized or leaked"
        triggers.append(f"rule tags={watched}: {len(hits)} watched row(s) "
                        f"{what}: {named}{more}")
    flagged = _newly_flagged(policy, history, strength, keys, forecast, leaked)
    if flagged:
        keys.update(f"mask:{history.ids[i]}" for i in flagged)
        alerts.append(_mask_alert(history, flagged, step, forecast, preview))

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
            matched = [forecast.tags[k] for k in matching_keys(forecast.tags, key)]
            if not matched:
                continue
            # a pattern's forecast is the sum over the tags it names (an upper bound where a
            # row carries two of them): the same rows a `tags` or `actions` pattern names
            expected = sum(float(t.final.expected) for t in matched)
            low = sum(float(t.final.low) for t in matched)
            high = sum(float(t.final.high) for t in matched)
            if expected > budget:
                text = (f"rule forecast_budget[{key!r}]: forecast for {key!r}: {expected:.0f} "
                        f"rows memorized by the end (range {low:.0f}-{high:.0f}) > "
                        f"budget {budget}")
                triggers.append(text)
                send(f"forecast:{key}", Alert("forecast", "WARN",
                     f"memwatch: forecast for {key!r} passes its budget", text, step))

    if policy.max_epsilon is not None:
        eps = audit_metrics(history).get("audit/epsilon_lb")
        if eps is not None and eps > policy.max_epsilon:
            text = (f"rule max_epsilon: the audit canaries give ε >= {eps:.2f} (one-run lower "
                    f"bound at 95 % confidence) > budget {policy.max_epsilon}")
            triggers.append(text)
            send("epsilon", Alert("epsilon", "WARN", "memwatch: the privacy audit's ε lower "
                                  f"bound passed {policy.max_epsilon}", text, step))

    streak = streak + 1 if triggers else 0
    fire = streak >= policy.patience
    reason = f"step {step}: " + "; ".join(triggers) if fire else ""
    if fire:
        stop = policy.action == "stop"
        title = "memwatch stops the run" if stop else "memwatch would stop the run"
        send("abort", Alert("abort", "ERROR" if stop else "WARN", title, reason, step))
    return Verdict(tuple(alerts), fire and policy.action == "stop", reason, frozenset(keys),
                   streak, flagged)


def _newly_flagged(policy: AbortPolicy, history, strength: np.ndarray, sent, forecast,
                   leaked: np.ndarray) -> tuple[int, ...]:
    """Rows whose action is "mask", memorized or leaked now (or at risk), not flagged before."""
    due = history.memorized[-1] | leaked
    risk = None if forecast is None else getattr(forecast, "risk", None)
    if policy.mask_risk is not None and risk is not None:
        due |= np.asarray(risk.score) >= policy.mask_risk
    due &= strength == ROW_ACTIONS.index("mask")
    return tuple(int(i) for i in np.flatnonzero(due) if f"mask:{history.ids[i]}" not in sent)


def _mask_alert(history, rows: tuple[int, ...], step: int, forecast, preview) -> Alert:
    risk = None if forecast is None else getattr(forecast, "risk", None)
    lines = []
    for i in rows:
        tags = tag_label(history.tags[i])
        why = ("memorized" if history.memorized[-1, i] else
               "leaked its PII" if history.leaked[-1, i]
               else f"at risk (p={float(risk.score[i]):.2f})")
        shown = preview(i) if preview is not None else f"[{tags}]"
        lines.append(f"{history.ids[i]} ({tags}) {why}: {shown}")
    text = (f"from step {step} on, {len(rows)} row(s) are masked out of the training loss "
            "wherever their continuation appears in a batch:\n" + "\n".join(lines))
    return Alert("mask", "WARN", f"memwatch masks {len(rows)} row(s) out of the loss", text,
                 step, tuple(history.ids[i] for i in rows))


def _row_named(history, i: int, preview) -> str:
    """``id [tags] preview``: a row as alerts name it, never with raw text."""
    tags = tag_label(history.tags[i])
    shown = preview(i) if preview is not None else ""
    return f"{history.ids[i]} [{tags}]" + (f" {shown}" if shown and not shown.startswith("[")
                                           else "")


def _row_alert(history, i: int, step: int, preview) -> Alert:
    row_id, tags = history.ids[i], tag_label(history.tags[i])
    shown = preview(i) if preview is not None else f"[{tags}]"
    text = (f"{row_id} ({tags}) reproduces all {history.cont_len} continuation tokens at step "
            f"{step}: {shown}")
    return Alert("memorized", "WARN", f"memwatch: watched row {row_id} memorized", text, step,
                 (row_id,))


def _leak_alert(history, i: int, step: int, preview) -> Alert:
    row_id, tags = history.ids[i], ",".join(history.tags[i]) or "untagged"
    shown = preview(i) if preview is not None else f"[{tags}]"
    text = (f"{row_id} ({tags}) reproduces its PII verbatim at step {step} (all "
            f"{int(history.span_tokens[i])} of its tokens, {int(history.match_prefix[-1, i])} "
            f"of {history.cont_len} continuation tokens in all): {shown}")
    return Alert("leaked", "WARN", f"memwatch: watched row {row_id} leaked its PII", text, step,
                 (row_id,))


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _patterns(value, name: str) -> tuple[str, ...]:
    """`value` (one pattern or a sequence of them) as a tuple of str, or TypeError saying so."""
    if isinstance(value, str):
        return (value,)
    if value is None or isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"AbortPolicy {name} must be a tag pattern or a sequence of them, e.g. "
                        f"('pii:*', 'canary'); () watches no tag; got {value!r}")
    out = tuple(value)
    bad = next((p for p in out if not isinstance(p, str)), None)
    if bad is not None:
        raise TypeError(f"AbortPolicy {name} holds {bad!r}; every entry is a tag pattern (a "
                        "str such as 'pii:*')")
    return out


def _mapping(value, name: str, example: str) -> dict:
    """`value` as a dict of str keys, or TypeError naming the setting and an example."""
    if not isinstance(value, Mapping):
        raise TypeError(f"AbortPolicy {name} must be a mapping tag pattern -> value, e.g. "
                        f"{example}; got {value!r}")
    bad = next((k for k in value if not isinstance(k, str)), None)
    if bad is not None:
        raise TypeError(f"AbortPolicy {name} has the key {bad!r}; keys are tag patterns (a "
                        "str such as 'pii:*', or '*' for every row)")
    return dict(value)
