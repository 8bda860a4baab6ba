"""A privacy audit in one training run: canary scores -> AUROC, TPR at low FPR, an ε lower bound.

Design (Steinke, Nasr & Jagielski, NeurIPS 2023, "Privacy auditing with one (1) training
run", arXiv 2305.08846): m canaries, each included in training independently with
probability ½ (`Watchlist.canaries(n, audit=True)` draws and records it). After (or
during) training every canary gets a score, higher meaning "looks trained on". The
auditor guesses "in" for the k highest scores and "out" for the k lowest, abstains on
the rest, and counts the correct guesses V among the r = 2k made. Under (ε, δ)-DP,

    P[V >= v] <= P[Binomial(r, q) >= v] + 2 m δ α,    q = e^ε / (1 + e^ε)

with α = max_{1<=i<=v} P[v - i <= Binomial(r, q) < v] / i (the paper's main theorem with its
δ correction; DeepMind's `jax_privacy/auditing.py`, `_one_run_p_value`, computes the same).
The ε lower bound is the largest ε whose p-value is at most the significance level: a
claim of (ε, δ)-DP with a smaller ε is rejected at that level.

`audit` tries several k (powers of two, and "guess every canary"), each both ways (top and
bottom k, and the top k alone: when only some planted canaries are learned, the bottom
guesses are coin flips that dilute the count), and keeps the best bound, each tested at
significance / (number of tries) (Bonferroni), so the bound holds at the stated
significance whichever wins. Ties in the scores are broken at random
(seeded), never by membership: a tie broken by the order of `scores_in` and `scores_out`
would count as correct guesses that the model never made.

`fdp=True` adds the bound of Mahloujifar et al. 2024 ("Auditing f-differential privacy in
one run", arXiv 2410.22235) from the same guesses, for the trade-off curve of a Gaussian
mechanism with that (ε, δ): tighter when the mechanism is Gaussian-like (DP-SGD).

Also: AUROC (Mann-Whitney, ties count ½) with a percentile bootstrap interval (in and
out scores resampled separately), and the TPR at a given FPR (the best threshold rule
``score >= t`` whose FPR is at most the target; no randomised rules).

The default score is the continuation's log-probability log p_z (`log_pz`): the sum of
the true tokens' log-probabilities (the measure of Hayes et al. 2024; a likelihood attack
as in Carlini et al. 2021).

What the number is: a lower bound, at the stated significance, on the ε of this training
run with respect to these canaries under this score. It is not an upper bound (a run with
ε_lb = 0 may still be far from private: a weak score or too few canaries audits nothing),
and it says nothing about rows other than the canaries. See docs/audit.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from memwatch.watchlist.tags import CANARY_IN, CANARY_OUT

DELTA = 1e-5
SIGNIFICANCE = 0.05
FPRS = (0.001, 0.01)
_TOL = 1e-6  # ε is found to this absolute precision


@dataclass(frozen=True)
class Audit:
    """What `audit` concludes from held-in and held-out canary scores.

    auroc: area under the ROC curve of the rule ``score >= t`` (0.5: no signal).
    auroc_interval: percentile bootstrap interval of `auroc` at `confidence`, or None.
    tpr_at_fpr: FPR -> the highest TPR of a threshold rule whose FPR is at most that.
    epsilon_lb: the one-run ε lower bound (Steinke et al. 2023) at `delta`, `significance`.
    epsilon_lb_fdp: the f-DP bound (Mahloujifar et al. 2024), or None if not asked for.
    k, k_out, guesses, correct: the guesses behind `epsilon_lb`: "in" for the k top
        scores, "out" for the k_out bottom ones (k or 0); ``guesses`` = k + k_out made,
        ``correct`` of them right (when nothing rejects, the largest k both ways).
    """

    n_in: int
    n_out: int
    auroc: float
    tpr_at_fpr: dict[float, float]
    epsilon_lb: float
    delta: float
    significance: float
    k: int = 0
    k_out: int = 0
    guesses: int = 0
    correct: int = 0
    auroc_interval: tuple[float, float] | None = None
    confidence: float = 0.95
    epsilon_lb_fdp: float | None = None
    ks: tuple[int, ...] = field(default=(), repr=False)

    def metrics(self) -> dict[str, float]:
        """Flat metrics for sinks: ``audit/auroc``, ``audit/tpr@1%fpr``, ``audit/epsilon_lb``..."""
        out = {"audit/auroc": self.auroc}
        for fpr, tpr in self.tpr_at_fpr.items():
            out[f"audit/tpr@{fpr * 100:g}%fpr"] = tpr
        out["audit/epsilon_lb"] = self.epsilon_lb
        if self.epsilon_lb_fdp is not None:
            out["audit/epsilon_lb_fdp"] = self.epsilon_lb_fdp
        if self.auroc_interval is not None:
            out["audit/auroc_low"], out["audit/auroc_high"] = self.auroc_interval
        return out


def audit(scores_in, scores_out, *, delta: float = DELTA, significance: float = SIGNIFICANCE,
          k: int | Sequence[int] | None = None, fpr: Sequence[float] = FPRS,
          n_boot: int = 1000, confidence: float = 0.95, fdp: bool = False,
          bottom: bool | None = None, seed: int = 0) -> Audit:
    """Return the `Audit` of canaries trained on (`scores_in`) against those left out.

    Scores: higher means "more likely trained on" (e.g. `log_pz`); NaN is an error.
    delta, significance: the (ε, δ) claim tested and the test's level.
    k: guesses per side (top k "in", bottom k "out"); a sequence tries each; None: 4, 8,
        16, ... below m/2, and m//2 (every canary).
    bottom: True: guess the bottom k "out" too (the paper's k+ = k- = k); False: the top k
        only; None: try both. Each try is tested at significance / (number of tries).
    fpr: the FPRs at which to report the TPR.
    n_boot: bootstrap resamples for the AUROC interval (0: no interval).
    fdp: also compute the f-DP bound of Mahloujifar et al. 2024.
    seed: the random tie-breaks and the bootstrap.
    """
    s_in = _scores(scores_in, "scores_in")
    s_out = _scores(scores_out, "scores_out")
    if not 0 <= delta < 1:
        raise ValueError(f"delta = {delta} must lie in [0, 1)")
    if not 0 < significance < 1:
        raise ValueError(f"significance = {significance} must lie in (0, 1)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence = {confidence} must lie in (0, 1)")
    fprs = tuple(float(f) for f in fpr)
    if any(not 0 <= f <= 1 for f in fprs):
        raise ValueError(f"fpr {list(fpr)} must be rates in [0, 1]")
    m = len(s_in) + len(s_out)
    ks = default_ks(m) if k is None else _check_ks(k, m)
    if fdp and delta == 0:
        raise ValueError("fdp=True needs delta > 0: no Gaussian mechanism is (ε, 0)-DP")
    rng = np.random.default_rng(seed)
    scores = np.concatenate([s_in, s_out])
    member = np.arange(m) < len(s_in)
    # ascending by score; ties in random order, drawn independently of membership
    order = np.lexsort((rng.random(m), scores))
    tries = [(kk, kk if both else 0) for both in ((False, True) if bottom is None
                                                  else (bool(bottom),)) for kk in ks]
    level = significance / max(len(tries), 1)
    best = (0.0, 0, 0, 0, 0)
    best_fdp = 0.0
    for k_in, k_out in tries:
        v = int(member[order[m - k_in:]].sum() + (~member[order[:k_out]]).sum())
        eps = epsilon_one_run(m, k_in + k_out, v, level, delta)
        if eps >= best[0]:  # on a tie (nothing rejects: all 0) the last try is reported
            best = (eps, k_in, k_out, k_in + k_out, v)
        if fdp:
            best_fdp = max(best_fdp, epsilon_one_run_fdp(m, k_in + k_out, v, level, delta))
    interval = None
    if n_boot:
        boot = [auroc(rng.choice(s_in, len(s_in)), rng.choice(s_out, len(s_out)))
                for _ in range(n_boot)]
        tail = (1 - confidence) / 2
        interval = (float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail)))
    return Audit(len(s_in), len(s_out), auroc(s_in, s_out),
                 {f: tpr_at_fpr(s_in, s_out, f) for f in fprs}, best[0], float(delta),
                 float(significance), *best[1:], interval, float(confidence),
                 best_fdp if fdp else None, tuple(ks))


# ---- the default score ----------------------------------------------------------------------
def log_pz(history) -> np.ndarray:
    """float32 [P, n]: log p_z, the continuation's log-probability, at every probe of `history`.

    The history's own record of it (``History.log_pz``, float32) where there is one, else
    derived from the mean NLL: log p_z = sum_t log p(z_t | x, z_<t) = -(mean NLL) * cont_len.
    NaN where the probe measured neither (``with_nll=False``).
    """
    derived = -history.nll * np.float32(history.cont_len)
    stored = getattr(history, "log_pz", None)
    if stored is None:
        return derived
    stored = np.asarray(stored, dtype=np.float32)
    return np.where(np.isfinite(stored), stored, derived)


def audit_rows(tags: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(in, out): bool masks of the rows tagged ``canary:in`` and ``canary:out``."""
    tagged = [set(t) for t in tags]
    return (np.array([CANARY_IN in t for t in tagged], dtype=bool),
            np.array([CANARY_OUT in t for t in tagged], dtype=bool))


def history_audit(history, probe: int = -1, **kwargs) -> Audit | None:
    """The `Audit` of `history`'s audit canaries at one probe (default the latest), scored by
    `log_pz`; None when the history has no ``canary:in`` or no ``canary:out`` row, or no
    log p_z at that probe. `kwargs` go to `audit` (default: no bootstrap)."""
    rows_in, rows_out = audit_rows(history.tags)
    if not len(history) or not rows_in.any() or not rows_out.any():
        return None
    score = log_pz(history)[probe]
    if not np.isfinite(score[rows_in | rows_out]).all():
        return None
    kwargs.setdefault("n_boot", 0)
    return audit(score[rows_in], score[rows_out], **kwargs)


def audit_metrics(history) -> dict[str, float]:
    """The ``audit/*`` metrics of the latest probe in `history` (empty without audit canaries
    or without log p_z). Default δ and significance; no bootstrap (cheap at every probe)."""
    result = history_audit(history)
    return {} if result is None else result.metrics()


# ---- the statistics ---------------------------------------------------------------------------
def auroc(scores_in, scores_out) -> float:
    """P[score_in > score_out] + ½ P[tie]: the area under the ROC curve (Mann-Whitney U)."""
    s_in, s_out = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
    both = np.concatenate([s_in, s_out])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # average rank (1-based) of each distinct value: ties share the mean of their ranks
    avg = np.cumsum(counts) - (counts - 1) / 2
    rank_sum = avg[inverse[: len(s_in)]].sum()
    u = rank_sum - len(s_in) * (len(s_in) + 1) / 2
    return float(u / (len(s_in) * len(s_out)))


def tpr_at_fpr(scores_in, scores_out, fpr: float) -> float:
    """The highest TPR of a rule ``score >= t`` whose FPR is at most `fpr` (t = +inf: 0, 0)."""
    s_in, s_out = np.sort(scores_in), np.sort(scores_out)
    t = np.unique(np.concatenate([s_in, s_out]))
    tp = len(s_in) - np.searchsorted(s_in, t, side="left")
    fp = len(s_out) - np.searchsorted(s_out, t, side="left")
    ok = fp <= fpr * len(s_out) + 1e-9
    return float(tp[ok].max() / len(s_in)) if ok.any() else 0.0


def binomial_log_sf(r: int, log_q: float, log_1mq: float) -> np.ndarray:
    """float64 [r + 2]: log P[Binomial(r, q) >= t] for t = 0 .. r + 1 (the last is -inf)."""
    j = np.arange(r + 1)
    with np.errstate(invalid="ignore"):  # 0 * -inf where q is 0 or 1
        log_pmf = (_log_binomial_coefficients(r) + np.where(j > 0, j * log_q, 0.0)
                   + np.where(j < r, (r - j) * log_1mq, 0.0))
    tail = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
    return np.append(tail, -np.inf)


@lru_cache(maxsize=64)
def _log_binomial_coefficients(r: int) -> np.ndarray:
    """float64 [r + 1]: log C(r, j) for j = 0 .. r."""
    lgam = np.array([math.lgamma(x + 1) for x in range(r + 1)])
    return lgam[r] - lgam - lgam[::-1]


def one_run_p_value(m: int, guesses: int, correct: int, eps: float, delta: float) -> float:
    """The p-value of the claim "(eps, delta)-DP" after `correct` of `guesses` right guesses on
    `m` canaries (Steinke et al. 2023, with the δ correction)."""
    log_q = -math.log1p(math.exp(-eps))  # log of e^eps / (1 + e^eps)
    log_1mq = -eps + log_q
    sf = np.exp(binomial_log_sf(guesses, log_q, log_1mq))
    beta = float(sf[correct])
    if delta == 0 or correct == 0:
        return beta
    i = np.arange(1, correct + 1)
    alpha = float(np.max((sf[correct - i] - beta) / i))
    return min(beta + alpha * 2 * m * delta, 1.0)


def epsilon_one_run(m: int, guesses: int, correct: int, significance: float = SIGNIFICANCE,
                    delta: float = DELTA) -> float:
    """The largest ε whose (ε, δ) claim `one_run_p_value` rejects at `significance` (0 if none)."""
    if guesses == 0:
        return 0.0
    return _largest_rejected(lambda e: one_run_p_value(m, guesses, correct, e, delta)
                             <= significance)


def epsilon_one_run_fdp(m: int, guesses: int, correct: int, significance: float = SIGNIFICANCE,
                        delta: float = DELTA) -> float:
    """The largest ε whose Gaussian trade-off curve with that (ε, δ) the guesses reject
    (Mahloujifar et al. 2024, the recursion of their one-run f-DP audit; 0 if none)."""
    if guesses == 0:
        return 0.0
    return _largest_rejected(lambda e: _fdp_rejects(m, guesses, correct, significance,
                                                    _gaussian_mu(e, delta)))


def _fdp_rejects(m: int, guesses: int, correct: int, significance: float, mu: float) -> bool:
    """Whether `correct` of `guesses` is too many for a mechanism whose trade-off is mu-GDP.

    Walks the guesses from the last correct one down: `hit` bounds the probability mass of
    correct guesses and `miss` of wrong ones, each at least what the trade-off curve
    forces given the other; the claim falls when they cannot cover the guesses made.
    """
    norm = NormalDist()

    def inverse_blow_up(x: float) -> float:
        if x <= 0 or x >= 1:
            return min(max(x, 0.0), 1.0)
        return norm.cdf(norm.inv_cdf(x) - mu)

    hit = significance * correct / m
    miss = significance * (guesses - correct) / m
    for i in range(correct - 1, -1, -1):
        grown = max(miss, inverse_blow_up(hit))
        if grown == miss:
            break  # neither bound moves again
        hit = min(hit + i / (guesses - i) * (grown - miss), 1.0)
        miss = grown
    return hit + miss > guesses / m


def _gaussian_mu(eps: float, delta: float) -> float:
    """The μ of the μ-GDP mechanism (a Gaussian of sensitivity 1 / noise μ⁻¹) that is exactly
    (eps, delta)-DP: δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2) (Balle & Wang 2018; Dong, Roth &
    Su 2022, Corollary 2.13), solved for μ by bisection (δ grows with μ)."""
    norm = NormalDist()

    def delta_of(mu: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)

    lo, hi = 1e-9, 1.0
    while delta_of(hi) < delta and hi < _MU_MAX:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) < delta else (lo, mid)
        if hi - lo < 1e-12:
            break
    return hi


_MU_MAX = 64.0  # Φ(-32) underflows: beyond this the trade-off curve is 0 everywhere


def _largest_rejected(rejects) -> float:
    """The largest ε >= 0 with rejects(ε) (a claim rejected at small ε and not at large), or 0."""
    if not rejects(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejects(hi):
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return lo
    while hi - lo > _TOL:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejects(mid) else (lo, mid)
    return lo


def default_ks(m: int) -> tuple[int, ...]:
    """The guesses per side `audit` tries by default: 4, 8, 16, ... below m/2, then m//2."""
    ks = [k for k in (2 ** j for j in range(2, 40)) if k < m // 2]
    return tuple(ks + [m // 2]) if m // 2 >= 1 else ()


def _check_ks(k, m: int) -> tuple[int, ...]:
    ks = (k,) if isinstance(k, (int, np.integer)) else tuple(k)
    for kk in ks:
        if isinstance(kk, bool) or not isinstance(kk, (int, np.integer)) or not 1 <= kk <= m // 2:
            raise ValueError(f"k = {kk!r}: guesses per side must be integers in [1, m // 2 = "
                             f"{m // 2}] for {m} canaries")
    if not ks:
        raise ValueError("k is empty: give guesses per side, or None for the default grid")
    return tuple(int(kk) for kk in ks)


def _scores(values, name: str) -> np.ndarray:
    s = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(s):
        raise ValueError(f"{name} is empty: the audit needs canaries both in and out of training")
    if not np.isfinite(s).all():
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"{name}[{bad}] = {s[bad]}: scores must be finite numbers")
    return s
