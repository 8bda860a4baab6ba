"""2-process DDP on CPU (gloo): sharded probes equal the unsharded probe, ranks agree, rank 0 logs.

Each run is a subprocess (`ddp_train.py`): torchrun for the plain loop, Lightning's own
launcher for ``strategy="ddp"``. Training under DDP is not bit-identical to one process
(gradients are summed in another order, and Adam amplifies the last bits), so "the same
results as one process" is checked where it is exact: the monitor's gathered results equal
a single-process probe of the same weights, at every probe step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("ddp_train.py")
ROWS, N = 15, 8


def run(args: list[str], out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(args, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=True)
            for r in range(2) if (out / f"rank{r}.pt").exists()]


def assert_same_across_ranks(ranks: list[dict]) -> None:
    h0, h1 = (r["state"]["history"] for r in ranks)
    for key in ("steps", "match_prefix", "match_count"):
        assert torch.equal(h0[key], h1[key]), key
    assert h0["modes"] == h1["modes"]
    assert ranks[0]["events"] and ranks[1]["events"] == []  # only rank 0 calls the sinks


def test_torchrun_plain_loop(tmp_path):
    pytest.importorskip("transformers")
    ranks = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--standalone", str(SCRIPT), "plain", str(tmp_path)], tmp_path)
    assert len(ranks) == 2
    assert_same_across_ranks(ranks)
    # The budgeted schedule is planned from rank 0's timings, so the ranks probe together,
    # and the abort fires on the same step, with the same reason, on both.
    assert ranks[0]["decisions"] == ranks[1]["decisions"]
    last = ranks[0]["decisions"][-1]
    assert last[2] and "canary" in last[3] and last[0] < 200
    hist = ranks[0]["state"]["history"]
    assert len(hist["steps"]) >= 2 and hist["match_prefix"].shape[1] == ROWS
    scores = hist["match_count"][: len(ranks[0]["unsharded"])].float() / N
    assert torch.equal(scores, ranks[0]["unsharded"])
    assert ranks[0]["events"][-2:] == [f"alert:abort:{last[0]}", f"end:{len(hist['steps'])}"]
    # No rank leaves `finish` (and tears down the process group) before rank 0's sinks end.
    assert ranks[0]["sinks_ended"] and ranks[1]["sinks_ended"]


def test_probe_failures_and_a_one_rank_resume_under_torchrun(tmp_path):
    pytest.importorskip("transformers")
    ranks = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--standalone", str(SCRIPT), "faults", str(tmp_path)], tmp_path)
    assert len(ranks) == 2
    assert_same_across_ranks(ranks)
    # Rank 1 ran out of memory at every probe (both ranks halved the batch together) and
    # raised at step 4 (both ranks skipped that probe); training went on to step 8.
    assert ranks[0]["decisions"] == ranks[1]["decisions"] == [
        [1, False, []], [2, True, []], [3, False, []], [4, False, ["probe_failed"]],
        [5, False, []], [6, True, []], [7, False, []], [8, True, []]]
    hist = ranks[0]["state"]["history"]
    assert hist["steps"].tolist() == [2, 6, 8]
    assert torch.equal(hist["match_prefix"].long(), torch.stack(ranks[0]["unsharded"]).long())
    assert "alert:probe_failed:4" in ranks[0]["events"]
    failed = [[w for w in r["warnings"] if "probe at step" in w] for r in ranks]
    assert [len(w) for w in failed] == [1, 1]
    assert "rank(s) [1]" in failed[0][0] and "simulated failure on rank 1" in failed[1][0]
    # load_state_dict on rank 0 only: a clear error on both ranks at the next step, no hang.
    for r in ranks:
        assert "load_state_dict was called on some ranks only" in r["resume_error"]


def test_every_rank_masks_rank_0s_flagged_rows_at_every_step_and_across_a_resume(tmp_path):
    """Rank 1's own policy flags nothing (patched in ddp_train.py): all it masks comes from
    rank 0, at every step, before and after a resume from step 8; nothing hangs."""
    pytest.importorskip("transformers")
    ranks = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--standalone", str(SCRIPT), "mask", str(tmp_path)], tmp_path)
    assert len(ranks) == 2
    log0, log1 = ranks[0]["log"], ranks[1]["log"]
    assert [e[0] for e in log0] == list(range(1, 13)) + list(range(9, 17))
    for (step, flagged0, masked0, _), (_, flagged1, masked1, _) in zip(log0, log1, strict=True):
        assert flagged1 == flagged0, step  # the same rows flagged on both ranks
        assert masked1 == masked0, step  # and masked the same way
        assert [m == N for m in masked0] == [f"row-{i}" in flagged0 for i in range(ROWS)], step
    first, resumed = log0[:12], log0[12:]
    assert first[0][1] == [] and first[-1][1]  # rows get flagged as training goes on
    assert resumed[0][1] == first[7][1]  # the resume starts from step 8's flags
    assert sum(e[3] for e in log0) > 0 and sum(e[3] for e in log1) > 0  # both trained masked
    assert "resume_mismatch" not in ranks[0]["alerts"]  # a faithful resume is not flagged


def test_lightning_ddp_strategy(tmp_path):
    pytest.importorskip("lightning")
    ranks = run([sys.executable, str(SCRIPT), "lightning", str(tmp_path), "2"], tmp_path)
    assert len(ranks) == 2
    assert_same_across_ranks(ranks)
    hist = ranks[0]["state"]["history"]
    assert hist["steps"].tolist() == [2, 4, 6, 8, 10, 12, 14, 16]
    assert hist["modes"][-1] == "exact"
    torch.testing.assert_close(hist["match_count"].float() / N, ranks[0]["unsharded"],
                               rtol=0, atol=0)
    assert hist["match_prefix"][-1].sum() > 0
