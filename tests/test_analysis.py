"""`memwatch analyze`: precision/recall against direct set arithmetic, plots, EleutherAI layouts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memwatch.cli import main
from memwatch.measures import extraction_rates
from memwatch.posthoc.analysis import analyze, compute_of
from memwatch.posthoc.results import find_run, load_results, pythia_params

TOKENS_PER_STEP = 16 * 64  # the suite trains on 16 rows of 64 tokens per step
PLOTS = ["correlation.png", "extraction_curves.png", "memorized_fraction.png", "precision.png",
         "pz_histograms.png", "recall.png", "recall_vs_compute.png", "score_histograms.png"]


@pytest.fixture(scope="module")
def results(suite, tmp_path_factory):
    from memwatch.posthoc.evaluate import EvalConfig, evaluate, resolve_checkpoints
    from memwatch.probe import ProbeSpec
    from memwatch.watchlist import Watchlist

    out = tmp_path_factory.mktemp("results")
    ckpts = [c for m in ("small", "large") for c in resolve_checkpoints(str(suite.root / m))]
    evaluate(ckpts, Watchlist.from_pythia(suite.prefix, "0:128:2"), out,
             config=EvalConfig(ProbeSpec(mode="extractable", with_nll=True)), progress=False)
    return out


def _direct(path):
    t = pq.read_table(path)
    index = t["index"].to_numpy()
    return set(index[t["match_prefix"].to_numpy() == 32].tolist()), t["score"].to_numpy()


def test_precision_recall_equal_direct_set_computation(results):
    runs = load_results([results])
    assert [r.key for r in runs] == ["small@step12", "small@step24", "small@step48",
                                     "large@step12", "large@step24", "large@step48"]
    result = analyze(runs, "large@step48", tokens_per_step=TOKENS_PER_STEP)
    target, target_scores = _direct(results / "large" / "step48.parquet")
    assert target, "the target memorized nothing: precision/recall below would be trivial"
    nontrivial = empty = 0
    for pair in result.pairs:
        pred, scores = _direct(results / pair.model / f"{pair.revision}.parquet")
        both = len(pred & target)
        assert pair.memorized == len(pred)
        assert pair.fraction == pytest.approx(len(pred) / 64)
        if pred:
            assert pair.precision == pytest.approx(both / len(pred))
        else:  # a predictor that claims nothing has no precision, not a perfect one
            assert np.isnan(pair.precision)
            empty += 1
        assert pair.recall == pytest.approx(both / len(target))
        if scores.std() > 0:
            assert pair.correlation == pytest.approx(np.corrcoef(scores, target_scores)[0, 1])
        nontrivial += 0 < pair.recall < 1
    assert nontrivial > 0
    assert empty > 0, "no run memorized nothing: the undefined precision above went untested"


def test_recall_vs_compute_uses_both_predictor_families(results):
    runs = load_results([results])
    result = analyze(runs, "large@step48", tokens_per_step=TOKENS_PER_STEP)
    small, large = find_run(runs, "small@step48"), find_run(runs, "large@step48")
    assert small.params < large.params
    assert result.target_compute == 6.0 * large.params * 48 * TOKENS_PER_STEP
    assert result.smaller_models.keys == ("small@step48",)
    assert result.smaller_models.compute.tolist() == [compute_of(small, TOKENS_PER_STEP)]
    assert result.checkpoints.keys == ("large@step12", "large@step24")
    assert result.checkpoints.fit is not None
    fit, at = result.checkpoints, result.checkpoints.compute
    assert len(fit.fit.samples) == 200  # the bootstrap the plot draws as a band
    low, high = fit.band(at, result.target_compute)
    assert (low <= high).all() and ((0 <= low) & (high <= 1)).all()
    by_key = {p.key: p for p in result.pairs}
    assert result.checkpoints.recall.tolist() == [by_key["large@step12"].recall,
                                                  by_key["large@step24"].recall]
    (equi,) = result.equi_compute
    assert equi.smaller == "small@step48"
    nearest = min(("large@step12", "large@step24"),
                  key=lambda k: abs(np.log(by_key[k].compute / equi.smaller_compute)))
    assert equi.checkpoint == nearest


def test_report_renders_every_plot(results, tmp_path):
    code = main(["analyze", str(results), "--target", "large@step48", "--out",
                 str(tmp_path), "--tokens-per-step", str(TOKENS_PER_STEP)])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == PLOTS
    report = (tmp_path / "report.md").read_text()
    for name in PLOTS:
        data = (tmp_path / "plots" / name).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"](plots/{name})" in report
    assert "| large | step24 | memwatch |" in report and "Equi-compute" in report
    small12 = next(line for line in report.splitlines() if line.startswith("| small | step12 |"))
    assert small12.split(" | ")[8] == "n/a"  # precision of a run that memorized nothing
    numbers = json.loads((tmp_path / "analysis.json").read_text())
    assert numbers["target"] == "large@step48" and len(numbers["pairs"]) == 6
    memorized = len(_direct(results / "large" / "step48.parquet")[0])
    assert "## Memorized rows per tag" in report  # how many of the watchlist's rows, per tag
    assert f"| large@step48 | sample | 64 | {memorized} | {memorized / 64:.4f} |" in report
    assert {"run": "large@step48", "tag": "sample", "rows": 64,
            "memorized": memorized} in numbers["tag_counts"]
    # (n,p) curves across checkpoints, from the runs' log p_z (Hayes et al. 2024)
    curves = numbers["extraction"]
    assert sorted(curves["rates"]["large"]) == ["step12", "step24", "step48"]
    runs = {r.key: r for r in load_results([results])}
    lp = runs["large@step48"].log_pz
    assert np.isfinite(lp).all()
    expected = extraction_rates(lp, curves["n"], curves["p"])
    np.testing.assert_allclose(curves["rates"]["large"]["step48"], expected)
    direct = np.mean(1 - (1 - np.exp(lp.astype(np.float64))) ** 16 >= 0.5)  # small n: plain
    assert expected[curves["n"].index(16), curves["p"].index(0.5)] == pytest.approx(direct)
    assert "mean p_z" in report and "## Probability of extraction" in report


def test_report_shows_memorization_vs_prompt_length(suite, tmp_path):
    """Runs of several prompt lengths: per run, the rows memorized (score_p<M> == 1) with each
    length, in the analysis, the report's table, its plot and analysis.json."""
    from memwatch.posthoc.evaluate import EvalConfig, evaluate, resolve_checkpoints
    from memwatch.probe import ProbeSpec
    from memwatch.watchlist import Watchlist

    ckpts = resolve_checkpoints(str(suite.root / "large"), ["step24", "step48"])
    evaluate(ckpts, Watchlist.from_pythia(suite.prefix, "0:128:2"), tmp_path / "results",
             config=EvalConfig(ProbeSpec((8, 16, 32), mode="extractable")), progress=False)
    runs = load_results([tmp_path / "results"])
    curves = analyze(runs, "large@step48").prompt_lens
    assert [c.run for c in curves] == ["large@step24", "large@step48"]
    for c in curves:
        t = pq.read_table(tmp_path / "results" / "large" / f"{c.revision}.parquet")
        direct = tuple(int((t[f"score_p{m}"].to_numpy() == 1).sum()) for m in (8, 16, 32))
        assert c.prompt_lens == (8, 16, 32) and c.rows == 64 and c.memorized == direct
        assert c.memorized[-1] == int((t["match_prefix"].to_numpy() == 32).sum())
    last = curves[-1]
    assert last.memorized[0] < last.memorized[-1], "no growth with the prompt: a weak check"
    assert main(["analyze", str(tmp_path / "results"), "--target", "large@step48", "--out",
                 str(tmp_path / "report"), "--no-progress"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Memorization vs prompt length" in report and "](plots/prompt_lens.png)" in report
    assert "| run | rows | M = 8 | M = 16 | M = 32 |" in report
    assert f"| large@step48 | 64 | {last.memorized[0] / 64:.4f} ({last.memorized[0]}) |" in report
    numbers = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert numbers["prompt_lens"][-1]["memorized"] == list(last.memorized)


def _eleuther_layouts(root, universe, memorized):
    """EleutherAI's layouts: eval_memorization.py rank CSVs, a pandas CSV, memorized-evals."""
    scores = {m: np.where(np.isin(universe, sorted(s)), 1.0, 0.25) for m, s in memorized.items()}
    run = root / "memorization_70m-deduped_143000"
    run.mkdir(parents=True)
    half = len(universe) // 2
    for rank, part in enumerate((slice(0, half), slice(half, None))):
        lines = [f"{i},{s}" for i, s in zip(universe[part], scores["70m"][part], strict=True)]
        (run / f"rank-{rank}.csv").write_text("\n".join(lines))
    rows = [",idx,score"] + [f"{k},{i},{s}" for k, (i, s) in
                             enumerate(zip(universe, scores["160m"], strict=True))]
    (root / "memorization_evals_160m-deduped_32_64_143000.csv").write_text("\n".join(rows))
    for split, name in (("deduped.410m", "deduped.410m/0000.parquet"),
                        ("deduped.410m.23000", "data/deduped.410m.23000-00000-of-00001.parquet")):
        idx = np.array(sorted(memorized[split]), np.int64)
        table = pa.table({"index": idx, "tokens": [[1, 2, 3]] * len(idx),
                          "__index_level_0__": idx})
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / name)


def test_reads_eleutherai_layouts(tmp_path):
    rng = np.random.default_rng(0)
    universe = np.arange(1000, 1400, dtype=np.int64)
    memorized = {k: set(rng.choice(universe, size, replace=False).tolist()) for k, size in
                 (("70m", 20), ("160m", 40), ("deduped.410m", 60), ("deduped.410m.23000", 30))}
    _eleuther_layouts(tmp_path / "res", universe, memorized)
    runs = load_results([tmp_path / "res"])
    assert [(r.model, r.revision, r.params, r.complete) for r in runs] == [
        ("pythia-70m-deduped", "step143000", pythia_params("pythia-70m"), True),
        ("pythia-160m-deduped", "step143000", 162_322_944, True),
        ("pythia-410m-deduped", "step23000", 405_334_016, False),
        ("pythia-410m-deduped", "step143000", 405_334_016, False)]
    result = analyze(runs, "pythia-410m-deduped@step143000")
    target = memorized["deduped.410m"]
    for pair, key in zip(result.pairs, ("70m", "160m", "deduped.410m.23000", "deduped.410m"),
                         strict=True):
        pred = memorized[key]
        assert pair.precision == pytest.approx(len(pred & target) / len(pred))
        assert pair.recall == pytest.approx(len(pred & target) / len(target))
        assert pair.memorized == len(pred)
    assert result.pairs[0].fraction == pytest.approx(20 / 400)
    assert np.isnan(result.pairs[2].fraction)  # a memorized-only list has no denominator
    assert result.smaller_models.keys == ("pythia-70m-deduped@step143000",
                                          "pythia-160m-deduped@step143000")
    assert result.checkpoints.keys == ("pythia-410m-deduped@step23000",)
    assert result.target_compute == 6.0 * 405_334_016 * 143000 * 2_097_152


def test_bad_results_are_reported(results, tmp_path, capsys):
    with pytest.raises(ValueError, match="not among the results; found: small@step12"):
        analyze(load_results([results]), "huge@step48")
    with pytest.raises(ValueError, match="must be MODEL@REVISION"):
        find_run(load_results([results]), "large")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    assert main(["analyze", str(tmp_path), "--target", "x@y", "--out",
                 str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "cannot tell model and step from the name" in err
    assert "error: no results" in err


@pytest.mark.parametrize("args, expected", [
    (["--target", "pythia-12b"], "argument --target: expected MODEL@REVISION[:SOURCE]"),
    (["--target", "a@b", "--tokens-per-step", "0"],
     "argument --tokens-per-step: expected a positive integer, got '0'"),
    (["--target", "a@b", "--cont-len", "x"], "argument --cont-len: expected a positive integer"),
])
def test_malformed_arguments_fail_before_reading(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", str(tmp_path), "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and err.startswith("memwatch analyze: error: ")
    assert expected in err, err
    with pytest.raises(SystemExit):
        main(["analyze", str(tmp_path / "missing"), "--target", "a@b", "--out", "r"])
    assert "missing does not exist" in capsys.readouterr().err
