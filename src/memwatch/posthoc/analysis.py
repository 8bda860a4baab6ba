"""Post-hoc analysis of a checkpoint suite's memorization results.

Reads memwatch's own parquet files (`memwatch.posthoc.evaluate`) and EleutherAI's
published layouts, then compares every (model, checkpoint) with a target:
memorized fraction, score distribution, precision/recall/correlation of the
memorized sets, and recall as a function of compute (``6 · params · tokens``)
for the two predictors of Biderman et al. 2023: smaller models trained to the
end, and intermediate checkpoints of the target model, fitted with
`memwatch.forecast.fits.fit_recall_curve`, plus their equi-compute comparison.

EleutherAI layouts understood:

- ``memorization_<MODEL>_<STEP>/rank-<R>.csv`` (and ``memorization_<MODEL>_<STEP>.csv``):
  what ``predictable-memorization/eval_memorization.py`` writes, headerless
  ``index,accuracy`` lines; ``MODEL`` as in ``EleutherAI/pythia-<MODEL>``.
- Any CSV with a header naming an index column (``index``/``idx``) and a score
  column (``score``/``accuracy``/``acc``); model and step come from the file name
  (``memorization_evals_<MODEL>_<ctx>_<ctx+cont>_<STEP>.csv`` or the names above).
- The ``EleutherAI/pythia-memorized-evals`` dataset: parquet files with ``index``
  and ``tokens`` columns listing the *memorized* sequences only, one split per model
  (``duped.70m``, ``deduped.12b``, ``deduped.12b.103000``) as a folder
  (``deduped.12b/0000.parquet``) or a file prefix (``deduped.12b-00000-of-00002.parquet``).
  Such a run knows no scores: it counts in precision/recall, not in fractions,
  histograms or correlations.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memwatch.probe import CONT_LEN
from memwatch.watchlist.pythia import PYTHIA_FINAL_STEP, PYTHIA_PARAMS, PYTHIA_TOKENS_PER_STEP

_PYTHIA_NAME = re.compile(r"pythia-(\d+(?:\.\d+)?[mb])(-deduped)?(?:-v0)?$", re.I)
_SPLIT = re.compile(r"^(duped|deduped)\.(\d+(?:\.\d+)?[mb])(?:\.(\d+))?(?:-\d+-of-\d+)?$")
_EVAL_DIR = re.compile(r"^memorization_(.+)_(\d+)$")
_EVALS_FILE = re.compile(r"^memorization_evals_(.+)_\d+_\d+_(\d+)$")
_INDEX_COLS, _SCORE_COLS = ("index", "idx"), ("score", "accuracy", "acc")


@dataclass(frozen=True)
class Run:
    """One (model, checkpoint)'s results.

    index: int64 [n] sorted sequence indices; memorized: bool [n]; scores: float32 [n]
    or None when the source lists memorized sequences only (then every listed row is
    memorized and `complete` is False).
    """

    model: str
    revision: str
    step: int | None
    params: int | None
    index: np.ndarray
    memorized: np.ndarray
    scores: np.ndarray | None
    source: str

    @property
    def key(self) -> str:
        return f"{self.model}@{self.revision}"

    @property
    def complete(self) -> bool:
        return self.scores is not None


def pythia_params(model: str) -> int | None:
    """Total parameters of a Pythia model named like ``pythia-1.4b-deduped``, else None."""
    m = _PYTHIA_NAME.search(model)
    return PYTHIA_PARAMS.get(m.group(1).lower()) if m else None


def _step(revision: str) -> int | None:
    m = re.fullmatch(r"step(\d+)", revision)
    return int(m.group(1)) if m else None


def _make_run(model, revision, params, index, memorized, scores, source) -> Run:
    index = np.asarray(index, np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    if len(index) > 1 and (np.diff(index) == 0).any():
        dup = int(index[np.flatnonzero(np.diff(index) == 0)[0]])
        raise ValueError(f"{source}: sequence index {dup} appears more than once for "
                         f"{model}@{revision}")
    return Run(model, revision, _step(revision), params if params else pythia_params(model),
               index, np.asarray(memorized, bool)[order],
               None if scores is None else np.asarray(scores, np.float32)[order], source)


# --------------------------------------------------------------------------------------------
# Readers.
# --------------------------------------------------------------------------------------------


def _read_memwatch(paths: Sequence[Path], meta: dict) -> Run:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p, columns=["index", "score", "match_prefix"])
                              for p in paths])
    prefix = table["match_prefix"].to_numpy()
    return _make_run(meta.get("name") or Path(meta["model"]).name, meta["revision"],
                     meta.get("params"), table["index"].to_numpy(),
                     prefix >= int(meta["cont_len"]), table["score"].to_numpy(), str(paths[0]))


def _split_name(path: Path) -> re.Match | None:
    return _SPLIT.match(path.stem) or _SPLIT.match(path.parent.name)


def _read_memorized_list(paths: Sequence[Path], split: re.Match) -> Run:
    import pyarrow as pa
    import pyarrow.parquet as pq

    variant, size, step = split.groups()
    model = f"pythia-{size}" + ("-deduped" if variant == "deduped" else "")
    index = pa.concat_tables([pq.read_table(p, columns=["index"]) for p in paths])["index"]
    index = index.to_numpy()
    return _make_run(model, f"step{step or PYTHIA_FINAL_STEP}", None, index,
                     np.ones(len(index), bool), None, str(paths[0]))


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
    return index, scores


def _csv_identity(path: Path) -> tuple[str, str] | None:
    for name in (path.stem, path.parent.name):
        for pattern in (_EVALS_FILE, _EVAL_DIR):
            m = pattern.match(name)
            if m:
                return _pythia_model_name(m.group(1)), f"step{m.group(2)}"
    return None


def _pythia_model_name(name: str) -> str:
    return name if name.lower().startswith("pythia") else f"pythia-{name}"


def _read_csvs(paths: Sequence[Path], model: str, revision: str) -> Run:
    parts = [_read_csv_rows(p) for p in paths]
    index = np.concatenate([i for i, _ in parts])
    scores = np.concatenate([s for _, s in parts])
    return _make_run(model, revision, None, index, scores >= 1.0, scores, str(paths[0]))


def load_results(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run found under `paths` (files or folders, searched recursively).

    Files of one run (ranks, parquet shards) are merged. Raises ValueError if a
    file's layout is not recognised or nothing is found.
    """
    from memwatch.posthoc.evaluate import read_meta

    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ValueError(f"{p} does not exist")
        files += [p] if p.is_file() else sorted(
            q for q in p.rglob("*") if q.suffix in (".parquet", ".csv")
            and ".parts" not in q.parent.name and not q.name.startswith("."))
    groups: dict[tuple, list[Path]] = {}
    kinds: dict[tuple, tuple] = {}
    for f in files:
        if f.suffix == ".parquet":
            meta = read_meta(f)
            if meta:
                key = ("memwatch", meta.get("name") or meta["model"], meta["revision"])
                kinds[key] = ("memwatch", meta)
            elif (split := _split_name(f)) is not None:
                key = ("memorized", split.group(1), split.group(2), split.group(3))
                kinds[key] = ("memorized", split)
            else:
                raise ValueError(f"{f}: not a memwatch results file (no 'memwatch' metadata) and "
                                 "not a pythia-memorized-evals split like deduped.12b/0000.parquet")
        else:
            ident = _csv_identity(f)
            if ident is None:
                raise ValueError(f"{f}: cannot tell model and step from the name; expected "
                                 "memorization_<MODEL>_<STEP>/rank-<R>.csv, "
                                 "memorization_<MODEL>_<STEP>.csv or "
                                 "memorization_evals_<MODEL>_<ctx>_<ctx+cont>_<STEP>.csv")
            key = ("csv", *ident)
            kinds[key] = ("csv", ident)
        groups.setdefault(key, []).append(f)
    runs = []
    for key, group in groups.items():
        kind, info = kinds[key]
        if kind == "memwatch":
            runs.append(_read_memwatch(group, info))
        elif kind == "memorized":
            runs.append(_read_memorized_list(group, info))
        else:
            runs.append(_read_csvs(group, *info))
    if not runs:
        raise ValueError(f"no results (.parquet or .csv) under {[str(p) for p in paths]}")
    keys = [r.key for r in runs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise ValueError(f"{dup} is found twice (in {[r.source for r in runs if r.key == dup]}); "
                         "analyze one copy")
    return sorted(runs, key=_run_order)


def _run_order(run: Run):
    return (run.params if run.params is not None else float("inf"), run.model,
            run.step if run.step is not None else float("inf"), run.revision)


def find_run(runs: Sequence[Run], target: str) -> Run:
    """The run named ``MODEL@REVISION`` (MODEL: its name or the full id it was loaded from)."""
    if "@" not in target:
        raise ValueError(f"target {target!r} must be MODEL@REVISION, e.g. pythia-12b@step143000")
    model, revision = target.rsplit("@", 1)
    for run in runs:
        if run.revision == revision and run.model in (model, Path(model).name):
            return run
    raise ValueError(f"target {target!r} is not among the results; found: "
                     f"{', '.join(r.key for r in runs)}")


# --------------------------------------------------------------------------------------------
# Comparison with the target.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairStats:
    """One run compared with the target; NaN where a quantity is undefined."""

    model: str
    revision: str
    step: int | None
    params: int | None
    compute: float  # 6 * params * tokens seen (NaN if params or step unknown)
    rows: int  # rows scored (memorized rows listed, for memorized-only sources)
    memorized: int
    fraction: float  # memorized / rows (NaN for memorized-only sources)
    precision: float
    recall: float
    correlation: float  # Pearson r of the scores on the shared rows

    @property
    def key(self) -> str:
        return f"{self.model}@{self.revision}"


@dataclass(frozen=True)
class Predictor:
    """One family of predictors of the target: points (compute, recall) and the fitted curve.

    The fit is `fit_recall_curve` of recall vs. compute / target compute.
    """

    name: str
    keys: tuple[str, ...]
    compute: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    fit: object | None  # memwatch.forecast.fits.ScalingFit, None with fewer than 2 points

    def predict(self, compute, target_compute: float) -> np.ndarray:
        """Fitted recall at `compute` (NaN without a fit)."""
        compute = np.asarray(compute, np.float64)
        if self.fit is None:
            return np.full(compute.shape, np.nan)
        return self.fit.predict(compute / target_compute)


@dataclass(frozen=True)
class EquiCompute:
    """A smaller model against the target's checkpoint nearest in compute."""

    smaller: str
    smaller_compute: float
    smaller_recall: float
    checkpoint: str
    checkpoint_compute: float
    checkpoint_recall: float
    checkpoint_fit_recall: float  # the checkpoint family's curve at the smaller model's compute


@dataclass(frozen=True)
class Analysis:
    """Everything `memwatch analyze` reports, computed from the runs."""

    target: str
    target_compute: float
    tokens_per_step: int
    pairs: tuple[PairStats, ...]
    histograms: dict = field(default_factory=dict)  # model -> (revision, edges, counts)
    smaller_models: Predictor | None = None
    checkpoints: Predictor | None = None
    equi_compute: tuple[EquiCompute, ...] = ()

    def matrix(self, attr: str) -> tuple[list[str], list[str], np.ndarray]:
        """(models, revisions, float [models, revisions]) of a PairStats field, NaN if absent."""
        models = list(dict.fromkeys(p.model for p in self.pairs))
        revisions = sorted(dict.fromkeys(p.revision for p in self.pairs),
                           key=lambda r: (_step(r) is None, _step(r) or 0, r))
        out = np.full((len(models), len(revisions)), np.nan)
        for p in self.pairs:
            out[models.index(p.model), revisions.index(p.revision)] = getattr(p, attr)
        return models, revisions, out


def _universe(a: Run, b: Run) -> np.ndarray:
    """Rows on which two runs are compared: rows both scored, else the rows either lists."""
    if a.complete and b.complete:
        return np.intersect1d(a.index, b.index, assume_unique=True)
    if a.complete or b.complete:
        return (a if a.complete else b).index
    return np.union1d(a.index, b.index)


def _memorized_mask(run: Run, universe: np.ndarray) -> np.ndarray:
    return np.isin(universe, run.index[run.memorized], assume_unique=True)


def compare(pred: Run, target: Run, tokens_per_step: int = PYTHIA_TOKENS_PER_STEP) -> PairStats:
    """`PairStats` of `pred` against `target` on the rows they share."""
    from memwatch.forecast.fits import precision_recall

    universe = _universe(pred, target)
    p, t = _memorized_mask(pred, universe), _memorized_mask(target, universe)
    precision, recall = (float(x) for x in precision_recall(p, t))
    corr = float("nan")
    if pred.complete and target.complete and len(universe) > 1:
        a = pred.scores[np.searchsorted(pred.index, universe)].astype(np.float64)
        b = target.scores[np.searchsorted(target.index, universe)].astype(np.float64)
        if a.std() > 0 and b.std() > 0:
            corr = float(np.corrcoef(a, b)[0, 1])
    rows, memorized = len(pred.index), int(pred.memorized.sum())
    return PairStats(pred.model, pred.revision, pred.step, pred.params,
                     compute_of(pred, tokens_per_step), rows, memorized,
                     memorized / rows if pred.complete and rows else float("nan"),
                     precision, recall, corr)


def compute_of(run: Run, tokens_per_step: int = PYTHIA_TOKENS_PER_STEP) -> float:
    """Training compute of a checkpoint, 6 · params · tokens, in FLOPs (NaN if unknown)."""
    if run.params is None or run.step is None:
        return float("nan")
    return 6.0 * run.params * run.step * tokens_per_step


def score_histogram(scores: np.ndarray, cont_len: int = CONT_LEN) -> tuple[np.ndarray, np.ndarray]:
    """(edges [cont_len + 2], counts [cont_len + 1]): one bin per attainable score k / cont_len."""
    edges = (np.arange(cont_len + 2) - 0.5) / cont_len
    counts, _ = np.histogram(np.asarray(scores, np.float64), bins=edges)
    return edges, counts


def _predictor(name: str, pairs: Sequence[PairStats], target_compute: float) -> Predictor | None:
    from memwatch.forecast.fits import fit_recall_curve

    pairs = sorted((p for p in pairs if np.isfinite(p.compute) and p.compute > 0),
                   key=lambda p: p.compute)
    if not pairs:
        return None
    compute = np.array([p.compute for p in pairs])
    recall = np.array([p.recall for p in pairs])
    fit = fit_recall_curve(compute / target_compute, recall) if len(pairs) >= 2 else None
    return Predictor(name, tuple(p.key for p in pairs), compute, recall,
                     np.array([p.precision for p in pairs]), fit)


def analyze(runs: Sequence[Run], target: str, tokens_per_step: int = PYTHIA_TOKENS_PER_STEP,
            cont_len: int = CONT_LEN) -> Analysis:
    """The `Analysis` of every run against the run named `target` (``MODEL@REVISION``).

    Smaller-model predictors: the last checkpoint of every model with fewer
    parameters than the target's. Checkpoint predictors: the target model's
    checkpoints before the target's step.
    """
    tgt = find_run(runs, target)
    pairs = tuple(compare(r, tgt, tokens_per_step) for r in runs)
    target_compute = compute_of(tgt, tokens_per_step)
    histograms = {}
    for run in runs:
        if run.complete:
            last = histograms.get(run.model)
            if last is None or (run.step or -1) >= (_step(last[0]) or -1):
                histograms[run.model] = (run.revision, *score_histogram(run.scores, cont_len))
    by_key = {p.key: p for p in pairs}
    smaller, earlier = [], []
    if tgt.params is not None:
        last: dict[str, Run] = {}
        for run in runs:
            if run.params is not None and run.params < tgt.params and run.step is not None:
                if run.model not in last or run.step > last[run.model].step:
                    last[run.model] = run
        smaller = [by_key[r.key] for r in last.values()]
    if tgt.step is not None:
        earlier = [by_key[r.key] for r in runs if r.model == tgt.model and r.step is not None
                   and r.step < tgt.step]
    ok = np.isfinite(target_compute) and target_compute > 0
    small_pred = _predictor("smaller models", smaller, target_compute) if ok else None
    ckpt_pred = _predictor("intermediate checkpoints", earlier, target_compute) if ok else None
    equi = ()
    if small_pred is not None and ckpt_pred is not None:
        equi = tuple(_equi(small_pred, ckpt_pred, i, target_compute)
                     for i in range(len(small_pred.keys)))
    return Analysis(target, target_compute, tokens_per_step, pairs, histograms,
                    small_pred, ckpt_pred, equi)


def _equi(small: Predictor, ckpts: Predictor, i: int, target_compute: float) -> EquiCompute:
    c = small.compute[i]
    j = int(np.argmin(np.abs(np.log(ckpts.compute) - np.log(c))))
    return EquiCompute(small.keys[i], float(c), float(small.recall[i]), ckpts.keys[j],
                       float(ckpts.compute[j]), float(ckpts.recall[j]),
                       float(ckpts.predict(c, target_compute)))


def to_json(analysis: Analysis) -> str:
    """The analysis' tables as JSON (pairs, predictors, equi-compute; NaN as null)."""
    def clean(x):
        if isinstance(x, float) and not np.isfinite(x):
            return None
        return x

    def predictor(p: Predictor | None):
        if p is None:
            return None
        fit = None if p.fit is None else {"kind": p.fit.kind, "a": p.fit.a, "b": p.fit.b,
                                          "r2": p.fit.r2, "x": "compute / target compute"}
        return {"keys": list(p.keys), "compute": p.compute.tolist(),
                "recall": p.recall.tolist(), "precision": p.precision.tolist(), "fit": fit}

    data = {
        "target": analysis.target, "target_compute": clean(analysis.target_compute),
        "tokens_per_step": analysis.tokens_per_step,
        "pairs": [{k: clean(v) for k, v in vars(p).items()} for p in analysis.pairs],
        "smaller_models": predictor(analysis.smaller_models),
        "checkpoints": predictor(analysis.checkpoints),
        "equi_compute": [{k: clean(v) for k, v in vars(e).items()}
                         for e in analysis.equi_compute],
    }
    return json.dumps(data, indent=2, allow_nan=False, default=clean)
