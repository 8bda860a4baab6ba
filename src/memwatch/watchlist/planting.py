"""Planting canaries in a training stream, so that the monitor can watch them be memorized.

`insert_canaries` splices each canary of a `Watchlist.canaries(...)` a chosen number
of times into token data, a list of texts or a `datasets.Dataset`, and returns the
watchlist retagged by frequency (``canary:x<repeats>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from memwatch.watchlist import Watchlist
from memwatch.watchlist.tags import CANARY_IN, CANARY_OUT

DEFAULT_REPEATS = (1, 4, 16, 64)


@dataclass(frozen=True)
class CanaryInsertion:
    """`data` with the canaries planted; `repeats[id]` copies of each; `watchlist` retagged.

    The watchlist is the canaries with an extra tag ``canary:x<repeats>`` per row,
    so history and reports can split memorization by frequency.
    """

    data: object
    repeats: dict[str, int]
    watchlist: Watchlist


def insert_canaries(data, canaries: Watchlist, repeats: Sequence[int] = DEFAULT_REPEATS,
                    seed: int = 0, text_column: str = "text") -> CanaryInsertion:
    """Plant canary `k` ``repeats[k % len(repeats)]`` times at random places in `data`.

    Audit canaries (`Watchlist.canaries(n, audit=True)`): only the ``canary:in`` rows are
    planted, the j-th of them ``repeats[j % len(repeats)]`` times; ``canary:out`` rows
    never (tag ``canary:x0``), so the one-run audit compares trained and untrained halves.

    `data` is a 1-D token stream (canary tokens spliced in between tokens), a 2-D
    [sequences, tokens] array (each copy a new sequence: the canary, then the tail
    of a random existing sequence), a list of strings, or a `datasets.Dataset`
    (texts added in `text_column`; the canaries need their text). Tensors stay
    tensors, arrays stay arrays. The original items keep their order.
    """
    if not isinstance(canaries, Watchlist):
        raise TypeError("canaries must be a Watchlist (Watchlist.canaries(...))")
    reps = [int(r) for r in repeats]
    if not reps or any(r < 0 for r in reps):
        raise ValueError(f"repeats {list(repeats)} must be non-negative counts")
    inside, outside = canaries.tag_mask(CANARY_IN), canaries.tag_mask(CANARY_OUT)
    if inside.any() or outside.any():  # an audit: the in half planted, the out half never
        if 0 in reps:
            raise ValueError(f"repeats {reps} has 0: an audit's canary:in rows must each be "
                             "planted at least once (the canary:out rows are the unplanted ones)")
        rank = np.cumsum(inside) - 1
        per_row = [reps[rank[k] % len(reps)] if inside[k] else 0 for k in range(len(canaries))]
    else:
        per_row = [reps[k % len(reps)] for k in range(len(canaries))]
    order = np.repeat(np.arange(len(canaries)), per_row)
    rng = np.random.default_rng(seed)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        planted = _insert_tokens(data, canaries.tokens.numpy(), order, rng)
    else:
        texts = canaries.texts
        if texts is None:
            raise ValueError("text data needs canaries with their text: build them with a "
                             "tokenizer (Watchlist.canaries(n, tokenizer=...))")
        new = [texts[k] for k in order]
        if isinstance(data, (list, tuple)):
            planted = _interleave(list(data), new, rng)
        else:
            planted = _insert_dataset(data, new, rng, text_column)
    tags = [(*canaries.tags[k], f"canary:x{per_row[k]}") for k in range(len(canaries))]
    previews = [canaries.redacted_preview(i) for i in range(len(canaries))]
    wl = Watchlist(canaries.tokens, canaries.ids, tags, previews, spans=canaries.spans,
                   texts=canaries.texts)
    return CanaryInsertion(planted, dict(zip(canaries.ids, per_row, strict=True)), wl)


def _slots(n_old: int, n_new: int, rng) -> np.ndarray:
    """Positions in the merged sequence that hold new items (sorted), uniformly at random."""
    return np.sort(rng.choice(n_old + n_new, n_new, replace=False))


def _interleave(old: list, new: list, rng) -> list:
    new = [new[i] for i in rng.permutation(len(new))]
    is_new = np.zeros(len(old) + len(new), bool)
    is_new[_slots(len(old), len(new), rng)] = True
    it_old, it_new = iter(old), iter(new)
    return [next(it_new) if flag else next(it_old) for flag in is_new]


def _insert_tokens(data, rows: np.ndarray, order: np.ndarray, rng):
    as_tensor = isinstance(data, torch.Tensor)
    arr = data.numpy() if as_tensor else np.asarray(data)
    L = rows.shape[1]
    if arr.ndim == 1:
        pieces = [rows[k].astype(arr.dtype) for k in order]
        cuts = np.sort(rng.integers(0, len(arr) + 1, len(pieces)))
        out, last = [], 0
        for piece, cut in zip([pieces[i] for i in rng.permutation(len(pieces))], cuts, strict=True):
            out += [arr[last:cut], piece]
            last = cut
        merged = np.concatenate(out + [arr[last:]])
    elif arr.ndim == 2:
        if arr.shape[1] < L:
            raise ValueError(f"stream sequences have {arr.shape[1]} tokens; canaries need {L}")
        new = np.empty((len(order), arr.shape[1]), arr.dtype)
        new[:, :L] = rows[order]
        if len(arr):
            new[:, L:] = arr[rng.integers(0, len(arr), len(order)), L:]
        merged = np.stack(_interleave(list(arr), list(new), rng)) if len(arr) + len(new) \
            else arr
    else:
        raise ValueError(f"token stream has shape {arr.shape}; give 1-D or 2-D tokens")
    return torch.from_numpy(merged) if as_tensor else merged


def _insert_dataset(ds, texts: list[str], rng, text_column: str):
    from datasets import Dataset, concatenate_datasets

    if not isinstance(ds, Dataset):
        raise TypeError(f"cannot insert canaries into {type(ds).__name__}; give a token "
                        "tensor/array, a list of strings or a datasets.Dataset")
    if text_column not in ds.column_names:
        raise ValueError(f"dataset has no column {text_column!r}; it has {ds.column_names}")
    extra = {c: [texts[i] if c == text_column else None for i in range(len(texts))]
             for c in ds.column_names}
    merged = concatenate_datasets([ds, Dataset.from_dict(extra, features=ds.features)])
    positions = _interleave(list(range(len(ds))), list(range(len(ds), len(merged))), rng)
    return merged.select(positions)
