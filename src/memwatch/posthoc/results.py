"""Result formats of a checkpoint suite's memorization scores: memwatch's own and EleutherAI's.

The one place that knows how results are laid out on disk. Every reader returns a
`Run` (one model at one checkpoint) that carries its source:

- ``memwatch``: the parquet files `memwatch eval` writes, one per (model, revision),
  columns ``index``, ``id``, ``score``, ``match_prefix``, ``nll``, ``tags`` and the
  extraction measures `MEASURE_COLUMNS` (``log_pz``, ``min_k_logprob``, ``zlib_ratio``,
  each defined in `memwatch.measures` and docs/concepts.md; NaN without NLL), and with
  several prompt lengths one ``score_p<M>`` column per length M (`score_column`), and
  ``token_logprobs`` (float32 lists of N) when ``eval --token-logprobs`` asked; the
  run's settings in the schema metadata under ``memwatch`` (`results_table`, `read_meta`).
- ``pythia-csv``: what EleutherAI's ``predictable-memorization/eval_memorization.py``
  writes, ``memorization_<MODEL>_<STEP>/rank-<R>.csv`` (or ``memorization_<MODEL>_<STEP>.csv``),
  headerless ``index,accuracy`` lines, ``MODEL`` as in ``EleutherAI/pythia-<MODEL>``; also any
  CSV whose header names an index column (``index``/``idx``) and a score column
  (``score``/``accuracy``/``acc``), named ``memorization_evals_<MODEL>_<ctx>_<ctx+cont>_<STEP>.csv``
  or as above. That script's output has known defects, repaired here with a warning each:
  ranks score whole batches past their share, so rows at rank boundaries appear twice
  (equal scores: one is kept; different scores: an error naming both files), and the
  last rank scores rows past the checkpoint's (index >= step * 1024: dropped). A third
  defect cannot be repaired: the last *partial* batch of a rank is written with its
  indices shifted by one (the score of row i under index i + 1); see docs/posthoc.md.
- ``memorized-evals``: the ``EleutherAI/pythia-memorized-evals`` dataset, the *memorized*
  rows only (columns ``index``, ``tokens``, ``__index_level_0__``), one split per model
  and checkpoint: ``duped.70m``, ``deduped.1.4b``, ``duped.12b.23000`` (step 23000) and
  newer splits such as ``deduped.1b.new`` (a separate run, labelled ``new``). Laid out as
  on the hub, ``data/<split>-00000-of-00002-<hash>.parquet`` (with or without the hash), or
  as the parquet converter does, ``default/<split>/0000.parquet``. Such a run knows no
  scores: it counts in precision/recall, not in fractions, histograms or correlations.
  These sets were computed on the ``-v0`` Pythia models (the first training runs), not
  on the models now under the same names.

Files matching none of these are skipped with a warning.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memwatch.probe import PROMPT_LEN
from memwatch.watchlist.pythia import (  # noqa: F401  (re-exported for readers)
    PYTHIA_FINAL_STEP,
    PYTHIA_PARAMS,
    PYTHIA_SEQS_PER_STEP,
    PYTHIA_TOKENS_PER_STEP,
)

FORMAT_VERSION = 1
# Per-row extraction measures in memwatch's results (`ProbeResult` fields of the same names).
MEASURE_COLUMNS = ("log_pz", "min_k_logprob", "zlib_ratio")
SOURCES = ("memwatch", "pythia-csv", "memorized-evals")
_STEP = re.compile(r"^step(\d+)$")
_PYTHIA_NAME = re.compile(r"pythia-(\d+(?:\.\d+)?[mb])(-deduped)?(?:-v0)?$", re.I)
_SPLIT = re.compile(r"^(duped|deduped)\.(\d+(?:\.\d+)?[mb])(?:\.(\d+))?(\.new)?$")
_SHARD = re.compile(r"-\d+-of-\d+(?:-[0-9a-f]+)?$")
_EVAL_DIR = re.compile(r"^memorization_(.+)_(\d+)$")
_EVALS_FILE = re.compile(r"^memorization_evals_(.+)_\d+_\d+_(\d+)$")
_INDEX_COLS, _SCORE_COLS = ("index", "idx"), ("score", "accuracy", "acc")


class ResultsWarning(UserWarning):
    """A results file was skipped or repaired while reading (the message says which and why)."""


def step_of(revision: str) -> int | None:
    """The training step named by a revision like ``step143000``, else None."""
    m = _STEP.match(revision)
    return int(m.group(1)) if m else None


def pythia_params(model: str) -> int | None:
    """Total parameters of a Pythia model named like ``pythia-1.4b-deduped``, else None."""
    m = _PYTHIA_NAME.search(model)
    return PYTHIA_PARAMS.get(m.group(1).lower()) if m else None


@dataclass(frozen=True)
class Run:
    """One (model, checkpoint)'s results from one source.

    index: int64 [n] sorted, unique sequence indices; memorized: bool [n]; scores:
    float32 [n], or None when the source lists memorized sequences only (then every
    listed row is memorized and `complete` is False). source: one of `SOURCES`;
    variant: ``"new"`` for the ``.new`` memorized-evals splits, else ``""``.
    tags: each row's watchlist tags (memwatch results of a watchlist), else None.
    log_pz: float32 [n] log p_z (`memwatch.measures`), or None where the source has none
    (NaN for rows probed without NLL).
    prompt_lens: the prompt lengths the rows were probed with, ascending (memwatch results),
    else None; scores_by_prompt_len: float32 [n, len(prompt_lens)] the score with each (the
    last column is `scores`), as `ProbeResult.scores_by_prompt_len`, else None.
    """

    model: str
    revision: str
    step: int | None
    params: int | None
    index: np.ndarray
    memorized: np.ndarray
    scores: np.ndarray | None
    source: str
    files: tuple[str, ...]
    variant: str = ""
    tags: tuple[tuple[str, ...], ...] | None = field(default=None, repr=False)
    log_pz: np.ndarray | None = None
    prompt_lens: tuple[int, ...] | None = None
    scores_by_prompt_len: np.ndarray | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """``MODEL@REVISION``: what the run measured, whatever its source."""
        return f"{self.model}@{self.revision}"

    @property
    def label(self) -> str:
        """The key, plus the source for runs not computed by memwatch."""
        if self.source == "memwatch":
            return self.key
        return f"{self.key} [{self.source}{' ' + self.variant if self.variant else ''}]"

    @property
    def complete(self) -> bool:
        return self.scores is not None


def _make_run(model, revision, params, index, memorized, scores, source, files,
              variant="", tags=None, log_pz=None, prompt_lens=None,
              scores_by_prompt_len=None) -> Run:
    index = np.asarray(index, np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    if len(index) > 1 and (np.diff(index) == 0).any():
        dup = int(index[np.flatnonzero(np.diff(index) == 0)[0]])
        raise ValueError(f"{files[0]}: sequence index {dup} appears more than once for "
                         f"{model}@{revision}")
    return Run(model, revision, step_of(revision), params if params else pythia_params(model),
               index, np.asarray(memorized, bool)[order],
               None if scores is None else np.asarray(scores, np.float32)[order], source,
               tuple(str(f) for f in files), variant,
               None if tags is None else tuple(tuple(tags[i] or ()) for i in order),
               None if log_pz is None else np.asarray(log_pz, np.float32)[order], prompt_lens,
               None if scores_by_prompt_len is None
               else np.asarray(scores_by_prompt_len, np.float32)[order])


# --------------------------------------------------------------------------------------------
# memwatch's own format.
# --------------------------------------------------------------------------------------------


def prompt_lens_of(meta: dict) -> tuple[int, ...]:
    """The prompt lengths a results file's rows were probed with, ascending: its metadata's
    ``prompt_len``, an integer (one length, and every file written before several) or a list."""
    value = meta.get("prompt_len", PROMPT_LEN)
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def score_column(prompt_len: int) -> str:
    """The results column of the score with prompt length `prompt_len`: ``score_p<M>``."""
    return f"score_p{prompt_len}"


def results_table(index, ids, tags, scores, match_prefix, nll, meta: dict,
                  measures: dict | None = None, scores_by_prompt_len=None):
    """A pyarrow Table of scored rows in memwatch's results format, `meta` in its schema.

    `measures` maps each of `MEASURE_COLUMNS` to float [n] (a missing one is NaN), and
    ``token_logprobs`` to float [n, N], written when ``meta["token_logprobs"]``. With
    several prompt lengths in `meta` (`prompt_lens_of`), `scores_by_prompt_len` (float
    [n, lengths], ascending, as `ProbeResult`'s) gives one `score_column` per length (NaN
    when None); with one length there is none (``score`` is it).
    """
    import pyarrow as pa

    n = len(np.asarray(scores))
    measures = measures or {}
    lens = prompt_lens_of(meta)
    by_len = np.full((n, len(lens)), np.nan, np.float32) if scores_by_prompt_len is None \
        else np.asarray(scores_by_prompt_len, np.float32).reshape(n, len(lens))
    table = pa.table({
        "index": pa.array(np.asarray(index, np.int64)),
        "id": pa.array(list(ids), pa.string()),
        "score": pa.array(np.asarray(scores, np.float32)),
        "match_prefix": pa.array(np.asarray(match_prefix, np.int16)),
        "nll": pa.array(np.asarray(nll, np.float32)),
        "tags": pa.array([list(t) for t in tags], pa.list_(pa.string())),
        **{name: pa.array(np.asarray(measures[name], np.float32) if name in measures
                          else np.full(n, np.nan, np.float32)) for name in MEASURE_COLUMNS},
        **({score_column(m): pa.array(by_len[:, j]) for j, m in enumerate(lens)}
           if len(lens) > 1 else {}),
        **({"token_logprobs": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(measures["token_logprobs"], np.float32).reshape(-1)),
            int(meta["cont_len"]))} if meta.get("token_logprobs") else {}),
    })
    return table.replace_schema_metadata({"memwatch": json.dumps(meta)})


def read_meta(path: str | os.PathLike) -> dict:
    """The ``memwatch`` metadata of a results parquet written by `memwatch eval` ({} if none)."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"memwatch")
    except Exception as err:  # pyarrow raises its own types for a corrupt footer
        raise ValueError(f"{path}: unreadable parquet ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); the file is truncated "
                         "or corrupt: run memwatch eval for that checkpoint again") from None
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        why = "nests too deep" if isinstance(err, RecursionError) else "is not valid JSON"
        raise ValueError(f"{path}: its 'memwatch' metadata {why}; the file was not written by "
                         "memwatch eval or is corrupt") from None
    if not isinstance(meta, dict) or not {"model", "revision", "cont_len"} <= set(meta):
        raise ValueError(f"{path}: its 'memwatch' metadata lacks model, revision or cont_len; "
                         "the file was not written by memwatch eval or is corrupt")
    return meta


def read_memwatch(paths: Sequence[Path], meta: dict) -> Run:
    """The run of memwatch results files (one run's shards) with metadata `meta`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [set(pq.read_schema(p).names) for p in paths]
    with_tags = all("tags" in n for n in names)
    has_log_pz = all("log_pz" in n for n in names)  # absent in files written before it
    lens = prompt_lens_of(meta)
    by_len = [score_column(m) for m in lens] if len(lens) > 1 else ["score"]
    missing = next((f"{p}: no column {c!r}" for p, n in zip(paths, names, strict=True)
                    for c in by_len if c not in n), None)
    if missing:
        raise ValueError(f"{missing}, though its metadata names prompt lengths {list(lens)}; "
                         "the file is corrupt: run memwatch eval for that checkpoint again")
    columns = ["index", "score", "match_prefix"] + (["tags"] if with_tags else []) \
        + (["log_pz"] if has_log_pz else []) + [c for c in by_len if c != "score"]
    table = pa.concat_tables([pq.read_table(p, columns=columns) for p in paths])
    prefix = table["match_prefix"].to_numpy()
    scores_by_len = np.stack([table[c].to_numpy() for c in by_len], axis=1)
    return _make_run(meta.get("name") or Path(meta["model"]).name, meta["revision"],
                     meta.get("params"), table["index"].to_numpy(),
                     prefix >= int(meta["cont_len"]), table["score"].to_numpy(), "memwatch",
                     paths, tags=table["tags"].to_pylist() if with_tags else None,
                     log_pz=table["log_pz"].to_numpy() if has_log_pz else None,
                     prompt_lens=lens, scores_by_prompt_len=scores_by_len)


# --------------------------------------------------------------------------------------------
# EleutherAI/pythia-memorized-evals.
# --------------------------------------------------------------------------------------------


def memorized_evals_split(path: Path) -> re.Match | None:
    """The split a memorized-evals parquet belongs to (hub or converter layout), else None."""
    m = _SPLIT.match(_SHARD.sub("", path.stem))
    return m or _SPLIT.match(path.parent.name)


def read_memorized_evals(paths: Sequence[Path], split: re.Match) -> Run:
    """The run of one memorized-evals split: its listed rows, all memorized, no scores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    variant, size, step, new = split.groups()
    model = f"pythia-{size}" + ("-deduped" if variant == "deduped" else "")
    tables = []
    for p in paths:
        if "index" not in pq.read_schema(p).names:
            raise ValueError(f"{p}: a pythia-memorized-evals split needs an 'index' column; "
                             f"the file has {pq.read_schema(p).names}")
        tables.append(pq.read_table(p, columns=["index"]))
    index = pa.concat_tables(tables)["index"].to_numpy()
    return _make_run(model, f"step{step or PYTHIA_FINAL_STEP}", None, index,
                     np.ones(len(index), bool), None, "memorized-evals", paths,
                     "new" if new else "")


# --------------------------------------------------------------------------------------------
# eval_memorization.py's CSVs.
# --------------------------------------------------------------------------------------------


def _read_csv_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    head = [c.strip().lower() for c in rows[0]]
    try:
        float(head[-1])
        has_header = False
    except ValueError:
        has_header = True
    if has_header:
        icol = next((head.index(c) for c in _INDEX_COLS if c in head), None)
        scol = next((head.index(c) for c in _SCORE_COLS if c in head), None)
        if icol is None or scol is None:
            raise ValueError(f"{path}: need an index column {_INDEX_COLS} and a score column "
                             f"{_SCORE_COLS}; the header has {rows[0]}")
        rows = rows[1:]
    elif len(head) == 2:
        icol, scol = 0, 1
    else:
        raise ValueError(f"{path}: a CSV without header must have 2 columns (index, score); "
                         f"the first row has {len(head)}")
    try:
        index = np.array([int(float(r[icol])) for r in rows], np.int64)
        scores = np.array([float(r[scol]) for r in rows], np.float32)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: unreadable row ({err})") from None
    except OverflowError:
        raise ValueError(f"{path}: a sequence index is beyond int64 ({_INDEX_COLS} must hold "
                         "sequence numbers); the file is corrupt") from None
    return index, scores


def pythia_csv_identity(path: Path) -> tuple[str, str] | None:
    """(model, revision) of an eval_memorization.py CSV from its or its folder's name."""
    for name in (path.stem, path.parent.name):
        for pattern in (_EVALS_FILE, _EVAL_DIR):
            m = pattern.match(name)
            if m:
                model = m.group(1)
                model = model if model.lower().startswith("pythia") else f"pythia-{model}"
                return model, f"step{m.group(2)}"
    return None


def read_pythia_csvs(paths: Sequence[Path], model: str, revision: str,
                     seqs_per_step: int = PYTHIA_SEQS_PER_STEP) -> Run:
    """The run of one checkpoint's eval_memorization.py CSVs (all ranks), repaired.

    Rows at or past ``step * seqs_per_step`` (not trained on by the checkpoint) are
    dropped, duplicate indices with equal scores are kept once, each with a
    `ResultsWarning` giving the count. Raises ValueError naming both files if a
    duplicate's scores differ.
    """
    parts = [_read_csv_rows(p) for p in paths]
    index = np.concatenate([i for i, _ in parts])
    scores = np.concatenate([s for _, s in parts])
    origin = np.concatenate([np.full(len(i), k) for k, (i, _) in enumerate(parts)])
    key = f"{model}@{revision} (pythia-csv)"
    step = step_of(revision)
    if step is not None:
        past = index >= step * seqs_per_step
        if past.any():
            warnings.warn(f"{key}: dropped {int(past.sum()):,} rows with index >= "
                          f"{step * seqs_per_step:,} (= step {step} x {seqs_per_step} rows per "
                          "step): the checkpoint had not trained on them (eval_memorization.py's "
                          "last rank scores past the end)", ResultsWarning, stacklevel=2)
            index, scores, origin = index[~past], scores[~past], origin[~past]
    order = np.lexsort((origin, index))
    index, scores, origin = index[order], scores[order], origin[order]
    same = np.flatnonzero(np.diff(index) == 0)
    if len(same):
        clash = same[scores[same] != scores[same + 1]]
        if len(clash):
            i = clash[0]
            raise ValueError(
                f"{key}: sequence index {int(index[i])} has score {scores[i]:g} in "
                f"{paths[origin[i]]} and {scores[i + 1]:g} in {paths[origin[i + 1]]}; "
                f"{len(clash)} such conflicting duplicate(s): these files are not one run")
        warnings.warn(f"{key}: dropped {len(same):,} duplicate rows with equal scores "
                      "(eval_memorization.py scores whole batches past each rank's share)",
                      ResultsWarning, stacklevel=2)
        keep = np.ones(len(index), bool)
        keep[same + 1] = False
        index, scores = index[keep], scores[keep]
    return _make_run(model, revision, None, index, scores >= 1.0, scores, "pythia-csv", paths)


# --------------------------------------------------------------------------------------------
# Finding and reading every run under some folders.
# --------------------------------------------------------------------------------------------


def _files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ValueError(f"{p} does not exist")
        files += [p] if p.is_file() else sorted(
            q for q in p.rglob("*") if q.suffix in (".parquet", ".csv")
            and ".parts" not in q.parent.name and not q.name.startswith("."))
    return files


def _skip(path: Path, why: str) -> None:
    warnings.warn(f"skipped {path}: {why}", ResultsWarning, stacklevel=3)


def _group(files: Sequence[Path]) -> dict[tuple, tuple[str, object, list[Path]]]:
    """Files grouped by run: (source, run identity) -> (source, reader info, files)."""
    groups: dict[tuple, tuple[str, object, list[Path]]] = {}
    for f in files:
        if f.suffix == ".parquet":
            meta = read_meta(f)
            if meta:
                key, kind, info = (meta.get("name") or meta["model"], meta["revision"]), \
                    "memwatch", meta
            elif (split := memorized_evals_split(f)) is not None:
                key, kind, info = split.groups(), "memorized-evals", split
            else:
                _skip(f, "neither a memwatch results file (no 'memwatch' metadata) nor a "
                         "pythia-memorized-evals split (data/deduped.12b-00000-of-00001-<hash>"
                         ".parquet or default/deduped.12b/0000.parquet)")
                continue
        else:
            info = pythia_csv_identity(f)
            if info is None:
                _skip(f, "cannot tell model and step from the name; expected "
                         "memorization_<MODEL>_<STEP>/rank-<R>.csv, "
                         "memorization_<MODEL>_<STEP>.csv or "
                         "memorization_evals_<MODEL>_<ctx>_<ctx+cont>_<STEP>.csv")
                continue
            key, kind = info, "pythia-csv"
        groups.setdefault((kind, *key), (kind, info, []))[2].append(f)
    return groups


def load_results(paths: Iterable[str | os.PathLike], progress: bool = False) -> list[Run]:
    """Every run found under `paths` (files or folders, searched recursively), in suite order.

    Files of one run (ranks, parquet shards) are merged. Unrecognised files are
    skipped and repairs made, each with a `ResultsWarning`. Raises ValueError if
    nothing is found, a file is unreadable, or one run (same label) appears twice.
    """
    from tqdm.auto import tqdm

    paths = list(paths)
    groups = _group(_files(paths))
    runs = []
    for kind, info, files in tqdm(groups.values(), desc="reading results", unit="run",
                                  disable=not progress):
        if kind == "memwatch":
            runs.append(read_memwatch(files, info))
        elif kind == "memorized-evals":
            runs.append(read_memorized_evals(files, info))
        else:
            runs.append(read_pythia_csvs(files, *info))
    if not runs:
        raise ValueError(f"no results (.parquet or .csv) under {[str(p) for p in paths]}")
    labels = [r.label for r in runs]
    dup = next((k for k in labels if labels.count(k) > 1), None)
    if dup:
        raise ValueError(f"{dup} is found twice (in "
                         f"{[r.files[0] for r in runs if r.label == dup]}); analyze one copy")
    return sorted(runs, key=_run_order)


def _run_order(run: Run):
    return (run.params if run.params is not None else float("inf"), run.model,
            run.step if run.step is not None else float("inf"), run.revision,
            SOURCES.index(run.source), run.variant)


def find_run(runs: Sequence[Run], target: str) -> Run:
    """The run named ``MODEL@REVISION[:SOURCE]`` (MODEL: its name or the full id it came from).

    Without a source, a run with scores is preferred: memwatch's, then pythia-csv's,
    then the memorized-evals list.
    """
    if "@" not in target:
        raise ValueError(f"target {target!r} must be MODEL@REVISION[:SOURCE], e.g. "
                         "pythia-12b@step143000 or pythia-12b@step143000:memorized-evals")
    model, revision = target.rsplit("@", 1)
    revision, _, source = revision.partition(":")
    if source and source not in SOURCES:
        raise ValueError(f"target {target!r}: source must be one of {SOURCES}; got {source!r}")
    found = [r for r in runs if r.revision == revision and r.model in (model, Path(model).name)
             and (not source or r.source == source)]
    if not found:
        raise ValueError(f"target {target!r} is not among the results; found: "
                         f"{', '.join(r.label for r in runs)}")
    return min(found, key=lambda r: (SOURCES.index(r.source), r.variant))
