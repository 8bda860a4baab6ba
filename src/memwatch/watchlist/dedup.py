"""How often each watchlist continuation occurs in a token stream: one pass, hashed windows.

Repetition drives memorization, so a row's duplicate count is the first thing to
look at beside its score. Every window of `cont_len` tokens in the stream is
hashed (a polynomial hash in wrapping uint64 arithmetic, vectorised over the
stream); windows whose hash equals a target's are compared token by token, so
hash collisions never miscount.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from memwatch.probe import CONT_LEN, PROMPT_LEN

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: a full-period multiplier mod 2**64


def window_hashes(tokens: np.ndarray, width: int) -> np.ndarray:
    """uint64 [len(tokens) - width + 1]: the hash of every `width`-token window (1-D input)."""
    x = np.asarray(tokens).astype(np.uint64) + np.uint64(1)
    n = len(x) - width + 1
    if n <= 0:
        return np.zeros(0, np.uint64)
    h = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            h = h * _BASE + x[j : j + n]
    return h


def row_hashes(rows: np.ndarray) -> np.ndarray:
    """uint64 [k]: the same hash as `window_hashes` for each row of a 2-D array."""
    x = np.asarray(rows).astype(np.uint64) + np.uint64(1)
    h = np.zeros(len(x), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(x.shape[1]):
            h = h * _BASE + x[:, j]
    return h


def _chunks(stream) -> Iterable[np.ndarray]:
    """1-D token arrays; windows never cross two of them."""
    if isinstance(stream, (torch.Tensor, np.ndarray)):
        arr = stream.numpy() if isinstance(stream, torch.Tensor) else stream
        if arr.ndim == 1:
            yield arr
            return
        if arr.ndim == 2:
            yield from arr
            return
        raise ValueError(f"token stream has shape {tuple(arr.shape)}; give a 1-D stream, a 2-D "
                         "[sequences, tokens] array or an iterable of 1-D sequences")
    for item in stream:
        if isinstance(item, torch.Tensor):
            item = item.numpy()
        yield np.asarray(item)


def duplicate_counts(targets, stream, prompt_len: int = PROMPT_LEN,
                     cont_len: int = CONT_LEN) -> np.ndarray:
    """int64 [n]: occurrences in `stream` of each target row's tokens [prompt_len:+cont_len].

    `targets` is a LongTensor/array [n, >= prompt_len + cont_len]; `stream` a 1-D
    token stream, a 2-D [sequences, tokens] array, or any iterable of 1-D token
    sequences (a streaming dataset's ``input_ids``), read once. Windows do not
    cross sequence boundaries.
    """
    rows = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if rows.ndim != 2 or rows.shape[1] < prompt_len + cont_len:
        raise ValueError(f"targets have shape {tuple(rows.shape)}; need [n, >= "
                         f"{prompt_len + cont_len}]")
    conts = rows[:, prompt_len : prompt_len + cont_len].astype(np.int64)
    hashes = row_hashes(conts)
    # Identical continuations share one count.
    uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    counts = np.zeros(len(uniq), np.int64)
    for chunk in _chunks(stream):
        h = window_hashes(chunk, cont_len)
        pos = np.flatnonzero(np.isin(h, uniq))
        if not len(pos):
            continue
        slot = np.searchsorted(uniq, h[pos])
        chunk = np.asarray(chunk).astype(np.int64)
        for p, s in zip(pos.tolist(), slot.tolist(), strict=True):
            if np.array_equal(chunk[p : p + cont_len], conts[first[s]]):
                counts[s] += 1
    return counts[inverse.reshape(-1)]
