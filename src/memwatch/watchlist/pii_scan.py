"""`Watchlist.scan_pii`: one row per PII hit of a corpus, scanned shard by shard on an engine.

The corpus (`memwatch.watchlist.corpus`) is split into fixed shards; each shard
is scanned on its own and its rows written to ``<work_dir>/shard-<k>.parquet``
(a temporary file renamed into place, so a file that exists is complete). The
shards run on an existing engine, never a home-made pool:

- ``num_proc=1``: in this process;
- ``num_proc=N``: `datasets`' multiprocessing (``Dataset.map(num_proc=N)``), one machine;
- ``engine="ray"``: Ray Data (``ray.data.from_items(...).map_batches``), a cluster, or
  a local Ray when none is running (``ray.init()`` starts one).

The watchlist is assembled from the shard files in shard order, so its rows, ids
and order are the same with 1, 2 or N workers; a row found twice (the same PII in
the same context) is kept once, where it first occurs. With a `work_dir`, a scan
that was killed resumes: shards whose file exists are not scanned again (the
directory records what it scans, and refuses another scan's files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from memwatch.watchlist.corpus import Corpus, CorpusError, check_vocab, open_corpus

ENGINES = ("datasets", "ray")
_BATCH_ROWS = 256  # rows joined into one find_pii call (see find_pii_many)


@dataclass(frozen=True)
class ScanSettings:
    """What a scan looks for and how it cuts rows (all of it goes into the work dir's record)."""

    entities: tuple[str, ...] | None
    prompt_len: int
    cont_len: int
    keep_text: bool
    score_threshold: float
    backend: str  # resolved: "presidio" or "regex"
    ner_model: str | None = None  # a spaCy pipeline's name or path: PERSON, LOCATION
    separator: int | None = None  # the end-of-document token of short records (None: skip)


@dataclass
class _Job:
    corpus: Corpus
    tokenizer: object
    settings: ScanSettings
    work_dir: str


def scan_pii(cls, source, tokenizer, entities: Sequence[str] | None = None,
             prompt_len: int = 32, cont_len: int = 32, keep_text: bool = False,
             score_threshold: float = 0.35, backend: str = "auto", text_column: str = "text",
             fraction: float | None = None, max_rows: int | None = None, seed: int = 0,
             num_proc: int = 1, engine: str = "datasets",
             work_dir: str | os.PathLike | None = None,
             ner_model: str | os.PathLike | None = None, short_records: bool = True,
             eos_token_id: int | None = None):
    """The body of `Watchlist.scan_pii` (see its docstring); `cls` is the Watchlist class."""
    from memwatch.watchlist.pii import BACKENDS, _check_entities, _presidio_available
    from memwatch.watchlist.text import load_tokenizer

    if isinstance(source, (str, bytes)):
        raise TypeError("scan_pii got one string: give a list of texts ([text]); for files "
                        "give a pathlib.Path, or memwatch.watchlist.corpus.open_corpus(...)")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; choose one of {ENGINES}")
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"num_proc={num_proc!r}: give a positive number of workers")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}; choose one of {BACKENDS}")
    if ner_model is not None:  # a missing model fails now, not in a worker
        from memwatch.watchlist.ner import load_ner

        ner_model = os.fspath(ner_model)
        load_ner(ner_model)
    if entities is not None:
        patterns, names = _check_entities(entities, ner_model)
        entities = patterns + names
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(os.fspath(tokenizer))
    if not callable(tokenizer):
        raise TypeError(f"tokenizer is a {type(tokenizer).__name__}: give a Hugging Face fast "
                        "tokenizer, or its directory / hub name")
    if backend == "auto":  # resolved once, so that workers agree and warn once
        backend = "presidio" if _presidio_available() else "regex"
        if backend == "regex":
            warnings.warn("presidio-analyzer is not installed: PII is found with memwatch's "
                          "built-in regexes; install memwatch[pii] for Presidio's recognizers",
                          stacklevel=3)
    corpus = source if isinstance(source, Corpus) else open_corpus(
        source, text_column, fraction=fraction, max_rows=max_rows, seed=seed,
        tokenizer=tokenizer)
    separator = None
    if short_records and corpus.kind != "pythia":  # a Pythia sequence is cut from a packed
        # stream: what precedes its first token is the previous sequence, not a separator
        separator = getattr(tokenizer, "eos_token_id", None) if eos_token_id is None \
            else int(eos_token_id)
        if separator is None:
            raise ValueError(
                "scan_pii gives PII in short records the context of a document start, the "
                "end-of-document token, and the tokenizer has no eos_token_id: pass "
                "eos_token_id=<the id your training stream puts between documents>, or "
                "short_records=False to skip such PII")
    settings = ScanSettings(entities, prompt_len, cont_len, keep_text, score_threshold, backend,
                            ner_model, separator)
    own_dir = work_dir is None
    work = tempfile.mkdtemp(prefix="memwatch-scan-") if own_dir else os.fspath(work_dir)
    try:
        job = _Job(corpus, tokenizer, settings, work)
        _claim(job)
        todo = [k for k in range(corpus.num_shards) if not os.path.exists(shard_path(work, k))]
        run_shards(job, todo, num_proc, engine)
        return _assemble(cls, job)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def shard_path(work_dir: str, k: int) -> str:
    return os.path.join(work_dir, f"shard-{k:06d}.parquet")


def _claim(job: _Job) -> None:
    """Record what `job` scans in its work dir, or refuse a work dir of another scan."""
    os.makedirs(job.work_dir, exist_ok=True)
    record = {"corpus": job.corpus.signature(), "settings": asdict(job.settings),
              "tokenizer": _tokenizer_signature(job.tokenizer)}
    path = os.path.join(job.work_dir, "scan.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old != json.loads(json.dumps(record)):
            raise ValueError(f"{job.work_dir} holds the shards of another scan (other input, "
                             "sampling or settings): delete it or choose another work dir")
        return
    tmp = path + f".tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def _tokenizer_signature(tokenizer) -> str:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    data = json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")
    return f"{type(tokenizer).__name__}:{len(vocab)}:{hashlib.sha256(data).hexdigest()[:16]}"


# --------------------------------------------------------------------------------------------
# Engines: each runs `scan_shard` over the shards left to do; the results are the files.
# --------------------------------------------------------------------------------------------


def run_shards(job: _Job, todo: list[int], num_proc: int, engine: str) -> None:
    """Scan the shards in `todo` on `engine` with `num_proc` workers."""
    if not todo:
        return
    if engine == "ray":
        _run_ray(job, todo, num_proc)
    elif num_proc == 1 or len(todo) == 1:
        for k in todo:
            scan_shard(job, k)
    else:
        from datasets import Dataset, disable_progress_bars, enable_progress_bars

        tag = hashlib.sha256(f"{job.work_dir}:{todo}".encode()).hexdigest()[:16]
        disable_progress_bars()
        try:
            Dataset.from_dict({"shard": todo}).map(
                _map_shards, batched=True, batch_size=1, num_proc=min(num_proc, len(todo)),
                fn_kwargs={"job": job}, new_fingerprint=tag, load_from_cache_file=False)
        finally:
            enable_progress_bars()


def _map_shards(batch: dict, job: _Job) -> dict:
    """A `Dataset.map` / `map_batches` function: scan the batch's shards."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker
    for k in list(batch["shard"]):
        scan_shard(job, int(k))
    return {"shard": list(batch["shard"])}


def _run_ray(job: _Job, todo: list[int], num_proc: int) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("engine='ray' needs Ray Data: pip install memwatch[cluster]") from None
    if not ray.is_initialized():  # a local Ray; on a cluster, call ray.init(address=...) first
        ray.init(num_cpus=num_proc, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ray.data.from_items([{"shard": k} for k in todo]).map_batches(
        _map_shards, batch_size=1, fn_kwargs={"job": job}, concurrency=num_proc).materialize()


# --------------------------------------------------------------------------------------------
# One shard: texts -> PII hits -> rows, written atomically.
# --------------------------------------------------------------------------------------------


def scan_shard(job: _Job, k: int) -> None:
    """Scan shard `k` of the job's corpus and write its rows to `shard_path` (done if it exists)."""
    from memwatch.watchlist.pii import find_pii, find_pii_many

    path = shard_path(job.work_dir, k)
    if os.path.exists(path):
        return
    s, corpus = job.settings, job.corpus
    cols: dict[str, list] = {c: [] for c in ("tokens", "id", "entity", "row", "rank", "start",
                                             "end", "preview", "text", "span_tokens",
                                             "prompt_len")}
    skipped = undecodable = rank = 0
    batch: list[tuple[int, int, str, list[int] | None, list | None]] = []

    def flush():
        nonlocal skipped
        texts = [b[2] for b in batch]
        found = find_pii_many(texts, s.entities, s.score_threshold, s.backend,
                              ner_model=s.ner_model) \
            if s.backend != "presidio" or len(texts) > 1 else \
            [find_pii(texts[0], s.entities, s.score_threshold, s.backend,
                      ner_model=s.ner_model)]
        for (row, r, text, ids, offsets), hits in zip(batch, found, strict=True):
            if hits:
                skipped += _rows_of_text(cols, row, r, text, hits, job.tokenizer, ids, offsets, s)
        batch.clear()

    if corpus.kind == "pythia" and k > 0:
        check_vocab(corpus.source, corpus.rows[k * corpus.rows_per_shard:
                                               (k + 1) * corpus.rows_per_shard], job.tokenizer)
    for row, item in corpus.shard_texts(k):
        if corpus.kind == "pythia":
            decoded = decode_with_offsets(job.tokenizer, item)
            if decoded is None:
                undecodable += 1
                rank += 1
                continue
            batch.append((row, rank, decoded[0], item.tolist(), decoded[1]))
        else:
            batch.append((row, rank, item, None, None))
        rank += 1
        if len(batch) >= _BATCH_ROWS:
            flush()
    if batch:
        flush()
    table = pa.table({**{c: cols[c] for c in cols if c != "tokens"},
                      "tokens": pa.array(cols["tokens"], type=pa.list_(pa.int64()))})
    meta = {"rows_read": str(rank), "skipped": str(skipped), "undecodable": str(undecodable),
            "pid": str(os.getpid())}
    table = table.replace_schema_metadata(meta)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _rows_of_text(cols: dict, row: int, rank: int, text: str, hits, tokenizer,
                  token_ids: list[int] | None, offsets: list | None,
                  s: ScanSettings) -> int:
    """Append one row per usable hit of `text` to `cols`; returns the hits skipped.

    The row is the tokens [t - prompt_len, t + cont_len) where token t holds the
    hit's first character; a short record's row is a document start
    (`memwatch.watchlist.pii_rows.hit_row`).
    """
    from memwatch.watchlist.pii import redact
    from memwatch.watchlist.pii_rows import hit_row
    from memwatch.watchlist.text import encode

    if token_ids is None:
        token_ids, offsets = encode(tokenizer, text)
    skipped = 0
    for h in hits:
        made = hit_row(token_ids, offsets, h.start, h.end, s.prompt_len, s.cont_len, s.separator)
        if made is None:
            skipped += 1
            continue
        tokens = made.tokens
        cols["tokens"].append(tokens)
        cols["span_tokens"].append(made.span_tokens)
        cols["prompt_len"].append(made.prompt_len)
        cols["id"].append(f"pii:{h.entity}#{row_digest(h.entity, tokens)}")
        cols["entity"].append(h.entity)
        cols["row"].append(row)
        cols["rank"].append(rank)
        cols["start"].append(h.start)
        cols["end"].append(h.end)
        cols["preview"].append(f"{h.entity} {redact(text[h.start:h.end], h.entity)}")
        a = max(0, made.first - made.prompt_len)
        b = min(len(offsets), made.first + s.cont_len) - 1
        cols["text"].append(text[offsets[a][0]:offsets[b][1]] if s.keep_text else None)
    return skipped


def row_digest(entity: str, row: Sequence[int]) -> str:
    """8 hex digits identifying a row: stable across runs, not reversible to the PII."""
    data = entity.encode() + np.asarray(row, dtype=np.int64).tobytes()
    return hashlib.sha256(data).hexdigest()[:8]


def decode_with_offsets(tokenizer, ids) -> tuple[str, list[tuple[int, int]]] | None:
    """(text, character offsets of each token) of token ids, or None if the tokens do not
    decode one by one to the text of the whole (a character split across tokens)."""
    ids = [int(t) for t in ids]
    pieces = tokenizer.batch_decode([[t] for t in ids], clean_up_tokenization_spaces=False)
    text = "".join(pieces)
    if "\ufffd" in text and text != tokenizer.decode(ids, clean_up_tokenization_spaces=False):
        return None
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    return text, [(e - len(p), e) for p, e in zip(pieces, ends, strict=True)]


# --------------------------------------------------------------------------------------------
# Assembly: the shard files, in shard order.
# --------------------------------------------------------------------------------------------


def _assemble(cls, job: _Job):
    """The watchlist of the job's shard files (class `cls`), rows in shard order."""
    import torch

    corpus, s = job.corpus, job.settings
    rows, ids, tags, spans, previews, kept, span_tokens, prompt_lens = ([] for _ in range(8))
    seen: set[str] = set()
    skipped = undecodable = offset = 0
    for k in range(corpus.num_shards):
        path = shard_path(job.work_dir, k)
        try:
            table = pq.read_table(path)
        except Exception as err:
            raise CorpusError(f"{path}: unreadable shard result ({err}); delete it and scan "
                              "again to redo that shard") from None
        meta = {key.decode(): int(v) for key, v in (table.schema.metadata or {}).items()}
        skipped += meta.get("skipped", 0)
        undecodable += meta.get("undecodable", 0)
        data = table.to_pydict()
        for i in range(table.num_rows):
            if corpus.kind == "stream":
                if corpus.max_rows is not None and offset + data["rank"][i] >= corpus.max_rows:
                    continue
                text_index = offset + data["rank"][i]
            else:
                text_index = data["row"][i]
            if data["id"][i] in seen:
                continue  # the same PII in the same context: one row
            seen.add(data["id"][i])
            rows.append(data["tokens"][i])
            ids.append(data["id"][i])
            tags.append((f"pii:{data['entity'][i]}",))
            spans.append((text_index, data["start"][i], data["end"][i]))
            previews.append(data["preview"][i])
            kept.append(data["text"][i])
            span_tokens.append(data["span_tokens"][i])
            prompt_lens.append(data["prompt_len"][i])
        offset += meta.get("rows_read", 0)
    M, N = s.prompt_len, s.cont_len
    if undecodable:
        warnings.warn(f"scan_pii skipped {undecodable} sequences whose tokens do not decode one "
                      "by one to their text (a character split across tokens)", stacklevel=3)
    if skipped:
        warnings.warn(f"scan_pii skipped {skipped} PII hits with fewer than {M} tokens "
                      f"before them or {N} after them in their text", stacklevel=3)
    if not rows:
        raise ValueError(f"scan_pii found no usable PII ({skipped} hits skipped): the "
                         "watchlist would be empty")
    from memwatch.watchlist.tokenizer import describe

    return cls(torch.tensor(rows, dtype=torch.long), ids, tags, previews, spans,
               kept if s.keep_text else None, describe(job.tokenizer),
               span_tokens, prompt_lens)
