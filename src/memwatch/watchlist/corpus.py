"""Corpus inputs of a PII scan: rows of text, read in shards that workers scan independently.

A `Corpus` is opened from Python texts, a `datasets.Dataset` (or a streaming
`IterableDataset`), files (``.parquet``, ``.arrow``, ``.jsonl``, ``.jsonl.gz``,
``.jsonl.zst``, plain text: one text per file), a directory saved with
``Dataset.save_to_disk``, a `load_dataset` name (read streaming), or a Pythia /
Megatron ``.bin``/``.idx`` pair (token sequences decoded with the tokenizer). Files
are read through Hugging Face `datasets` (Arrow, memory-mapped), so a worker
process opens its shard without copying the corpus.

A shard is a fixed, contiguous run of rows (or one shard of a streaming dataset,
or a run of Pythia sequences): the same corpus gives the same shards whatever
the number of workers, so a scan gives the same rows in the same order with 1, 2
or N workers, and a resumed scan skips the shards it finished.

Sampling (`fraction`, `max_rows`) is seeded and picks the same rows every time:
a `Dataset` draws `round(fraction * n)` rows (at most `max_rows`) and keeps them
in corpus order; a stream keeps each row with probability `fraction` by a hash of
(seed, shard, position) and stops after `max_rows` kept rows.

Bad input fails with a `CorpusError` (a ValueError) naming the file and the fix:
an unreadable file, a missing column, bytes that are not UTF-8, a line longer
than `max_line_bytes`, a tokenizer whose vocabulary does not fit the ``.bin``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

ROWS_PER_SHARD = 10_000
MIN_SHARDS = 64
PYTHIA_SEQS_PER_SHARD = 256
MAX_LINE_BYTES = 256 << 20  # a longer line is not a record but a broken file
_JSON = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")


class CorpusError(ValueError):
    """Input a scan cannot read; the message names the file (or row) and the fix."""


@dataclass
class Corpus:
    """Rows of text to scan, in a fixed order, split into shards (see the module docstring).

    Build one with `open_corpus`. `kind` is ``"dataset"`` (a `datasets.Dataset`),
    ``"stream"`` (an `IterableDataset`) or ``"pythia"``.
    """

    kind: str
    source: object  # Dataset | IterableDataset | IndexedDataset
    text_column: str = "text"
    description: str = ""
    rows: np.ndarray | None = None  # dataset / pythia: the (sampled) row numbers, in order
    fraction: float | None = None
    max_rows: int | None = None
    seed: int = 0
    rows_per_shard: int = ROWS_PER_SHARD
    tokenizer: object = field(default=None, repr=False)  # pythia: decodes the sequences

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.kind == "pythia":  # reopened by each worker: a memmap pickles its whole file
            state["source"] = self.source.prefix
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.kind == "pythia" and isinstance(self.source, str):
            from memwatch.watchlist.pythia import IndexedDataset

            self.source = IndexedDataset(self.source)

    @property
    def num_shards(self) -> int:
        if self.kind == "stream":
            return int(self.source.num_shards)
        return max(1, -(-len(self.rows) // self.rows_per_shard))

    def signature(self) -> dict:
        """What identifies this corpus and sampling (a resumed scan must match it)."""
        rows = None if self.rows is None else hashlib.sha256(
            np.asarray(self.rows, np.int64).tobytes()).hexdigest()[:16]
        return {"kind": self.kind, "source": self.description, "column": self.text_column,
                "rows": rows, "fraction": self.fraction, "max_rows": self.max_rows,
                "seed": self.seed, "shards": self.num_shards}

    def shard_texts(self, k: int) -> Iterator[tuple[int, object]]:
        """(row number, text) of shard `k`, in order. Pythia rows give token arrays."""
        if self.kind == "stream":
            yield from self._stream_texts(k)
            return
        rows = self.rows[k * self.rows_per_shard:(k + 1) * self.rows_per_shard]
        if not len(rows):
            return
        if self.kind == "pythia":
            for i in rows.tolist():
                yield i, np.asarray(self.source[i])
            return
        column = self.source.select_columns([self.text_column])
        contiguous = int(rows[-1]) - int(rows[0]) + 1 == len(rows)
        part = column[int(rows[0]):int(rows[-1]) + 1] if contiguous else \
            column.select(rows)[:]
        for i, text in zip(rows.tolist(), part[self.text_column], strict=True):
            yield i, _as_text(text, i, self.text_column)

    def _stream_texts(self, k: int) -> Iterator[tuple[int, object]]:
        shard = self.source.shard(num_shards=self.num_shards, index=k, contiguous=True)
        kept = 0
        for j, row in enumerate(shard):
            if self.text_column not in row:
                raise CorpusError(f"{self.description}: rows have no column "
                                  f"{self.text_column!r}; they have {sorted(row)} "
                                  "(choose one with text_column= / --text-field)")
            if self.fraction is not None and _keep_fraction(self.seed, k, j) >= self.fraction:
                continue
            yield j, _as_text(row[self.text_column], j, self.text_column)
            kept += 1
            if self.max_rows is not None and kept >= self.max_rows:
                return


def _as_text(value, row: int, column: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise CorpusError(f"row {row}: column {column!r} holds a {type(value).__name__}, not text")


def _keep_fraction(seed: int, shard: int, position: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, shard, position): the stream's sampling."""
    digest = hashlib.blake2b(f"{seed}:{shard}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def open_corpus(source, text_column: str = "text", fraction: float | None = None,
                max_rows: int | None = None, seed: int = 0, split: str = "train",
                tokenizer=None, indices=None, max_line_bytes: int = MAX_LINE_BYTES,
                rows_per_shard: int | None = None) -> Corpus:
    """A `Corpus` of `source` (see the module docstring for what it may be).

    `source`: texts (any iterable of str), a `datasets.Dataset` / `IterableDataset`,
    a path (str or `os.PathLike`) or a list of `os.PathLike` (files, or one
    ``save_to_disk`` directory), ``"pythia:PREFIX"`` (a Megatron pair; `tokenizer`
    decodes it, `indices` picks sequences), or a `load_dataset` name (streamed;
    `split` picks the split).
    """
    from datasets import Dataset, IterableDataset

    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: give a number in (0, 1]")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows={max_rows}: give a positive number of rows")
    common = {"fraction": fraction, "max_rows": max_rows, "seed": seed}
    if isinstance(source, (str, os.PathLike)) and os.fspath(source).startswith("pythia:"):
        return _pythia(os.fspath(source)[len("pythia:"):], tokenizer, indices, common,
                       rows_per_shard or PYTHIA_SEQS_PER_SHARD)
    if isinstance(source, IterableDataset):
        return Corpus("stream", source, text_column, _describe(source), **common)
    if not isinstance(source, (str, os.PathLike, Dataset)) and \
            not (isinstance(source, (list, tuple)) and source and
                 all(isinstance(p, os.PathLike) for p in source)):
        texts = list(source)  # texts (a list of str is texts, never paths: give Path objects)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"text {bad} is a {type(texts[bad]).__name__}, not a str")
        source = Dataset.from_dict({text_column: texts})
        description = "texts:" + hashlib.sha256("\0".join(source[text_column]).encode(
            "utf-8", "surrogatepass")).hexdigest()[:16]
    elif isinstance(source, Dataset):
        description = f"dataset:{source._fingerprint}"
    else:
        paths = [os.fspath(p) for p in ([source] if isinstance(source, (str, os.PathLike))
                                        else source)]
        if len(paths) == 1 and not os.path.exists(paths[0]) and not os.path.isabs(paths[0]):
            return _streamed(paths[0], split, text_column, common)
        source, description = _load_files(paths, split, text_column, max_line_bytes)
        if source is None:
            return _streamed(description, split, text_column, common)
    if text_column not in source.column_names:
        raise CorpusError(f"{description}: no column {text_column!r}; it has "
                          f"{source.column_names} (choose one with text_column= / --text-field)")
    rows = _sample(len(source), fraction, max_rows, seed)
    # At least MIN_SHARDS shards (work for every worker) of at most ROWS_PER_SHARD rows; a
    # function of the corpus only, so that the shards do not change with the workers.
    per_shard = rows_per_shard or min(ROWS_PER_SHARD, max(1, -(-len(rows) // MIN_SHARDS)))
    return Corpus("dataset", source, text_column, description, rows, **common,
                  rows_per_shard=per_shard)


def _sample(n: int, fraction: float | None, max_rows: int | None, seed: int) -> np.ndarray:
    """The row numbers a sample keeps, in corpus order (all rows without sampling)."""
    k = n if fraction is None else int(round(fraction * n))
    k = k if max_rows is None else min(k, max_rows)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n)[:k]).astype(np.int64)


def _describe(ds) -> str:
    info = getattr(ds, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "stream"
    return f"stream:{name}:{getattr(info, 'config_name', None)}"


def _streamed(name: str, split: str, text_column: str, common: dict) -> Corpus:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split, streaming=True)
    except Exception as err:  # datasets raises many types; the user needs the first line
        raise CorpusError(f"{name!r} is neither a file nor a dataset load_dataset can stream "
                          f"({_first_line(err)})") from None
    return Corpus("stream", ds, text_column, f"stream:{name}:{split}", **common)


def _load_files(paths: Sequence[str], split: str, text_column: str, max_line_bytes: int):
    """(Dataset, description) of files (in order), or of one save_to_disk directory."""
    from datasets import DatasetDict, concatenate_datasets, load_from_disk

    for p in paths:
        if not os.path.exists(p):
            raise CorpusError(f"{p}: no such file or directory")
    stamp = ",".join(f"{os.path.abspath(p)}:{os.path.getsize(p)}:{int(os.path.getmtime(p))}"
                     for p in paths)
    if len(paths) == 1 and os.path.isdir(paths[0]):
        if not any(os.path.exists(os.path.join(paths[0], f))
                   for f in ("state.json", "dataset_dict.json")):
            return None, paths[0]  # a folder of data files: load_dataset streams it
        try:
            ds = load_from_disk(paths[0])
        except Exception as err:
            raise CorpusError(f"{paths[0]}: not a dataset saved with save_to_disk "
                              f"({_first_line(err)})") from None
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise CorpusError(f"{paths[0]} holds splits {sorted(ds)}, not {split!r}: "
                                  "choose one with split= / --split")
            ds = ds[split]
        return ds, f"disk:{stamp}"
    if any(os.path.isdir(p) for p in paths):
        raise CorpusError(f"{[p for p in paths if os.path.isdir(p)][0]} is a directory: give "
                          "files, or one directory saved with Dataset.save_to_disk")
    groups: list[tuple[str, list[str]]] = []  # runs of files of one kind, in the given order
    for p in paths:
        if groups and groups[-1][0] == _kind(p):
            groups[-1][1].append(p)
        else:
            groups.append((_kind(p), [p]))
    parts = [_load_group(kind, files, text_column, max_line_bytes) for kind, files in groups]
    ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    return ds, f"files:{stamp}"


def _load_group(kind: str, paths: list[str], text_column: str, max_line_bytes: int):
    """Files of one kind as a Dataset of column `text_column` (plain text: one row a file)."""
    from datasets import load_dataset

    if kind in ("json", "text"):
        for p in paths:
            check_lines(p, max_line_bytes)
    try:
        if kind == "text":  # one text per file, as `memwatch watchlist build --texts` reads it
            ds = load_dataset("text", data_files=list(paths), split="train",
                              sample_by="document")
            return ds.rename_column("text", text_column) if text_column != "text" else ds
        ds = load_dataset(kind, data_files=list(paths), split="train")
    except Exception as err:
        raise CorpusError(f"{_culprit(err, paths)}: unreadable as {kind} "
                          f"({_first_line(err)})") from None
    if text_column not in ds.column_names:
        raise CorpusError(f"{', '.join(paths)}: no column {text_column!r}; it has "
                          f"{ds.column_names} (choose one with text_column= / --text-field)")
    return ds.select_columns([text_column])


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".arrow"):
        return "arrow"
    if lower.endswith(_JSON):
        return "json"
    return "text"


def _open_binary(path: str):
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    if path.lower().endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise CorpusError(f"{path}: reading .zst needs zstandard (pip install "
                              "memwatch[corpus])") from None
        return zstandard.open(path, "rb")
    return open(path, "rb")


def check_lines(path: str, max_line_bytes: int = MAX_LINE_BYTES,
                chunk_bytes: int = 16 << 20) -> None:
    """Raise CorpusError if `path` (decompressed) has a line over `max_line_bytes` or bytes
    that are not UTF-8; reads it once, in chunks, without holding a line in memory."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line_len, offset = 0, 0
    try:
        with _open_binary(path) as f:
            while chunk := f.read(chunk_bytes):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    raise CorpusError(f"{path}: byte {offset + err.start} is not UTF-8 "
                                      f"({err.reason}); re-encode the file as UTF-8") from None
                cuts = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
                if len(cuts):
                    longest = max(line_len + int(cuts[0]),
                                  int(np.diff(cuts).max(initial=0)) - 1,
                                  len(chunk) - int(cuts[-1]) - 1)
                    line_len = len(chunk) - int(cuts[-1]) - 1
                else:
                    line_len += len(chunk)
                    longest = line_len
                if longest > max_line_bytes:
                    raise CorpusError(f"{path}: a line near byte {offset} is longer than "
                                      f"{max_line_bytes} bytes: not one record per line (raise "
                                      "max_line_bytes / --max-line-bytes if it is)")
                offset += len(chunk)
    except (OSError, EOFError) as err:
        raise CorpusError(f"{path}: unreadable ({_first_line(err)})") from None


def _pythia(prefix: str, tokenizer, indices, common: dict, per_shard: int) -> Corpus:
    from memwatch.watchlist.pythia import IndexedDataset, parse_index_range

    if tokenizer is None:
        raise ValueError("a Pythia corpus holds token ids: give the tokenizer that made them")
    data = IndexedDataset(prefix)
    if indices is None:
        rows = np.arange(len(data), dtype=np.int64)
    else:
        rows = parse_index_range(indices) if isinstance(indices, str) else \
            np.asarray(indices, np.int64).reshape(-1)
        bad = (rows < 0) | (rows >= len(data))
        if bad.any():
            raise CorpusError(f"sequence index {int(rows[bad][0])} is out of range: "
                              f"{data.prefix} has {len(data)} sequences")
    picked = _sample(len(rows), common["fraction"], common["max_rows"], common["seed"])
    description = f"pythia:{os.path.abspath(data.prefix)}:{os.path.getsize(data.prefix + '.bin')}"
    corpus = Corpus("pythia", data, "tokens", description, rows[picked], **common,
                    rows_per_shard=per_shard, tokenizer=tokenizer)
    if len(corpus.rows):
        check_vocab(data, corpus.rows[:per_shard], tokenizer)
    return corpus


def check_vocab(data, rows: np.ndarray, tokenizer) -> None:
    """Raise CorpusError if a listed sequence holds an id the tokenizer does not have."""
    size = len(tokenizer)
    for i in rows.tolist():
        seq = np.asarray(data[i])
        if len(seq) and int(seq.max()) >= size:
            raise CorpusError(f"{data.prefix}.bin: sequence {i} holds token id {int(seq.max())}, "
                              f"but the tokenizer has {size} ids: it is not the tokenizer this "
                              "data was made with")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _culprit(err: BaseException, paths: Sequence[str]) -> str:
    """The file an error names, else all of them."""
    text = str(err)
    named = [p for p in paths if os.path.basename(p) in text]
    return named[0] if named else ", ".join(paths)
