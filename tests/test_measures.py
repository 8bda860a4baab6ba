"""The extraction measures, each against an independent computation of its paper's formula."""

import math
import zlib
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch

import memwatch as mw
from memwatch.measures import draws_needed, extraction_rates, min_k_count
from memwatch.probe import ProbeSpec

M, N = 32, 32


@pytest.fixture(scope="module")
def independent(trained):
    """Per-token log-probs of the true continuations from one plain forward + log_softmax."""
    with torch.no_grad():
        logits = trained.model(trained.rows[:, :M + N]).logits.float()
    logprobs = torch.log_softmax(logits[:, M - 1:M + N - 1], dim=-1)
    return logprobs.gather(-1, trained.rows[:, M:M + N, None]).squeeze(-1).double().numpy()


@pytest.mark.parametrize("mode", ["exact", "extractable"])
@pytest.mark.parametrize("strategy", ["speculative", "teacher_forced"])
def test_every_measure_equals_the_papers_formula_on_a_plain_forward(trained, independent,
                                                                    mode, strategy):
    res = mw.probe(trained.model, trained.rows, mode=mode, with_nll=True, strategy=strategy,
                   batch_size=7)
    lp = independent
    close = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.token_logprobs.numpy(), lp, **close)
    # Hayes et al. 2024: log p_z = sum_t log p(z_t | x, z_<t)
    np.testing.assert_allclose(res.log_pz.numpy(), lp.sum(1), **close)
    # Shi et al. 2024, their code: np.sort(token_probs)[:int(len * ratio)], mean
    k_len = int(N * 0.2)
    np.testing.assert_allclose(res.min_k_logprob.numpy(),
                               np.sort(lp, axis=1)[:, :k_len].mean(1), **close)
    # Carlini et al. 2021: log-perplexity / zlib length, here of the ids as LE uint32 bytes
    zlen = [len(zlib.compress(np.asarray(row, dtype="<u4").tobytes()))
            for row in trained.rows[:, M:M + N].tolist()]
    np.testing.assert_allclose(res.zlib_ratio.numpy(), -lp.mean(1) / np.array(zlen), **close)
    np.testing.assert_allclose(res.nll.numpy(), -lp.mean(1), **close)
    # greedy extraction is not p_z near 1 (some memorized rows have p_z ~ e^-10 here), but
    # every greedy-memorized row is far likelier than any row seen once
    assert res.log_pz[trained.repeats == 1].max() < res.log_pz[trained.memorized].min()


def test_scores_unchanged_by_the_measures(trained):
    ref = mw.reference_probe(trained.model, trained.rows)
    for mode in ("exact", "extractable"):
        plain = mw.probe(trained.model, trained.rows, mode=mode)
        measured = mw.probe(trained.model, trained.rows, mode=mode, with_nll=True)
        assert torch.equal(plain.scores, measured.scores)
        assert torch.equal(plain.match_prefix, measured.match_prefix)
        assert plain.log_pz is None and plain.min_k_logprob is None and plain.zlib_ratio is None
    assert torch.equal(measured.memorized, ref == 1)
    assert torch.equal(mw.probe(trained.model, trained.rows, mode="exact", with_nll=True).scores,
                       ref)


def test_min_k_is_configurable(trained, independent):
    res = mw.probe(trained.model, trained.rows[:8], mode="extractable", with_nll=True,
                   min_k=0.5)
    np.testing.assert_allclose(res.min_k_logprob.numpy(),
                               np.sort(independent[:8], axis=1)[:, :16].mean(1),
                               rtol=1e-5, atol=1e-5)
    assert min_k_count(32, 0.01) == 1 and min_k_count(32, 1.0) == 32
    for bad in (0, 20, -0.1, True):
        with pytest.raises(ValueError, match="min_k"):
            mw.probe(trained.model, trained.rows[:2], with_nll=True, min_k=bad)
        with pytest.raises(ValueError, match="min_k"):
            ProbeSpec(min_k=bad)


def _exact_chance(log_pz: float, n: int) -> Decimal:
    """1 - (1 - p_z)^n to 80 digits: the formula itself, no log-space rewriting."""
    getcontext().prec = 80
    pz = Decimal(log_pz).exp()
    return 1 - (1 - pz) ** n


LOG_PZ = np.array([0.0, -1e-12, -1e-6, -0.01, -0.7, -5.0, -30.0, -41.5, -80.0, -700.0,
                   -np.inf])
DRAWS = [1, 3, 10, 1000, 2 ** 20, 2 ** 40, 2 ** 60]
PROBS = [0.1, 0.5, 0.9, 0.99, 0.999]


def test_extraction_rates_equal_the_formula_in_exact_arithmetic():
    rates = extraction_rates(LOG_PZ, DRAWS, PROBS)
    assert rates.shape == (len(DRAWS), len(PROBS))
    for i, n in enumerate(DRAWS):
        for j, p in enumerate(PROBS):
            hits = [_exact_chance(lp, n) >= Decimal(p) for lp in LOG_PZ]
            assert rates[i, j] == pytest.approx(np.mean(hits)), (n, p)
    # the naive float formula loses the rows with p_z near 0 at large n: 1 - 1e-18 == 1.0
    pz = math.exp(-41.5)  # ~1e-18: 2^60 draws find it with probability ~0.66
    assert 1 - (1 - pz) ** 2 ** 60 == 0.0
    assert extraction_rates([-41.5], [2 ** 60], [0.5])[0, 0] == 1.0
    assert float(_exact_chance(-41.5, 2 ** 60)) == pytest.approx(0.66, abs=0.01)


def test_extraction_rates_are_monotone_and_skip_unmeasured_rows():
    lp = np.random.default_rng(0).uniform(-60, 0, 500)
    rates = extraction_rates(np.append(lp, np.nan))
    assert np.all(np.diff(rates, axis=0) >= 0)  # more draws never extract less
    assert np.all(np.diff(rates, axis=1) <= 0)  # a higher bar never extracts more
    assert np.array_equal(rates, extraction_rates(lp))
    assert np.isnan(extraction_rates([np.nan], [1], [0.5])).all()
    for bad in ([0], [1.5, -1]):
        with pytest.raises(ValueError, match="n must"):
            extraction_rates(lp, bad, [0.5])
    for bad in ([0.0], [1.0], [2]):
        with pytest.raises(ValueError, match="p must"):
            extraction_rates(lp, [1], bad)


def test_draws_needed_is_the_smallest_n_that_reaches_p():
    for p in PROBS:
        need = draws_needed(LOG_PZ, p)
        for lp, n in zip(LOG_PZ, need, strict=True):
            if lp == -np.inf:
                assert n == np.inf
                continue
            if lp <= -700:  # p_z ~ 1e-304: 1 - p_z is 1 even in 80 digits; log(1 - p_z) = -p_z
                assert n == pytest.approx(-math.log1p(-p) / math.exp(lp), rel=1e-12)
                continue
            # beyond 2^50 draws float64 holds n to its 1e-16 relative precision, no better
            hi, lo = (int(n), int(n) - 1) if n < 2 ** 50 else \
                (math.ceil(n * (1 + 1e-12)), math.floor(n * (1 - 1e-12)))
            assert _exact_chance(lp, hi) >= Decimal(p), (lp, n, p)
            assert n == 1 or _exact_chance(lp, lo) < Decimal(p), (lp, n, p)
    assert draws_needed([0.0], 0.999)[0] == 1
    assert draws_needed([-np.inf], 0.5)[0] == np.inf
    # consistent with the rates: a row is (n, p)-extractable exactly from draws_needed on
    lp = np.random.default_rng(1).uniform(-50, 0, 200)
    need = draws_needed(lp, 0.9)
    for n in (1, 10, 10 ** 6, 2 ** 50):
        assert extraction_rates(lp, [n], [0.9])[0, 0] == pytest.approx(np.mean(need <= n))
