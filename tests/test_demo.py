"""`memwatch demo` end to end, with tiny settings: report, plots, W&B offline files, no PII."""

import re
from dataclasses import replace

import numpy as np
import pytest
from probe_results import probe_result

from memwatch.demos.data import fake_pii_records
from memwatch.demos.report import outcome_sentences, repetition_table, tag_table
from memwatch.demos.run import DemoConfig, build_data, run_demo
from memwatch.history import History

# Small enough for seconds; canaries and PII seen 16-32 times an epoch are memorized by ~step 70.
TINY = DemoConfig(steps=120, corpus_chars=20_000, vocab_size=512, records_per_level=1,
                  audit_canaries=12, sample_rows=8, max_overhead=0.5)


def _history(memorized_by_probe, tags):
    """A History whose probes memorize exactly the given rows (1) and no others (0)."""
    h = History([f"r{i}" for i in range(len(tags))], [(t,) for t in tags])
    for k, row in enumerate(memorized_by_probe):
        mem = np.array(row, dtype=bool)
        h.update(10 * (k + 1), probe_result(np.where(mem, 32, 3), np.where(mem, 1.0, 0.1)),
                 "exact")
    return h


def test_report_sentences_are_computed_from_the_run():
    tags = ["pii:EMAIL_ADDRESS"] * 2 + ["pii:PHONE_NUMBER"] * 2 + ["canary", "sample"]
    reps = np.array([8, 1, 8, 1, 8, 0])
    h = _history([[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], tags)
    text = " ".join(outcome_sentences(h, reps))
    assert ("Memorized at step 30: emails 2 of 2, phone numbers 0 of 2, canaries 0 of 1, "
            "sampled training rows 0 of 1.") in text
    assert repetition_table(h, reps)[2:] == ["| 8 | 3 | 1 | 2 | 10 |", "| 1 | 2 | 1 | 1 | 30 |"]
    assert "Planted PII not memorized at the end (phone numbers 2 of 2) is a " \
           "fact of the data" in text
    assert "| PII | 4 | 2 | 2 | 20 |" in tag_table(h)
    assert "| &nbsp;&nbsp;phone numbers (`pii:PHONE_NUMBER`) | 2 | 0 | 0 | - |" in tag_table(h)
    assert "1 row(s) memorized at some probe were no longer memorized at the end" in text
    nothing = outcome_sentences(_history([[0] * 6, [0] * 6], tags), reps)
    assert nothing == ["Nothing on the watchlist was memorized in 20 steps (emails 0 of 2, "
                       "phone numbers 0 of 2, canaries 0 of 1, sampled training rows 0 of 1): "
                       "no row's continuation was reproduced in full at any probe."]


def test_data_plants_every_pii_row_and_canary_as_often_as_promised():
    data = build_data(TINY)
    wl = data.watchlist
    tags = {t for row in wl.tags for t in row}
    assert {"pii:EMAIL_ADDRESS", "pii:CREDIT_CARD", "canary", "sample"} <= tags
    assert set(data.repeats) == set(wl.ids)
    windows = data.stream.unfold(1, 64, 1)  # [rows, offsets, 64]: every 64-token window
    for i, row_id in enumerate(wl.ids):
        occurs = int((windows == wl.tokens[i, :64]).all(dim=2).any(dim=1).sum())
        if data.repeats[row_id]:  # planted: in exactly that many training rows
            assert occurs == data.repeats[row_id], row_id
        elif "canary:out" in wl.tags[i]:  # the audit's held-out canaries: never trained on
            assert occurs == 0, row_id
        else:  # sampled background rows are training rows themselves
            assert occurs >= 1, row_id


def _assert_report_and_discretion(report, tmp_path):
    """The report and its plots exist; no raw email, phone or card is anywhere on disk."""
    text = report.read_text()
    assert "memwatch demo report" in text
    assert "Memorized at step" in text or "Nothing on the watchlist was memorized" in text
    for png in ("memorization_over_time.png", "forecast_vs_actual.png",
                "memorization_heatmap.png", "extraction_curve.png"):
        data = (report.parent / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert f"]({png})" in text
    secrets = set()
    for record in fake_pii_records(6 * TINY.records_per_level, seed=TINY.seed):
        secrets.update(re.findall(r"[\w.]+@[\w.]+\.\w+|\+1 \d{3}-555-\d{4}|(?:\d{4} ){3}\d{4}",
                                  record))
    assert len(secrets) >= 18
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("offline-run" in str(p) for p in files)
    for path in files:
        blob = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret} leaked into {path}"


@pytest.mark.slow
def test_demo_abort_stops_the_run_and_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    report = run_demo(replace(TINY, out_dir=tmp_path / "demo", abort=True))
    # PII seen 32x per epoch is memorized within the run: --abort stops it there
    assert "stopped early by the abort policy" in report.read_text()
    _assert_report_and_discretion(report, tmp_path)


@pytest.mark.slow
def test_demo_act_mask_compares_with_the_unmitigated_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # The demo without --abort, trained twice: unmitigated (the plain demo), then masked.
    report = run_demo(replace(TINY, out_dir=tmp_path / "demo", mask=True))
    text = report.read_text()
    assert "stopped early by the abort policy" not in text
    _assert_report_and_discretion(report, tmp_path)
    section = text[text.index("## Masking"):]
    rows = re.findall(r"\| (PII|canaries) \| \d+ \| (\d+) \| (\d+) \|", section)
    assert {label for label, _, _ in rows} == {"PII", "canaries"}, section
    masked = [int(m) for _, m, _ in rows]
    unmitigated = [int(u) for _, _, u in rows]
    assert sum(unmitigated) > 0  # without action the frequent planted rows are memorized
    assert sum(masked) < sum(unmitigated), section
    assert int(re.search(r"(\d+) planted row\(s\) were masked", section)[1]) > 0
    assert (tmp_path / "demo" / "unmitigated" / "records").is_dir()


def test_report_audit_section_states_the_bound_and_plots_it(tmp_path):
    import torch

    from memwatch.demos.report import audit_section
    from memwatch.probe import ProbeResult

    rng = np.random.default_rng(0)
    inside = rng.random(40) < 0.5
    h = History([f"c{i}" for i in range(40)],
                [("canary", "canary:in" if x else "canary:out") for x in inside], cont_len=8)
    zero = torch.zeros(40, dtype=torch.int16)
    for k in range(3):
        nll = torch.tensor(rng.normal(4, 0.3, 40) - 2 * k * inside, dtype=torch.float32)
        h.update(10 * (k + 1), ProbeResult(zero.float(), zero == 8, zero, nll=nll), "exact")
    text = "\n".join(audit_section(h, tmp_path))
    assert "## Privacy audit (one run)" in text and f"{inside.sum()} planted" in text
    assert "is rejected at 95 % confidence" in text and "lower bound for these canaries" in text
    assert (tmp_path / "privacy_audit.png").read_bytes()[:4] == b"\x89PNG"
    assert audit_section(_history([[0, 1]], ["canary", "sample"]), tmp_path) == []


def test_the_demo_progress_bar_says_step_n_of_m_not_epoch_21_of_minus_2():
    from types import SimpleNamespace

    from tqdm import tqdm

    from memwatch.demos.lightning import StepProgressBar

    bar = StepProgressBar()
    bar.train_progress_bar = tqdm(total=10, disable=True)
    bar._describe(SimpleNamespace(global_step=21, max_steps=1500))
    assert bar.train_progress_bar.desc.startswith("step 21 of 1500")
    bar._describe(SimpleNamespace(global_step=21, max_steps=-1))
    assert bar.train_progress_bar.desc.startswith("step 21") and "of" not in \
        bar.train_progress_bar.desc
