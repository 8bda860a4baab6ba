"""The Markdown report of `memwatch analyze`: tables, PNG plots and a JSON copy of the numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memwatch.posthoc.analysis import Analysis, Predictor, to_json


def _num(x, fmt: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _pairs_table(analysis: Analysis) -> str:
    rows = [[p.model, p.revision, p.source, _num(p.params, ",d") if p.params else "n/a",
             _num(p.compute, ".3g"), str(p.rows), str(p.memorized), _num(p.fraction, ".4f"),
             _num(p.precision), _num(p.recall), _num(p.correlation), _num(p.mean_pz, ".3g")]
            for p in analysis.pairs]
    return _table(["model", "checkpoint", "source", "params", "compute (FLOPs)", "rows",
                   "memorized",
                   "fraction", "precision", "recall", "correlation", "mean p_z"], rows)


def _agreement_table(analysis: Analysis) -> str:
    rows = [[a.other, a.reference, str(a.rows), str(a.other_memorized), str(a.reference_memorized),
             str(a.both), _num(a.precision), _num(a.recall), _num(a.correlation)]
            for a in analysis.agreement]
    return _table(["run", "against", "rows compared", "memorized (run)", "memorized (against)",
                   "both", "precision", "recall", "correlation"], rows)


def _prompt_len_table(analysis: Analysis) -> str:
    lens = sorted({m for c in analysis.prompt_lens for m in c.prompt_lens})
    rows = []
    for c in analysis.prompt_lens:
        at = dict(zip(c.prompt_lens, zip(c.memorized, c.fractions, strict=True), strict=True))
        rows.append([c.run, str(c.rows)] + [f"{_num(at[m][1], '.4f')} ({at[m][0]})" if m in at
                                            else "" for m in lens])
    return _table(["run", "rows"] + [f"M = {m}" for m in lens], rows)


def _predictor_text(pred: Predictor | None) -> str:
    if pred is None:
        return "no points with known compute"
    if pred.fit is None:
        return f"{len(pred.keys)} point(s): too few for a fit"
    f = pred.fit
    form = {"power": f"recall = {f.a:.3g} · x^{f.b:.3g}",
            "loglinear": f"recall = {f.a:.3g} + {f.b:.3g} · ln x",
            "constant": f"recall = {f.a:.3g}"}[f.kind]
    return f"{form}, x = compute / target compute (R² = {f.r2:.3f}, {f.n_points} points)"


def _equi_table(analysis: Analysis) -> str:
    rows = [[e.smaller, _num(e.smaller_compute, ".3g"), _num(e.smaller_recall), e.checkpoint,
             _num(e.checkpoint_compute, ".3g"), _num(e.checkpoint_recall),
             _num(e.checkpoint_fit_recall)] for e in analysis.equi_compute]
    return _table(["smaller model", "compute", "recall", "nearest checkpoint", "compute",
                   "recall", "checkpoint fit at same compute"], rows)


def render_markdown(analysis: Analysis, plots: dict[str, Path], base: Path) -> str:
    """The report's Markdown text; plot paths are written relative to `base`."""
    def img(name: str, alt: str) -> str:
        return f"![{alt}]({plots[name].relative_to(base).as_posix()})" if name in plots else ""

    parts = [
        f"# Memorization report: target {analysis.target}",
        f"Compute is 6 · params · tokens with {analysis.tokens_per_step:,} tokens per step; "
        f"the target's is {_num(analysis.target_compute, '.3g')} FLOPs. Precision and recall "
        "compare each checkpoint's memorized set (score = 1) with the target's, on the rows "
        "both were scored on; correlation is Pearson's r of the scores. n/a marks an undefined "
        "value: the precision of a run that memorized none of the rows, the recall of an "
        "empty target, anything needing scores for a memorized-only list.",
        "## Every checkpoint against the target", _pairs_table(analysis),
        img("precision", "precision heatmap"), img("recall", "recall heatmap"),
        img("correlation", "correlation heatmap"),
        "## Memorized fraction", img("fraction", "memorized fraction per checkpoint"),
        "## Score distributions",
        "One histogram per model at its last checkpoint (log counts); on Pythia the mass sits "
        "at 0 and 1 (Biderman et al. 2023).",
        img("histograms", "score histograms"),
        "## Probability of extraction",
        "p_z is the probability that the model, sampling, writes a row's true continuation "
        "after its prompt; a row is (n,p)-extractable when n samples reproduce it with "
        "probability at least p, 1 − (1 − p_z)^n ≥ p (Hayes et al. 2024; definitions in "
        "docs/concepts.md). Rate vs n per checkpoint, then the p_z of the last checkpoint. "
        "Needs runs with log p_z (memwatch eval with NLL, the default); mean p_z is in the "
        "table above.",
        img("extraction", "(n,p)-extraction curves"),
        img("pz_histograms", "p_z histograms"),
        *(["## Memorization vs prompt length",
           "Runs probed with several prompt lengths (`memwatch eval --prompt-len 32 64 96`): "
           "the fraction (count) of rows memorized with each length M, the continuation being "
           "the same, after the longest prompt. Extraction grows log-linearly with the "
           "prompt's length (Carlini et al., ICLR 2023, \"Quantifying memorization across "
           "neural language models\").",
           _prompt_len_table(analysis), img("prompt_lens", "memorized fraction vs prompt length")]
          if analysis.prompt_lens else []),
        "## Recall vs compute",
        f"- smaller models: {_predictor_text(analysis.smaller_models)}",
        f"- intermediate checkpoints: {_predictor_text(analysis.checkpoints)}",
        img("recall_vs_compute", "recall vs compute"),
        "## Equi-compute comparison",
        "Each smaller model against the target model's checkpoint nearest in compute."
        if analysis.equi_compute else "Needs both predictor families with known compute.",
    ]
    if analysis.equi_compute:
        parts.append(_equi_table(analysis))
    if analysis.tag_counts:
        parts += [
            "## Memorized rows per tag",
            "Runs of a watchlist (`memwatch eval --watchlist`): per tag, the rows scored and "
            "how many are memorized (score = 1) at that checkpoint; a row with several tags "
            "counts under each.",
            _table(["run", "tag", "rows", "memorized", "fraction"],
                   [[t.run, t.tag, str(t.rows), str(t.memorized),
                     _num(t.memorized / t.rows if t.rows else float("nan"), ".4f")]
                    for t in analysis.tag_counts])]
    if analysis.agreement:
        parts += [
            "## Agreement between sources",
            "Runs of the same model and checkpoint from different sources, one against the "
            "other: precision is the share of the run's memorized rows the other source also "
            "lists, recall the share of the other's it found, on the rows the run scored. "
            "EleutherAI's published sets (pythia-memorized-evals, the eval_memorization.py "
            "CSVs) were computed on the -v0 Pythia models in fp16, so a memwatch run of "
            "today's models agrees closely but not exactly.",
            _agreement_table(analysis)]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_report(analysis: Analysis, out: str | Path) -> Path:
    """Write ``report.md``, ``analysis.json`` and the plots under `out`; returns report.md."""
    from memwatch.posthoc.plots import render_all

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = render_all(analysis, out / "plots")
    (out / "analysis.json").write_text(to_json(analysis))
    path = out / "report.md"
    path.write_text(render_markdown(analysis, plots, out))
    return path
