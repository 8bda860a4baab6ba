"""Per-row risk: how likely each watchlist row is memorized at the end of training.

A ridge-regularised logistic model, fit on the run's own history by asking the
question the user will ask, one horizon back: from a row's features at an
earlier probe ``i``, was it memorized at the latest probe ``P``? Source probes
are those whose clock ratio ``c(t_i) / c(t_P)`` lies within a factor ``SPAN`` = 1.25
of the ratio the forecast must bridge now (``c(t_P) / c(total_steps)``; at most 4 of
them, evenly spread), so the model learns the same horizon it is asked about. The clock c is
the step, or the cumulative compute a caller passes (see `memwatch.forecast`).
Features of row k at probe i (``ref`` is the probe nearest to 0.7 c(t_i), the
lookback for the trends):

- ``prefix``:     match_prefix / N
- ``memorized``:  1 if the row is memorized at i
- ``trend``:      (match_prefix_i - match_prefix_ref) / N
- ``nll``:        NLL at i, as `History.nll_signal` gives it (missing: the median, or 0)
- ``nll_slope``:  NLL_i - NLL_ref
- ``log_dups``:   log1p(duplicate count), when duplicate counts are given
- ``tag:<t>``:    one indicator per tag (the 32 most common)

Features are standardised, the fit is Newton's method on the L2-penalised
log-likelihood (penalty 1.0), so the result is deterministic. When the history
cannot train it (fewer than two probes, or labels all equal) the ranking falls
back to a documented heuristic: ``prefix + 0.5 * trend``, ties broken by lower NLL;
``fitted`` says which was used.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

MAX_TAGS = 32
# The one ridge of memwatch's logistic fits (risk ranking and trajectory calibration), on
# standardised features. Both ends fail a test: at 1.0 the trajectory calibration, whose
# labels are nearly separable in log NLL, flattens until a row far past the threshold gets
# p ~ 0.6 instead of ~1; at 1e-3 the risk ranking's collinear features (prefix, memorized,
# NLL and their trends, duplicates) trade weight freely and the duplicate count's signal is
# lost. 0.1 keeps both: a tenth of one observation's worth of shrinkage.
RIDGE = 0.1
LOOKBACK = 0.7
MAX_SOURCES = 4
SPAN = 1.25


@dataclass(frozen=True)
class RiskRanking:
    """Per-row end-of-training risk at the latest probe.

    score: float64 [n] in [0, 1]: the logistic model's probability that the row is
        memorized at the end (``fitted``), else the heuristic score.
    memorized_now: bool [n]: memorized at the latest probe.
    fitted: whether the logistic model was trained (else the heuristic ranks).
    features: the feature names, in coefficient order (after the intercept).
    coef: float64 [1 + len(features)]: intercept and weights on standardised features.
    """

    score: np.ndarray = field(compare=False)
    memorized_now: np.ndarray = field(compare=False)
    fitted: bool
    features: tuple[str, ...]
    coef: np.ndarray = field(compare=False)

    def top(self, k: int, include_memorized: bool = False, mask=None) -> np.ndarray:
        """int64 [<= k]: row indices of the k highest scores, highest first (stable ties).

        By default rows already memorized are left out (the user acts on the
        others); `mask` (bool [n]) restricts the candidates, e.g. to one tag.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0; got {k}")
        cand = np.ones(len(self.score), bool) if mask is None else np.asarray(mask, bool).copy()
        if cand.shape != self.score.shape:
            raise ValueError(
                f"mask has {cand.size} entries; the ranking has {self.score.size} rows"
            )
        if not include_memorized:
            cand &= ~self.memorized_now
        idx = np.flatnonzero(cand)
        order = np.argsort(-self.score[idx], kind="stable")
        return idx[order[:k]].astype(np.int64)


def _ref_index(clock: np.ndarray, i: int) -> int:
    """Index of the probe nearest to LOOKBACK * clock[i], strictly before i (i itself if i == 0)."""
    if i == 0:
        return 0
    return int(np.argmin(np.abs(clock[:i] - LOOKBACK * clock[i])))


def tag_columns(tags) -> tuple[list[str], np.ndarray]:
    """(names, float64 [n, len(names)]): one indicator column per tag (the MAX_TAGS commonest)."""
    counts = Counter(t for row in tags for t in set(row))
    names = sorted(counts, key=lambda t: (-counts[t], t))[:MAX_TAGS]
    col = {t: j for j, t in enumerate(names)}
    out = np.zeros((len(tags), len(names)))
    for k, row in enumerate(tags):
        for t in row:
            if t in col:
                out[k, col[t]] = 1.0
    return names, out


def _features(mp, nll, n_tok: float, clock, i: int, dups, tag_cols) -> np.ndarray:
    """float64 [n, F]: features of every row at probe index i (mp, nll: [P, n] arrays)."""
    r = _ref_index(clock, i)
    mp_i, mp_r = mp[i].astype(np.float64), mp[r].astype(np.float64)
    nll_i, nll_r = nll[i].astype(np.float64), nll[r].astype(np.float64)
    ok = np.isfinite(nll_i)
    if not ok.all():
        nll_i = np.where(ok, nll_i, np.median(nll_i[ok]) if ok.any() else 0.0)
    nll_r = np.where(np.isfinite(nll_r), nll_r, nll_i)
    cols = [
        mp_i / n_tok,
        (mp_i == n_tok).astype(np.float64),
        (mp_i - mp_r) / n_tok,
        nll_i,
        nll_i - nll_r,
    ]
    if dups is not None:
        cols.append(np.log1p(dups))
    return np.column_stack([*cols, tag_cols]) if tag_cols.shape[1] else np.column_stack(cols)


def sigmoid(z) -> np.ndarray:
    """The logistic function, clipped at |z| = 30 so that exp never overflows."""
    return 1 / (1 + np.exp(-np.clip(z, -30, 30)))


def logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE, iters: int = 20) -> np.ndarray:
    """float64 [1 + F]: intercept and weights of an L2-penalised logistic regression (Newton)."""
    xb = np.column_stack([np.ones(len(x)), x])
    beta = np.zeros(xb.shape[1])
    pen = np.full(xb.shape[1], ridge)
    pen[0] = 0.0
    for _ in range(iters):
        p = sigmoid(xb @ beta)
        grad = xb.T @ (p - y) + pen * beta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(pen + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-6:
            break
    return beta




def risk_at(history, last: int, clock: np.ndarray, total: float, dups=None,
            columns=None, extra=None, total_step: int | None = None) -> RiskRanking:
    """The `RiskRanking` as known at probe index `last`, for training ending at clock `total`.

    `clock` (float64 [P], non-decreasing) is the time of every probe in the unit the
    horizon is measured in (steps or cumulative compute). Probes after `last` are
    ignored, so a caller can ask what the ranking said back then. `columns` is
    ``tag_columns(history.tags)``, for callers that rank one history twice. `extra`:
    (names, features) with ``features(i, step)`` -> float [n, len(names)], more
    features of every row at probe i looking ahead to `step` (the source probes look
    ahead to probe `last`, the prediction to `total_step`), e.g.
    `memwatch.forecast.signals.RowSignals.features`.
    """
    n = history.num_rows
    names, tag_cols = tag_columns(history.tags) if columns is None else columns
    extra_names, extra_at = extra if extra is not None else ((), None)
    feature_names = ("prefix", "memorized", "trend", "nll", "nll_slope",
                     *(("log_dups",) if dups is not None else ()), *(f"tag:{t}" for t in names),
                     *extra_names)

    def features(i: int, step: int) -> np.ndarray:
        x = _features(mp, nll, n_tok, clock, i, dups, tag_cols)
        return x if extra_at is None else np.column_stack([x, extra_at(i, step)])

    if last < 0 or n == 0:
        z = np.zeros(n)
        return RiskRanking(z, np.zeros(n, bool), False, feature_names, np.zeros(0))
    mp, nll, n_tok = history.match_prefix, history.nll_signal(), float(history.cont_len)
    last_step = int(history.steps[last])
    now = features(last, last_step if total_step is None else int(total_step))
    mem_last = mp[last] == history.cont_len
    if last >= 1 and clock[last] > 0:
        horizon = min(1.0, clock[last] / max(total, clock[last]))
        ratio = clock[:last] / clock[last]
        src = np.flatnonzero((ratio >= horizon / SPAN) & (ratio <= min(1.0, SPAN * horizon))
                             & (clock[:last] > 0))
        if len(src) == 0:
            src = np.array([int(np.argmin(np.abs(ratio - horizon)))])
        src = src[np.unique(np.round(np.linspace(0, len(src) - 1, MAX_SOURCES)).astype(int))]
        x = np.concatenate([features(int(i), last_step) for i in src])
        y = np.tile(mem_last.astype(np.float64), len(src))
        if 0 < y.sum() < len(y):
            mu, sd = x.mean(0), x.std(0)
            sd = np.where(sd > 1e-12, sd, 1.0)
            beta = logistic_fit((x - mu) / sd, y)
            z = np.column_stack([np.ones(n), (now - mu) / sd]) @ beta
            score = sigmoid(z)
            return RiskRanking(score, mem_last.copy(), True, feature_names, beta)
    heuristic = now[:, 0] + 0.5 * now[:, 2]
    nll = now[:, 3]
    tie = 1e-3 * (1 - (nll - nll.min()) / (np.ptp(nll) + 1e-12))
    score = np.clip(heuristic + tie, 0.0, 1.0)
    return RiskRanking(score, mem_last.copy(), False, feature_names, np.zeros(0))
