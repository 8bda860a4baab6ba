"""The watchlist: token rows the monitor probes, each with a stable id and tags.

Rows are token ids [n, L] with L >= prompt_len + cont_len. Ids are unique
strings; tags are short labels such as ``pii:EMAIL_ADDRESS``, ``canary`` or
``sample``. Raw text, when a row came from text, is kept only if asked for;
sinks see `redacted_preview(i)` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

import numpy as np
import torch


class Watchlist:
    """Token rows with stable ids and tags; validated at construction, never pickled."""

    def __init__(
        self,
        tokens: torch.Tensor,
        ids: Sequence[str],
        tags: Sequence[Sequence[str]],
        previews: Sequence[str] | None = None,
    ):
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.as_tensor(np.asarray(tokens))
        if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(
                f"watchlist tokens must be a 2-D integer array [rows, tokens]; got shape "
                f"{tuple(tokens.shape)} dtype {tokens.dtype}")
        if len(tokens) == 0:
            raise ValueError("the watchlist is empty: give it at least one row")
        n = len(tokens)
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} watchlist rows")
        if len(tags) != n:
            raise ValueError(f"{len(tags)} tag lists for {n} watchlist rows")
        ids = [str(i) for i in ids]
        seen: dict[str, int] = {}
        for i, row_id in enumerate(ids):
            if row_id in seen:
                raise ValueError(f"watchlist id {row_id!r} is used by rows {seen[row_id]} and {i}")
            seen[row_id] = i
        if (tokens < 0).any():
            row, col = (int(x) for x in (tokens < 0).nonzero()[0])
            raise ValueError(f"watchlist sequence {ids[row]!r} has a negative token id "
                             f"{int(tokens[row, col])} at position {col}")
        self.tokens = tokens.long()
        self.ids = ids
        self.tags = [tuple(str(t) for t in (row if not isinstance(row, str) else [row]))
                     for row in tags]
        if previews is not None and len(previews) != n:
            raise ValueError(f"{len(previews)} previews for {n} watchlist rows")
        self._previews = list(previews) if previews is not None else None

    @classmethod
    def from_tokens(cls, tokens, ids: Sequence[str] | None = None,
                    tags: Sequence[Sequence[str]] | Sequence[str] | str | None = None) -> Watchlist:
        """A watchlist of the given token rows; ids default to ``row-<i>``, tags to none.

        `tags` may be one tag (or tag list) for every row, or one entry per row.
        """
        tokens = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(np.asarray(tokens))
        n = len(tokens)
        ids = [f"row-{i}" for i in range(n)] if ids is None else list(ids)
        if tags is None:
            tags = [()] * n
        elif isinstance(tags, str):
            tags = [(tags,)] * n
        elif len(tags) and all(isinstance(t, str) for t in tags) and len(tags) != n:
            tags = [tuple(tags)] * n
        return cls(tokens, ids, tags)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for row in self.tags:
            for t in row:
                counts[t] = counts.get(t, 0) + 1
        return f"Watchlist({len(self)} rows x {self.tokens.shape[1]} tokens, tags={counts})"

    def validate(self, prompt_len: int = 32, cont_len: int = 32,
                 vocab_size: int | None = None) -> None:
        """Raise ValueError naming the first row unusable with these lengths or this vocab."""
        need = prompt_len + cont_len
        if self.tokens.shape[1] < need:
            raise ValueError(
                f"watchlist sequence {self.ids[0]!r} has {self.tokens.shape[1]} tokens; "
                f"prompt_len + cont_len = {need} needs at least {need}")
        if vocab_size is not None:
            bad = self.tokens[:, :need] >= vocab_size
            if bad.any():
                row, col = (int(x) for x in bad.nonzero()[0])
                raise ValueError(
                    f"watchlist sequence {self.ids[row]!r} has token id "
                    f"{int(self.tokens[row, col])} at position {col}; the model's vocabulary "
                    f"has {vocab_size} ids")

    def tag_mask(self, pattern: str) -> np.ndarray:
        """bool [n]: rows with a tag matching `pattern` (fnmatch, e.g. ``pii:*``)."""
        return np.array([any(fnmatchcase(t, pattern) for t in row) for row in self.tags], bool)

    def redacted_preview(self, i: int) -> str:
        """A preview of row `i` safe to show in logs and dashboards (no raw PII)."""
        if self._previews is not None:
            return self._previews[i]
        tags = ",".join(self.tags[i]) or "untagged"
        return f"[{tags}] {self.tokens.shape[1]} tokens"

    def select(self, mask_or_index) -> Watchlist:
        """The rows picked by a bool mask or an index array, in that order."""
        idx = np.asarray(mask_or_index)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        return Watchlist(
            self.tokens[torch.as_tensor(idx, dtype=torch.long)],
            [self.ids[i] for i in idx], [self.tags[i] for i in idx],
            None if self._previews is None else [self._previews[i] for i in idx])

    def shard(self, rank: int, world_size: int) -> Watchlist:
        """Rows ``rank::world_size``: the slice one distributed rank probes."""
        return self.select(np.arange(rank, len(self), world_size))

    def __add__(self, other: Watchlist) -> Watchlist:
        width = min(self.tokens.shape[1], other.tokens.shape[1])
        previews = None
        if self._previews is not None or other._previews is not None:
            previews = [self.redacted_preview(i) for i in range(len(self))] + \
                [other.redacted_preview(i) for i in range(len(other))]
        return Watchlist(torch.cat([self.tokens[:, :width], other.tokens[:, :width]]),
                         self.ids + other.ids, self.tags + other.tags, previews)
