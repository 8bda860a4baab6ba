"""PNG plots of an `Analysis`: heatmaps, score histograms, memorized fraction, recall vs
compute, (n,p)-extraction curves, p_z histograms and memorized fraction vs prompt length.

Drawn the one way memwatch draws (`memwatch.figures`): a Figure on its own Agg canvas,
never pyplot, so no display is needed and the user's backend is left alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memwatch.figures import new_figure as _figure
from memwatch.figures import save_png as _save
from memwatch.measures import CURVE_DRAWS, CURVE_PROBS
from memwatch.posthoc.analysis import Analysis, Predictor

CURVE_PROB = 0.9  # the p of the plotted (n,p) curves: n samples reproduce z with p >= 0.9


def heatmap(analysis: Analysis, attr: str, path: Path, title: str) -> Path:
    """Write a models × checkpoints heatmap of one `PairStats` field; returns `path`.

    A cell whose run exists but whose value is undefined (NaN) is drawn hatched gray and
    marked n/a; a checkpoint without a run stays blank.
    """
    models, revisions, values = analysis.matrix(attr)
    _, _, present = analysis.matrix("rows")
    fig = _figure(max(4.0, 1.0 + 0.7 * len(revisions)), max(2.5, 1.0 + 0.45 * len(models)))
    from matplotlib.patches import Rectangle

    ax = fig.add_subplot()
    vmin = -1.0 if attr == "correlation" else 0.0
    im = ax.imshow(np.ma.masked_invalid(values), vmin=vmin, vmax=1.0, cmap="viridis",
                   aspect="auto")
    for i, j in zip(*np.nonzero(np.isfinite(present) & ~np.isfinite(values)), strict=True):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="lightgray", hatch="//",
                               edgecolor="gray", linewidth=0))
        ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="black")
    ax.set_xticks(range(len(revisions)), revisions, rotation=45, ha="right")
    ax.set_yticks(range(len(models)), models)
    for i, j in zip(*np.nonzero(np.isfinite(values)), strict=True):
        v = values[i, j]
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                color="black" if v > (vmin + 1) / 2 else "white")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def score_histograms(analysis: Analysis, path: Path) -> Path:
    """Write one histogram of scores per model (its last checkpoint), log counts."""
    hists = analysis.histograms
    return _histograms(path, hists, "no run with per-sequence scores", "tab:blue",
                       lambda edges: "memorization score (fraction of the continuation "
                                     "reproduced)")


def _histograms(path, hists, empty, color, xlabel):
    """One log-count histogram per model; `xlabel(edges)` labels the shared x axis."""
    fig = _figure(6.4, max(2.5, 1.6 * max(1, len(hists))))
    if not hists:
        _no_data(fig, empty)
        return _save(fig, path)
    axes = fig.subplots(len(hists), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (model, (revision, edges, counts)) in zip(axes, hists.items(), strict=True):
        ax.bar((edges[:-1] + edges[1:]) / 2, counts, width=np.diff(edges), color=color)
        ax.set_yscale("log")
        ax.set_ylabel("sequences")
        ax.set_title(f"{model}@{revision}", fontsize=9)
    axes[-1].set_xlabel(xlabel(edges))
    return _save(fig, path)


def memorized_fraction(analysis: Analysis, path: Path) -> Path:
    """Write memorized fraction vs training step, one line per model."""
    fig = _figure()
    ax = fig.add_subplot()
    by_model: dict[str, list] = {}
    for p in analysis.pairs:
        if p.step is not None and np.isfinite(p.fraction):
            by_model.setdefault(p.series, []).append((p.step, p.fraction))
    for model, points in by_model.items():
        steps, fractions = zip(*sorted(points), strict=True)
        ax.plot(steps, fractions, marker="o", label=model)
    ax.set_xlabel("training step")
    ax.set_ylabel("memorized fraction")
    if by_model:
        ax.legend(fontsize=8)
    ax.set_title("Memorized fraction per model and checkpoint")
    return _save(fig, path)


def _curve(ax, pred: Predictor, target_compute: float, color: str, marker: str) -> None:
    ax.scatter(pred.compute, pred.recall, color=color, marker=marker, label=pred.name, zorder=3)
    if pred.fit is not None:
        lo, hi = pred.compute.min(), max(pred.compute.max(), target_compute)
        xs = np.geomspace(lo, hi, 100)
        ax.plot(xs, pred.predict(xs, target_compute), color=color,
                label=f"{pred.name}: {pred.fit.kind} fit (R²={pred.fit.r2:.2f})")
        if len(pred.fit.samples):
            low, high = pred.band(xs, target_compute)
            ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0,
                            label=f"{pred.name}: 90 % bootstrap band")


def recall_vs_compute(analysis: Analysis, path: Path) -> Path:
    """Write recall of the target's memorized set vs predictor compute, with fitted curves."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for pred, color, marker in ((analysis.smaller_models, "tab:orange", "s"),
                                (analysis.checkpoints, "tab:blue", "o")):
        if pred is not None:
            _curve(ax, pred, analysis.target_compute, color, marker)
            drawn = True
    if np.isfinite(analysis.target_compute):
        ax.axvline(analysis.target_compute, color="gray", linestyle=":", label="target compute")
    if drawn:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no predictor with known compute", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("predictor compute, 6 · params · tokens (FLOPs)")
    ax.set_ylabel(f"recall of {analysis.target}")
    ax.set_title("Predicting the target's memorized sequences")
    return _save(fig, path)


def _no_data(fig, text: str):
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()


def extraction_curves(analysis: Analysis, path: Path, p: float = CURVE_PROB) -> Path:
    """Write the (n,p)-extraction rate vs n at one p, one panel per model, one line per
    checkpoint (Hayes et al. 2024)."""
    curves = analysis.extraction
    fig = _figure(6.4, max(2.5, 2.2 * max(1, len(curves))))
    if not curves:
        _no_data(fig, "no run with log p_z (memwatch eval with NLL)")
        return _save(fig, path)
    j = CURVE_PROBS.index(p)
    axes = fig.subplots(len(curves), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (model, runs) in zip(axes, curves.items(), strict=True):
        colors = [None] * len(runs) if len(runs) < 2 else \
            [(0.1 + 0.8 * i / (len(runs) - 1), 0.3, 0.9 - 0.8 * i / (len(runs) - 1))
             for i in range(len(runs))]
        for (revision, rates), color in zip(runs, colors, strict=True):
            ax.plot(CURVE_DRAWS, rates[:, j], marker=".", label=revision, color=color)
        ax.set_xscale("log", base=2)
        ax.set_ylabel("rate")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    axes[-1].set_xlabel(f"n, samples drawn (a row counts when they reproduce it with "
                        f"probability >= {p:g})")
    return _save(fig, path)


def pz_histograms(analysis: Analysis, path: Path) -> Path:
    """Write one histogram of log10 p_z per model (its last checkpoint with log p_z)."""
    hists = analysis.pz_histograms
    return _histograms(path, hists, "no run with log p_z (memwatch eval with NLL)", "tab:green",
                       lambda edges: "log10 p_z (probability of extraction; the first bin "
                                     f"holds everything <= {edges[0]:g})")


def prompt_len_curves(analysis: Analysis, path: Path) -> Path:
    """Write memorized fraction vs prompt length (log scale), one line per run probed with
    several lengths (Carlini et al., ICLR 2023: log-linear growth)."""
    fig = _figure()
    ax = fig.add_subplot()
    curves = analysis.prompt_lens
    if not curves:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no run with several prompt lengths (memwatch eval --prompt-len "
                "32 64 96)", ha="center", va="center")
        return _save(fig, path)
    for c in curves:
        ax.plot(c.prompt_lens, c.fractions, marker="o", label=c.run)
    ax.set_xscale("log")
    lens = sorted({m for c in curves for m in c.prompt_lens})
    ax.set_xticks(lens, [str(m) for m in lens])
    ax.minorticks_off()
    ax.set_xlabel("prompt length, log scale (tokens before the same continuation)")
    ax.set_ylabel("memorized fraction")
    ax.legend(fontsize=7)
    ax.set_title("Memorization vs prompt length")
    return _save(fig, path)


def render_all(analysis: Analysis, out: str | Path) -> dict[str, Path]:
    """Write every plot under `out`; returns {name: path}."""
    out = Path(out)
    return {
        "precision": heatmap(analysis, "precision", out / "precision.png",
                             f"Precision vs {analysis.target}"),
        "recall": heatmap(analysis, "recall", out / "recall.png",
                          f"Recall of {analysis.target}"),
        "correlation": heatmap(analysis, "correlation", out / "correlation.png",
                               f"Score correlation with {analysis.target}"),
        "fraction": memorized_fraction(analysis, out / "memorized_fraction.png"),
        "histograms": score_histograms(analysis, out / "score_histograms.png"),
        "recall_vs_compute": recall_vs_compute(analysis, out / "recall_vs_compute.png"),
        "extraction": extraction_curves(analysis, out / "extraction_curves.png"),
        "pz_histograms": pz_histograms(analysis, out / "pz_histograms.png"),
        **({"prompt_lens": prompt_len_curves(analysis, out / "prompt_lens.png")}
           if analysis.prompt_lens else {}),
    }
