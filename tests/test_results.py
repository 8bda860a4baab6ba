"""Result formats: EleutherAI's files in their exact published shapes, with their defects."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memwatch.cli import main
from memwatch.posthoc.analysis import agreements, analyze, set_precision_recall
from memwatch.posthoc.results import ResultsWarning, find_run, load_results, step_of


def _truth(n: int) -> np.ndarray:
    """float32 [n]: a score per row, k / 32, as eval_memorization.py writes them."""
    k = np.random.default_rng(1).integers(0, 33, n)
    k[::7] = 32  # some memorized rows
    return (k / 32).astype(np.float32)


def _eval_memorization_csvs(folder, scores, rows: int, ranks: int, batch: int) -> None:
    """What eval_memorization.py writes for a checkpoint that trained on `rows` rows of the data
    (`scores`: every row of the data): each rank scores whole batches from its share's
    start, so it runs into the next rank's share, and the last rank past `rows`."""
    folder.mkdir(parents=True)
    per = rows // ranks
    for rank in range(ranks):
        start = rank * per
        end = start + -(-per // batch) * batch
        lines = [f"{i},{float(scores[i])}" for i in range(start, end)]
        (folder / f"rank-{rank}.csv").write_text("\n".join(lines) + "\n")


def test_rank_csvs_lose_duplicates_and_rows_past_the_checkpoint(tmp_path):
    step = 3  # the checkpoint has trained on rows [0, 3 * 1024)
    scores = _truth(4 * 1024)  # the data goes on: the last rank reads past row 3071
    folder = tmp_path / "memorization_70m-deduped_3"
    _eval_memorization_csvs(folder, scores, rows=step * 1024, ranks=4, batch=250)
    # shares of 768 rows scored in 4 batches of 250: 232 rows of the next share again
    with pytest.warns(ResultsWarning) as record:
        (run,) = load_results([tmp_path])
    messages = [str(w.message) for w in record]
    assert any("dropped 696 duplicate rows with equal scores" in m for m in messages), messages
    assert any("dropped 232 rows with index >= 3,072" in m for m in messages), messages
    assert (run.model, run.revision, run.source) == ("pythia-70m-deduped", "step3", "pythia-csv")
    np.testing.assert_array_equal(run.index, np.arange(step * 1024))
    np.testing.assert_array_equal(run.scores, scores[:step * 1024])
    np.testing.assert_array_equal(run.memorized, scores[:step * 1024] == 1)


def test_conflicting_duplicates_name_both_files(tmp_path):
    folder = tmp_path / "memorization_160m_143000"
    _eval_memorization_csvs(folder, _truth(1200), rows=1000, ranks=2, batch=300)
    rank0 = (folder / "rank-0.csv").read_text().splitlines()
    assert rank0[500].startswith("500,")  # row 500 belongs to rank 1; rank 0 scored it too
    rank0[500] = "500,0.5" if not rank0[500].endswith(",0.5") else "500,0.25"
    (folder / "rank-0.csv").write_text("\n".join(rank0))
    with pytest.raises(ValueError, match=r"sequence index 500 has score .* in .*rank-0.csv and "
                                         r".* in .*rank-1.csv"):
        load_results([tmp_path])


def _memorized_evals(path, index) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    index = np.asarray(index, np.int64)
    tokens = np.random.default_rng(0).integers(0, 50304, (len(index), 64)).tolist()
    pq.write_table(pa.table({"index": index, "tokens": tokens, "__index_level_0__":
                             np.arange(len(index))}), path)


def test_memorized_evals_in_every_layout(tmp_path):
    rows = {"deduped.1b": list(range(0, 300, 3)), "deduped.1b.new": list(range(0, 300, 4)),
            "duped.12b.23000": [5, 9, 11], "deduped.1.4b": [1, 2, 3, 40], "duped.160m": [7]}
    hub = tmp_path / "pythia-memorized-evals" / "data"
    # the hub's own names: two shards with the content hash of deduped.1b
    _memorized_evals(hub / "deduped.1b-00000-of-00002-547b2b00c0f47827.parquet", rows[
        "deduped.1b"][:60])
    _memorized_evals(hub / "deduped.1b-00001-of-00002-9d0e6a3b11a2c4f0.parquet", rows[
        "deduped.1b"][60:])
    _memorized_evals(hub / "deduped.1b.new-00000-of-00001-0b5c2a77e1f0d9aa.parquet",
                     rows["deduped.1b.new"])
    _memorized_evals(hub / "duped.12b.23000-00000-of-00001.parquet", rows["duped.12b.23000"])
    converted = tmp_path / "refs-convert-parquet" / "default"
    _memorized_evals(converted / "deduped.1.4b" / "0000.parquet", rows["deduped.1.4b"])
    _memorized_evals(converted / "duped.160m" / "0000.parquet", rows["duped.160m"])
    pq.write_table(pa.table({"x": [1]}), tmp_path / "pythia-memorized-evals" / "stats.parquet")
    with pytest.warns(ResultsWarning, match=r"skipped .*stats.parquet: neither a memwatch"):
        runs = load_results([tmp_path])
    got = {(r.label, tuple(r.index.tolist())) for r in runs}
    assert got == {
        ("pythia-1b-deduped@step143000 [memorized-evals]", tuple(rows["deduped.1b"])),
        ("pythia-1b-deduped@step143000 [memorized-evals new]", tuple(rows["deduped.1b.new"])),
        ("pythia-12b@step23000 [memorized-evals]", tuple(rows["duped.12b.23000"])),
        ("pythia-1.4b-deduped@step143000 [memorized-evals]", tuple(rows["deduped.1.4b"])),
        ("pythia-160m@step143000 [memorized-evals]", tuple(rows["duped.160m"]))}
    assert all(r.source == "memorized-evals" and not r.complete and r.memorized.all()
               for r in runs)
    old = find_run(runs, "pythia-1b-deduped@step143000")
    assert old.variant == "" and len(old.files) == 2
    # the .new split against the original one: 25 rows in both, of 75 and 100
    (agreement,) = agreements(runs)
    assert (agreement.other, agreement.reference) == (
        "pythia-1b-deduped@step143000 [memorized-evals]",
        "pythia-1b-deduped@step143000 [memorized-evals new]")
    assert (agreement.both, agreement.precision, agreement.recall) == (25, 0.25, 25 / 75)


@pytest.fixture(scope="module")
def published(suite, tmp_path_factory):
    """memwatch's results of one checkpoint named as Pythia's, beside the same checkpoint's
    published results: eval_memorization.py CSVs and a memorized-evals split."""
    from memwatch.posthoc.evaluate import Checkpoint, EvalConfig, evaluate
    from memwatch.probe import ProbeSpec
    from memwatch.watchlist import Watchlist

    root = tmp_path_factory.mktemp("published")
    ckpt = Checkpoint(str(suite.root / "large"), "step48", "pythia-70m-deduped",
                      str(suite.root / "large" / "step48"))
    (path,) = evaluate([ckpt], Watchlist.from_pythia(suite.prefix, "0:128"), root / "memwatch",
                       config=EvalConfig(ProbeSpec(mode="extractable")), progress=False)
    table = pq.read_table(path)
    index, scores = table["index"].to_numpy(), table["score"].to_numpy()
    memorized = index[table["match_prefix"].to_numpy() == 32]
    assert 2 < len(memorized) < 126, "need memorized and unmemorized rows"
    # EleutherAI's ranks share the 128 rows memwatch scored, the last rank scoring 16 more
    full = np.concatenate([scores, np.zeros(64, np.float32)])
    _eval_memorization_csvs(root / "eleuther" / "memorization_70m-deduped_48", full, rows=128,
                            ranks=2, batch=40)
    # the published list misses one memorized row and adds one row past the evaluated ones
    listed = np.append(memorized[1:], 5000)
    _memorized_evals(root / "eleuther" / "data" / "deduped.70m.48-00000-of-00001-"
                     "0123456789abcdef.parquet", listed)
    return root, memorized


def test_memwatch_and_published_results_analyse_together(published, tmp_path, capsys):
    root, memorized = published
    code = main(["analyze", str(root), "--target", "pythia-70m-deduped@step48", "--out",
                 str(tmp_path), "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: pythia-70m-deduped@step48 (pythia-csv): dropped" in err
    data = json.loads((tmp_path / "analysis.json").read_text())
    assert data["target"] == "pythia-70m-deduped@step48"
    assert [p["label"] for p in data["pairs"]] == [
        "pythia-70m-deduped@step48", "pythia-70m-deduped@step48 [pythia-csv]",
        "pythia-70m-deduped@step48 [memorized-evals]"]
    agreement = {(a["other"], a["reference"]): a for a in data["agreement"]}
    csv_vs = agreement[("pythia-70m-deduped@step48", "pythia-70m-deduped@step48 [pythia-csv]")]
    assert (csv_vs["rows"], csv_vs["precision"], csv_vs["recall"], csv_vs["correlation"]) == \
        (128, 1.0, 1.0, pytest.approx(1.0))
    listed = agreement[("pythia-70m-deduped@step48",
                        "pythia-70m-deduped@step48 [memorized-evals]")]
    m = len(memorized)
    # on memwatch's 128 rows: the list holds m - 1 of its m memorized rows (5000 is not scored)
    assert (listed["rows"], listed["other_memorized"], listed["reference_memorized"],
            listed["both"]) == (128, m, m - 1, m - 1)
    assert listed["precision"] == pytest.approx((m - 1) / m) and listed["recall"] == 1.0
    report = (tmp_path / "report.md").read_text()
    assert "## Agreement between sources" in report and "-v0" in report


def test_target_source_picks_one_of_several_runs(published):
    root, memorized = published
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        runs = load_results([root])
    assert find_run(runs, "pythia-70m-deduped@step48").source == "memwatch"
    result = analyze(runs, "pythia-70m-deduped@step48:memorized-evals")
    assert result.target == "pythia-70m-deduped@step48 [memorized-evals]"
    by_source = {p.source: p for p in result.pairs}
    assert by_source["memwatch"].recall == 1.0  # found every listed row it scored
    with pytest.raises(ValueError, match="source must be one of"):
        find_run(runs, "pythia-70m-deduped@step48:hub")


def test_undefined_precision_and_recall_are_nan():
    none, some = np.zeros(4, bool), np.array([1, 0, 1, 0], bool)
    p, r = set_precision_recall(none, some)
    assert np.isnan(p) and r == 0.0
    p, r = set_precision_recall(some, none)
    assert p == 0.0 and np.isnan(r)
    assert set_precision_recall(some, np.array([1, 1, 0, 0], bool)) == (0.5, 0.5)
    pred = np.array([1, 1, 0, 0, 1], bool)
    target = np.array([1, 0, 1, 0, 1], bool)
    assert set_precision_recall(pred, target) == pytest.approx((2 / 3, 2 / 3))
    many = np.stack([pred, target, np.zeros(5, bool)])  # broadcasts over leading axes
    p, r = set_precision_recall(many[:, None], many[None])
    assert p.shape == r.shape == (3, 3)
    np.testing.assert_allclose(np.diag(r)[:2], 1.0)
    assert np.isnan(p[2]).all() and np.isnan(r[:, 2]).all()  # nothing claimed / nothing to find
    assert np.isfinite(p[:2, :2]).all() and np.isfinite(r[:2, :2]).all()


def test_step_of_revision():
    assert step_of("step143000") == 143000 and step_of("main") is None
    assert step_of("step12a") is None
