"""The demo's report: Markdown with plots of memorization over time and forecast vs. actual.

Needs the `plot` extra (drawn with `memwatch.figures`). Shows ids, tags and redacted previews only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memwatch.figures import new_figure, save_png
from memwatch.watchlist.tags import tag_set

GROUPS = (("PII", "pii:*"), ("canaries", "canary"), ("sampled training rows", "sample"))
# what a tag's rows are called in the report's sentences
NAMES = {"pii:EMAIL_ADDRESS": "emails", "pii:PHONE_NUMBER": "phone numbers",
         "pii:CREDIT_CARD": "card numbers", "pii:IP_ADDRESS": "IP addresses",
         "pii:IBAN_CODE": "IBANs", "pii:US_SSN": "SSNs", "pii:URL": "URLs",
         "pii:API_KEY": "API keys", "canary": "canaries", "sample": "sampled training rows"}


def _tag_name(tag: str) -> str:
    return NAMES.get(tag, tag)


def _plot_over_time(history, repeats: np.ndarray, path: Path) -> None:
    pii, canary = history.tag_mask("pii:*"), history.tag_mask("canary")
    fig = new_figure(15, 4)
    axes = fig.subplots(1, 3, sharey=True)
    steps, mem = history.steps, history.memorized
    for label, pattern in GROUPS:
        mask = history.tag_mask(pattern)
        if mask.any():
            axes[0].plot(steps, mem[:, mask].mean(axis=1), marker=".",
                         label=f"{label} ({mask.sum()})")
    axes[0].set(title="memorized fraction per tag", xlabel="training step", ylabel="memorized",
                ylim=(-0.02, 1.02))
    for ax, (label, kind) in zip(axes[1:], (("planted PII", pii), ("canaries", canary)),
                                 strict=True):
        for r in sorted(set(repeats[kind & (repeats > 0)].tolist())):
            mask = kind & (repeats == r)
            ax.plot(steps, mem[:, mask].mean(axis=1), marker=".",
                    label=f"seen {r}x per epoch ({mask.sum()})")
        ax.set(title=f"{label}, by repetition", xlabel="training step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].legend(fontsize=8)
    save_png(fig, path)


def _plot_extraction(history, path: Path, p: float = 0.9) -> bool:
    """(n,p)-extraction rate vs n at the last probe, per group (Hayes et al. 2024); False
    when that probe did not measure log p_z."""
    from memwatch.measures import CURVE_DRAWS, extraction_rates

    log_pz = history.log_pz[-1]
    if np.isnan(log_pz).all():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pattern in GROUPS:
        mask = history.tag_mask(pattern)
        if mask.any():
            rates = extraction_rates(log_pz[mask], CURVE_DRAWS, [p])[:, 0]
            ax.plot(CURVE_DRAWS, rates, marker=".", label=f"{label} ({mask.sum()})")
    ax.plot(CURVE_DRAWS, [history.memorized[-1].mean()] * len(CURVE_DRAWS), "k:",
            label="greedy (all rows)")
    ax.set_xscale("log", base=2)
    ax.set(title=f"(n,p)-extractable at step {int(history.steps[-1])}, p = {p:g}",
           xlabel="n, samples drawn", ylabel="fraction of rows", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_heatmap(history, path: Path) -> None:
    from memwatch.sinks.summary import heatmap_figure

    save_png(heatmap_figure(history), path, dpi=100)


def outcome_sentences(history, repeats: np.ndarray) -> list[str]:
    """What happened in the run, in sentences computed from its history: memorized rows per
    tag at the end, by repetition count, and rows forgotten along the way."""
    final, ever = history.memorized[-1], history.memorized.any(axis=0)
    steps = int(history.steps[-1])
    tags = sorted(tag_set(history.tags),
                  key=lambda t: (not t.startswith("pii:"), t != "canary", t))
    counts = []
    for tag in tags:
        mask = history.tag_mask(tag)
        counts.append(f"{_tag_name(tag)} {int(final[mask].sum())} of {int(mask.sum())}")
    if not ever.any():
        return [f"Nothing on the watchlist was memorized in {steps} steps "
                f"({', '.join(counts)}): no row's continuation was reproduced in full at any "
                "probe."]
    out = [f"Memorized at step {steps}: {', '.join(counts)}."]
    missed = [f"{_tag_name(t)} {int((~final & m & (repeats > 0)).sum())} of {int(m.sum())}"
              for t in tags if t.startswith("pii:")
              for m in [history.tag_mask(t)] if (~final & m & (repeats > 0)).any()]
    if missed:
        out.append(
            f"Planted PII not memorized at the end ({', '.join(missed)}) is a fact of the "
            "data, not of the probe: a row is memorized according to how often training "
            "sees it (the table by times seen per epoch) and where it sits. Each planted "
            "record enters training as one sequence that starts at its first PII's prompt "
            "(its email), so its phone and card numbers sit further into that sequence, "
            "after the email and more text, where a small model memorizes later or not at all "
            "in a short run; a run of your own, where such PII leads its sequences, catches "
            "them.")
    forgotten = int((ever & ~final).sum())
    if forgotten:
        out.append(f"{forgotten} row(s) memorized at some probe were no longer memorized at the "
                   "end: memorization is not monotone during training, so the count can fall "
                   "between probes.")
    return out


def _forecasts(history, total_steps: int):
    from memwatch.forecast import ForecastInputs, forecast

    rows = []
    for k in range(2, len(history) + 1):
        fc = forecast(ForecastInputs(history.head(k), total_steps)).tags["*"]
        rows.append((int(history.steps[k - 1]), fc.final.expected, fc.final.low,
                     fc.final.high, fc.recall.value))
    return np.array(rows, dtype=float).reshape(-1, 5)


def _plot_forecast(history, fc: np.ndarray, path: Path) -> None:
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    final = int(history.memorized[-1].sum())
    ax.plot(history.steps, history.memorized.sum(axis=1), "k.-", label="memorized at the step")
    if len(fc):
        ax.plot(fc[:, 0], fc[:, 1], "C1.-", label="forecast of the final count")
        ax.fill_between(fc[:, 0], fc[:, 2], fc[:, 3], color="C1", alpha=0.2,
                        label="forecast interval")
    ax.axhline(final, color="C2", ls="--", label=f"actual final count ({final})")
    ax.set(title="forecast vs. actual", xlabel="training step", ylabel="memorized rows")
    ax.legend(fontsize=8)
    save_png(fig, path)


def _masking_section(history, unmitigated, flagged: tuple[str, ...]) -> list[str]:
    """The masked run's memorized counts beside the same run's without masking."""
    final, base = history.memorized[-1], unmitigated.memorized[-1]
    lines = ["", "## Masking", "",
             f"{len(flagged)} planted row(s) were masked out of the loss, each from the probe "
             "that memorized it or gave it at least 50 % of being memorized at the end. "
             "The same run without masking (same seed, data and steps) is in "
             "`unmitigated/`:", "",
             "| rows | count | memorized at the end, masked | without masking |",
             "|---|---|---|---|"]
    for label, pattern in GROUPS:
        rows = history.tag_mask(pattern)
        if rows.any():
            lines.append(f"| {label} | {rows.sum()} | {final[rows].sum()} | "
                         f"{base[unmitigated.tag_mask(pattern)].sum()} |")
    return lines + ["", "Masking stops a flagged row from being learned further; what the "
                    "model memorized before the row was flagged can fade but is not undone "
                    "(see docs/masking.md)."]


def audit_curve(history) -> np.ndarray:
    """float [P', 4]: (step, AUROC, TPR at 1 % FPR, ε lower bound) at every probe with log p_z
    for the audit canaries (empty without them)."""
    from memwatch.audit import history_audit

    rows = []
    for k in range(len(history)):
        result = history_audit(history, probe=k)
        if result is not None:
            rows.append((int(history.steps[k]), result.auroc, result.tpr_at_fpr[0.01],
                         result.epsilon_lb))
    return np.array(rows, dtype=float).reshape(-1, 4)


def _plot_audit(curve: np.ndarray, path: Path) -> None:
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    ax.plot(curve[:, 0], curve[:, 3], "C3.-", label="ε lower bound (95 %, δ = 1e-5)")
    ax.set(title="privacy audit over training (audit canaries, log p_z)",
           xlabel="training step", ylabel="ε lower bound")
    right = ax.twinx()
    right.plot(curve[:, 0], curve[:, 1], "C0.--", label="AUROC")
    right.plot(curve[:, 0], curve[:, 2], "C2.:", label="TPR at 1 % FPR")
    right.set(ylabel="AUROC, TPR", ylim=(0, 1.02))
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    save_png(fig, path)


def audit_section(history, out_dir: Path) -> list[str]:
    """The report's privacy audit: the final probe's figures and ε over training (a plot)."""
    from memwatch.audit import history_audit

    final = history_audit(history, n_boot=1000, fdp=True)
    if final is None:
        return []
    curve = audit_curve(history)
    _plot_audit(curve, out_dir / "privacy_audit.png")
    first = curve[curve[:, 3] > 0, 0]
    lo, hi = final.auroc_interval
    return [
        "## Privacy audit (one run)", "",
        f"{final.n_in + final.n_out} audit canaries, each drawn into training with probability "
        f"½: {final.n_in} planted (canary:in), {final.n_out} never (canary:out). Each is "
        "scored by its secret's log-probability log p_z; the audit guesses in for the highest "
        "scores and out for the lowest (Steinke, Nasr & Jagielski 2023).", "",
        "| AUROC (95 % bootstrap) | TPR at 0.1 % FPR | TPR at 1 % FPR | ε lower bound | "
        "ε lower bound, f-DP | guesses (correct) |",
        "|---|---|---|---|---|---|",
        f"| {final.auroc:.3f} ({lo:.3f}-{hi:.3f}) | {final.tpr_at_fpr[0.001]:.3f} | "
        f"{final.tpr_at_fpr[0.01]:.3f} | {final.epsilon_lb:.2f} | {final.epsilon_lb_fdp:.2f} | "
        f"{final.guesses} ({final.correct}) |", "",
        f"At the last probe (step {int(history.steps[-1])}) a claim that this training run is "
        f"(ε, 1e-5)-differentially private with ε < {final.epsilon_lb:.2f} is rejected at 95 % "
        "confidence"
        + (f"; the bound first left zero at step {int(first[0])}." if len(first) else ".")
        + " It is a lower bound for these canaries, this score and this run: it says nothing "
        "about other rows, and an ε of zero here does not make a run private "
        "(see docs/audit.md).", "",
        "![privacy audit over training](privacy_audit.png)", ""]


def repetition_table(history, repeats: np.ndarray) -> list[str]:
    """Markdown lines: planted rows by times seen per epoch, memorized at the end and at some
    probe (separate columns), and the median step of first memorization of those ever memorized."""
    final, ever = history.memorized[-1], history.memorized.any(axis=0)
    first = history.first_memorized_step()
    lines = ["| seen x/epoch | rows | memorized at the end | memorized at some probe | "
             "first memorized (median step) |", "|---|---|---|---|---|"]
    for r in sorted(set(repeats[repeats > 0].tolist()), reverse=True):
        mask = repeats == r
        hit = first[mask][first[mask] >= 0]
        lines.append(f"| {r} | {int(mask.sum())} | {int(final[mask].sum())} | "
                     f"{int(ever[mask].sum())} | {int(np.median(hit)) if len(hit) else '-'} |")
    return lines if len(lines) > 2 else []


def tag_table(history) -> list[str]:
    """Markdown lines: per tag (and per group), rows, memorized at the end, memorized at some
    probe, and the median step of first memorization, each in its own column."""
    final, ever = history.memorized[-1], history.memorized.any(axis=0)
    first = history.first_memorized_step()
    lines = ["| rows | count | memorized at the end | memorized at some probe | "
             "first memorized (median step) |", "|---|---|---|---|---|"]
    tags = tag_set(history.tags)
    groups = [(label, p) for label, p in GROUPS] + \
        [(f"&nbsp;&nbsp;{_tag_name(t)} (`{t}`)", t) for t in tags if t.startswith("pii:")]
    for label, pattern in groups:
        mask = history.tag_mask(pattern)
        if mask.any():
            hit = first[mask][first[mask] >= 0]
            med = f"{int(np.median(hit))}" if len(hit) else "-"
            lines.append(f"| {label} | {mask.sum()} | {final[mask].sum()} | {ever[mask].sum()} "
                         f"| {med} |")
    return lines


def write_report(history, watchlist, repeats: dict[str, int], out_dir: Path,
                 total_steps: int, stopped_early: bool = False, stop_reason: str = "",
                 unmitigated=None, flagged: tuple[str, ...] = ()) -> Path:
    """Write `report.md` and its PNG plots into `out_dir`; returns the report's path.

    `stop_reason`: the abort policy's reason when it stopped the run (ids, tags and
    redacted previews only). `unmitigated`: the `History` of the same run trained
    without masking, and `flagged` the ids masked in this one: adds a comparison."""
    out_dir = Path(out_dir)
    reps = np.array([repeats.get(i, 0) for i in history.ids])
    _plot_over_time(history, reps, out_dir / "memorization_over_time.png")
    _plot_heatmap(history, out_dir / "memorization_heatmap.png")
    fc = _forecasts(history, total_steps)
    _plot_forecast(history, fc, out_dir / "forecast_vs_actual.png")
    extraction = _plot_extraction(history, out_dir / "extraction_curve.png")

    first = history.first_memorized_step()
    final = history.memorized[-1]
    lines = [
        "# memwatch demo report", "",
        f"{len(history)} probes over {int(history.steps[-1])} training steps"
        + (f" (stopped early by the abort policy{': ' + stop_reason if stop_reason else ''})."
           if stopped_early else "."), "",
        *tag_table(history),
    ]
    if len(repetition_table(history, reps)):
        lines += ["", "Planted PII and canaries by times seen per epoch:", "",
                  *repetition_table(history, reps)]
    if unmitigated is not None:
        lines += _masking_section(history, unmitigated, flagged)
    lines += ["", *[x for sentence in outcome_sentences(history, reps) for x in (sentence, "")],
              "![memorization over time](memorization_over_time.png)", "",
              "Every watched row at every probe (tokens reproduced before the first miss):", "",
              "![memorization heatmap](memorization_heatmap.png)", ""]
    if len(fc):
        step, est, lo, hi, recall = fc[len(fc) // 2]
        lines += [
            f"At step {int(step)} (half-way through the probes) the forecast of the final "
            f"memorized count was {est:.0f} (interval {lo:.0f}-{hi:.0f}) with recall of "
            f"'memorized now' {recall:.2f}; the actual final count is {int(final.sum())}.", "",
            "![forecast vs actual](forecast_vs_actual.png)", ""]
    if extraction:
        lines += [
            "Greedy decoding is one way to extract a row; sampling is another. A row is "
            "(n,p)-extractable when n samples reproduce its continuation with probability at "
            "least p, 1 − (1 − p_z)^n ≥ p, p_z being the probability the model gives the "
            "continuation (Hayes et al. 2024). At the last probe:", "",
            "![(n,p)-extraction curve](extraction_curve.png)", ""]
    lines += audit_section(history, out_dir)
    lines += ["## Memorized PII and canaries", "",
              "| id | tags | seen x/epoch | first memorized at step | preview (redacted) |",
              "|---|---|---|---|---|"]
    kept = np.flatnonzero(final & (reps > 0))
    for i in kept:
        lines.append(f"| {history.ids[i]} | {', '.join(history.tags[i])} | {reps[i]} | "
                     f"{first[i]} | `{watchlist.redacted_preview(int(i))}` |")
    if not len(kept):
        lines.append("| (none at the end) | | | | |")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
