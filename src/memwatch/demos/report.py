"""The demo's report: Markdown with plots of memorization over time and forecast vs. actual.

Needs the `plot` extra (matplotlib, Agg backend). Shows ids, tags and redacted previews only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GROUPS = (("PII", "pii:*"), ("canaries", "canary"), ("sampled training rows", "sample"))


def _plot_over_time(history, repeats: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps, mem = history.steps, history.memorized
    for label, pattern in GROUPS:
        mask = history.tag_mask(pattern)
        if mask.any():
            a.plot(steps, mem[:, mask].mean(axis=1), marker=".", label=f"{label} ({mask.sum()})")
    a.set(title="memorized fraction per tag", xlabel="training step", ylabel="memorized",
          ylim=(-0.02, 1.02))
    a.legend()
    planted = repeats > 0
    for r in sorted(set(repeats[planted].tolist())):
        mask = repeats == r
        b.plot(steps, mem[:, mask].mean(axis=1), marker=".", label=f"seen {r}x per epoch")
    b.set(title="planted PII and canaries, by repetition", xlabel="training step",
          ylabel="memorized", ylim=(-0.02, 1.02))
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _forecasts(history, total_steps: int):
    from memwatch.forecast import forecast

    rows = []
    for k in range(2, len(history) + 1):
        fc = forecast(history.head(k), total_steps).tags["*"]
        rows.append((int(history.steps[k - 1]), fc.expected_final_memorized,
                     fc.expected_final_low, fc.expected_final_high, fc.recall_now))
    return np.array(rows, dtype=float).reshape(-1, 5)


def _plot_forecast(history, fc: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    final = int(history.memorized[-1].sum())
    ax.plot(history.steps, history.memorized.sum(axis=1), "k.-", label="memorized at the step")
    if len(fc):
        ax.plot(fc[:, 0], fc[:, 1], "C1.-", label="forecast of the final count")
        ax.fill_between(fc[:, 0], fc[:, 2], fc[:, 3], color="C1", alpha=0.2,
                        label="forecast interval")
    ax.axhline(final, color="C2", ls="--", label=f"actual final count ({final})")
    ax.set(title="forecast vs. actual", xlabel="training step", ylabel="memorized rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(history, watchlist, repeats: dict[str, int], out_dir: Path,
                 total_steps: int, stopped_early: bool = False) -> Path:
    """Write `report.md` and its PNG plots into `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    reps = np.array([repeats.get(i, 0) for i in history.ids])
    _plot_over_time(history, reps, out_dir / "memorization_over_time.png")
    fc = _forecasts(history, total_steps)
    _plot_forecast(history, fc, out_dir / "forecast_vs_actual.png")

    first = history.first_memorized_step()
    final = history.memorized[-1]
    lines = [
        "# memwatch demo report", "",
        f"{len(history)} probes over {int(history.steps[-1])} training steps"
        + (" (stopped early by the abort policy)." if stopped_early else "."), "",
        "| rows | count | memorized at the end | first memorized (median step) |",
        "|---|---|---|---|",
    ]
    for label, pattern in GROUPS:
        mask = history.tag_mask(pattern)
        if mask.any():
            hit = first[mask][first[mask] >= 0]
            med = f"{int(np.median(hit))}" if len(hit) else "-"
            lines.append(f"| {label} | {mask.sum()} | {final[mask].sum()} | {med} |")
    lines += ["", "![memorization over time](memorization_over_time.png)", "",
              "Planted rows seen more often are memorized earlier; rows seen once are not.", ""]
    if len(fc):
        step, est, lo, hi, recall = fc[len(fc) // 2]
        lines += [
            f"At step {int(step)} (half-way through the probes) the forecast of the final "
            f"memorized count was {est:.0f} (interval {lo:.0f}-{hi:.0f}) with recall of "
            f"'memorized now' {recall:.2f}; the actual final count is {int(final.sum())}.", "",
            "![forecast vs actual](forecast_vs_actual.png)", ""]
    lines += ["## Memorized PII and canaries", "",
              "| id | tags | seen x/epoch | first memorized at step | preview (redacted) |",
              "|---|---|---|---|---|"]
    for i in np.flatnonzero(final & (reps > 0)):
        lines.append(f"| {history.ids[i]} | {', '.join(history.tags[i])} | {reps[i]} | "
                     f"{first[i]} | `{watchlist.redacted_preview(int(i))}` |")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
