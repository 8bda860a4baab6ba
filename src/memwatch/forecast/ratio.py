"""The ``ratio`` estimate: the paper's view, "memorized now" scaled up by its recall.

Biderman et al. 2023 measured on Pythia how well the set an intermediate checkpoint
has memorized predicts the set the final model has memorized: precision stays
above 0.9, recall grows with the share of training done. So the final count is
about ``memorized_now * precision / recall``, with precision and recall read at
the compute fraction reached now. They come from two sources, blended:

- the run itself: for every pair of probes t_i < t_j, the precision and recall of
  the set at t_i against the set at t_j, at the clock ratio c(t_i) / c(t_j),
  fitted as a function of that ratio (`fits.fit_form`, the better of two forms);
- the prior (default `PYTHIA_PRIOR`, the paper's table), which carries the
  estimate while the run's own evidence is thin.

The derivation and the blend's weights are in docs/concepts.md ("How the forecast is made").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from memwatch.forecast import fits
from memwatch.forecast.fits import ScalingFit

# How well an intermediate checkpoint's memorized set predicts the same model's final
# memorized set, as Biderman et al. 2023 measured it on Pythia ("Emergent and
# Predictable Memorization in Large Language Models", arXiv 2304.11158, NeurIPS 2023,
# Tables 2 and 3). Rows: (share of training, precision, recall). The share is the
# earlier checkpoint's rows seen over the final's (23 M ... 126 M of 146.4 M rows); at
# a constant batch it is the compute fraction. The paper counts only rows both
# checkpoints had seen (the first 23 M): its recall is over rows already seen, not
# over rows still to come (see `forecast`'s ``first_seen``).
PYTHIA_PRIORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    # Table 2, Pythia-12B (the default prior)
    "12b": ((0.16, 0.918, 0.500), (0.30, 0.915, 0.575), (0.44, 0.913, 0.641),
            (0.58, 0.911, 0.711), (0.72, 0.916, 0.809), (0.86, 0.943, 0.916)),
    # Table 2, Pythia-6.9B
    "6.9b": ((0.16, 0.919, 0.513), (0.30, 0.913, 0.587), (0.44, 0.910, 0.658),
             (0.58, 0.910, 0.721), (0.72, 0.915, 0.816), (0.86, 0.945, 0.918)),
    # Table 3, Pythia-12B trained on the deduplicated Pile
    "12b-deduped": ((0.16, 0.920, 0.523), (0.30, 0.917, 0.595), (0.44, 0.915, 0.658),
                    (0.58, 0.915, 0.724), (0.72, 0.922, 0.820), (0.86, 0.949, 0.920)),
}
PYTHIA_PRIOR = PYTHIA_PRIORS["12b"]

PRIOR_PAIRS = 10.0
PRIOR_ROWS = 5.0
PRIOR_SPREAD = 0.3
MIN_RECALL = 1e-3


@dataclass(frozen=True)
class RatioEstimate:
    """Precision and recall of "memorized now" against the final set, as the ratio method
    reads them at the current compute fraction.

    recall, precision: the blend of the run's own fits and the prior.
    recall_samples, precision_samples: float64 [B] Poisson-bootstrap replicates over rows
        (the prior's own uncertainty included); B = 0 without a bootstrap.
    recall_fit, precision_fit: the run's own fits vs. the clock ratio (None before two
        probes with a positive clock).
    pairs: probe pairs whose later set is non-empty (the fits' evidence).
    prior_weight: the prior's share in recall and precision (1 - the run's own weight).
    seen_share: None when the rows' first-seen steps are unknown: then recall is read
        over the whole watchlist, as if every row had been seen before the first probe.
        Else the share of rows seen by now; recall is then the paper's, over rows
        already seen (pairs count, for the earlier probe, only rows it had seen), and
        the final count over the rows still to come is scaled in proportion (Biderman
        et al. found memorization roughly uniform over training position).
    """

    recall: float
    precision: float
    recall_samples: np.ndarray = field(compare=False)
    precision_samples: np.ndarray = field(compare=False)
    recall_fit: ScalingFit | None = field(compare=False)
    precision_fit: ScalingFit | None = field(compare=False)
    pairs: int
    prior_weight: float
    seen_share: float | None = None

    @property
    def watchlist_recall(self) -> float:
        """Recall over the whole watchlist, rows still to come included."""
        return self.recall * (1.0 if self.seen_share is None else self.seen_share)

    def final_memorized(self, now: int, n_rows: int) -> float:
        """``now * precision / recall`` (over the seen rows, scaled to all rows when
        `seen_share` is known), clipped to [0, n_rows] (0 when nothing is memorized)."""
        return float(self.final_samples(now, n_rows, self.precision, self.recall))

    def final_samples(self, now: int, n_rows: int, precision=None, recall=None) -> np.ndarray:
        """float64 [B]: `final_memorized` of every bootstrap replicate (or of the given
        precision and recall)."""
        precision = self.precision_samples if precision is None else precision
        recall = self.recall_samples if recall is None else recall
        if self.seen_share is None:
            return scale_up(now, n_rows, precision, recall)
        share = max(self.seen_share, 1.0 / max(n_rows, 1))
        return np.clip(scale_up(now, n_rows, precision, recall) / share, 0.0, n_rows)


def checked_prior(prior) -> np.ndarray:
    """float64 [k, 3]: the (compute fraction, precision, recall) table, sorted, ending at 1."""
    table = np.asarray(PYTHIA_PRIOR if prior is None else prior, np.float64)
    if table.ndim != 2 or table.shape[1] != 3 or len(table) == 0:
        raise ValueError(
            "prior must be a non-empty table of (compute fraction, precision, recall) rows; "
            f"got shape {table.shape}"
        )
    f, p, r = table.T
    if not (np.isfinite(table).all() and (f > 0).all() and (f <= 1).all()
            and ((p >= 0) & (p <= 1) & (r >= 0) & (r <= 1)).all()):
        raise ValueError(
            "prior rows need 0 < compute fraction <= 1 and precision, recall in [0, 1]"
        )
    table = table[np.argsort(f)]
    if table[-1, 0] < 1:
        table = np.vstack([table, [1.0, 1.0, 1.0]])
    return table


def prior_at(table: np.ndarray, r: float) -> tuple[float, float]:
    """(precision, recall) of the prior at compute fraction r; recall -> 0 linearly below."""
    f = np.concatenate([[0.0], table[:, 0]])
    p = np.concatenate([[table[0, 1]], table[:, 1]])
    rec = np.concatenate([[0.0], table[:, 2]])
    return float(np.interp(r, f, p)), float(np.interp(r, f, rec))


def scale_up(now: int, n_rows: int, precision, recall):
    """now * precision / recall, clipped to [0, n_rows] (0 when nothing is memorized)."""
    if not now:
        return 0.0 * np.asarray(recall, np.float64)
    return np.clip(now * np.asarray(precision) / np.maximum(recall, MIN_RECALL), 0.0, n_rows)


def _pair_points(mem: np.ndarray, clock: np.ndarray, weights=None, seen=None):
    """(x, recall, w_recall, precision, w_precision) over pairs i < j of probes [P, n].

    `seen` (bool [P, n], optional): the rows each probe had seen; recall then counts, as
    the paper's does, only the rows the earlier probe had seen.
    """
    m = mem.astype(np.float64)
    mw = m if weights is None else m * weights
    inter = mw @ m.T
    count = np.diag(inter).copy()
    i, j = np.triu_indices(len(clock), k=1)
    x = clock[i] / clock[j]
    ci, cj, cij = count[i], count[j], inter[i, j]
    hit = cij
    if seen is not None:
        s = seen.astype(np.float64)
        sw = s if weights is None else s * weights
        cj, hit = (sw @ m.T)[i, j], ((mw * s) @ m.T)[i, j]
    recall = np.where(cj > 0, hit / np.maximum(cj, 1e-12), 1.0)
    precision = np.where(ci > 0, cij / np.maximum(ci, 1e-12), 1.0)
    return x, recall, cj, precision, ci


def _best_fit(x, y, w) -> ScalingFit:
    return max((fits.fit_form(k, x, y, w, 0.0, 1.0) for k in fits.KINDS),
               key=lambda f: (f.kind != "constant", f.r2))


def _fit_pairs(mem, clock, n_boot, rng, seen=None):
    """(recall fit, precision fit, pairs) with Poisson-bootstrap samples over rows."""
    x, rec, wr, prec, wp = _pair_points(mem, clock, seen=seen)
    pairs = int((wr > 0).sum())
    if pairs == 0:
        return None, None, 0
    rfit, pfit = _best_fit(x, rec, wr), _best_fit(x, prec, wp)
    active = mem.any(0)  # the others count in no set
    sub, sub_seen = mem[:, active], None if seen is None else seen[:, active]
    rs, ps = np.empty((n_boot, 2)), np.empty((n_boot, 2))
    for b in range(n_boot):
        w = rng.poisson(1.0, sub.shape[1]).astype(np.float64)
        bx, brec, bwr, bprec, bwp = _pair_points(sub, clock, w, sub_seen)
        rs[b] = _refit(rfit, bx, brec, bwr)
        ps[b] = _refit(pfit, bx, bprec, bwp)
    return rfit.with_samples(rs), pfit.with_samples(ps), pairs


def _refit(fit: ScalingFit, x, y, w) -> tuple[float, float]:
    if fit.kind == "constant":
        tot = w.sum()
        return ((w * y).sum() / tot if tot > 0 else fit.a), 0.0
    f = fits.fit_form(fit.kind, x, y, w, fit.lower, fit.upper)
    return (f.a, f.b) if f.kind == fit.kind else (fit.a, fit.b)


def ratio_estimate(mem: np.ndarray, clock: np.ndarray, r_now: float, prior: np.ndarray,
                   n_boot: int, rng: np.random.Generator, seen=None) -> RatioEstimate:
    """The `RatioEstimate` at compute fraction `r_now` from the probes `mem` (bool [P, n])
    at `clock` (float [P]), blended with the `prior` table (`checked_prior`).

    `seen` (bool [P, n], optional): the rows each probe had seen (see `RatioEstimate`).
    """
    prior_p, prior_r = prior_at(prior, r_now)
    pos = clock > 0
    counts = mem.sum(1)
    rfit, pfit, pairs = (None, None, 0)
    if mem.shape[1] and pos.sum() >= 2:
        rfit, pfit, pairs = _fit_pairs(mem[pos], clock[pos], n_boot, rng,
                                       None if seen is None else seen[pos])
    biggest = float(counts.max()) if len(counts) else 0.0
    w = pairs / (pairs + PRIOR_PAIRS) * biggest / (biggest + PRIOR_ROWS)
    own_r = float(rfit.predict(r_now)) if rfit else prior_r
    own_p = float(pfit.predict(r_now)) if pfit else prior_p
    own_rs = rfit.predict_samples(r_now) if rfit and len(rfit.samples) else np.full(n_boot, own_r)
    own_ps = pfit.predict_samples(r_now) if pfit and len(pfit.samples) else np.full(n_boot, own_p)
    prior_rs = np.clip(prior_r * np.exp(rng.normal(0.0, PRIOR_SPREAD, n_boot)), 0.0, 1.0)
    prior_ps = np.clip(1 - (1 - prior_p) * np.exp(rng.normal(0.0, PRIOR_SPREAD, n_boot)), 0, 1)
    return RatioEstimate(
        recall=w * own_r + (1 - w) * prior_r,
        precision=w * own_p + (1 - w) * prior_p,
        recall_samples=w * own_rs + (1 - w) * prior_rs,
        precision_samples=w * own_ps + (1 - w) * prior_ps,
        recall_fit=rfit, precision_fit=pfit, pairs=pairs, prior_weight=float(1 - w),
        seen_share=None if seen is None else float(seen[-1].mean()) if seen.shape[1] else 1.0,
    )
