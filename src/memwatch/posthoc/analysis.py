"""Post-hoc analysis of a checkpoint suite's memorization results.

Compares every run (one model at one checkpoint, from `memwatch.posthoc.results`)
with a target: memorized fraction, score distribution, precision/recall/correlation
of the memorized sets, and recall as a function of compute (``6 · params · tokens``)
for the two predictors of Biderman et al. 2023: smaller models trained to the end,
and intermediate checkpoints of the target model, fitted with
`memwatch.forecast.fits.fit_recall_curve`, plus their equi-compute comparison. Runs
of the same (model, checkpoint) from different sources (a memwatch re-run and
EleutherAI's published set) are compared with each other in an agreement table.
Runs that carry log p_z (memwatch's, with NLL) also give (n,p)-extraction curves
across checkpoints and a p_z histogram (Hayes et al. 2024; `memwatch.measures`); runs
probed with several prompt lengths give the memorized fraction per length (Carlini et
al., ICLR 2023: it grows log-linearly with the prompt's length).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from memwatch.measures import CURVE_DRAWS, CURVE_PROBS, extraction_rates
from memwatch.posthoc.results import (
    PYTHIA_TOKENS_PER_STEP,
    SOURCES,
    Run,
    find_run,
    step_of,
)
from memwatch.probe import CONT_LEN
from memwatch.watchlist.tags import tag_set

FIT_BOOTSTRAP = 200  # bootstrap refits of each recall-vs-compute fit, for its band



@dataclass(frozen=True)
class TagCount:
    """Rows of one tag in one run of a watchlist (memwatch results), and how many memorized."""

    run: str
    tag: str
    rows: int
    memorized: int


def tag_counts(runs: Sequence[Run]) -> tuple[TagCount, ...]:
    """Per run with tagged rows (memwatch results of a watchlist) and per tag: rows, memorized."""
    out = []
    for run in runs:
        if run.tags is None:
            continue
        for tag in tag_set(run.tags):
            rows = np.array([tag in row for row in run.tags], bool)
            out.append(TagCount(run.label, tag, int(rows.sum()),
                                int(run.memorized[rows].sum())))
    return tuple(out)


@dataclass(frozen=True)
class PromptLenCurve:
    """One run probed with several prompt lengths (`memwatch eval --prompt-len 32 64 96`): its
    rows memorized (score = 1) with each length, the continuation being the same."""

    run: str  # the run's label
    model: str
    revision: str
    rows: int
    prompt_lens: tuple[int, ...]  # ascending
    memorized: tuple[int, ...]  # per length

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(m / self.rows if self.rows else float("nan") for m in self.memorized)


def prompt_len_curves(runs: Sequence[Run]) -> tuple[PromptLenCurve, ...]:
    """A `PromptLenCurve` per run with scores at several prompt lengths, in `runs` order."""
    return tuple(
        PromptLenCurve(run.label, run.model, run.revision, len(run.index), run.prompt_lens,
                       tuple(int(k) for k in (run.scores_by_prompt_len >= 1.0).sum(axis=0)))
        for run in runs if run.prompt_lens is not None and len(run.prompt_lens) > 1)


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
    precision: float  # NaN when the run memorized none of the compared rows
    recall: float  # NaN when the target memorized none of them
    correlation: float  # Pearson r of the scores on the shared rows
    source: str = "memwatch"  # one of memwatch.posthoc.results.SOURCES
    label: str = ""  # the run's label: key, plus the source when not memwatch
    mean_pz: float = float("nan")  # mean probability of extraction (NaN without log p_z)

    @property
    def key(self) -> str:
        return f"{self.model}@{self.revision}"

    @property
    def series(self) -> str:
        """The model, plus the source when not memwatch: one heatmap row, one plotted line."""
        return self.model + (self.label[len(self.key):] if self.label else "")


@dataclass(frozen=True)
class Agreement:
    """Two runs of the same (model, checkpoint) from different sources, one against the other.

    precision: the share of `other`'s memorized rows that `reference` memorized too;
    recall: the share of `reference`'s memorized rows that `other` found; both on
    the rows compared (NaN where a set is empty).
    """

    key: str
    other: str  # label of the run checked (e.g. a memwatch re-run)
    reference: str  # label of the run taken as truth (e.g. EleutherAI's published set)
    rows: int
    other_memorized: int
    reference_memorized: int
    both: int
    precision: float
    recall: float
    correlation: float


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

    def band(self, compute, target_compute: float, level: float = 0.9):
        """(low, high): the central `level` interval of the bootstrap fits' recall at
        `compute` (`ScalingFit.band`; NaN without a fit)."""
        compute = np.asarray(compute, np.float64)
        if self.fit is None:
            return np.full(compute.shape, np.nan), np.full(compute.shape, np.nan)
        return self.fit.band(compute / target_compute, level)


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
    agreement: tuple[Agreement, ...] = ()
    tag_counts: tuple[TagCount, ...] = ()
    # model -> [(revision, rates [len(CURVE_DRAWS), len(CURVE_PROBS)])], in training order
    extraction: dict = field(default_factory=dict)
    pz_histograms: dict = field(default_factory=dict)  # model -> (revision, edges, counts)
    prompt_lens: tuple[PromptLenCurve, ...] = ()

    def matrix(self, attr: str) -> tuple[list[str], list[str], np.ndarray]:
        """(rows, revisions, float [rows, revisions]) of a PairStats field, NaN if absent.

        One row per model and source: ``pythia-1b``, ``pythia-1b [memorized-evals]``.
        """
        rows = list(dict.fromkeys(p.series for p in self.pairs))
        revisions = sorted(dict.fromkeys(p.revision for p in self.pairs),
                           key=lambda r: (step_of(r) is None, step_of(r) or 0, r))
        out = np.full((len(rows), len(revisions)), np.nan)
        for p in self.pairs:
            out[rows.index(p.series), revisions.index(p.revision)] = getattr(p, attr)
        return rows, revisions, out


def set_precision_recall(pred, target):
    """(precision, recall) of boolean masks `pred` against `target` [..., n]; NaN where
    undefined. The one set precision/recall of memwatch.

    Broadcasts over leading axes (floats for 1-D masks, float64 arrays otherwise). A
    predictor that claims nothing has no precision (0/0), and recall of an empty target
    is undefined too: neither is reported as a perfect 1.
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    both = np.count_nonzero(pred & target, axis=-1).astype(np.float64)
    npred = np.count_nonzero(pred, axis=-1)
    ntarget = np.count_nonzero(target, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(npred > 0, both / npred, np.nan)
        recall = np.where(ntarget > 0, both / ntarget, np.nan)
    if precision.ndim == 0:
        return float(precision), float(recall)
    return precision, recall


def _universe(a: Run, b: Run) -> np.ndarray:
    """Rows on which two runs are compared: rows both scored, else the rows either lists."""
    if a.complete and b.complete:
        return np.intersect1d(a.index, b.index, assume_unique=True)
    if a.complete or b.complete:
        return (a if a.complete else b).index
    return np.union1d(a.index, b.index)


def _memorized_mask(run: Run, universe: np.ndarray) -> np.ndarray:
    return np.isin(universe, run.index[run.memorized], assume_unique=True)


def _correlation(a: Run, b: Run, universe: np.ndarray) -> float:
    if not (a.complete and b.complete) or len(universe) < 2:
        return float("nan")
    x = a.scores[np.searchsorted(a.index, universe)].astype(np.float64)
    y = b.scores[np.searchsorted(b.index, universe)].astype(np.float64)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def compare(pred: Run, target: Run, tokens_per_step: int = PYTHIA_TOKENS_PER_STEP) -> PairStats:
    """`PairStats` of `pred` against `target` on the rows they share."""
    universe = _universe(pred, target)
    precision, recall = set_precision_recall(_memorized_mask(pred, universe),
                                             _memorized_mask(target, universe))
    rows, memorized = len(pred.index), int(pred.memorized.sum())
    return PairStats(pred.model, pred.revision, pred.step, pred.params,
                     compute_of(pred, tokens_per_step), rows, memorized,
                     memorized / rows if pred.complete and rows else float("nan"),
                     precision, recall, _correlation(pred, target, universe), pred.source,
                     pred.label, _mean_pz(pred))


def _measured(run: Run) -> np.ndarray | None:
    """The run's log p_z of the rows that have one, or None."""
    if run.log_pz is None:
        return None
    lp = run.log_pz[~np.isnan(run.log_pz)].astype(np.float64)
    return lp if len(lp) else None


def _mean_pz(run: Run) -> float:
    lp = _measured(run)
    return float("nan") if lp is None else float(np.exp(lp).mean())


def pz_histogram(log_pz: np.ndarray, bins: int = 40,
                 floor: float = -40.0) -> tuple[np.ndarray, np.ndarray]:
    """(edges [bins + 1], counts [bins]) of log10 p_z from `floor` (lower values counted in
    the first bin) to 0."""
    log10 = np.clip(np.asarray(log_pz, np.float64) / np.log(10), floor, 0.0)
    counts, edges = np.histogram(log10, bins=np.linspace(floor, 0.0, bins + 1))
    return edges, counts


def agree(other: Run, reference: Run) -> Agreement:
    """`Agreement` of `other` against `reference` (same model and checkpoint) on shared rows."""
    universe = _universe(other, reference)
    o, r = _memorized_mask(other, universe), _memorized_mask(reference, universe)
    precision, recall = set_precision_recall(o, r)
    return Agreement(other.key, other.label, reference.label, len(universe),
                     int(o.sum()), int(r.sum()), int((o & r).sum()), precision, recall,
                     _correlation(other, reference, universe))


def agreements(runs: Sequence[Run]) -> tuple[Agreement, ...]:
    """Every pair of runs of one (model, checkpoint) from different sources, one vs the other.

    The run of the later source in `SOURCES` order (the published one) is the reference.
    """
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    out = []
    for group in by_key.values():
        group = sorted(group, key=_preference)
        out += [agree(a, b) for i, a in enumerate(group) for b in group[i + 1:]]
    return tuple(out)


def _preference(run: Run):
    return SOURCES.index(run.source), run.variant


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

    pairs = sorted((p for p in pairs if np.isfinite(p.compute) and p.compute > 0
                    and np.isfinite(p.recall)), key=lambda p: p.compute)
    if not pairs:
        return None
    compute = np.array([p.compute for p in pairs])
    recall = np.array([p.recall for p in pairs])
    # bootstrap samples (resampled points) give the plot its band around the fitted curve
    fit = fit_recall_curve(compute / target_compute, recall, n_boot=FIT_BOOTSTRAP) \
        if len(pairs) >= 2 else None
    return Predictor(name, tuple(p.key for p in pairs), compute, recall,
                     np.array([p.precision for p in pairs]), fit)


def analyze(runs: Sequence[Run], target: str, tokens_per_step: int = PYTHIA_TOKENS_PER_STEP,
            cont_len: int = CONT_LEN, progress: bool = False) -> Analysis:
    """The `Analysis` of every run against the run named `target` (``MODEL@REVISION[:SOURCE]``).

    Smaller-model predictors: the last checkpoint of every model with fewer
    parameters than the target's. Checkpoint predictors: the target model's
    checkpoints before the target's step. Where a (model, checkpoint) comes from
    several sources, the predictors and histograms use one run of it (memwatch's,
    else pythia-csv's, else memorized-evals'); every run is in `pairs`.
    `progress` shows a bar over the runs compared.
    """
    from tqdm.auto import tqdm

    tgt = find_run(runs, target)
    pairs = tuple(compare(r, tgt, tokens_per_step) for r in tqdm(
        runs, desc=f"comparing with {tgt.label}", unit="run", disable=not progress))
    target_compute = compute_of(tgt, tokens_per_step)
    preferred: dict[str, Run] = {}
    for run in sorted(runs, key=_preference, reverse=True):
        preferred[run.key] = run
    chosen = [r for r in runs if preferred[r.key] is r]
    histograms = {}
    for run in chosen:
        if run.complete:
            last = histograms.get(run.model)
            if last is None or (run.step or -1) >= (step_of(last[0]) or -1):
                histograms[run.model] = (run.revision, *score_histogram(run.scores, cont_len))
    by_label = {p.label: p for p in pairs}
    smaller, earlier = [], []
    if tgt.params is not None:
        last: dict[str, Run] = {}
        for run in chosen:
            if run.params is not None and run.params < tgt.params and run.step is not None:
                if run.model not in last or run.step > last[run.model].step:
                    last[run.model] = run
        smaller = [by_label[r.label] for r in last.values()]
    if tgt.step is not None:
        earlier = [by_label[r.label] for r in chosen if r.model == tgt.model
                   and r.step is not None and r.step < tgt.step]
    ok = np.isfinite(target_compute) and target_compute > 0
    small_pred = _predictor("smaller models", smaller, target_compute) if ok else None
    ckpt_pred = _predictor("intermediate checkpoints", earlier, target_compute) if ok else None
    equi = ()
    if small_pred is not None and ckpt_pred is not None:
        equi = tuple(_equi(small_pred, ckpt_pred, i, target_compute)
                     for i in range(len(small_pred.keys)))
    extraction: dict[str, list] = {}
    pz_histograms: dict = {}
    for run in sorted(chosen, key=lambda r: (r.step is None, r.step or 0, r.revision)):
        lp = _measured(run)
        if lp is not None:
            extraction.setdefault(run.model, []).append(
                (run.revision, extraction_rates(lp, CURVE_DRAWS, CURVE_PROBS)))
            pz_histograms[run.model] = (run.revision, *pz_histogram(lp))  # the latest
    return Analysis(tgt.label, target_compute, tokens_per_step, pairs, histograms,
                    small_pred, ckpt_pred, equi, agreements(runs), tag_counts(runs), extraction,
                    pz_histograms, prompt_len_curves(runs))


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
        return {"keys": list(p.keys), "compute": [clean(x) for x in p.compute.tolist()],
                "recall": [clean(x) for x in p.recall.tolist()],
                "precision": [clean(x) for x in p.precision.tolist()], "fit": fit}

    data = {
        "target": analysis.target, "target_compute": clean(analysis.target_compute),
        "tokens_per_step": analysis.tokens_per_step,
        "pairs": [{k: clean(v) for k, v in vars(p).items()} for p in analysis.pairs],
        "smaller_models": predictor(analysis.smaller_models),
        "checkpoints": predictor(analysis.checkpoints),
        "equi_compute": [{k: clean(v) for k, v in vars(e).items()}
                         for e in analysis.equi_compute],
        "agreement": [{k: clean(v) for k, v in vars(a).items()} for a in analysis.agreement],
        "tag_counts": [vars(t) for t in analysis.tag_counts],
        "extraction": {"n": list(CURVE_DRAWS), "p": list(CURVE_PROBS), "rates": {
            model: {revision: rates.tolist() for revision, rates in curves}
            for model, curves in analysis.extraction.items()}},
        "prompt_lens": [{**vars(c), "fractions": list(c.fractions)}
                        for c in analysis.prompt_lens],
    }
    return json.dumps(data, indent=2, allow_nan=False, default=clean)
