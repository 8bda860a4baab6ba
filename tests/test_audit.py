"""The one-run audit: valid under the null, its tail and bootstrap equal direct computations."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from memwatch.audit import (
    audit,
    auroc,
    binomial_log_sf,
    default_ks,
    epsilon_one_run,
    epsilon_one_run_fdp,
    one_run_p_value,
    tpr_at_fpr,
)


def _null_draw(seed: int, m: int = 200, ties: bool = False):
    """m canaries in/out with probability ½; scores independent of membership."""
    rng = np.random.default_rng(seed)
    member = rng.random(m) < 0.5
    scores = rng.integers(0, 3, m).astype(float) if ties else rng.normal(size=m)
    return scores[member], scores[~member]


@pytest.mark.parametrize("ties", [False, True])
def test_a_null_run_gives_zero_in_95_percent_of_40_seeds(ties):
    positive = positive_fdp = 0
    for seed in range(40):
        a = audit(*_null_draw(seed, ties=ties), n_boot=0, fdp=True, seed=seed)
        positive += a.epsilon_lb > 0
        positive_fdp += a.epsilon_lb_fdp > 0
    assert positive <= 2 and positive_fdp <= 2  # >= 38 of 40 seeds at zero


def test_ties_are_broken_at_random_not_by_membership():
    # Every canary scores the same (nothing learned): a tie broken by the order of the
    # arguments would make every guess right (or every one wrong).
    a = audit(np.zeros(100), np.zeros(100), k=100, bottom=True, n_boot=0)
    assert 0.35 * a.guesses < a.correct < 0.65 * a.guesses
    assert a.epsilon_lb == 0


def test_binomial_tail_equals_the_direct_sum():
    for r, q in [(1, Fraction(1, 2)), (7, Fraction(3, 10)), (20, Fraction(9, 10)),
                 (60, Fraction(1, 2))]:
        got = np.exp(binomial_log_sf(r, math.log(q), math.log(1 - q)))
        for t in range(r + 2):
            want = sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(t, r + 1))
            assert got[t] == pytest.approx(float(want), rel=1e-10, abs=1e-300)


def test_p_value_equals_the_papers_formula_computed_directly():
    m, r, v, eps, delta = 500, 30, 24, 0.7, 1e-3
    q = math.exp(eps) / (1 + math.exp(eps))

    def tail(t):
        return sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(max(t, 0), r + 1))

    beta = tail(v)
    alpha = max((tail(v - i) - beta) / i for i in range(1, v + 1))
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(beta + 2 * m * delta * alpha,
                                                                 rel=1e-10)
    assert one_run_p_value(m, r, v, eps, 0) == pytest.approx(beta, rel=1e-10)


def test_epsilon_with_every_guess_right_has_a_closed_form():
    # delta = 0, r of r right: the p-value is q^r, so q = significance^(1/r) at the bound
    for r, sig in [(10, 0.05), (40, 0.01), (200, 0.05)]:
        q = sig ** (1 / r)
        assert epsilon_one_run(1000, r, r, sig, 0) == pytest.approx(math.log(q / (1 - q)),
                                                                    abs=1e-5)


def test_epsilon_grows_with_correct_guesses_and_falls_with_delta_and_confidence():
    eps = [epsilon_one_run(1000, 100, v, 0.05, 1e-5) for v in (50, 60, 70, 80, 90, 100)]
    assert eps[0] == 0 and all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert epsilon_one_run(1000, 100, 90, 0.05, 1e-2) < eps[4]
    assert epsilon_one_run(1000, 100, 90, 0.001, 1e-5) < eps[4]
    # the f-DP bound of the same guesses is at least as high for these counts
    assert epsilon_one_run_fdp(1000, 100, 90, 0.05, 1e-5) > eps[4]


def test_auroc_and_tpr_equal_their_direct_definitions():
    rng = np.random.default_rng(3)
    s_in = rng.integers(0, 6, 40).astype(float)  # ties on purpose
    s_out = rng.integers(0, 5, 50).astype(float)
    pairs = [(a > b) + 0.5 * (a == b) for a in s_in for b in s_out]
    assert auroc(s_in, s_out) == pytest.approx(np.mean(pairs))
    for fpr in (0.0, 0.01, 0.1, 0.5, 1.0):
        best = 0.0
        for t in [*np.unique(np.r_[s_in, s_out]), np.inf]:
            if np.mean(s_out >= t) <= fpr:
                best = max(best, float(np.mean(s_in >= t)))
        assert tpr_at_fpr(s_in, s_out, fpr) == pytest.approx(best)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    s_in, s_out = np.array([0.3, 1.2, 2.0]), np.array([0.1, 0.9, 1.5])
    # every resample of 3 from 3 (27 ordered draws each side), all equally likely
    values = np.sort([auroc(np.array(a), np.array(b))
                      for a in itertools.product(s_in, repeat=3)
                      for b in itertools.product(s_out, repeat=3)])

    def exact_quantile(p):
        return values[min(int(math.ceil(p * len(values))) - 1, len(values) - 1)]

    a = audit(s_in, s_out, n_boot=2000, confidence=0.9, k=1, seed=1)
    lo, hi = a.auroc_interval
    assert exact_quantile(0.03) <= lo <= exact_quantile(0.07)
    assert exact_quantile(0.93) <= hi <= exact_quantile(0.97)


def test_separated_canaries_give_a_bound_and_metrics():
    rng = np.random.default_rng(0)
    a = audit(rng.normal(3, 1, 200), rng.normal(0, 1, 200), n_boot=200, seed=0)
    assert a.auroc > 0.95 and a.auroc_interval[0] < a.auroc < a.auroc_interval[1]
    assert a.epsilon_lb > 1 and a.k in a.ks and a.guesses == a.k + a.k_out
    assert a.k_out in (0, a.k)
    # only a few planted canaries learned: the top guesses alone certify more
    some = np.r_[rng.normal(0, 1, 150), rng.normal(50, 1, 50)]
    rest = rng.normal(0, 1, 200)
    one_sided = audit(some, rest, n_boot=0, bottom=False).epsilon_lb
    assert one_sided > audit(some, rest, n_boot=0, bottom=True).epsilon_lb
    assert audit(some, rest, n_boot=0).k_out == 0
    metrics = a.metrics()
    assert set(metrics) >= {"audit/auroc", "audit/tpr@1%fpr", "audit/tpr@0.1%fpr",
                            "audit/epsilon_lb"}
    assert metrics["audit/epsilon_lb"] == a.epsilon_lb


def test_default_ks_and_bad_input():
    assert default_ks(100) == (4, 8, 16, 32, 50)
    assert default_ks(9) == (4,)
    with pytest.raises(ValueError, match="scores_out is empty"):
        audit([1.0], [])
    with pytest.raises(ValueError, match=r"scores_in\[1\] = nan"):
        audit([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="guesses per side"):
        audit([1.0, 2.0], [0.0], k=5)
    with pytest.raises(ValueError, match="needs delta > 0"):
        audit([1.0, 2.0], [0.0, 1.0], fdp=True, delta=0)
