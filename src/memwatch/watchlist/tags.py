"""Tag patterns: which watchlist rows a pattern such as ``pii:*`` names.

One meaning everywhere (`Watchlist`, `History`, `AbortPolicy`'s ``tags``,
``max_fraction``, ``actions`` and ``forecast_budget``): a pattern is an fnmatch pattern
(case-sensitive) matched against each of a row's tags, and ``"*"`` names every row,
tagged or not. `check_patterns` refuses a pattern that names no row; `matching_keys`
picks the per-tag results (e.g. the forecast's) a pattern names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

import numpy as np

ALL_ROWS = "*"  # the pattern (and forecast key) for every row, tagged or not
# audit canaries drawn into training / left out (`Watchlist.canaries(n, audit=True)`)
CANARY_IN, CANARY_OUT = "canary:in", "canary:out"


def tag_mask(tags: Sequence[Sequence[str]], pattern: str) -> np.ndarray:
    """bool [n]: the rows (one tag tuple each in `tags`) that `pattern` names."""
    if pattern == ALL_ROWS:
        return np.ones(len(tags), dtype=bool)
    return np.array([any(fnmatchcase(t, pattern) for t in row) for row in tags], dtype=bool)


def tag_label(row_tags: Sequence[str]) -> str:
    """How logs and alerts name one row's tags: joined by commas, or ``untagged``."""
    return ",".join(row_tags) or "untagged"


def tag_set(tags: Sequence[Sequence[str]]) -> list[str]:
    """Every tag some row carries, sorted (the keys per-tag metrics and forecasts use)."""
    return sorted({t for row in tags for t in row})


def matching_keys(keys: Iterable[str], pattern: str) -> list[str]:
    """The keys of per-tag results (tags, plus ``"*"`` for all rows) that `pattern` names.

    ``"*"`` names the all-rows key alone (not every tag, which would count rows twice);
    any other pattern names the tags it matches, in the order of `keys`.
    """
    keys = list(keys)
    if pattern == ALL_ROWS:
        return [ALL_ROWS] if ALL_ROWS in keys else []
    return [k for k in keys if k != ALL_ROWS and fnmatchcase(k, pattern)]


def check_patterns(patterns: Iterable[str], tags: Sequence[Sequence[str]], where: str) -> None:
    """Raise ValueError naming the first pattern of `patterns` that names no row of `tags`.

    `where` names the setting in the message (e.g. ``"AbortPolicy.actions"``). The message
    lists the tags that exist, and says so when the pattern matches one ignoring case.
    """
    present = tag_set(tags)
    for pattern in patterns:
        if tag_mask(tags, pattern).any():
            continue
        folded = [t for t in present if fnmatchcase(t.lower(), pattern.lower())]
        case = (f" (tags are case-sensitive: it matches {folded[:3]} ignoring case)"
                if folded else "")
        raise ValueError(f"{where} pattern {pattern!r} names no watchlist row{case}; the "
                         f"watchlist's tags are {present or 'none (untagged rows)'}: use one "
                         "of them, a pattern such as 'pii:*', or '*' for every row")
