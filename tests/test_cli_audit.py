"""`memwatch audit RUN_DIR`: the audit from a run's local records, the same as `mw.audit`."""

from __future__ import annotations

import json

import numpy as np
import torch

from memwatch.audit import audit
from memwatch.cli import main
from memwatch.events import ProbeRecord, probe_metrics
from memwatch.history import History
from memwatch.probe import ProbeResult
from memwatch.sinks import LocalSink
from memwatch.sinks.local import write_history_parquet


def _run(folder, probes: int = 3, audited: bool = True):
    """A LocalSink folder of a run whose in-canaries' NLL falls below the out ones'."""
    rng = np.random.default_rng(0)
    inside = rng.random(60) < 0.5
    tags = [("canary", "canary:in" if x else "canary:out") if audited else ("canary",)
            for x in inside]
    h = History([f"canary#{i}" for i in range(60)], tags, cont_len=8)
    sink = LocalSink(folder)
    for p in range(probes):
        nll = torch.tensor(rng.normal(4, 0.5, 60) - p * inside, dtype=torch.float32)
        zero = torch.zeros(60, dtype=torch.int16)
        h.update(10 * (p + 1), ProbeResult(zero.float(), zero == 8, zero, nll=nll), "exact")
        sink.on_probe(ProbeRecord(h.steps[-1], "exact", probe_metrics(h, []), h.scores[-1]))
    sink.close()
    return h, inside


def test_audit_command_recomputes_the_audit_from_the_history(tmp_path, capsys):
    h, inside = _run(tmp_path / "run" / "records")
    write_history_parquet(h, tmp_path / "run" / "records" / "history.parquet")
    assert main(["audit", str(tmp_path / "run"), "--json", "--n-boot", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    score = -h.nll[-1].astype(np.float64) * 8
    want = audit(score[inside], score[~inside], n_boot=50, fdp=True)
    assert out["final"]["audit/epsilon_lb"] == want.epsilon_lb > 0
    assert out["final"]["audit/auroc"] == want.auroc
    assert [c["step"] for c in out["curve"]] == [10, 20, 30]
    assert out["canaries_in"] == inside.sum()
    assert main(["audit", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "| 30 |" in text and f"ε lower bound {want.epsilon_lb:.2f}" in text


def test_audit_command_falls_back_to_the_logged_metrics_and_names_errors(tmp_path, capsys):
    h, _ = _run(tmp_path / "crashed")  # no history.parquet: the run never finished
    assert main(["audit", str(tmp_path / "crashed"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "did not finish" in out["note"] and len(out["curve"]) == 3
    assert out["final"]["audit/epsilon_lb"] > 0
    plain, _ = _run(tmp_path / "plain", audited=False)
    write_history_parquet(plain, tmp_path / "plain" / "history.parquet")
    assert main(["audit", str(tmp_path / "plain")]) == 2
    assert "no audit canaries" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty")]) == 2
    assert "holds no history.parquet" in capsys.readouterr().err
