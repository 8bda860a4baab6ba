"""Targeted loss masking: find flagged rows' continuations in a training batch, mask their labels.

A flagged watchlist row must stop being learned while the run goes on: every later
occurrence of its continuation (tokens ``prompt_len : prompt_len + cont_len``) in a
training batch is taken out of the loss by setting those positions' labels to the
ignore index (-100, what transformers' and PyTorch's cross-entropy skip).

What counts as an occurrence: any run of `MaskSpec.window` consecutive tokens of a
flagged continuation lying inside one sequence of the batch. Every position covered
by such a window is masked, so a whole continuation is masked entirely, and a row cut
across two sequences of a batch (the end of one, the start of the next, as packed
pretraining data does) is masked in each piece that holds at least `window` of its
tokens; a piece shorter than `window` is not found. The prompt is never masked:
without the continuation the prompt's own tokens do not make the row extractable.

A short record's row (`memwatch.watchlist.pii_rows`: PII near the end of a CSV row,
a JSON field, a chat turn) has fewer than `window` tokens from its PII to the record's
end; its continuation is those tokens, the end-of-document token the training stream
puts after the record, and that same token again up to ``cont_len``. So a continuation
ending in a run of one token too long to leave `window` tokens before it is also found
by its tokens up to and including the first of that run: the record's tail and its
end-of-document token, exactly what the training stream holds.

Finding them: a polynomial rolling hash of every `window`-token run of the batch
(two primes near 2**31 combined into one 62-bit key, computed with prefix sums: a
fixed number of tensor operations whatever the window), looked up with
``torch.searchsorted`` in the sorted keys of the flagged windows, on the batch's
device. A key match is checked against the tokens before anything is masked, so a
hash collision never masks text that is not flagged.

`MaskSpec.every` masks only every k-th continuation token (continuation offsets
0, k, 2k, ...), like goldfish loss, but at the same offsets of the row at every
occurrence, so the same tokens are never learned: the model cannot reproduce the
continuation verbatim, and keeps learning from the rest of the text.

`SkipFlagged` drops instead of masking, where the data pipeline knows each row's
watchlist id (Pythia's preshuffled ``.bin`` data: the sequence index; a dataset with
an id column).

Labels follow the transformers convention: ``labels[b, t]`` is the target of the
token at position ``t`` (the model shifts them), i.e. ``labels == input_ids`` where
nothing is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

IGNORE_INDEX = -100
MODULI = (2147483647, 2147483629)  # primes below 2**31: products of two residues fit int64
BASE = 1_000_003


@dataclass(frozen=True)
class MaskSpec:
    """How flagged rows are masked.

    window: tokens of a flagged continuation that must appear together in one sequence
        to count as an occurrence (at most the continuation's length; shorter finds
        smaller pieces of a cut row, and matches more text that merely shares a phrase).
    every: mask every k-th continuation token (1: all of them).
    ignore_index: the label value the loss skips.
    """

    window: int = 16
    every: int = 1
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        for name in ("window", "every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MaskSpec.{name} must be an int >= 1; got {value!r}")
        if not isinstance(self.ignore_index, int):
            raise ValueError(f"MaskSpec.ignore_index must be an int; got {self.ignore_index!r}")


@lru_cache(maxsize=16)
def _powers(length: int, moduli: tuple[int, ...], device: torch.device):
    """(base**i, base**-i) mod p for i < length, int64 [len(moduli), 1, length] each."""
    pows = np.empty((len(moduli), length), np.int64)
    invs = np.empty_like(pows)
    for k, p in enumerate(moduli):
        b = BASE % p
        if b == 0:
            raise ValueError(f"hash modulus {p} divides the base {BASE}; pick another prime")
        inv = pow(b, p - 2, p)
        up = down = 1
        for i in range(length):
            pows[k, i], invs[k, i] = up, down
            up, down = up * b % p, down * inv % p
    return (torch.from_numpy(pows)[:, None].to(device), torch.from_numpy(invs)[:, None].to(device))


def window_keys(tokens: torch.Tensor, window: int, moduli: tuple[int, ...] = MODULI
                ) -> torch.Tensor:
    """int64 [B, T - window + 1]: the hash key of every `window`-token run of each row.

    key = sum_j tokens[t + j] * BASE**j mod p, one residue per modulus, combined
    (``r0 * p1 + r1`` for two moduli). Computed from prefix sums of ``x_t * BASE**t``
    and scaled back by ``BASE**-t``, so the cost does not grow with `window`.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [batch, seq_len]; got shape {tuple(tokens.shape)}")
    n, length = tokens.shape
    if length < window:
        return torch.empty(n, 0, dtype=torch.int64, device=tokens.device)
    mod = torch.tensor(moduli, dtype=torch.int64, device=tokens.device)[:, None, None]
    pows, invs = _powers(length, tuple(moduli), tokens.device)
    terms = tokens.long()[None] % mod * pows % mod  # [K, B, T], each < p < 2**31
    prefix = torch.nn.functional.pad(terms.cumsum(-1), (1, 0))  # sums < T * 2**31: no overflow
    runs = (prefix[..., window:] - prefix[..., :-window]) % mod * invs[..., : length - window + 1]
    residues = runs % mod
    key = residues[0]
    for k in range(1, len(moduli)):
        key = key * moduli[k] + residues[k]
    return key


class FlaggedWindows:
    """The flagged rows' continuation windows, ready to be looked up in training batches.

    continuations: int64 [R, cont_len], one flagged row's continuation each.
    spec: the `MaskSpec`. moduli: the hash's primes (small ones force collisions, in tests).
    """

    def __init__(self, continuations: torch.Tensor, spec: MaskSpec | None = None, *,
                 moduli: tuple[int, ...] = MODULI):
        self.spec = MaskSpec() if spec is None else spec
        self.moduli = tuple(moduli)
        cont = torch.as_tensor(continuations).long().cpu()
        if cont.dim() != 2:
            raise ValueError(f"continuations must be [rows, cont_len]; got {tuple(cont.shape)}")
        width = self.spec.window
        if len(cont) and cont.shape[1] < width:
            raise ValueError(f"MaskSpec.window={width} is longer than the continuation "
                             f"({cont.shape[1]} tokens); use window <= {cont.shape[1]}")
        runs = cont.unfold(1, width, 1) if len(cont) else cont.new_empty(0, 0, width)
        keys = window_keys(cont, width, self.moduli).reshape(-1).numpy()
        offsets = torch.arange(runs.shape[1]).repeat(len(cont)).numpy()
        windows = runs.reshape(-1, width).numpy()
        order = np.argsort(keys, kind="stable")
        keys, windows, offsets = keys[order], windows[order], offsets[order]
        # one entry per distinct window (the first row and offset that hold it); distinct
        # windows sharing a key (a collision inside the flagged set) are all kept, and the
        # lookup tries each of them
        repeat = (keys[1:] == keys[:-1]) & (windows[1:] == windows[:-1]).all(1)
        keep = np.concatenate([[True], ~repeat]) if len(keys) else np.zeros(0, bool)
        keys, windows, offsets = keys[keep], windows[keep], offsets[keep]
        self.multiplicity = int(np.unique(keys, return_counts=True)[1].max()) if len(keys) else 0
        self._cpu = (torch.from_numpy(keys), torch.from_numpy(windows), torch.from_numpy(offsets))
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        # short records' rows (see the module docstring), by the length of their tail
        tails = short_tails(cont, width)
        self._short = [FlaggedWindows(cont[torch.from_numpy(tails == t), :t],
                                      replace(self.spec, window=int(t)), moduli=self.moduli)
                       for t in np.unique(tails[tails > 0])]

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on:
            self._on[device] = tuple(t.to(device) for t in self._cpu)
        return self._on[device]

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """bool [B, T]: the positions of `input_ids` whose labels are masked."""
        ids = input_ids if input_ids.dim() == 2 else input_ids.reshape(1, -1)
        width, every = self.spec.window, self.spec.every
        out = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        for short in self._short:
            out |= short.positions(ids)
        if self.multiplicity == 0 or ids.shape[1] < width:
            return out.reshape(input_ids.shape)
        keys, windows, offsets = self._tables(ids.device)
        found = window_keys(ids, width, self.moduli)  # [B, S], S = T - width + 1
        runs = ids.long().unfold(1, width, 1)  # [B, S, width], a view
        lo = torch.searchsorted(keys, found)
        hit = torch.zeros(found.shape, dtype=torch.bool, device=ids.device)
        offset = torch.zeros(found.shape, dtype=torch.int64, device=ids.device)
        for d in range(self.multiplicity):
            idx = (lo + d).clamp(max=len(keys) - 1)
            same = (keys[idx] == found) & (windows[idx] == runs).all(-1) & ~hit
            hit |= same
            offset = torch.where(same, offsets[idx], offset)
        # position t is masked when a matched window starting at s in (t - width, t] puts
        # continuation offset offset[s] + t - s on a masked offset (a multiple of `every`).
        # Windows of one occurrence share the phase (offset[s] - s) mod every: count the
        # matched starts of each phase over the last `width` positions with a prefix sum.
        n_starts = found.shape[1]
        t = torch.arange(ids.shape[1], device=ids.device)
        first = (t - width + 1).clamp(min=0)  # the window starts covering position t:
        last = t.clamp(max=n_starts - 1) + 1  # first <= s < last
        phase = (offset - torch.arange(n_starts, device=ids.device)) % every
        for c in range(every):
            counts = torch.nn.functional.pad((hit & (phase == c)).int().cumsum(1), (1, 0))
            covered = counts[:, last] - counts[:, first]
            out |= (covered > 0) & ((t + c) % every == 0)
        return out.reshape(input_ids.shape)

    def apply(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`labels` (default: a copy of `input_ids`) with the flagged positions set to ignore.

        Returns a new tensor when a row is flagged, `labels` itself when none is; never
        writes into its arguments (labels are often the input ids themselves).
        """
        labels = input_ids.clone() if labels is None else labels
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: masking needs labels aligned with "
                             "the input ids (the transformers convention; the model shifts)")
        if self.multiplicity == 0 and not self._short:
            return labels
        return labels.masked_fill(self.positions(input_ids), self.spec.ignore_index)


def short_tails(continuations: torch.Tensor, window: int) -> np.ndarray:
    """int [R]: for each continuation ending in a run of one token that leaves fewer than
    `window` tokens before the run's second token, that count (the tail up to and including
    the run's first token); 0 for the others."""
    cont = continuations.numpy()
    if cont.size == 0:
        return np.zeros(len(cont), dtype=np.int64)
    # the start of each row's trailing run of copies of its last token
    same = cont == cont[:, -1:]
    run_start = np.where(same.all(1), 0, cont.shape[1] - np.argmin(same[:, ::-1], axis=1))
    tails = run_start + 1
    padded = (run_start >= 1) & (run_start <= cont.shape[1] - 2)  # a record, then >= 2 copies
    return np.where(padded & (tails < window), tails, 0)


class SkipFlagged(torch.utils.data.IterableDataset):
    """Iterates `source`, leaving out the items whose row the monitor has flagged.

    `source`: any iterable: a sampler's indices (``DataLoader(ds, sampler=SkipFlagged(
    RandomSampler(ds), mon, lambda i: f"pythia:{i}"))``, Pythia's preshuffled data,
    whose watchlist ids are ``pythia:<index>``) or the examples themselves
    (``SkipFlagged(ds, mon, lambda ex: ex["id"])``). `row_id(item)` gives the item's
    watchlist id. The flagged set is read at every item, so a row flagged mid-epoch is
    dropped from then on (a DataLoader's prefetched batches aside). ``len()`` is the
    source's, an upper bound. It must run in the main process, and not under
    torch.distributed, where ranks dropping different rows would run different numbers
    of batches and deadlock: mask there (`MemWatch.mask`).
    """

    def __init__(self, source: Iterable, monitor, row_id: Callable[[object], str]):
        self.source, self.monitor, self.row_id = source, monitor, row_id

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator:
        from memwatch.distributed import rank_world

        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("SkipFlagged runs in a DataLoader worker, where the rows the "
                               "monitor flags never arrive; wrap the sampler instead (it runs "
                               "in the main process), or use num_workers=0")
        if rank_world()[1] > 1:
            raise RuntimeError("SkipFlagged under torch.distributed would give ranks different "
                               "numbers of batches (a deadlock); mask flagged rows instead: "
                               "labels = monitor.mask(input_ids, labels)")
        seen, skip = None, frozenset()
        for item in self.source:
            flagged = self.monitor.flagged
            if flagged is not seen:
                seen, skip = flagged, frozenset(flagged)
            if not skip or self.row_id(item) not in skip:
                yield item
