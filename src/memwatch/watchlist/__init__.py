"""The watchlist: token rows the monitor probes, each with a stable id and tags.

Rows are token ids [n, L] with L >= prompt_len + cont_len. Ids are unique
strings; tags are short labels such as ``pii:EMAIL_ADDRESS``, ``canary`` or
``sample``. Raw text, when a row came from text, is kept only if asked for
(``keep_text=True``); sinks see `redacted_preview(i)` instead.

``spans[i]`` is ``(text_index, start, end)``: the characters row ``i`` is about in
its source text (the window for `from_texts`, the PII hit for `scan_pii`, the
secret for `canaries`), or None. `tokenizer` records the tokenizer of rows built from
text (name and vocabulary fingerprint, `memwatch.watchlist.tokenizer`), else None.
Storage is safetensors (tokens) beside JSON (everything else, the row width and the
tokenizer included); nothing is ever pickled.

Two per-row fields, set by `scan_pii` (None elsewhere, and for rows without them):
``span_tokens[i]``, how many continuation tokens the PII itself covers (the row has
*leaked* once ``match_prefix >= span_tokens``), and ``prompt_lens[i]``, the prompt the
row has when its record is shorter than ``prompt_len``: such a row is left-padded, its
prompt is its last ``prompt_lens[i]`` tokens before ``prompt_len`` (see `probe_rows`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from memwatch.probe import CONT_LEN, PROMPT_LEN
from memwatch.watchlist.canaries import DEFAULT_TEMPLATE, canary_rows
from memwatch.watchlist.tags import tag_label, tag_mask
from memwatch.watchlist.tokenizer import checked as checked_tokenizer
from memwatch.watchlist.tokenizer import describe, merged

Span = tuple[int, int, int]


class Watchlist:
    """Token rows with stable ids and tags; validated at construction, never pickled."""

    def __init__(
        self,
        tokens: torch.Tensor,
        ids: Sequence[str],
        tags: Sequence[Sequence[str]],
        previews: Sequence[str] | None = None,
        spans: Sequence[Span | None] | None = None,
        texts: Sequence[str | None] | None = None,
        tokenizer: dict | None = None,
        span_tokens: Sequence[int | None] | None = None,
        prompt_lens: Sequence[int | None] | None = None,
    ):
        n_ids = len(ids)
        tokens = _as_tensor(tokens, ids)
        if tokens.dim() != 2 or tokens.dtype == torch.bool:
            raise ValueError(
                f"watchlist tokens must be a 2-D integer array [rows, tokens]; got shape "
                f"{tuple(tokens.shape)} dtype {tokens.dtype}")
        if len(tokens) == 0:
            raise ValueError("the watchlist is empty: give it at least one row")
        n = len(tokens)
        if n_ids != n:
            raise ValueError(f"{n_ids} ids for {n} watchlist rows")
        if len(tags) != n:
            raise ValueError(f"{len(tags)} tag lists for {n} watchlist rows")
        ids = [str(i) for i in ids]
        seen: dict[str, int] = {}
        for i, row_id in enumerate(ids):
            if row_id in seen:
                raise ValueError(f"watchlist id {row_id!r} is used by rows {seen[row_id]} and {i}")
            seen[row_id] = i
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex:
            bad = ~torch.isfinite(tokens) | (tokens != torch.round(tokens))
            row = int(bad.any(1).nonzero()[0]) if bad.any() else 0
            raise ValueError(f"watchlist sequence {ids[row]!r} is not integer token ids (dtype "
                             f"{tokens.dtype}); convert the rows with .long() or np.int64")
        if (tokens < 0).any():
            row, col = (int(x) for x in (tokens < 0).nonzero()[0])
            raise ValueError(f"watchlist sequence {ids[row]!r} has a negative token id "
                             f"{int(tokens[row, col])} at position {col}")
        self.tokens = tokens.long()
        self.ids = ids
        self.tags = [tuple(str(t) for t in (row if not isinstance(row, str) else [row]))
                     for row in tags]
        for name, extra in (("previews", previews), ("spans", spans), ("texts", texts),
                            ("span_tokens", span_tokens), ("prompt_lens", prompt_lens)):
            if extra is not None and len(extra) != n:
                raise ValueError(f"{len(extra)} {name} for {n} watchlist rows")
        self._previews = list(previews) if previews is not None else None
        self.spans = None if spans is None else \
            [None if s is None else tuple(int(x) for x in s) for s in spans]
        # Raw text of each row, present only when the user asked for it (keep_text=True).
        self.texts = list(texts) if texts is not None else None
        # The tokenizer of the ids (`memwatch.watchlist.tokenizer.describe`), when known.
        self.tokenizer = checked_tokenizer(tokenizer, "Watchlist")
        self.span_tokens = _counts(span_tokens, "span_tokens", ids, 1)
        self.prompt_lens = _counts(prompt_lens, "prompt_lens", ids, 1)

    # ----------------------------------------------------------------------------------------
    # Sources
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_tokens(cls, tokens, ids: Sequence[str] | None = None,
                    tags: Sequence[Sequence[str]] | Sequence[str] | str | None = None,
                    prompt_len: int | None = None, cont_len: int | None = None) -> Watchlist:
        """A watchlist of the given token rows; ids default to ``row-<i>``, tags to none.

        `tags` may be one tag (a str) for every row, or one entry (a tag or a list of
        tags) per row.
        Rows of unequal length are cut to the shortest; with `prompt_len` and
        `cont_len` given, a row shorter than their sum is an error naming it and
        rows are cut to exactly that length.
        """
        need = None if prompt_len is None or cont_len is None else prompt_len + cont_len
        if not isinstance(tokens, (torch.Tensor, np.ndarray)):
            rows = [np.asarray(r) for r in tokens]
            n = len(rows)
        else:
            rows, n = None, len(tokens)
        ids = [f"row-{i}" for i in range(n)] if ids is None else list(ids)
        if rows is not None:
            if len(ids) != n:
                raise ValueError(f"{len(ids)} ids for {n} watchlist rows")
            for i, r in enumerate(rows):
                if r.ndim != 1:
                    raise ValueError(f"watchlist sequence {ids[i]!r} has shape {r.shape}; each "
                                     "row must be a 1-D sequence of token ids")
                if need is not None and len(r) < need:
                    raise ValueError(f"watchlist sequence {ids[i]!r} has {len(r)} tokens; "
                                     f"prompt_len + cont_len = {need} needs at least {need}")
            width = min((len(r) for r in rows), default=0) if need is None else need
            tokens = np.stack([r[:width] for r in rows]) if rows else np.zeros((0, 0), np.int64)
        if tags is None:
            tags = [()] * n
        elif isinstance(tags, str):
            tags = [(tags,)] * n
        elif len(tags) != n:  # a list of tags for every row would be ambiguous when n == len
            raise ValueError(f"tags has {len(tags)} entries for {n} watchlist rows: give one "
                             "tag (a str) for every row, or one entry per row (several tags for "
                             "every row: [('a', 'b')] * n)")
        wl = cls(tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(tokens),
                 ids, tags)
        if need is not None:
            wl.validate(prompt_len, cont_len)
            wl = wl if wl.tokens.shape[1] == need else \
                cls(wl.tokens[:, :need], wl.ids, wl.tags)
        return wl

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer, tags: Sequence[str] | str = ("text",),
                   prompt_len: int = PROMPT_LEN, cont_len: int = CONT_LEN, keep_text: bool = False,
                   max_rows: int | None = None, id_prefix: str = "text") -> Watchlist:
        """Rows from texts: each text's consecutive windows of prompt_len + cont_len tokens.

        Row ids are ``<id_prefix>:<text index>:<window index>``; ``spans`` keeps each
        window's characters. Texts shorter than one window give no row; the tail
        after the last full window is dropped. `tokenizer` is any fast Hugging Face
        tokenizer (offset mapping needed); no special tokens are added.
        """
        wl = cls._from_windows(enumerate(texts), tokenizer, prompt_len + cont_len, tags,
                               keep_text, max_rows, id_prefix)
        if wl is None:
            raise ValueError(f"no text has prompt_len + cont_len = {prompt_len + cont_len} "
                             "tokens: the watchlist would be empty; give longer texts or "
                             "smaller lengths")
        return wl

    @classmethod
    def from_dataset(cls, ds, text_column: str = "text", tokenizer=None,
                     sample: int | None = None, seed: int = 0, prompt_len: int = PROMPT_LEN,
                     cont_len: int = CONT_LEN, tags: Sequence[str] | str = ("sample",),
                     keep_text: bool = False, id_prefix: str = "ds",
                     shuffle_buffer: int = 10_000) -> Watchlist:
        """`sample` random windows (all, if None) from a `datasets.Dataset` or IterableDataset.

        A `Dataset` is read in a seeded random order of its rows (ids
        ``ds:<row>:<window>``). An `IterableDataset` (streaming) is shuffled with
        ``ds.shuffle(seed, buffer_size=shuffle_buffer)`` and read until `sample`
        rows are found (ids ``ds:<position in that stream>:<window>``).
        """
        from memwatch.watchlist.text import dataset_texts

        if tokenizer is None:
            raise ValueError("from_dataset needs tokenizer=... to turn texts into token rows")
        source = dataset_texts(ds, text_column, sample, seed, shuffle_buffer)
        wl = cls._from_windows(source, tokenizer, prompt_len + cont_len, tags, keep_text, sample,
                               id_prefix)
        if wl is None:
            raise ValueError(f"no text in column {text_column!r} has prompt_len + cont_len = "
                             f"{prompt_len + cont_len} tokens")
        return wl

    @classmethod
    def _from_windows(cls, texts: Iterable[tuple[int, str]], tokenizer, length: int,
                      tags: Sequence[str] | str, keep_text: bool, max_rows: int | None,
                      id_prefix: str) -> Watchlist | None:
        """Rows ``<id_prefix>:<text number>:<window>`` from numbered texts; None if none."""
        from memwatch.watchlist.text import windows

        tags = (tags,) if isinstance(tags, str) else tuple(tags)
        rows, ids, spans, kept = [], [], [], []
        for win in windows(texts, tokenizer, length):
            t = win.text_index
            rows.append(win.tokens)
            ids.append(f"{id_prefix}:{t}:{win.index}")
            spans.append((t, win.start, win.end))
            kept.append(win.text if keep_text else None)
            if max_rows is not None and len(rows) >= max_rows:
                break
        if not rows:
            return None
        return cls(torch.tensor(rows, dtype=torch.long), ids, [tags] * len(rows), spans=spans,
                   texts=kept if keep_text else None, tokenizer=describe(tokenizer))

    @classmethod
    def from_pythia(cls, path_prefix: str | os.PathLike, indices, prompt_len: int = PROMPT_LEN,
                    cont_len: int = CONT_LEN, tags: Sequence[str] | str = ("sample",)) -> Watchlist:
        """Tokens [0 : prompt_len + cont_len] of the listed sequences of a Megatron .idx/.bin pair.

        `indices`: a spec such as ``"0:1000000:97"`` (see
        `memwatch.watchlist.pythia.parse_index_range`), a range (e.g.
        `memwatch.watchlist.pythia.steps_range(a, b)`) or integers. Ids are
        ``pythia:<index>``, as Pythia's memorization eval numbers sequences.
        """
        from memwatch.watchlist.pythia import IndexedDataset, parse_index_range, pythia_id

        idx = parse_index_range(indices) if isinstance(indices, str) else \
            np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(idx):
            raise ValueError("from_pythia got no sequence indices")
        data = IndexedDataset(path_prefix)
        bad = (idx < 0) | (idx >= len(data))
        if bad.any():
            raise ValueError(f"sequence index {int(idx[bad][0])} is out of range: "
                             f"{data.prefix} has {len(data)} sequences")
        tokens = data.read(idx, prompt_len + cont_len)
        tags = (tags,) if isinstance(tags, str) else tuple(tags)
        return cls(torch.from_numpy(tokens), [pythia_id(i) for i in idx],
                   [tags] * len(idx))

    @classmethod
    def scan_pii(cls, texts, tokenizer, entities: Sequence[str] | None = None,
                 prompt_len: int = PROMPT_LEN, cont_len: int = CONT_LEN, keep_text: bool = False,
                 score_threshold: float = 0.35, backend: str = "auto", text_column: str = "text",
                 fraction: float | None = None, max_rows: int | None = None, seed: int = 0,
                 num_proc: int = 1, engine: str = "datasets",
                 work_dir: str | os.PathLike | None = None,
                 ner_model: str | os.PathLike | None = None, short_records: bool = True,
                 eos_token_id: int | None = None) -> Watchlist:
        """One row per PII hit in `texts`, its continuation starting at the PII.

        `texts`: a list of texts, a `datasets.Dataset` or streaming `IterableDataset`
        (column `text_column`), a path (`pathlib.Path`: parquet, arrow, jsonl(.gz/.zst),
        text, a ``save_to_disk`` directory) or a `memwatch.watchlist.corpus.Corpus`
        (``open_corpus``, e.g. of a Pythia ``.bin``/``.idx``). `tokenizer`: a fast
        tokenizer, or its directory / hub name. `fraction`, `max_rows`, `seed`: a
        seeded sample of the rows. `num_proc` workers on `engine` (``"datasets"``:
        multiprocessing on this machine; ``"ray"``: Ray Data); `work_dir` keeps each
        finished shard, so a killed scan resumes there (see `memwatch.watchlist.pii_scan`).

        The row is the tokens [t - prompt_len, t + cont_len) where token t holds the
        hit's first character, so the PII starts at the prompt boundary (just after
        it when token t also holds preceding characters). Each text is one document
        of the training stream. A hit with fewer than `prompt_len` tokens before it
        or `cont_len` after it in its text (a short record) gets the context a packed
        stream gives it: `eos_token_id` (default: the tokenizer's), the record, then
        `eos_token_id` again (see `memwatch.watchlist.pii_rows`); with
        ``short_records=False`` (always for Pythia sequences, cut from a packed
        stream) such hits are skipped, with a warning.
        `ner_model`: an installed spaCy pipeline's name or path, to find PERSON and
        LOCATION too (see `memwatch.watchlist.ner`; nothing is downloaded).
        Tag ``pii:<ENTITY>``; id ``pii:<ENTITY>#<hash of the row>``; ``spans`` holds
        (row of the corpus, start, end) of the hit's characters, ``span_tokens`` the
        tokens the PII covers, ``prompt_lens`` each row's own prompt length; previews
        are redacted.
        """
        from memwatch.watchlist.pii_scan import scan_pii

        return scan_pii(cls, texts, tokenizer, entities, prompt_len, cont_len, keep_text,
                        score_threshold, backend, text_column, fraction, max_rows, seed,
                        num_proc, engine, work_dir, ner_model, short_records, eos_token_id)

    @classmethod
    def canaries(cls, n: int, template: str = DEFAULT_TEMPLATE, tokenizer=None,
                 seed: int = 0, prompt_len: int = PROMPT_LEN, cont_len: int = CONT_LEN,
                 vocab_size: int | None = None, audit: bool = False, design: str = "random",
                 token_pool=None) -> Watchlist:
        """`n` synthetic canaries (tag ``canary``, ids ``canary#<k>``), secrets at prompt_len.

        With a tokenizer each row is random filler words, the template and a random
        digit secret; the canary text is synthetic and kept (`texts`) so that it can
        be planted in text data, but previews hide the secret. Without a tokenizer
        rows are random token ids below `vocab_size`. See `memwatch.watchlist.canaries`.

        audit: draw each canary in or out of training with probability ½ (seeded by
            `seed`) and tag it ``canary:in`` or ``canary:out``: plant only the in half
            (`insert_canaries` does), and `memwatch.audit` turns the two halves' scores
            into AUROC, TPR at low FPR and a one-run ε lower bound (Steinke et al. 2023).
        design: ``"random"`` (above) or ``"new_tokens"``: secrets of ids from `token_pool`,
            ids reserved for the canaries (after Panda et al. 2025; token rows, no text).
        """
        return cls(*canary_rows(n, template, tokenizer, seed, prompt_len, cont_len, vocab_size,
                                audit, design, token_pool),
                   describe(tokenizer) if tokenizer is not None else None)

    # ----------------------------------------------------------------------------------------
    # Views
    # ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        counts = self.tag_counts()
        return f"Watchlist({len(self)} rows x {self.tokens.shape[1]} tokens, tags={counts})"

    def tag_counts(self) -> dict[str, int]:
        """Rows per tag, in order of first appearance."""
        counts: dict[str, int] = {}
        for row in self.tags:
            for t in row:
                counts[t] = counts.get(t, 0) + 1
        return counts

    def validate(self, prompt_len: int = PROMPT_LEN, cont_len: int = CONT_LEN,
                 vocab_size: int | None = None, model=None) -> None:
        """Raise ValueError naming the first row unusable with these lengths or this vocab.

        `model` (a HF model or anything with ``config.vocab_size``) gives the vocab
        size when `vocab_size` is not given.
        """
        need = prompt_len + cont_len
        if self.tokens.shape[1] < need:
            raise ValueError(
                f"watchlist sequence {self.ids[0]!r} has {self.tokens.shape[1]} tokens; "
                f"prompt_len + cont_len = {need} needs at least {need}")
        longer = next((i for i, p in enumerate(self.prompt_lens or ()) if p and p > prompt_len),
                      None)
        if longer is not None:  # its short-record rows would be read from the wrong positions
            raise ValueError(
                f"watchlist sequence {self.ids[longer]!r} has a {self.prompt_lens[longer]}-token "
                f"prompt, longer than prompt_len={prompt_len}: the watchlist was built with "
                f"prompt_len={max(p or 0 for p in self.prompt_lens)}; probe it with that")
        if vocab_size is None and model is not None:
            vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab_size is not None:
            bad = self.tokens[:, :need] >= vocab_size
            if bad.any():
                row, col = (int(x) for x in bad.nonzero()[0])
                raise ValueError(
                    f"watchlist sequence {self.ids[row]!r} has token id "
                    f"{int(self.tokens[row, col])} at position {col}; the model's vocabulary "
                    f"has {vocab_size} ids")

    def tag_mask(self, pattern: str) -> np.ndarray:
        """bool [n]: the rows `pattern` names (see `memwatch.watchlist.tags`: ``"*"`` is
        every row, ``pii:*`` every row with a tag starting ``pii:``)."""
        return tag_mask(self.tags, pattern)

    def redacted_preview(self, i: int) -> str:
        """A preview of row `i` safe to show in logs and dashboards (no raw PII)."""
        if self._previews is not None and self._previews[i] is not None:
            return self._previews[i]
        return f"[{tag_label(self.tags[i])}] {self.tokens.shape[1]} tokens"

    def select(self, mask_or_index) -> Watchlist:
        """The rows picked by a bool mask or an index array, in that order."""
        idx = np.asarray(mask_or_index)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)

        def pick(values):
            return None if values is None else [values[i] for i in idx]

        return Watchlist(
            self.tokens[torch.as_tensor(idx, dtype=torch.long)],
            [self.ids[i] for i in idx], [self.tags[i] for i in idx],
            pick(self._previews), pick(self.spans), pick(self.texts), self.tokenizer,
            pick(self.span_tokens), pick(self.prompt_lens))

    def sample(self, k: int, by_tag: str | Sequence[str] | None = None, seed: int = 0) -> Watchlist:
        """Up to `k` random rows (all if fewer), kept in watchlist order; deterministic in `seed`.

        `by_tag`: a tag pattern (sample among matching rows) or a list of patterns
        (up to `k` rows from each; a row matching several is taken once).
        """
        if k < 0:
            raise ValueError(f"sample(k={k}): k must be >= 0")
        rng = np.random.default_rng(seed)
        if by_tag is None:
            groups = [np.arange(len(self))]
        else:
            patterns = [by_tag] if isinstance(by_tag, str) else list(by_tag)
            groups = [np.flatnonzero(self.tag_mask(p)) for p in patterns]
        chosen = [g if len(g) <= k else rng.choice(g, k, replace=False) for g in groups]
        idx = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        if not len(idx):
            raise ValueError(f"sample(k={k}, by_tag={by_tag!r}) picks no row; tags present: "
                             f"{sorted(self.tag_counts())}")
        return self.select(idx)

    def __add__(self, other: Watchlist) -> Watchlist:
        if not isinstance(other, Watchlist):
            return NotImplemented
        return _concat([self, other])

    def duplicate_counts(self, stream, prompt_len: int = PROMPT_LEN,
                         cont_len: int = CONT_LEN) -> np.ndarray:
        """int64 [n]: how often each row's continuation occurs in `stream` (see `dedup`)."""
        from memwatch.watchlist.dedup import duplicate_counts

        return duplicate_counts(self.tokens, stream, prompt_len, cont_len)

    # ----------------------------------------------------------------------------------------
    # Storage (`memwatch.watchlist.storage`): tokens.safetensors + watchlist.json
    # ----------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> str:
        """Write the watchlist to directory `path`, atomically; returns the path (see
        `memwatch.watchlist.storage.save`)."""
        from memwatch.watchlist import storage

        return storage.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Watchlist:
        """The watchlist saved at directory `path` by `save`, validated like a new one (see
        `memwatch.watchlist.storage.load`)."""
        from memwatch.watchlist import storage

        return storage.load(cls, path)


def _as_tensor(tokens, ids: Sequence[str]) -> torch.Tensor:
    """`tokens` as a tensor; unsigned integers (uint16 to uint64, as token files store them),
    which torch cannot compare, become int64."""
    if isinstance(tokens, torch.Tensor):
        if tokens.dtype not in (torch.uint16, torch.uint32, torch.uint64):
            return tokens
        tokens = tokens.numpy()
    arr = np.asarray(tokens)
    if arr.dtype.kind == "u":
        top = np.iinfo(np.int64).max
        if arr.size and arr.max() > top:
            row = int(np.argwhere(arr > top)[0][0])
            raise ValueError(f"watchlist sequence {ids[row]!r} has token id "
                             f"{int(arr[arr > top][0])}, beyond any vocabulary: not token ids")
        arr = arr.astype(np.int64)
    return torch.as_tensor(arr)


def _counts(values, name: str, ids: Sequence[str], low: int) -> list[int | None] | None:
    """`values` as a list of ints >= `low` or None; an error names the first bad row."""
    if values is None:
        return None
    out = []
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              or v < low):
            raise ValueError(f"watchlist sequence {ids[i]!r} has {name} {v!r}; give an integer "
                             f">= {low} or None")
        out.append(None if v is None else int(v))
    return out


def _concat(parts: Sequence[Watchlist]) -> Watchlist:
    """Rows of all `parts` in order; extras kept where any has them.

    Parts of different widths are an error (cutting rows to the narrowest would cut
    canaries' secrets off), and so are parts built with different tokenizers.
    """
    widths = [int(p.tokens.shape[1]) for p in parts]
    if len(set(widths)) > 1:
        raise ValueError(f"cannot add watchlists of {' and '.join(map(str, widths))} tokens per "
                         "row: cutting rows to the narrowest would cut their continuations "
                         "(a canary's secret); build every part with the same prompt_len + "
                         "cont_len")
    width = widths[0]
    tokenizer = merged([p.tokenizer for p in parts])

    def extra(attr: str, fill):
        if all(getattr(p, attr) is None for p in parts):
            return None
        out = []
        for p in parts:
            values = getattr(p, attr)
            out += [fill(p, i) for i in range(len(p))] if values is None else list(values)
        return out

    return Watchlist(
        torch.cat([p.tokens[:, :width] for p in parts]),
        [i for p in parts for i in p.ids], [t for p in parts for t in p.tags],
        extra("_previews", lambda p, i: p.redacted_preview(i)),
        extra("spans", lambda p, i: None), extra("texts", lambda p, i: None), tokenizer,
        extra("span_tokens", lambda p, i: None), extra("prompt_lens", lambda p, i: None))
