"""Scaling fits: a curve y(x) from a few points, by linear least squares in log space.

Two forms, both linear after a transform, so no optimizer is needed:

- ``"power"``:      y = a * x**b          (log y  = log a + b log x; needs y > 0)
- ``"loglinear"``:  y = a + b * log x

`fit_curve` fits both (weighted) and keeps the one with the higher weighted R²
measured on y itself (not on log y, so the two forms compete on equal terms).
Bootstrap bands come from refitting the *same* form on resampled points, or on
resampled data the caller prepares (`fit_form` + `ScalingFit.with_samples`,
which is how the forecast resamples watchlist rows rather than points).

`fit_recall_curve` is the same fit with predictions clipped to [0, 1], for
recall or precision as a function of a compute ratio. `fit_saturating` fits a
logistic curve in log x under a ceiling (a count that levels off). `memwatch analyze`
fits recall against compute with `fit_recall_curve` and draws its bootstrap `band`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

KINDS = ("power", "loglinear")
_TINY = 1e-12


@dataclass(frozen=True)
class ScalingFit:
    """A fitted curve ``y(x)``: its form, parameters, quality and bootstrap samples.

    kind: "power" (y = a x^b), "loglinear" (y = a + b log x) or "constant" (y = a;
        used when the points cannot support a slope: one distinct x, or fewer than
        two usable points).
    a, b: the parameters (b = 0 for "constant").
    r2: weighted R² on y (1 for a perfect fit; 0 when y has no variance to explain).
    n_points: how many points the fit used.
    lower, upper: bounds predictions are clipped to (e.g. 0 and 1 for a recall).
    samples: float64 [B, 2] bootstrap (a, b) of the same form; empty if none.
    """

    kind: str
    a: float
    b: float
    r2: float
    n_points: int
    lower: float = -np.inf
    upper: float = np.inf
    samples: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), compare=False)

    def predict(self, x) -> np.ndarray:
        """float64 like `x`: the fitted curve at `x` (> 0), clipped to [lower, upper]."""
        return _curve(self.kind, self.a, self.b, np.asarray(x, np.float64), self.lower, self.upper)

    def predict_samples(self, x) -> np.ndarray:
        """float64 [B, *x.shape]: the curve of every bootstrap sample at `x` (B may be 0)."""
        x = np.asarray(x, np.float64)
        s = self.samples
        a = s[:, 0].reshape(-1, *([1] * x.ndim))
        b = s[:, 1].reshape(-1, *([1] * x.ndim))
        return _curve(self.kind, a, b, x[None], self.lower, self.upper)

    def band(self, x, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) float64 like `x`: central `level` interval of the bootstrap curves.

        Without bootstrap samples the band collapses to the prediction itself.
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1); got {level}")
        if len(self.samples) == 0:
            y = self.predict(x)
            return y, y
        ys = self.predict_samples(x)
        q = (1 - level) / 2
        return np.quantile(ys, q, axis=0), np.quantile(ys, 1 - q, axis=0)

    def with_samples(self, samples: np.ndarray) -> ScalingFit:
        """A copy carrying `samples` (float [B, 2] of (a, b) in this fit's form)."""
        samples = np.asarray(samples, np.float64).reshape(-1, 2)
        return ScalingFit(self.kind, self.a, self.b, self.r2, self.n_points,
                          self.lower, self.upper, samples)


def _curve(kind, a, b, x, lower, upper):
    logx = np.log(np.maximum(x, _TINY))
    if kind == "power":
        y = a * np.exp(np.minimum(b * logx, 700.0))  # past 1e304 the clip decides anyway
    elif kind == "loglinear":
        y = a + b * logx
    else:
        y = a + 0 * logx
    return np.clip(y, lower, upper)


def _check_xy(x, y, weights):
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x has {x.size} points, y has {y.size}; give one y per x")
    w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64).ravel()
    if w.shape != x.shape:
        raise ValueError(f"weights has {w.size} entries; x has {x.size}")
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(w) & (x > 0) & (w > 0)
    return x[ok], y[ok], w[ok]


def _wls(u, v, w):
    """(intercept, slope) of weighted least squares v ~ c + m u; slope 0 if u is constant."""
    sw = w.sum()
    um, vm = (w * u).sum() / sw, (w * v).sum() / sw
    suu = (w * (u - um) ** 2).sum()
    if suu <= _TINY * max(1.0, sw):
        return vm, 0.0
    m = (w * (u - um) * (v - vm)).sum() / suu
    return vm - m * um, m


def fit_form(kind: str, x, y, weights=None, lower: float = -np.inf,
             upper: float = np.inf) -> ScalingFit:
    """The weighted least-squares `ScalingFit` of one form (``"power"``/``"loglinear"``).

    "power" uses only points with y > 0 (log y must exist). With fewer than two
    usable points, or a single distinct x, the result is the "constant" form at
    the weighted mean of y (0 when there is no usable point at all).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    x, y, w = _check_xy(x, y, weights)
    if kind == "power":
        keep = y > 0
        xs, ys, ws = x[keep], y[keep], w[keep]
    else:
        xs, ys, ws = x, y, w
    if len(xs) < 2 or np.ptp(np.log(xs)) <= _TINY:
        a = float((w * y).sum() / w.sum()) if len(y) else 0.0
        return ScalingFit("constant", a, 0.0, 0.0, len(y), lower, upper)
    if kind == "power":
        c, m = _wls(np.log(xs), np.log(ys), ws)
        a, b = float(np.exp(c)), float(m)
    else:
        a, b = (float(v) for v in _wls(np.log(xs), ys, ws))
    return ScalingFit(kind, a, b, _r2(kind, a, b, x, y, w, lower, upper), len(xs), lower, upper)


def _r2(kind, a, b, x, y, w, lower, upper) -> float:
    ym = (w * y).sum() / w.sum()
    tot = (w * (y - ym) ** 2).sum()
    res = (w * (y - _curve(kind, a, b, x, lower, upper)) ** 2).sum()
    if tot <= _TINY:
        return 1.0 if res <= _TINY else 0.0
    return float(1 - res / tot)


def fit_curve(
    x,
    y,
    weights=None,
    kinds: Sequence[str] = KINDS,
    lower: float = -np.inf,
    upper: float = np.inf,
    n_boot: int = 0,
    seed: int = 0,
) -> ScalingFit:
    """The best-R² `ScalingFit` of y(x) among `kinds`, with `n_boot` point-bootstrap samples.

    Points with non-finite values, x <= 0 or weight <= 0 are ignored. Ties go to
    the first kind listed. The bootstrap resamples points with replacement and
    refits the chosen form (a "constant" fit gets no samples).
    """
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}; got {tuple(kinds)}")
    fits = [fit_form(k, x, y, weights, lower, upper) for k in kinds]
    best = max(fits, key=lambda f: (f.kind != "constant", f.r2))
    if n_boot <= 0 or best.kind == "constant":
        return best
    x, y, w = _check_xy(x, y, weights)
    rng = np.random.default_rng(seed)
    samples = np.empty((n_boot, 2))
    for i in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        f = fit_form(best.kind, x[idx], y[idx], w[idx], lower, upper)
        samples[i] = (f.a, f.b) if f.kind == best.kind else (best.a, best.b)
    return best.with_samples(samples)


def fit_recall_curve(x, y, weights=None, kinds: Sequence[str] = KINDS, n_boot: int = 0,
                     seed: int = 0) -> ScalingFit:
    """The best-R² `ScalingFit` of a recall (or precision) y in [0, 1] vs. a compute ratio x.

    Same as `fit_curve` with predictions clipped to [0, 1]. Typical use: x = t_i / t_j
    for pairs of checkpoints, y = recall of checkpoint i's memorized set against j's.
    """
    return fit_curve(x, y, weights, kinds, 0.0, 1.0, n_boot, seed)


@dataclass(frozen=True)
class SaturatingFit:
    """A logistic curve in log x: ``y = cap / (1 + exp(-(intercept + slope * log x)))``,
    i.e. ``cap / (1 + (x / x0)^-slope)``; predictions are clipped to [0, upper]."""

    cap: float
    intercept: float
    slope: float
    upper: float

    def predict(self, x) -> float:
        """The curve at `x` (> 0), clipped to [0, upper]."""
        y = self.cap / (1 + np.exp(-(self.intercept + self.slope * np.log(x))))
        return float(np.clip(y, 0.0, self.upper))


def fit_saturating(x, y, upper: float, grid: int = 24) -> SaturatingFit:
    """The least-squares `SaturatingFit` of y(x) with its ceiling between max(y) and `upper`.

    Needs at least two points with x > 0 and 0 < y < upper (the caller checks). The
    ceiling is searched on a geometric grid of `grid` values from just above max(y)
    to `upper`; for each, the logit of y / cap is linear in log x (least squares);
    the ceiling whose curve has the smallest squared error on y itself wins.
    """
    c, y = np.log(np.asarray(x, np.float64)), np.asarray(y, np.float64)
    top = float(y.max())
    k = np.geomspace(top * 1.02 + 0.5, max(upper, top * 1.02 + 0.5), grid)[:, None]
    logit = np.log(y / (k - y))
    cm = c - c.mean()
    slope = (logit * cm).sum(1, keepdims=True) / max(float((cm * cm).sum()), _TINY)
    icpt = logit.mean(1, keepdims=True) - slope * c.mean()
    err = ((k / (1 + np.exp(-(icpt + slope * c))) - y) ** 2).sum(1)
    g = int(np.argmin(err))
    return SaturatingFit(float(k[g, 0]), float(icpt[g, 0]), float(slope[g, 0]), float(upper))
