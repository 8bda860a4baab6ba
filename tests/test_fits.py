"""Fits: known parameters are recovered, the better form is chosen, bands bracket."""

from __future__ import annotations

import numpy as np
import pytest

from memwatch.forecast.fits import (
    ScalingFit,
    fit_curve,
    fit_form,
    fit_recall_curve,
    fit_saturating,
)

# Smaller, fully trained Pythia models predicting the final Pythia-12B's memorized set:
# Biderman et al. 2023 (arXiv 2304.11158, Fig. 2), rows (compute fraction, precision, recall).
PYTHIA_SIZE_PREDICTORS = (
    (70e6 / 12e9, 0.956, 0.197), (160e6 / 12e9, 0.948, 0.289), (410e6 / 12e9, 0.940, 0.401),
    (1.0e9 / 12e9, 0.931, 0.512), (1.4e9 / 12e9, 0.926, 0.554), (2.8e9 / 12e9, 0.909, 0.658),
    (6.9e9 / 12e9, 0.884, 0.795),
)

X = np.geomspace(0.05, 1.0, 25)


@pytest.mark.parametrize(("a", "b"), [(1.0, 0.7), (0.8, 1.3), (3.0, -0.5)])
def test_power_law_parameters_are_recovered(a, b):
    fit = fit_form("power", X, a * X**b)
    assert fit.kind == "power"
    assert fit.a == pytest.approx(a, rel=1e-9)
    assert fit.b == pytest.approx(b, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit.predict([0.5, 2.0]), a * np.array([0.5, 2.0]) ** b)


def test_loglinear_parameters_are_recovered():
    fit = fit_form("loglinear", X, 0.9 + 0.25 * np.log(X))
    assert (fit.a, fit.b) == pytest.approx((0.9, 0.25))


@pytest.mark.parametrize(
    ("kind", "y"),
    [("power", 0.9 * X**1.5), ("loglinear", 1.0 + 0.3 * np.log(X))],
)
def test_fit_curve_picks_the_form_that_generated_the_data(kind, y):
    rng = np.random.default_rng(0)
    noisy = y + rng.normal(0, 0.005, len(y))
    fit = fit_curve(X, noisy)
    assert fit.kind == kind
    other = fit_form("loglinear" if kind == "power" else "power", X, noisy)
    assert fit.r2 > other.r2


def test_recall_curve_is_clipped_to_unit_interval():
    fit = fit_recall_curve(X, np.clip(1.0 + 0.4 * np.log(X), 0, 1), kinds=("loglinear",))
    y = fit.predict(np.array([1e-6, 0.5, 10.0]))
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert y[0] == 0.0 and y[2] == 1.0


def test_weights_decide_between_conflicting_points():
    x = np.array([0.1, 0.1, 1.0, 1.0])
    y = np.array([0.1, 0.9, 1.0, 1.0])
    heavy_low = fit_form("power", x, y, weights=[100, 1, 1, 1])
    heavy_high = fit_form("power", x, y, weights=[1, 100, 1, 1])
    assert heavy_low.predict(0.1) < 0.15 < 0.85 < heavy_high.predict(0.1)


def test_bootstrap_band_brackets_the_true_curve():
    rng = np.random.default_rng(1)
    x = np.repeat(X, 4)
    y = 0.95 * x**0.8 * np.exp(rng.normal(0, 0.05, len(x)))
    fit = fit_recall_curve(x, y, kinds=("power",), n_boot=200, seed=0)
    assert fit.samples.shape == (200, 2)
    lo, hi = fit.band(np.array([0.2, 0.5]), level=0.95)
    truth = 0.95 * np.array([0.2, 0.5]) ** 0.8
    assert np.all(lo <= truth) and np.all(truth <= hi)
    assert np.all(hi - lo < 0.05)
    again = fit_recall_curve(x, y, kinds=("power",), n_boot=200, seed=0)
    np.testing.assert_array_equal(fit.samples, again.samples)


def test_degenerate_inputs_give_a_constant_fit_not_nan():
    one_x = fit_curve([0.5, 0.5, 0.5], [0.2, 0.4, 0.6])
    assert one_x.kind == "constant" and one_x.a == pytest.approx(0.4)
    empty = fit_curve([], [])
    assert empty.kind == "constant" and empty.a == 0.0 and empty.n_points == 0
    zeros = fit_form("power", X, np.zeros_like(X))
    assert zeros.kind == "constant" and np.isfinite(zeros.predict(0.3))
    flat = fit_form("loglinear", X, np.ones_like(X))
    assert flat.r2 == 1.0 and flat.b == pytest.approx(0.0)
    ignored = fit_form("power", [0.0, -1.0, 0.5, 1.0, np.nan], [1, 1, 0.5, 1.0, 1])
    assert ignored.n_points == 2 and ignored.b == pytest.approx(1.0)
    lo, hi = fit_curve(X, X).band(0.5)
    assert lo == hi == pytest.approx(0.5)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="kinds must be"):
        fit_curve(X, X, kinds=("exponential",))
    with pytest.raises(ValueError, match="give one y per x"):
        fit_curve(X, X[:3])
    with pytest.raises(ValueError, match="level"):
        ScalingFit("power", 1.0, 1.0, 1.0, 2).band(0.5, level=1.5)


def test_saturating_fit_finds_the_ceiling_a_logistic_rise_points_to():
    x = np.geomspace(20, 400, 12)
    y = 300 / (1 + (x / 250) ** -3)  # ceiling 300, half of it at x = 250
    fit = fit_saturating(x, y, upper=1000)
    # the ceiling is searched on a geometric grid (24 values up to 1000): ~7 % apart
    assert fit.cap == pytest.approx(300, rel=0.07)
    assert fit.slope == pytest.approx(3, rel=0.15)
    assert fit.predict(2000) == pytest.approx(300 / (1 + 8 ** -3), rel=0.07)
    assert fit.predict(1e9) <= fit.cap <= 1000
    # noiseless, even the start of the rise (below 1 % of the ceiling) points to it
    early = fit_saturating(x[:4], y[:4], upper=1000)
    assert early.cap == pytest.approx(300, rel=0.15)


def test_the_papers_size_figures_fit_the_derived_log_linear_law():
    x, _, r = np.array(PYTHIA_SIZE_PREDICTORS).T
    fit = fit_form("loglinear", x, r)
    # the reference's [derived] fit: recall ~ 0.846 + 0.297 log10 f, R^2 0.996
    assert fit.a == pytest.approx(0.846, abs=0.005)
    assert fit.b * np.log(10) == pytest.approx(0.297, abs=0.005)
    assert fit.r2 == pytest.approx(0.996, abs=0.002)
