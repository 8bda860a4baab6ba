"""Post-hoc evaluation of a checkpoint suite: probe every (model, revision) over a watchlist.

One parquet per (model, revision) at ``<out>/<model name>/<revision>.parquet`` with
columns ``index`` (the row's sequence index in the training data, or its watchlist
position), ``id``, ``score``, ``match_prefix``, ``nll``, ``tags``, the extraction
measures ``log_pz``, ``min_k_logprob``, ``zlib_ratio`` (with NLL, the default) and, with
several prompt lengths, ``score_p<M>`` per length M (``score`` is the longest's), and on
request ``token_logprobs`` (each row's N per-token log-probs); the
run's settings ride in the file's schema metadata under ``memwatch``
(`memwatch.posthoc.results` owns the format). Rows come from a row source
(`memwatch.posthoc.rows`): a watchlist in memory, or Pythia's data streamed batch by
batch, so memory does not grow with the number of rows.

Resumable: rows are scored in batches and every batch is written to its own file
(``<revision>.parts/rank<r>-of-<w>/<start>-<end>.parquet``, atomically) before the
next starts, so a crash loses at most one batch; a rerun skips finished files and
continues partial ones. Under ``torchrun`` each rank scores a contiguous slice of
the rows and writes its own shard; rank 0 merges the shards once all are done.

Checkpoints come from the Hugging Face hub (``from_pretrained(id, revision=...)``)
or from a local suite laid out as ``<suite>/<model>/<revision>/`` (one
``save_pretrained`` directory per revision): ``--model <suite>/<model>`` with
``--revision step1000`` loads ``<suite>/<model>/step1000``. A local directory that
itself holds ``config.json`` is one checkpoint, revision ``main``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from memwatch.distributed import barrier, rank_world
from memwatch.posthoc.results import (
    FORMAT_VERSION,
    MEASURE_COLUMNS,
    read_meta,
    results_table,
    step_of,
)
from memwatch.posthoc.rows import PythiaRows, WatchlistRows
from memwatch.probe import BatchSize, ProbeSpec, _probe
from memwatch.prompt_groups import check_prompt_lens, probe_rows
from memwatch.watchlist import Watchlist

RowSource = WatchlistRows | PythiaRows

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Rows per resumable batch when the probe picks its own batch size (--batch-size auto).
AUTO_WRITE_ROWS = 1024


@dataclass(frozen=True)
class Checkpoint:
    """One (model, revision) to evaluate.

    model: the model as given (hub id or local directory); name: its last path
    component, which names the results folder; path: the local directory to load,
    or None for a hub checkpoint (loaded with ``revision=revision``); gguf_file: the
    GGUF file inside that folder or hub repository (transformers' ``gguf_file=``, the
    weights dequantized on load), or None.
    """

    model: str
    revision: str
    name: str
    path: str | None = None
    gguf_file: str | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@{self.revision}"


_SPEC_FIELDS = ("prompt_len", "cont_len", "mode", "batch_size", "with_nll", "min_k")


@dataclass(frozen=True, init=False)
class EvalConfig:
    """How to probe a checkpoint suite: the `ProbeSpec` (default: exact, with the NLL), the
    model's dtype, the transformers cache and the device (None: this rank's CUDA device if
    any, else CPU). ``spec.batch_size`` also sets the rows per resumable file (None: the
    probe sizes its batches, files of `AUTO_WRITE_ROWS` rows). ``token_logprobs=True`` also
    writes each row's per-token log-probs (needs ``spec.with_nll``).

    The probe's settings given loose (``EvalConfig(mode="extractable")``) still work, with a
    DeprecationWarning: pass ``spec=ProbeSpec(mode="extractable")``.
    """

    spec: ProbeSpec
    dtype: str
    cache_dir: str | None
    device: str | None
    token_logprobs: bool

    def __init__(self, spec: ProbeSpec | None = None, dtype: str = "fp32",
                 cache_dir: str | None = None, device: str | None = None,
                 token_logprobs: bool = False, **loose):
        unknown = sorted(set(loose) - set(_SPEC_FIELDS))
        if unknown:
            raise TypeError(f"EvalConfig got unknown settings {unknown}; it takes spec, dtype, "
                            "cache_dir, device and token_logprobs")
        spec = ProbeSpec(with_nll=True) if spec is None else spec
        if not isinstance(spec, ProbeSpec):
            raise TypeError(f"spec must be a ProbeSpec; got {type(spec).__name__}")
        if loose:
            warnings.warn(f"EvalConfig({', '.join(sorted(loose))}=...) is deprecated: pass "
                          "spec=ProbeSpec(...)", DeprecationWarning, stacklevel=2)
            spec = replace(spec, **loose)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
        if token_logprobs and not spec.with_nll:
            raise ValueError("token_logprobs come from the NLL's teacher-forced pass: they need "
                             "with_nll=True (drop --no-nll)")
        for name, value in (("spec", spec), ("dtype", dtype), ("cache_dir", cache_dir),
                            ("device", device), ("token_logprobs", bool(token_logprobs))):
            object.__setattr__(self, name, value)

    def as_meta(self) -> dict:
        """The settings as the flat dict a results file's metadata holds (format unchanged;
        ``prompt_len`` a list when there are several: `results.prompt_lens_of` reads it)."""
        s = self.spec
        return {"prompt_len": s.prompt_len, "cont_len": s.cont_len, "mode": s.mode,
                "dtype": self.dtype, "batch_size": s.batch_size, "with_nll": s.with_nll,
                "cache_dir": self.cache_dir, "device": self.device, "min_k": s.min_k,
                **({"token_logprobs": True} if self.token_logprobs else {})}


def _revision_order(revision: str):
    step = step_of(revision)
    return (0, step, "") if step is not None else (1, 0, revision)


def resolve_checkpoints(model: str, revisions: Sequence[str] | None = None,
                        gguf_file: str | None = None) -> list[Checkpoint]:
    """The checkpoints to evaluate for `model` (hub id or local dir), in training order.

    Local suite: ``revisions`` name subdirectories of `model` (all of them that hold
    a ``config.json`` when none are given). Hub id: ``revisions`` pass through
    (default ``main``). With `gguf_file` a local `model` is one checkpoint, the
    folder holding that file (named after the file). Raises ValueError naming a
    missing local revision or GGUF file.
    """
    revisions = list(revisions or [])
    local = Path(model)
    name = local.name or str(model)
    if gguf_file is not None:
        name = Path(gguf_file).stem
        if local.is_dir():
            if not (local / gguf_file).is_file():
                raise ValueError(f"no GGUF file {gguf_file!r} in {model}")
            if revisions and revisions != ["main"]:
                raise ValueError(f"{model}/{gguf_file} is a single checkpoint, so it has no "
                                 f"revisions {revisions}")
            return [Checkpoint(model, "main", name, str(local), gguf_file)]
    if local.is_dir():
        if (local / "config.json").is_file():
            if revisions and revisions != ["main"]:
                raise ValueError(
                    f"{model} is a single checkpoint (it holds config.json), so it has no "
                    f"revisions {revisions}; lay a suite out as <suite>/<model>/<revision>/")
            return [Checkpoint(model, "main", name, str(local))]
        found = sorted((d.name for d in local.iterdir() if (d / "config.json").is_file()),
                       key=_revision_order)
        if not revisions:
            if not found:
                raise ValueError(f"{model} holds no checkpoint: expected config.json in it or "
                                 f"in its revision subdirectories <revision>/config.json")
            revisions = found
        missing = [r for r in revisions if r not in found]
        if missing:
            raise ValueError(f"revision {missing[0]!r} not found under {model} (no "
                             f"{local / missing[0] / 'config.json'}); found: {found or 'none'}")
        return [Checkpoint(model, r, name, str(local / r)) for r in revisions]
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1 \
            or (local.parent != Path(".") and local.parent.is_dir()):
        raise ValueError(_no_local_model(model, local))
    return [Checkpoint(model, r, name, None, gguf_file) for r in (revisions or ["main"])]


def _no_local_model(model: str, local: Path) -> str:
    """Why `model`, which looks like a local path, names no checkpoint folder (the hub is never
    tried for a path: a typo would cost a minute of retries and end in a hub error)."""
    if local.exists():
        return f"--model {model!r} is a file, not a checkpoint folder"
    parent = local.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    held = sorted(d.name for d in parent.iterdir() if d.is_dir()) if parent.is_dir() else []
    near = [d for d in held if d.lower().startswith(local.name.lower()[:3])] or held
    holds = f"{parent}/ holds {', '.join(near[:5])}" if held else f"{parent}/ holds no folder"
    return (f"--model {model!r}: no folder {local}; {holds} (a path is never looked up on "
            "the hub; a hub id is owner/name)")


def result_path(out: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Where the finished parquet of `ckpt` lives under `out`."""
    return Path(out) / ckpt.name / f"{ckpt.revision}.parquet"


def _load_args(ckpt: Checkpoint, config: EvalConfig) -> tuple[str, dict]:
    gguf = {"gguf_file": ckpt.gguf_file} if ckpt.gguf_file else {}
    if ckpt.path is not None:
        return ckpt.path, gguf
    return ckpt.model, {"revision": ckpt.revision, "cache_dir": config.cache_dir, **gguf}


def check_inputs(checkpoints: Sequence[Checkpoint], rows: RowSource,
                 config: EvalConfig) -> None:
    """Raise ValueError before any scoring if a checkpoint cannot score these rows.

    Loads each checkpoint's config only (cheap): an unreachable revision or a
    vocabulary smaller than the rows' largest token id fails here.
    """
    from transformers import AutoConfig

    if not checkpoints:
        raise ValueError("no checkpoints to evaluate")
    spec = config.spec
    top, where = rows.check(spec.total_len)
    if isinstance(rows, WatchlistRows):  # PII rows of short records: one prompt length
        check_prompt_lens(rows.watchlist.ids, rows.watchlist.prompt_lens, spec)
    for ckpt in checkpoints:
        path, kwargs = _load_args(ckpt, config)
        try:
            cfg = AutoConfig.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(_unloadable(ckpt, config, err)) from err
        vocab = getattr(cfg, "vocab_size", None)
        if vocab is not None and top >= vocab:
            raise ValueError(f"{ckpt.key} has a vocabulary of {vocab} ids but {where}: the "
                             "data was tokenized for another model")


def cached_revisions(model_id: str, cache_dir: str | None = None) -> list[str]:
    """The revisions of hub model `model_id` in the local Hugging Face cache, in step order.

    The hub client keeps ``models--<org>--<name>/refs/<revision>`` (a file holding the
    commit) beside ``snapshots/<commit>/``; a revision counts if its snapshot exists.
    """
    from huggingface_hub import constants

    repo = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}"
    found = []
    for ref in (repo / "refs").glob("*") if (repo / "refs").is_dir() else ():
        commit = ref.read_text().strip() if ref.is_file() else ""
        if commit and (repo / "snapshots" / commit).is_dir():
            found.append(ref.name)
    return sorted(found, key=_revision_order)


def _unloadable(ckpt: Checkpoint, config: EvalConfig, err: Exception) -> str:
    """One line saying why `ckpt` cannot be loaded, and what is there instead."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), repr(err))
    if ckpt.path is not None:
        return f"cannot load the config of {ckpt.key} from {ckpt.path}: {first}"
    cached = cached_revisions(ckpt.model, config.cache_dir)
    return (f"cannot load {ckpt.model} at revision {ckpt.revision!r}: not in the local Hugging "
            f"Face cache (revisions cached: {', '.join(cached) or 'none'}) and not reachable "
            f"on the hub ({first})")


def fingerprint(rows: RowSource, config: EvalConfig) -> str:
    """sha256 of what decides the scores: the rows (see the row source), lengths, mode, dtype."""
    h = hashlib.sha256()
    spec = config.spec
    h.update(json.dumps([spec.prompt_len, spec.cont_len, spec.mode, config.dtype,
                         spec.with_nll, spec.min_k, MEASURE_COLUMNS,
                         *(["token_logprobs"] if config.token_logprobs else [])]).encode())
    rows.update_fingerprint(h, spec.total_len)
    return h.hexdigest()


def _slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return start, start + per + (rank < extra)


def _device(config: EvalConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Parquet I/O: every file is written to a temporary name and renamed, so a file that exists
# is complete.
# --------------------------------------------------------------------------------------------


def _write_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _check_same_run(path: Path, meta: dict) -> None:
    found = read_meta(path)
    if found.get("fingerprint") != meta["fingerprint"]:
        raise ValueError(
            f"{path} holds results of another run (different watchlist, indices, mode, lengths "
            f"or dtype); delete it or choose another --out")


def _merge(paths: Sequence[Path], meta: dict, dest: Path) -> None:
    """Write the rows of `paths` to `dest` (atomically) one row group at a time, so memory
    stays at one file's row group however many rows the result holds."""
    import pyarrow.parquet as pq

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    schema = results_table([], [], [], [], [], [], meta,
                           {"token_logprobs": np.zeros((0, meta["cont_len"]))}).schema
    with pq.ParquetWriter(tmp, schema) as writer:
        for path in paths:
            source = pq.ParquetFile(path)
            for i in range(source.num_row_groups):
                writer.write_table(source.read_row_group(i).replace_schema_metadata(
                    schema.metadata))
    os.replace(tmp, dest)


def _batch_files(rank_dir: Path) -> list[tuple[int, int, Path]]:
    out = []
    for p in rank_dir.glob("*.parquet"):
        m = re.fullmatch(r"(\d+)-(\d+)\.parquet", p.name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(out)


# --------------------------------------------------------------------------------------------
# Scoring one checkpoint.
# --------------------------------------------------------------------------------------------


def _load_model(ckpt: Checkpoint, config: EvalConfig, device: torch.device):
    from transformers import AutoModelForCausalLM

    path, kwargs = _load_args(ckpt, config)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[config.dtype], **kwargs)
    return model.to(device).eval()


def _score_slice(model, rows: RowSource, start, end, rank_dir, meta, config, bar) -> None:
    """Probe rows [start, end) batch by batch, writing each batch before the next."""
    from memwatch.lm import vocab_size

    done = start
    for lo, hi, path in _batch_files(rank_dir):
        if lo != done or hi > end:
            raise ValueError(f"{rank_dir} holds batch files that do not tile rows {start}:{end} "
                             f"(found {path.name} after row {done}); delete the folder")
        _check_same_run(path, meta)
        done = hi
    bar.update(done - start)
    spec = config.spec
    step = spec.batch_size or AUTO_WRITE_ROWS
    vocab = vocab_size(model)
    sizer = BatchSize(spec.batch_size)  # a size that ran out of memory is not tried again
    while done < end:
        hi = min(done + step, end)
        index, ids, tags, tokens = rows.batch(done, hi, spec.total_len)
        if vocab is not None and int(tokens.max()) >= vocab:
            row = int((tokens >= vocab).any(1).nonzero()[0, 0])
            raise ValueError(f"watchlist sequence {ids[row]!r} has a token id >= {vocab}, the "
                             f"vocabulary of {meta['name']}@{meta['revision']}")
        lens = rows.prompt_lens(done, hi) if hasattr(rows, "prompt_lens") else None
        res = probe_rows(model, tokens, lens, spec, _probe, sizer)
        nll = res.nll if res.nll is not None else torch.full((hi - done,), float("nan"))
        measures = {name: getattr(res, name).numpy() for name in (*MEASURE_COLUMNS,
                                                                    "token_logprobs")
                    if getattr(res, name) is not None}
        table = results_table(index, ids, tags, res.scores.numpy(), res.match_prefix.numpy(),
                              nll.float().numpy(), meta, measures,
                              res.scores_by_prompt_len.numpy())
        _write_atomic(table, rank_dir / f"{done:012d}-{hi:012d}.parquet")
        bar.update(hi - done)
        done = hi


def _progress(ckpt, total, rank, world_size, enabled):
    from tqdm.auto import tqdm

    # Rank 0 shows its own slice scaled by the world size: about the whole run's rows and rate.
    return tqdm(total=total, desc=ckpt.key, unit="seq", unit_scale=world_size,
                disable=not enabled or rank != 0, dynamic_ncols=True)


def evaluate(
    checkpoints: Sequence[Checkpoint],
    watchlist: Watchlist | RowSource,
    out: str | os.PathLike,
    index: np.ndarray | None = None,
    config: EvalConfig = EvalConfig(),  # noqa: B008 (frozen, so a shared default is safe)
    progress: bool = True,
    load_model: Callable | None = None,
) -> list[Path]:
    """Return the results parquet of every checkpoint, probing those not finished yet.

    `watchlist`: a `Watchlist`, or a row source from `memwatch.posthoc.rows` such as
    `PythiaRows`, which streams Pythia's data batch by batch. `index` (int64 [n], a
    watchlist only) is written as the ``index`` column (default:
    `memwatch.posthoc.rows.default_index`). Under ``torch.distributed`` each rank
    scores a contiguous slice and every rank must call this with the same arguments.
    `load_model(ckpt, config, device)` replaces ``from_pretrained`` (tests).
    """
    if isinstance(watchlist, Watchlist):
        rows = WatchlistRows(watchlist, index)
    elif index is not None:
        raise ValueError("index applies to a Watchlist; a row source carries its own")
    else:
        rows = watchlist
    n = len(rows)
    check_inputs(checkpoints, rows, config)
    rank, world_size = rank_world()
    device = _device(config)
    digest = fingerprint(rows, config)
    load_model = load_model or _load_model
    paths = []
    for ckpt in checkpoints:
        final = result_path(out, ckpt)
        paths.append(final)
        meta = {"format": FORMAT_VERSION, "model": ckpt.model, "name": ckpt.name,
                "revision": ckpt.revision, "step": step_of(ckpt.revision), "rows": n,
                "fingerprint": digest, **config.as_meta()}
        if final.exists():
            _check_same_run(final, meta)
            continue
        parts = final.with_name(f"{ckpt.revision}.parts")
        rank_file = parts / f"rank{rank:05d}-of-{world_size:05d}.parquet"
        rank_dir = rank_file.with_suffix("")
        start, end = _slice(n, rank, world_size)
        if rank_file.exists():
            _check_same_run(rank_file, meta)
        elif start < end:
            model = load_model(ckpt, config, device)
            meta["params"] = sum(p.numel() for p in model.parameters())
            with _progress(ckpt, end - start, rank, world_size, progress) as bar:
                _score_slice(model, rows, start, end, rank_dir, meta, config, bar)
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _merge([p for _, _, p in _batch_files(rank_dir)], meta, rank_file)
            shutil.rmtree(rank_dir, ignore_errors=True)
        barrier()
        if rank == 0:
            shards = [parts / f"rank{r:05d}-of-{world_size:05d}.parquet" for r in range(world_size)]
            shards = [p for p in shards if p.exists()]
            meta["params"] = read_meta(shards[0]).get("params")
            _merge(shards, meta, final)
            shutil.rmtree(parts, ignore_errors=True)
        barrier()
    return paths
