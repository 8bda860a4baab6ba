"""Megatron / GPT-NeoX `MMapIndexedDataset` files (.idx + .bin), read with numpy memmaps,
and the facts about the Pythia suite that memwatch relies on (the ``PYTHIA_*`` constants).

This is the layout Pythia's preshuffled Pile ships in (uint16 tokens, one item per
2049-token training sequence, 1024 sequences per optimizer step). The ``.idx``
file is, little-endian::

    b"MMIDIDX\\x00\\x00"            9 bytes magic
    version                       uint64 (= 1)
    dtype code                    uint8  (see DTYPES)
    n = number of sequences       uint64
    d = number of doc_idx entries uint64
    sizes[n]                      int32  tokens per sequence
    pointers[n]                   int64  byte offset of each sequence in the .bin
    doc_idx[d]                    int64  sequence index where each document starts (+ n)

and the ``.bin`` file is the concatenated token arrays. No torch, no pickle.

Two ways to read: `IndexedDataset.__getitem__` / `read` go through numpy memmaps
(convenient for a watchlist of thousands of rows); `read_rows` reads only the bytes
asked for with positioned reads, so scanning the paper's 146 million rows keeps
memory at one batch (`memwatch eval --pythia-data` streams this way, with
`IndexRanges` holding the selected indices as ranges, not as an array).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Sequence

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# GPT-NeoX's codes (megatron/data/indexed_dataset.py). Codes 6 and 7 are floats and
# cannot hold token ids; they are known so that the error can say what the file holds.
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
          6: np.float32, 7: np.float64, 8: np.uint16}
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, n sequences, n doc_idx

# ---- the Pythia suite (Biderman et al. 2023; the Pythia README) -----------------------------
# 1024 sequences of 2049 tokens per optimizer step: 2048 predicted tokens each.
PYTHIA_SEQS_PER_STEP = 1024
PYTHIA_TOKENS_PER_STEP = PYTHIA_SEQS_PER_STEP * 2048
PYTHIA_FINAL_STEP = 143000
# Total parameters of the Pythia models, embeddings included.
PYTHIA_PARAMS = {
    "14m": 14_067_712, "31m": 30_494_720, "70m": 70_426_624, "160m": 162_322_944,
    "410m": 405_334_016, "1b": 1_011_781_632, "1.4b": 1_414_647_808,
    "2.8b": 2_775_208_960, "6.9b": 6_857_302_016, "12b": 11_846_072_320,
}
# Watchlist ids of rows read from Pythia's data, as its memorization eval numbers them.
PYTHIA_ID = re.compile(r"pythia:(\d+)")


def pythia_id(index: int) -> str:
    """The watchlist id of sequence `index` of Pythia's training data (``pythia:<index>``)."""
    return f"pythia:{int(index)}"


# Index entries checked per chunk: bounded memory whatever the file's size.
_CHECK_CHUNK = 1 << 18
# Largest span of index entries read in one go for scattered indices (12 bytes each).
_SPAN_ENTRIES = 1 << 22


def _code_of(dtype) -> int:
    dtype = np.dtype(dtype)
    for code, candidate in DTYPES.items():
        if np.dtype(candidate) == dtype and dtype.kind in "iu":
            return code
    raise ValueError(f"token dtype {dtype} has no integer code in the MMapIndexedDataset "
                     f"format; use one of uint8, int8, int16, int32, int64, uint16")


class IndexedDataset:
    """Read-only view of a ``prefix.idx`` / ``prefix.bin`` pair; item ``i`` is a token array.

    The header and the index are checked when opened: a wrong magic, an unknown
    version or dtype code, a truncated ``.idx`` or a ``.bin`` too short for the
    pointers it lists raise ValueError naming the file.
    """

    def __init__(self, prefix: str | os.PathLike):
        prefix = os.fspath(prefix)
        for ext in (".idx", ".bin"):
            if prefix.endswith(ext):
                prefix = prefix[: -len(ext)]
        self.prefix = prefix
        idx_path, bin_path = prefix + ".idx", prefix + ".bin"
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} does not exist; from_pythia needs the .idx and "
                                        f".bin pair named by the prefix {prefix!r}")
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise ValueError(f"{idx_path} is truncated: {len(head)} bytes, shorter than the "
                             f"{_HEADER.size}-byte MMapIndexedDataset header")
        magic, version, code, n, d = _HEADER.unpack(head)
        if magic != MAGIC:
            raise ValueError(f"{idx_path} is not a Megatron MMapIndexedDataset index: magic "
                             f"{magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise ValueError(f"{idx_path} has index version {version}; only version {VERSION} "
                             "is supported")
        if code not in DTYPES:
            raise ValueError(f"{idx_path} has unknown dtype code {code}; known codes "
                             f"{sorted(DTYPES)}")
        if np.dtype(DTYPES[code]).kind not in "iu":
            raise ValueError(f"{idx_path} holds {np.dtype(DTYPES[code])} data (code {code}), "
                             "not token ids")
        need = _HEADER.size + 4 * n + 8 * n + 8 * d
        if idx_size < need:
            raise ValueError(f"{idx_path} is truncated: {idx_size} bytes, but its header lists "
                             f"{n} sequences and {d} doc_idx entries ({need} bytes)")
        self.dtype = np.dtype(DTYPES[code])
        off = _HEADER.size
        self.sizes = np.memmap(idx_path, np.int32, "r", offset=off, shape=(n,)) if n else \
            np.zeros(0, np.int32)
        off += 4 * n
        self.pointers = np.memmap(idx_path, np.int64, "r", offset=off, shape=(n,)) if n else \
            np.zeros(0, np.int64)
        off += 8 * n
        self.doc_idx = np.memmap(idx_path, np.int64, "r", offset=off, shape=(d,)) if d else \
            np.zeros(0, np.int64)
        self._idx_path, self._bin_path, self._n = idx_path, bin_path, n
        bin_size = os.path.getsize(bin_path)
        for lo in range(0, n, _CHECK_CHUNK):
            hi = min(n, lo + _CHECK_CHUNK)
            sizes, pointers = self._index_entries(lo, hi)
            if (sizes < 0).any() or (pointers < 0).any():
                raise ValueError(f"{idx_path} is corrupt: negative sizes or pointers")
            ends = pointers + sizes.astype(np.int64) * self.dtype.itemsize
            last = int(np.argmax(ends))
            if int(ends[last]) > bin_size:
                raise ValueError(f"{bin_path} is truncated: {bin_size} bytes, but sequence "
                                 f"{lo + last} of {idx_path} ends at byte {int(ends[last])}")
        self._bin = np.memmap(bin_path, self.dtype, "r") if bin_size >= self.dtype.itemsize \
            else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    def _index_entries(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(sizes int32 [hi - lo], pointers int64 [hi - lo]) of sequences [lo, hi), read from
        the file (no memmap: the pages read do not stay in this process's memory)."""
        with open(self._idx_path, "rb", buffering=0) as f:
            sizes = np.frombuffer(os.pread(f.fileno(), 4 * (hi - lo), _HEADER.size + 4 * lo),
                                  np.int32)
            pointers = np.frombuffer(os.pread(f.fileno(), 8 * (hi - lo),
                                              _HEADER.size + 4 * self._n + 8 * lo), np.int64)
        return sizes, pointers

    def _entries_of(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sizes, pointers) of the listed sequences: one read of their span when it is
        small enough, else two positioned reads per index."""
        lo, hi = int(indices.min()), int(indices.max()) + 1
        if lo < 0 or hi > self._n:
            bad = int(indices[(indices < 0) | (indices >= self._n)][0])
            raise IndexError(f"sequence index {bad} is out of range: {self.prefix} has "
                             f"{self._n} sequences")
        if hi - lo <= _SPAN_ENTRIES:
            sizes, pointers = self._index_entries(lo, hi)
            return sizes[indices - lo], pointers[indices - lo]
        sizes = np.empty(len(indices), np.int32)
        pointers = np.empty(len(indices), np.int64)
        base = _HEADER.size + 4 * self._n
        with open(self._idx_path, "rb", buffering=0) as f:
            for k, i in enumerate(indices.tolist()):
                sizes[k] = int.from_bytes(os.pread(f.fileno(), 4, _HEADER.size + 4 * i),
                                          "little", signed=True)
                pointers[k] = int.from_bytes(os.pread(f.fileno(), 8, base + 8 * i), "little",
                                             signed=True)
        return sizes, pointers

    def read_rows(self, indices: np.ndarray, length: int) -> np.ndarray:
        """[k, length] in the file's dtype: the first `length` tokens of each listed sequence.

        Reads only those bytes (positioned reads, no memmap), so memory stays at the
        rows asked for however large the file. Raises IndexError for an index out of
        range and ValueError naming a sequence shorter than `length`.
        """
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), length), self.dtype)
        if not len(indices):
            return out
        sizes, pointers = self._entries_of(indices)
        short = np.flatnonzero(sizes < length)
        if len(short):
            i = int(indices[short[0]])
            raise ValueError(f"watchlist sequence 'pythia:{i}' has {int(sizes[short[0]])} tokens "
                             f"in {self.prefix}.bin; prompt_len + cont_len = {length} needs at "
                             f"least {length}")
        nbytes = length * self.dtype.itemsize
        with open(self._bin_path, "rb", buffering=0) as f:
            for row, ptr in enumerate(pointers.tolist()):
                out[row] = np.frombuffer(os.pread(f.fileno(), nbytes, ptr), self.dtype)
        return out

    def check_lengths(self, ranges: IndexRanges, length: int) -> None:
        """Raise ValueError naming the first selected sequence shorter than `length` (or
        IndexError for one out of range), reading the index in bounded chunks."""
        for lo in range(0, len(ranges), _CHECK_CHUNK):
            indices = ranges.take(lo, min(len(ranges), lo + _CHECK_CHUNK))
            sizes, _ = self._entries_of(indices)
            short = np.flatnonzero(sizes < length)
            if len(short):
                raise ValueError(f"watchlist sequence 'pythia:{int(indices[short[0]])}' has "
                                 f"{int(sizes[short[0]])} tokens in {self.prefix}.bin; "
                                 f"prompt_len + cont_len = {length} needs at least {length}")

    def __getitem__(self, i: int) -> np.ndarray:
        """The tokens of sequence `i` (a read-only memmap view)."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence index {i} out of range for {self.prefix} "
                             f"({len(self)} sequences)")
        i %= len(self)
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start : start + int(self.sizes[i])]

    def read(self, indices: Iterable[int], length: int) -> np.ndarray:
        """int64 [k, length]: the first `length` tokens of each listed sequence."""
        indices = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices,
                             dtype=np.int64)
        out = np.empty((len(indices), length), np.int64)
        for row, i in enumerate(indices):
            seq = self[i]
            if len(seq) < length:
                raise ValueError(f"watchlist sequence 'pythia:{int(i)}' has {len(seq)} tokens in "
                                 f"{self.prefix}.bin; prompt_len + cont_len = {length} needs "
                                 f"at least {length}")
            out[row] = seq[:length]
        return out


def write_indexed_dataset(prefix: str | os.PathLike, sequences: Sequence[Sequence[int]],
                          dtype=np.uint16, doc_idx: Sequence[int] | None = None) -> str:
    """Write `sequences` as ``prefix.bin`` / ``prefix.idx``; returns the prefix.

    `doc_idx` defaults to one document per sequence (``[0, 1, ..., n]``), as the
    Pythia preshuffled files have.
    """
    prefix = os.fspath(prefix)
    code = _code_of(dtype)
    dtype = np.dtype(DTYPES[code])
    if isinstance(sequences, np.ndarray) and sequences.ndim == 2:
        return _write_rows(prefix, sequences, code, doc_idx)
    arrays = []
    for i, seq in enumerate(sequences):
        arr = np.asarray(seq)
        if arr.ndim != 1:
            raise ValueError(f"sequence {i} has shape {arr.shape}; each must be 1-D")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"sequence {i} has token ids outside {dtype}'s range "
                             f"[{info.min}, {info.max}]")
        arrays.append(arr.astype(dtype))
    n = len(arrays)
    sizes = np.array([len(a) for a in arrays], np.int32)
    pointers = np.zeros(n, np.int64)
    if n:
        pointers[1:] = np.cumsum(sizes[:-1].astype(np.int64)) * dtype.itemsize
    docs = np.arange(n + 1, dtype=np.int64) if doc_idx is None else np.asarray(doc_idx, np.int64)
    with open(prefix + ".bin", "wb") as f:
        for a in arrays:
            f.write(a.tobytes())
    return _write_index(prefix, code, sizes, pointers, docs)


def _write_index(prefix: str, code: int, sizes: np.ndarray, pointers: np.ndarray,
                 docs: np.ndarray) -> str:
    """Write the ``.idx`` file: header, sizes (int32), byte pointers (int64), doc index."""
    with open(prefix + ".idx", "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, code, len(sizes), len(docs)))
        f.write(sizes.tobytes())
        f.write(pointers.tobytes())
        f.write(docs.tobytes())
    return prefix


def _write_rows(prefix: str, rows: np.ndarray, code: int, doc_idx) -> str:
    """`write_indexed_dataset` for equal-length rows [n, length], without a per-row loop."""
    dtype = np.dtype(DTYPES[code])
    info = np.iinfo(dtype)
    if rows.size and (rows.min() < info.min or rows.max() > info.max):
        raise ValueError(f"token ids outside {dtype}'s range [{info.min}, {info.max}]")
    n, length = rows.shape
    sizes = np.full(n, length, np.int32)
    pointers = np.arange(n, dtype=np.int64) * length * dtype.itemsize
    docs = np.arange(n + 1, dtype=np.int64) if doc_idx is None else np.asarray(doc_idx, np.int64)
    rows.astype(dtype, copy=False).tofile(prefix + ".bin")
    return _write_index(prefix, code, sizes, pointers, docs)


class IndexRanges:
    """Selected sequence indices held as ranges: a spec over 146 million rows costs bytes.

    ``len(r)`` counts the indices; ``r.take(lo, hi)`` is int64 indices [lo, hi) of the
    concatenation, in spec order.
    """

    def __init__(self, ranges: Sequence[range]):
        self.ranges = tuple(ranges)
        self._starts = np.cumsum([0] + [len(r) for r in self.ranges])

    @classmethod
    def parse(cls, spec: str) -> IndexRanges:
        """The ranges of a spec like ``"0:1000000:97"`` (see `parse_index_range`)."""
        return cls(_parse_parts(spec))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def take(self, lo: int, hi: int) -> np.ndarray:
        """int64 [hi - lo]: indices lo..hi-1 of the concatenated ranges."""
        parts = []
        for k, r in enumerate(self.ranges):
            a, b = max(lo, int(self._starts[k])), min(hi, int(self._starts[k + 1]))
            if a < b:
                sub = r[a - int(self._starts[k]): b - int(self._starts[k])]
                parts.append(np.arange(sub.start, sub.stop, sub.step, dtype=np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def __repr__(self) -> str:
        return ",".join(f"{r.start}:{r.stop}:{r.step}" for r in self.ranges)


def _parse_parts(spec: str) -> list[range]:
    parts = []
    for part in str(spec).split(","):
        fields = part.strip().split(":")
        try:
            nums = [int(x) for x in fields]
        except ValueError:
            raise ValueError(f"index range {part.strip()!r} is not 'i' or 'start:stop[:step]' "
                             "with integers") from None
        if len(nums) > 3 or any(x < 0 for x in nums) or (len(nums) == 3 and nums[2] == 0):
            raise ValueError(f"index range {part.strip()!r}: use 'i' or 'start:stop[:step]' with "
                             "non-negative integers and a positive step")
        parts.append(range(nums[0], nums[0] + 1) if len(nums) == 1 else range(*nums))
    return parts


def parse_index_range(spec: str) -> np.ndarray:
    """int64 indices from a spec like ``"0:1000000:97"``, ``"5"`` or ``"0:10,100:110"``.

    Each comma-separated part is an index or ``start:stop[:step]`` (Python slice
    semantics, stop exclusive, no negatives).
    """
    ranges = IndexRanges.parse(spec)
    return ranges.take(0, len(ranges))


def steps_range(start_step: int, end_step: int,
                seqs_per_step: int = PYTHIA_SEQS_PER_STEP) -> range:
    """Indices of the sequences seen in optimizer steps [start_step, end_step).

    Pythia's preshuffled data is read in order, `seqs_per_step` (1024) sequences
    per step, so step ``s`` trains on items ``s*1024 .. s*1024+1023``.
    """
    if not 0 <= start_step <= end_step or seqs_per_step <= 0:
        raise ValueError(f"steps_range({start_step}, {end_step}, {seqs_per_step}) needs "
                         "0 <= start_step <= end_step and seqs_per_step > 0")
    return range(start_step * seqs_per_step, end_step * seqs_per_step)
