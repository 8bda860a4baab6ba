"""The rows `memwatch eval` scores, read batch by batch: a watchlist in memory, or Pythia's data.

A row source answers `len`, `batch(lo, hi, need)` (index, ids, tags and the first
`need` tokens, int64, of rows [lo, hi)), `check(need)` (fail fast on unusable rows) and
`update_fingerprint(h, need)` (what identifies the rows, for resuming).
`PythiaRows` streams: it holds the selected indices as ranges and reads each batch
from the ``.bin`` when asked (uint16 on disk, converted to int64 per batch), so
memory does not grow with the number of rows.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from memwatch.watchlist import Watchlist
from memwatch.watchlist.pythia import PYTHIA_ID, IndexedDataset, IndexRanges, pythia_id

# Bytes of each end of the data files that enter a streamed source's fingerprint.
_FINGERPRINT_BYTES = 1 << 16


def default_index(watchlist: Watchlist) -> np.ndarray:
    """int64 [n]: the Pythia sequence index of ``pythia:<i>`` ids, else the row positions."""
    found = [PYTHIA_ID.fullmatch(i) for i in watchlist.ids]
    if all(found):
        return np.array([int(m.group(1)) for m in found], np.int64)
    return np.arange(len(watchlist), dtype=np.int64)


class WatchlistRows:
    """The rows of a `Watchlist` in memory; `index` is the results' index column."""

    def __init__(self, watchlist: Watchlist, index: np.ndarray | None = None):
        n = len(watchlist)
        index = default_index(watchlist) if index is None else np.asarray(index, np.int64)
        if index.shape != (n,):
            raise ValueError(f"index has shape {index.shape}; the watchlist has {n} rows")
        self.watchlist, self.index = watchlist, index

    def __len__(self) -> int:
        return len(self.watchlist)

    def batch(self, lo: int, hi: int, need: int):
        wl = self.watchlist
        return self.index[lo:hi], wl.ids[lo:hi], wl.tags[lo:hi], wl.tokens[lo:hi, :need]

    def prompt_lens(self, lo: int, hi: int) -> list[int | None] | None:
        """The own prompt lengths of rows [lo, hi) (short-record PII rows), or None."""
        lens = self.watchlist.prompt_lens
        return None if lens is None else lens[lo:hi]

    def check(self, need: int) -> tuple[int, str]:
        """Raise ValueError for a row shorter than `need`; returns (the largest token id,
        where it is)."""
        self.watchlist.validate(need, 0)
        return _largest(self.watchlist.tokens[:, :need], self.watchlist.ids)

    def update_fingerprint(self, h, need: int) -> None:
        """Feed the rows' indices, ids and tokens to the hash `h`."""
        h.update(np.ascontiguousarray(self.index, np.int64).tobytes())
        h.update("\0".join(self.watchlist.ids).encode())
        h.update(self.watchlist.tokens[:, :need].contiguous().numpy().astype(np.int64).tobytes())
        if self.watchlist.prompt_lens is not None:  # rows probed with shorter prompts
            h.update(json.dumps(self.watchlist.prompt_lens).encode())


def _largest(tokens: torch.Tensor, ids) -> tuple[int, str]:
    top = int(tokens.max())
    row, col = (int(x) for x in (tokens == top).nonzero()[0])
    return top, f"watchlist sequence {ids[row]!r} has token id {top} at position {col}"


class PythiaRows:
    """Rows of a Megatron ``.bin``/``.idx`` pair selected by an index spec, read per batch."""

    tags = ("sample",)

    def __init__(self, prefix: str | os.PathLike, indices: str | IndexRanges):
        self.data = IndexedDataset(prefix)
        self.ranges = IndexRanges.parse(indices) if isinstance(indices, str) else indices
        if not len(self.ranges):
            raise ValueError(f"the index selection {str(indices)!r} selects no sequence")

    def __len__(self) -> int:
        return len(self.ranges)

    def batch(self, lo: int, hi: int, need: int):
        index = self.ranges.take(lo, hi)
        tokens = self.data.read_rows(index, need)
        return (index, [pythia_id(i) for i in index.tolist()], [self.tags] * len(index),
                torch.from_numpy(tokens.astype(np.int64)))

    def check(self, need: int) -> tuple[int, str]:
        """Raise for a selected sequence out of range or shorter than `need` (the whole
        index is read in bounded chunks); returns (the largest token id of the first
        1024 rows, where it is); every batch is checked again before it is scored."""
        self.data.check_lengths(self.ranges, need)
        _, ids, _, tokens = self.batch(0, min(len(self), 1024), need)
        return _largest(tokens, ids)

    def update_fingerprint(self, h, need: int) -> None:
        """Feed the selection and the data files' sizes, header and ends to the hash `h`
        (hashing all 146 million rows would take as long as scoring them with a small model)."""
        h.update(json.dumps([repr(self.ranges), need]).encode())
        for path in (self.data.prefix + ".idx", self.data.prefix + ".bin"):
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                h.update(str(size).encode() + f.read(_FINGERPRINT_BYTES))
                f.seek(max(0, size - _FINGERPRINT_BYTES))
                h.update(f.read(_FINGERPRINT_BYTES))
