"""Tag patterns: which watchlist rows a pattern such as ``pii:*`` names.

One meaning everywhere (`Watchlist`, `History`, `AbortPolicy`, the forecast's keys):
a pattern is an fnmatch pattern (case-sensitive) matched against each of a row's
tags, and ``"*"`` names every row, tagged or not.
"""

from __future__ import annotations

from collections.abc import Sequence
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
