"""The pure functions that derive a probe's record from the history (`memwatch.events`)."""

from __future__ import annotations

import math

import pytest
import torch

from memwatch.events import RowReport, newly_memorized, probe_metrics, row_reports
from memwatch.history import History
from memwatch.probe import ProbeResult

TAGS = [("pii:EMAIL_ADDRESS",), ("canary",), ("canary",), ()]


def _probe(history: History, step: int, prefix: list[int]) -> None:
    p = torch.tensor(prefix, dtype=torch.int16)
    history.update(step, ProbeResult(p.float() / 4, p == 4, p), "extractable")


def _history() -> History:
    h = History([f"r{i}" for i in range(4)], TAGS, cont_len=4)
    _probe(h, 10, [4, 0, 1, 0])
    _probe(h, 20, [4, 4, 2, 4])
    return h


def test_newly_memorized_is_memorized_now_and_never_before():
    h = History(["a", "b"], [(), ()], cont_len=4)
    _probe(h, 1, [4, 0])
    assert newly_memorized(h).tolist() == [True, False]  # the first probe: all it found
    _probe(h, 2, [0, 4])
    assert newly_memorized(h).tolist() == [False, True]
    _probe(h, 3, [4, 4])
    assert newly_memorized(h).tolist() == [False, False]  # row a forgot, then relearned


def test_probe_metrics_of_the_latest_probe():
    m = probe_metrics(_history(), ["canary", "pii:*"])
    assert m == {"memorized_count": 3.0, "memorized_fraction": 0.75, "mean_score": 0.875,
                 "mean_match_prefix": 3.5, "memorized_count/canary": 1.0,
                 "memorized_fraction/canary": 0.5, "memorized_count/pii:*": 1.0,
                 "memorized_fraction/pii:*": 1.0}
    timed = probe_metrics(_history(), [], probe_seconds=0.5, monitor_seconds=2.0,
                          train_seconds=100.0)
    assert timed["probe_seconds"] == 0.5 and timed["overhead"] == pytest.approx(0.02)
    untrained = probe_metrics(_history(), [], probe_seconds=0.5, monitor_seconds=2.0)
    assert math.isnan(untrained["overhead"])


def test_probe_metrics_report_the_probability_of_extraction_per_tag():
    h = _history()
    p = torch.tensor([4, 4, 2, 0], dtype=torch.int16)
    log_pz = torch.tensor([-1e-3, -0.6, -20.0, -60.0])  # p_z ~ 1, 0.55, 2e-9, 9e-27
    h.update(30, ProbeResult(p.float() / 4, p == 4, p, log_pz=log_pz), "extractable")
    m = probe_metrics(h, ["canary"])
    pz = [math.exp(x) for x in (-1e-3, -0.6, -20.0, -60.0)]
    assert m["mean_pz"] == pytest.approx(sum(pz) / 4, rel=1e-5)
    assert m["mean_pz/canary"] == pytest.approx((pz[1] + pz[2]) / 2, rel=1e-5)
    # one draw extracts the rows with p_z >= p; 100 draws make the p_z = 0.55 row
    # 0.9-extractable, 10^4 draws still not the 2e-9 one (1 - (1 - 2e-9)^1e4 = 2e-5)
    assert m["extractable_n1_p50"] == 0.5 and m["extractable_n1_p90"] == 0.25
    assert m["extractable_n100_p90"] == 0.5 and m["extractable_n10000_p90"] == 0.5
    assert m["extractable_n1_p90/canary"] == 0.0 and m["extractable_n100_p90/canary"] == 0.5
    assert m["memorized_fraction/canary"] == 0.5  # the greedy rate, beside them
    assert not any(k.startswith(("mean_pz", "extractable_")) for k in probe_metrics(_history(),
                                                                                    ["canary"]))


def test_row_reports_name_rows_by_id_tags_and_preview():
    h = _history()
    reports = row_reports(h, newly_memorized(h), lambda i: f"<row {i}>")
    assert reports == (RowReport("r1", ("canary",), 20, 1.0, 4, "<row 1>"),
                       RowReport("r3", (), 20, 1.0, 4, "<row 3>"))


def test_probe_metrics_carry_the_audit_with_audit_canaries_and_log_pz():
    import numpy as np

    from memwatch.probe import ProbeResult

    inside = np.arange(40) % 2 == 0
    h = History([f"c{i}" for i in range(40)],
                [("canary", "canary:in" if x else "canary:out") for x in inside], cont_len=4)
    zero = torch.zeros(40, dtype=torch.int16)
    h.update(1, ProbeResult(zero.float(), zero == 4, zero, mode="extractable"), "extractable")
    assert not any(k.startswith("audit/") for k in probe_metrics(h, []))  # no NLL: no audit
    nll = torch.tensor(np.where(inside, 1.0, 3.0) + np.arange(40) * 1e-3, dtype=torch.float32)
    h.update(2, ProbeResult(zero.float(), zero == 4, zero, nll=nll, mode="exact"), "exact")
    m = probe_metrics(h, [])
    assert m["audit/auroc"] == 1.0 and m["audit/tpr@1%fpr"] == 1.0 and m["audit/epsilon_lb"] > 0
