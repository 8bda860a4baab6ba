"""`memwatch eval` on a local suite: exact scores, resume after a crash, torchrun, bad input."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import memwatch.posthoc.evaluate as ev
from memwatch.cli import main
from memwatch.probe import ProbeSpec, reference_probe

INDICES = "0:128:4"
ROWS = np.arange(0, 128, 4)


def _eval(suite, out, *extra):
    return main(["eval", "--model", str(suite.root / "small"), "--model",
                 str(suite.root / "large"), "--pythia-data", suite.prefix, "--indices", INDICES,
                 "--out", str(out), "--batch-size", "16", "--no-progress", *extra])


def _columns(path):
    t = pq.read_table(path)
    return {c: t[c].to_pylist() for c in t.column_names}


@pytest.fixture(scope="module")
def evaluated(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert _eval(suite, out) == 0
    return out


def test_resolve_checkpoints_lists_local_revisions_in_step_order(suite, tmp_path):
    ckpts = ev.resolve_checkpoints(str(suite.root / "large"))
    assert [c.revision for c in ckpts] == ["step12", "step24", "step48"]
    assert {c.key for c in ckpts} == {"large@step12", "large@step24", "large@step48"}
    (tmp_path / "m" / "step8").mkdir(parents=True)
    (tmp_path / "m" / "step8" / "config.json").write_text("{}")
    (tmp_path / "m" / "step100").mkdir()
    (tmp_path / "m" / "step100" / "config.json").write_text("{}")
    assert [c.revision for c in ev.resolve_checkpoints(str(tmp_path / "m"))] == \
        ["step8", "step100"]
    hub = ev.resolve_checkpoints("EleutherAI/pythia-70m", ["step1000", "step2000"])
    assert [(c.model, c.revision, c.path) for c in hub] == \
        [("EleutherAI/pythia-70m", "step1000", None), ("EleutherAI/pythia-70m", "step2000", None)]


def test_eval_writes_reference_scores_for_every_checkpoint(suite, evaluated):
    from transformers import AutoModelForCausalLM

    files = sorted(p.relative_to(evaluated).as_posix() for p in evaluated.rglob("*"))
    assert files == ["large", "large/step12.parquet", "large/step24.parquet",
                     "large/step48.parquet", "small", "small/step12.parquet",
                     "small/step24.parquet", "small/step48.parquet"]
    memorized = 0
    for name in ("small", "large"):
        for step in (12, 24, 48):
            path = evaluated / name / f"step{step}.parquet"
            cols = _columns(path)
            assert cols["index"] == ROWS.tolist()
            assert cols["id"] == [f"pythia:{i}" for i in ROWS]
            assert cols["tags"] == [["sample"]] * len(ROWS)
            assert np.isfinite(cols["nll"]).all()
            meta = ev.read_meta(path)
            assert (meta["name"], meta["revision"], meta["step"]) == (name, f"step{step}", step)
            if step != 48:  # generate() is slow on 2 cores: the final checkpoints suffice
                continue
            model = AutoModelForCausalLM.from_pretrained(suite.root / name / f"step{step}")
            ref = reference_probe(model, suite.stream[ROWS])
            np.testing.assert_array_equal(np.array(cols["score"], np.float32), ref.numpy())
            np.testing.assert_array_equal(np.array(cols["match_prefix"]) == 32, ref.numpy() == 1)
            assert meta["params"] == sum(p.numel() for p in model.parameters())
            memorized += int((ref == 1).sum())
            # the extraction measures, against a plain forward + log_softmax
            rows = suite.stream[ROWS]
            with torch.no_grad():
                logits = model(rows).logits[:, 31:63].float()
            lp = torch.log_softmax(logits, -1).gather(-1, rows[:, 32:64, None])[..., 0].double()
            close = dict(rtol=1e-5, atol=1e-5)
            # a sum of 32 log-probs, each within ~1e-6 of the plain forward's (other batches)
            np.testing.assert_allclose(cols["log_pz"], lp.sum(1).numpy(), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(cols["min_k_logprob"],
                                       lp.sort(1).values[:, :6].mean(1).numpy(), **close)
            np.testing.assert_allclose(np.array(cols["nll"]) / np.array(cols["zlib_ratio"]),
                                       [len(zlib.compress(np.asarray(r, "<u4").tobytes()))
                                        for r in rows[:, 32:64].tolist()], rtol=1e-4)
    assert memorized > 0, "the suite memorized nothing: the comparison above proves little"


def test_several_prompt_lengths_give_one_score_column_each(suite, evaluated, tmp_path):
    """--prompt-len 16 8 32: every column of the one-length run (the continuation starts after
    the longest, 32), plus score_p<M> equal to a one-length eval of the rows' last M prompt
    tokens; the reader gives them back as `Run.scores_by_prompt_len`. --token-logprobs adds
    the per-token log-probs, against a plain forward + log_softmax."""
    from transformers import AutoModelForCausalLM

    from memwatch.posthoc.results import load_results
    from memwatch.watchlist import Watchlist

    out = tmp_path / "multi"
    assert main(["eval", "--model", str(suite.root / "large"), "--revision", "step48",
                 "--pythia-data", suite.prefix, "--indices", INDICES, "--out", str(out),
                 "--batch-size", "16", "--no-progress", "--prompt-len", "16", "8", "32",
                 "--token-logprobs"]) == 0
    path = out / "large" / "step48.parquet"
    cols, one = _columns(path), _columns(evaluated / "large" / "step48.parquet")
    assert ev.read_meta(path)["prompt_len"] == [8, 16, 32]
    assert {k: cols[k] for k in one} == one and cols["score_p32"] == one["score"]
    ckpt = ev.resolve_checkpoints(str(suite.root / "large"), ["step48"])
    for m in (8, 16):
        [alone] = ev.evaluate(ckpt, Watchlist.from_tokens(suite.stream[ROWS, 32 - m:]),
                              tmp_path / f"p{m}", ROWS, ev.EvalConfig(ProbeSpec(m)),
                              progress=False)
        assert cols[f"score_p{m}"] == _columns(alone)["score"]
    assert cols["score_p8"] != cols["score_p32"]  # the lengths measure different things
    rows = suite.stream[ROWS]
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(suite.root / "large" / "step48")(
            rows).logits[:, 31:63].float()
    lp = torch.log_softmax(logits, -1).gather(-1, rows[:, 32:64, None])[..., 0]
    np.testing.assert_allclose(cols["token_logprobs"], lp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.sum(cols["token_logprobs"], 1), cols["log_pz"], atol=1e-4)
    [run] = load_results([out])
    assert run.prompt_lens == (8, 16, 32)
    np.testing.assert_array_equal(run.scores_by_prompt_len,
                                  np.array([cols[f"score_p{m}"] for m in (8, 16, 32)]).T)
    single = load_results([evaluated / "large" / "step48.parquet"])[0]  # prompt_len: an int
    assert single.prompt_lens == (32,)
    np.testing.assert_array_equal(single.scores_by_prompt_len[:, 0], single.scores)


@pytest.mark.slow
def test_resume_after_crash_gives_identical_results(suite, evaluated, tmp_path, monkeypatch):
    calls = []
    real_probe = ev._probe

    def counting(*args, **kwargs):
        if crash_after is not None and len(calls) == crash_after:
            raise RuntimeError("simulated crash")
        calls.append(len(args[1]))
        return real_probe(*args, **kwargs)

    def run():
        return main(["eval", "--model", str(suite.root / "large"), "--pythia-data", suite.prefix,
                     "--indices", INDICES, "--out", str(tmp_path), "--batch-size", "16",
                     "--no-progress"])

    monkeypatch.setattr(ev, "_probe", counting)
    crash_after = 3  # large@step12 done (2 batches of 16 rows), 1 batch into large@step24
    with pytest.raises(RuntimeError, match="simulated crash"):
        run()
    assert (tmp_path / "large" / "step12.parquet").exists()
    assert not (tmp_path / "large" / "step24.parquet").exists()
    parts = sorted(p.name for p in (tmp_path / "large" / "step24.parts").rglob("*.parquet"))
    assert parts == ["000000000000-000000000016.parquet"]

    calls.clear()
    crash_after = None
    assert run() == 0
    assert calls == [16, 16, 16]  # the rest of large@step24, then large@step48
    for step in (12, 24, 48):
        rel = f"large/step{step}.parquet"
        assert _columns(tmp_path / rel) == _columns(evaluated / rel), rel
    assert not list(tmp_path.rglob("*.parts"))

    calls.clear()
    assert run() == 0  # everything finished: nothing is scored again
    assert calls == []


def test_eval_refuses_results_of_another_run(suite, evaluated, tmp_path, capsys):
    import shutil

    shutil.copytree(evaluated, tmp_path, dirs_exist_ok=True)
    code = main(["eval", "--model", str(suite.root / "small"), "--revision", "step12",
                 "--pythia-data", suite.prefix, "--indices", "0:64", "--out", str(tmp_path),
                 "--no-progress"])
    assert code == 2
    assert "holds results of another run" in capsys.readouterr().err


def test_watchlist_file_gives_the_same_results(suite, evaluated, tmp_path):
    from memwatch.watchlist import Watchlist

    wl = Watchlist.from_pythia(suite.prefix, INDICES)
    wl.save(tmp_path / "wl")
    code = main(["eval", "--model", str(suite.root / "large"), "--revision", "step48",
                 "--watchlist", str(tmp_path / "wl"), "--out", str(tmp_path / "out"),
                 "--batch-size", "16", "--no-progress"])
    assert code == 0
    assert _columns(tmp_path / "out" / "large" / "step48.parquet") == \
        _columns(evaluated / "large" / "step48.parquet")


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(suite, evaluated, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "memwatch.cli", "eval", "--model", str(suite.root / "large"), "--revision",
           "step48", "--pythia-data", suite.prefix, "--indices", INDICES, "--out",
           str(tmp_path), "--batch-size", "16", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rel = "large/step48.parquet"
    assert _columns(tmp_path / rel) == _columns(evaluated / rel)
    assert ev.read_meta(tmp_path / rel)["params"] == ev.read_meta(evaluated / rel)["params"]
    assert not list(tmp_path.rglob("*.parts"))


@pytest.fixture()
def no_scoring(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("scoring started before the bad input was reported")

    monkeypatch.setattr(ev, "_probe", fail)


def _bad(capsys, tmp_path, *args) -> str:
    code = main(["eval", *args, "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))
    return capsys.readouterr().err


def test_missing_revision_fails_before_scoring(suite, tmp_path, capsys, no_scoring):
    err = _bad(capsys, tmp_path, "--model", str(suite.root / "small"), "--revision", "step12",
               "step999", "--pythia-data", suite.prefix, "--indices", "0:8")
    assert "revision 'step999' not found" in err and "step12" in err


def test_unreadable_data_fails_before_scoring(suite, tmp_path, capsys, no_scoring):
    model = str(suite.root / "small")
    err = _bad(capsys, tmp_path, "--model", model, "--pythia-data", str(tmp_path / "nothing"),
               "--indices", "0:8")
    assert "nothing.idx does not exist" in err
    (tmp_path / "junk.idx").write_bytes(b"not an index at all, just some bytes" * 4)
    (tmp_path / "junk.bin").write_bytes(b"\0" * 64)
    err = _bad(capsys, tmp_path, "--model", model, "--pythia-data", str(tmp_path / "junk"),
               "--indices", "0:8")
    assert "not a Megatron MMapIndexedDataset index" in err
    err = _bad(capsys, tmp_path, "--model", model, "--pythia-data", suite.prefix,
               "--indices", "120:200")
    assert "sequence index 128 is out of range" in err


def _bad_argument(capsys, tmp_path, *args) -> str:
    """A malformed argument: argparse's exit status 2 before anything is loaded."""
    with pytest.raises(SystemExit) as exit_:
        main(["eval", *args, "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("flag, value, expected", [
    ("--indices", "5:5", "argument --indices: '5:5' selects no sequence"),
    ("--indices", "0:x", "argument --indices: index range '0:x' is not 'i' or"),
    ("--batch-size", "0", "argument --batch-size: expected 'auto' or a positive integer, got '0'"),
    ("--prompt-len", "-3", "argument --prompt-len: expected a positive integer, got '-3'"),
    ("--prompt-len", "32 x", "argument --prompt-len: expected a positive integer, got 'x'"),
])
def test_malformed_arguments_fail_before_loading(suite, tmp_path, capsys, no_scoring, flag,
                                                  value, expected):
    args = {"--model": str(suite.root / "small"), "--pythia-data": suite.prefix,
            "--indices": "0:8", flag: value}
    err = _bad_argument(capsys, tmp_path, *[x for k, v in args.items() for x in (k, *v.split())])
    assert err.startswith("memwatch eval: error: ") and expected in err, err


def test_several_prompt_lengths_refuse_short_record_rows_before_scoring(suite, tmp_path,
                                                                        no_scoring):
    from memwatch.watchlist import Watchlist

    wl = Watchlist(suite.stream[:4], [f"r{i}" for i in range(4)], [("pii:X",)] * 4,
                   prompt_lens=[32, None, 5, 32])
    ckpt = ev.resolve_checkpoints(str(suite.root / "small"), ["step12"])
    with pytest.raises(ValueError, match=r"'r2' has a prompt of its own of 5 tokens.*one "
                                         r"prompt_len, not \[16, 32\]"):
        ev.evaluate(ckpt, wl, tmp_path, config=ev.EvalConfig(ProbeSpec((32, 16))))


def test_model_with_another_vocab_fails_before_scoring(suite, tmp_path, capsys, no_scoring):
    from memwatch.demos.model import tiny_model

    tiny_model(vocab_size=256).save_pretrained(tmp_path / "other" / "step1")
    err = _bad(capsys, tmp_path, "--model", str(suite.root / "small"), "--model",
               str(tmp_path / "other"), "--pythia-data", suite.prefix, "--indices", "0:8")
    assert "other@step1 has a vocabulary of 256 ids" in err
    assert "tokenized for another model" in err


def test_mode_and_index_are_checked(suite, tmp_path, no_scoring):
    with pytest.raises(ValueError, match="mode must be one of"):
        ev.EvalConfig(ProbeSpec(mode="greedy"))
    with pytest.warns(DeprecationWarning, match=r"spec=ProbeSpec"):
        old = ev.EvalConfig(mode="extractable", with_nll=False)  # the loose settings, deprecated
    assert old.spec == ProbeSpec(mode="extractable") and ev.EvalConfig().spec.with_nll
    with pytest.raises(TypeError, match="unknown settings"):
        ev.EvalConfig(prompt_length=3)
    with pytest.raises(ValueError, match="token_logprobs come from the NLL's .* need with_nll"):
        ev.EvalConfig(ProbeSpec(with_nll=False), token_logprobs=True)
    with pytest.raises(ValueError, match="index has shape"):
        from memwatch.watchlist import Watchlist

        ev.evaluate(ev.resolve_checkpoints(str(suite.root / "small"), ["step12"]),
                    Watchlist.from_tokens(torch.ones(4, 64, dtype=torch.long)), tmp_path,
                    index=np.arange(3))


@pytest.mark.slow
def test_pythia_example_script_parses():
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "pythia_posthoc.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "memwatch.cli eval" in script.read_text()


def _hub_cache(cache, repo_id: str, revisions: dict[str, object]) -> None:
    """Lay `save_pretrained` folders out as the hub client caches them: content-addressed
    blobs, ``snapshots/<commit>/<file>`` symlinks to them, ``refs/<revision>`` -> commit."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for revision, folder in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / revision).write_text(commit)


_OFFLINE_EVAL = """
import contextlib, io, sys
from memwatch.cli import main
args = sys.argv[1:]
assert main(args) == 0
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main([a if a != "step24" else "step999" for a in args])
print("CODE", code)
print("STDERR", repr(err.getvalue()))
"""


@pytest.mark.slow
def test_hub_checkpoints_load_offline_from_the_cache(suite, evaluated, tmp_path):
    cache = tmp_path / "hf" / "hub"
    for repo_id, name in (("EleutherAI/pythia-70m", "small"), ("EleutherAI/pythia-160m", "large")):
        _hub_cache(cache, repo_id, {f"step{s}": suite.root / name / f"step{s}" for s in (12, 24)})
    assert ev.cached_revisions("EleutherAI/pythia-70m", str(cache)) == ["step12", "step24"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-c", _OFFLINE_EVAL, "eval", "--model", "EleutherAI/pythia-70m",
           "--model", "EleutherAI/pythia-160m", "--revision", "step12", "step24",
           "--pythia-data", suite.prefix, "--indices", INDICES, "--out", str(tmp_path / "out"),
           "--batch-size", "16", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for hub, local in (("pythia-70m", "small"), ("pythia-160m", "large")):
        for step in (12, 24):  # each revision loaded its own snapshot: the scores say so
            assert _columns(tmp_path / "out" / hub / f"step{step}.parquet") == \
                _columns(evaluated / local / f"step{step}.parquet"), (hub, step)
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
               if line.startswith(("CODE", "STDERR")))
    assert out["CODE"] == "2"
    err = ast.literal_eval(out["STDERR"])
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot load EleutherAI/pythia-70m at revision 'step999'" in err
    assert "revisions cached: step12, step24" in err


def test_pythia_data_is_streamed_batch_by_batch(suite, evaluated, tmp_path, monkeypatch):
    from memwatch.watchlist import Watchlist
    from memwatch.watchlist.pythia import IndexedDataset

    reads = []
    real = IndexedDataset.read_rows

    def recording(self, indices, length):
        reads.append(len(indices))
        return real(self, indices, length)

    def refuse(*args, **kwargs):
        pytest.fail("the rows were loaded whole instead of streamed")

    monkeypatch.setattr(IndexedDataset, "read_rows", recording)
    monkeypatch.setattr(IndexedDataset, "read", refuse)
    monkeypatch.setattr(Watchlist, "from_pythia", refuse)
    code = main(["eval", "--model", str(suite.root / "large"), "--revision", "step48",
                 "--pythia-data", suite.prefix, "--indices", INDICES, "--out", str(tmp_path),
                 "--batch-size", "16", "--no-progress"])
    assert code == 0
    assert reads == [len(ROWS), 16, 16]  # the up-front vocabulary check, then one per batch
    rel = "large/step48.parquet"
    assert _columns(tmp_path / rel) == _columns(evaluated / rel)
