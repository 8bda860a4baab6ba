"""MemWatch in a plain PyTorch loop: detection, invisibility, abort, sinks, resume, validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from planted import CORPUS, STREAM, TAGS, M, N

from memwatch.demos.model import tiny_model
from memwatch.forecast import ForecastInputs, forecast
from memwatch.monitor import MemWatch
from memwatch.policy import AbortPolicy
from memwatch.probe import ProbeSpec, probe, reference_probe
from memwatch.sinks import LocalSink
from memwatch.sinks.base import Sink
from memwatch.sinks.local import read_records
from memwatch.watchlist import Watchlist

BATCH = 8
NO_ABORT = AbortPolicy(tags=())


class BrokenSink(Sink):
    def on_probe(self, record):
        raise ConnectionError("W&B is down")

    def on_alert(self, alert):
        raise ConnectionError("W&B is down")


pytestmark = pytest.mark.usefixtures("one_thread")


def watchlist() -> Watchlist:
    return Watchlist(CORPUS.rows, [f"row-{i}" for i in range(len(CORPUS.rows))], TAGS)


PROBE_SETTINGS = ("prompt_len", "cont_len", "mode", "with_nll", "batch_size")


def monitor(**kwargs) -> MemWatch:
    """A monitor on the test watchlist; the probe's settings may be given loose here."""
    spec = {"prompt_len": M, "cont_len": N, "mode": "extractable",
            **{k: kwargs.pop(k) for k in PROBE_SETTINGS if k in kwargs}}
    return MemWatch(watchlist(), **{"abort": NO_ABORT, "probe": ProbeSpec(**spec), **kwargs})


def fresh(dropout: float = 0.0):
    """The tiny model and its optimizer; `dropout` > 0 makes training consume the RNG."""
    model = tiny_model(seed=0, hidden_size=64, num_layers=2)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)


def train_step(model, opt, step: int) -> float:
    """One deterministic optimizer step; the batch depends only on `step` (resumable)."""
    model.train()
    idx = torch.arange((step - 1) * BATCH, step * BATCH) % len(STREAM)
    loss = model(input_ids=STREAM[idx], labels=STREAM[idx]).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def loop(model, opt, last: int, mon: MemWatch | None = None, first: int = 1):
    """Train steps first..last, calling the monitor after each; returns (losses, decisions)."""
    losses, decisions = [], []
    for step in range(first, last + 1):
        losses.append(train_step(model, opt, step))
        if mon is not None:
            decisions.append(mon.step(model, step))
            if decisions[-1].abort:
                break
    return losses, decisions


def test_detects_memorization_at_the_step_it_appears(recorder):
    rec = recorder()
    mon = monitor(every_n_steps=1, sinks=[rec])
    model, opt = fresh()
    _, decisions = loop(model, opt, 12, mon)
    # The same training without the monitor, scored the Pythia way after every step.
    ref_model, ref_opt = fresh()
    first = np.full(len(CORPUS.rows), -1)
    for step in range(1, 13):
        train_step(ref_model, ref_opt, step)
        hit = (reference_probe(ref_model, CORPUS.rows, M, N) == 1).numpy() & (first < 0)
        first[hit] = step
    assert (first > 1).sum() >= 3 and not (first == 1).any(), "memorization should take steps"
    np.testing.assert_array_equal(mon.history.first_memorized_step(), first)
    new = {d.step: set(d.newly_memorized) for d in decisions if d.newly_memorized}
    expected = {}
    for i, s in enumerate(first):
        if s > 0:
            expected.setdefault(int(s), set()).add(f"row-{i}")
    assert new == expected
    records = [x for e, x in rec.events if e == "probe"]
    assert [r.step for r in records] == list(range(1, 13))
    assert {r.step: {x.id for x in r.new_rows} for r in records if r.new_rows} == expected


def test_training_is_bit_identical_with_and_without_the_monitor():
    # Dropout makes the losses depend on the RNG stream and on the train/eval flags.
    torch.manual_seed(0)
    model_a, opt_a = fresh(dropout=0.1)
    losses_a, _ = loop(model_a, opt_a, 16)
    torch.manual_seed(0)
    model_b, opt_b = fresh(dropout=0.1)
    mon = monitor(every_n_steps=1, mode="exact", with_nll=True)
    losses_b, _ = loop(model_b, opt_b, 16, mon)
    assert len(mon.history) == 16
    assert losses_a == losses_b
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_abort_stops_the_loop_with_the_reason_and_alerts_in_order(recorder):
    rec = recorder()
    mon = monitor(every_n_steps=2, abort=AbortPolicy(tags=("canary",)), sinks=[rec])
    model, opt = fresh()
    _, decisions = loop(model, opt, 40, mon)
    stop = decisions[-1]
    assert stop.abort and stop.probed and stop.step < 40
    first_canary = [f"row-{i}" for i in range(4) if f"row-{i}" in stop.newly_memorized]
    assert first_canary and all(i in stop.reason for i in first_canary)
    assert stop.reason.startswith(f"step {stop.step}:") and "canary" in stop.reason
    assert not any(d.abort for d in decisions[:-1])
    tail = rec.kinds()[-(2 + len(first_canary)):]
    assert tail == [("probe", stop.step, tuple(sorted(stop.newly_memorized)))] + \
        [("alert", stop.step, "memorized")] * len(first_canary) + [("alert", stop.step, "abort")]
    alerts = [x for e, x in rec.events if e == "alert"]
    assert alerts[-1].level == "ERROR" and alerts[-1].text == stop.reason


def test_alerts_are_sent_once_per_row_and_the_final_probe_is_exact(recorder):
    rec = recorder()
    mon = monitor(every_n_steps=3, abort=AbortPolicy(tags=("canary",), action="alert"),
                  sinks=[rec])
    model, opt = fresh()
    _, decisions = loop(model, opt, 31, mon)
    assert not any(d.abort for d in decisions)
    final = mon.finish(model, 31)
    row_alerts = [x.row_ids[0] for e, x in rec.events if e == "alert" and x.kind == "memorized"]
    ever = mon.history.memorized.any(axis=0)
    assert len(row_alerts) >= 2
    assert sorted(row_alerts) == [f"row-{i}" for i in range(4) if ever[i]]  # each canary, once
    assert [k for k in rec.kinds() if k[0] == "alert" and k[2] == "abort"][:1]
    assert rec.events[-2:] == [("end", len(mon.history)), ("close", None)]  # finish closes
    assert final.probed and final.record.mode == "exact" and mon.history.modes[-1] == "exact"
    np.testing.assert_allclose(mon.history.scores[-1],
                               reference_probe(model, CORPUS.rows, M, N).numpy())
    assert mon.finish(model, 31).probed is False  # finishing twice does nothing
    mon.close()
    assert [e for e, _ in rec.events].count("close") == 1  # sinks are closed once


def test_record_metrics_and_redacted_previews(recorder):
    rec = recorder()
    previews = [f"<row {i} redacted>" for i in range(16)]
    wl = Watchlist(CORPUS.rows, [f"row-{i}" for i in range(16)], TAGS, previews=previews)
    mon = MemWatch(wl, every_n_steps=12, prompt_len=M, cont_len=N, abort=NO_ABORT,
                   sinks=[rec], total_steps=24)
    model, opt = fresh()
    loop(model, opt, 24, mon)
    records = [x for e, x in rec.events if e == "probe"]
    last = records[-1]
    assert last.mode == "exact"  # the probe at total_steps is the exact one
    res = probe(model, CORPUS.rows, M, N)
    mem = res.memorized.numpy()
    m = last.metrics
    assert m["memorized_count"] == mem.sum() and m["memorized_fraction"] == mem.mean()
    assert m["memorized_count/canary"] == mem[:4].sum()
    assert m["memorized_fraction/sample"] == pytest.approx(mem[4:].mean())
    assert m["mean_score"] == pytest.approx(float(res.scores.mean()))
    assert m["mean_match_prefix"] == pytest.approx(float(res.match_prefix.float().mean()))
    assert m["probe_seconds"] > 0 and m["overhead"] > 0
    direct = forecast(ForecastInputs(mon.history, 24, n_boot=0, with_risk=False))
    assert m["forecast/expected_final_memorized"] == pytest.approx(direct.tags["*"].final.expected)
    reports = [r for x in records for r in x.new_rows]
    assert reports and all(r.preview == previews[int(r.id[4:])] for r in reports)


def test_several_prompt_lengths_reach_the_history_and_the_records(recorder, tmp_path):
    rec = recorder()
    mon = monitor(prompt_len=(M // 2, M), every_n_steps=12, total_steps=24, sinks=[rec])
    model, opt = fresh()
    loop(model, opt, 24, mon)
    last = [x for e, x in rec.events if e == "probe"][-1]
    res = probe(model, CORPUS.rows, (M // 2, M), N)  # the final probe is exact
    np.testing.assert_array_equal(mon.history.scores_by_prompt_len[-1],
                                  res.scores_by_prompt_len.numpy())
    by_len = res.scores_by_prompt_len.numpy() == 1
    assert by_len[:, 1].sum() > by_len[:, 0].sum(), "no difference: the check below is weak"
    for j, m in enumerate((M // 2, M)):
        assert last.metrics[f"memorized_fraction_p{m}"] == by_len[:, j].mean()
        assert last.metrics[f"memorized_fraction_p{m}/canary"] == by_len[:4, j].mean()
    torch.save(mon.state_dict(), tmp_path / "mon.pt")
    back = monitor(prompt_len=(M, M // 2), every_n_steps=12)
    back.load_state_dict(torch.load(tmp_path / "mon.pt", weights_only=True))
    np.testing.assert_array_equal(back.history.scores_by_prompt_len,
                                  mon.history.scores_by_prompt_len)
    short = Watchlist(CORPUS.rows, [f"row-{i}" for i in range(16)], TAGS,
                      prompt_lens=[M] * 15 + [3])
    with pytest.raises(ValueError, match=r"'row-15' has a prompt of its own of 3 tokens"):
        MemWatch(short, probe=ProbeSpec((M // 2, M), N))


def test_default_schedule_probes_within_budget():
    mon = monitor(total_steps=60)
    model, opt = fresh()
    _, decisions = loop(model, opt, 60, mon)
    probed = [d.step for d in decisions if d.probed]
    assert probed[0] == 2 and probed == list(mon.history.steps)
    assert mon.schedule.train_seconds > 0 and mon.schedule.probes == len(probed)


def test_exact_every_nth_probe():
    mon = monitor(every_n_steps=2, exact_every=3)
    model, opt = fresh()
    loop(model, opt, 12, mon)
    assert mon.history.modes == ["extractable", "extractable", "exact"] * 2


def test_a_failing_sink_warns_once_per_hook_and_counts_at_finish(recorder):
    rec = recorder()
    mon = monitor(every_n_steps=2, abort=AbortPolicy(tags=("canary",), action="alert"),
                  sinks=[BrokenSink(), rec])
    model, opt = fresh()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop(model, opt, 20, mon)
        mon.finish(model, 20)
    ours = [str(w.message) for w in caught if "BrokenSink" in str(w.message)]
    probes = len([e for e, _ in rec.events if e == "probe"])
    alerts = len([e for e, _ in rec.events if e == "alert"])
    assert probes == 10 and alerts >= 1  # later sinks still called
    assert len(ours) == 3  # on_probe once, on_alert once, then the counts at finish
    assert "BrokenSink.on_probe failed" in ours[0] and "W&B is down" in ours[0]
    assert any("BrokenSink.on_alert failed" in w for w in ours[:2])
    assert f"BrokenSink: {probes} of {probes} probe records" in ours[2]
    assert f"{alerts} of {alerts} alerts" in ours[2]


def test_state_dict_round_trip(tmp_path):
    mon = monitor(every_n_steps=3, abort=AbortPolicy(tags=("canary",), action="alert"))
    model, opt = fresh()
    loop(model, opt, 24, mon)
    torch.save(mon.state_dict(), tmp_path / "mon.pt")
    fresh_mon = monitor(every_n_steps=3, abort=AbortPolicy(tags=("canary",), action="alert"))
    fresh_mon.load_state_dict(torch.load(tmp_path / "mon.pt", weights_only=True))
    a, b = mon.state_dict(), fresh_mon.state_dict()
    for key in ("steps", "match_prefix", "match_count", "nll"):
        torch.testing.assert_close(a["history"][key], b["history"][key], rtol=0, atol=0,
                                   equal_nan=True)
    assert a["alerts_sent"] == b["alerts_sent"] and a["alerts_sent"]
    np.testing.assert_equal(a["schedule"], b["schedule"])  # NaN costs equal NaN
    assert a["streak"] == b["streak"]
    other = Watchlist(CORPUS.rows, [f"x-{i}" for i in range(16)], TAGS)
    with pytest.raises(ValueError, match="different watchlist"):
        MemWatch(other, prompt_len=M, cont_len=N).load_state_dict(a)


def test_kill_and_resume_continues_the_history(tmp_path, recorder):
    policy = AbortPolicy(tags=("canary",), action="alert")
    # The uninterrupted run.
    rec_full = recorder()
    full = monitor(every_n_steps=4, abort=policy, sinks=[rec_full])
    model, opt = fresh()
    loop(model, opt, 32, full)
    # A run checkpointed at step 14, killed at step 18, resumed from the checkpoint.
    rec_a, rec_b = recorder(), recorder()
    first = monitor(every_n_steps=4, abort=policy, sinks=[rec_a, LocalSink(tmp_path / "log")])
    model, opt = fresh()
    loop(model, opt, 14, first)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "mon": first.state_dict()},
               tmp_path / "ckpt.pt")
    loop(model, opt, 18, first, first=15)  # probes at 16, then the process dies
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model, opt = fresh()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    resumed = monitor(every_n_steps=4, abort=policy, sinks=[rec_b, LocalSink(tmp_path / "log")])
    resumed.load_state_dict(ckpt["mon"])
    loop(model, opt, 32, resumed, first=15)
    steps = resumed.history.steps
    assert list(steps) == list(range(4, 33, 4)) and len(set(steps)) == len(steps)
    np.testing.assert_array_equal(resumed.history.match_prefix, full.history.match_prefix)
    sent_before = {x.row_ids for e, x in rec_a.events if e == "alert" and x.step <= 14}
    sent_after = {x.row_ids for e, x in rec_b.events if e == "alert"}
    assert sent_before and not sent_before & sent_after  # no alert is re-sent after resume
    full_alerts = [(x.step, x.kind, x.row_ids) for e, x in rec_full.events if e == "alert"]
    before = [(x.step, x.kind, x.row_ids) for e, x in rec_a.events if e == "alert"
              and x.step <= 14]
    after = [(x.step, x.kind, x.row_ids) for e, x in rec_b.events if e == "alert"]
    assert full_alerts == before + after
    # The local log: the probe at 16 appears once (the resumed run's), after a resume marker.
    records = read_records(tmp_path / "log")
    assert [r["step"] for r in records if r["event"] == "probe"] == list(range(4, 33, 4))
    assert [r["step"] for r in records if r["event"] == "resume"] == [12]


def test_watchlist_too_short_fails_at_construction():
    with pytest.raises(ValueError, match="'row-0' has 16 tokens; prompt_len \\+ cont_len = 64"):
        MemWatch(watchlist())


def test_token_outside_the_vocab_fails_before_training():
    rows = CORPUS.rows.clone()
    rows[5, 3] = 9999
    mon = MemWatch(Watchlist(rows, [f"row-{i}" for i in range(16)], TAGS), prompt_len=M,
                   cont_len=N)
    model, _ = fresh()
    with pytest.raises(ValueError, match="'row-5' has token id 9999 at position 3"):
        mon.check(model)


def test_the_probe_settings_given_loose_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="probe=ProbeSpec"):
        old = MemWatch(watchlist(), prompt_len=M, cont_len=N, with_nll=1, batch_size=4)
    assert old.spec == ProbeSpec(M, N, mode="extractable", with_nll=True, batch_size=4)
    assert MemWatch(watchlist(), probe=ProbeSpec(M, N)).spec.mode == "exact"
    with pytest.raises(TypeError, match="not beside it"):
        MemWatch(watchlist(), probe=ProbeSpec(M, N), mode="exact")
    with pytest.raises(TypeError, match="probe must be a ProbeSpec"):
        MemWatch(watchlist(), probe={"prompt_len": M})


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        monitor(mode="greedy")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        monitor(batch_size=0)  # the probe's settings are one ProbeSpec, checked up front
    with pytest.raises(ValueError, match="exact_every"):
        monitor(exact_every=0)
    with pytest.raises(TypeError, match="AbortPolicy"):
        monitor(abort={"tags": ("canary",)})
    with pytest.raises(TypeError, match="every_n_step"):
        monitor(every_n_step=3)


def test_forecast_runs_on_the_compute_clock_given():
    def lr_clock(steps):  # a learning rate decaying linearly to 0 at step 40, summed
        steps = np.asarray(steps, np.float64)
        return steps - steps**2 / 80

    mons = [monitor(every_n_steps=3, total_steps=40, clock=clock) for clock in (None, lr_clock)]
    for mon in mons:
        model, opt = fresh()
        _, decisions = loop(model, opt, 24, mon)
    assert mons[0].history.memorized[-1].sum() > 0
    last = decisions[-1].record.metrics["forecast/expected_final_memorized"]
    direct = forecast(ForecastInputs(mons[1].history, 40, n_boot=0, with_risk=False,
                                     compute=lr_clock))
    assert last == pytest.approx(direct.tags["*"].final.expected)
    on_steps = forecast(ForecastInputs(mons[1].history, 40, n_boot=0, with_risk=False))
    assert on_steps.tags["*"].final.expected != pytest.approx(last)
    with pytest.raises(ValueError, match="cumulative"):
        ForecastInputs(mons[1].history, 40, compute=lambda s: -np.asarray(s, np.float64))


def test_forecast_is_told_first_seen_steps_and_the_learning_rate():
    n = len(watchlist())
    first = np.where(np.arange(n) % 2 == 0, 0.0, np.inf)  # half the rows are never seen

    def lr(steps):  # constant, then a decay the probes below never reach
        return np.where(np.asarray(steps, np.float64) < 32, 1.0, 0.1)

    mon = monitor(every_n_steps=3, total_steps=40, first_seen=first, learning_rate=lr)
    model, opt = fresh()
    _, decisions = loop(model, opt, 24, mon)
    last = decisions[-1].record.metrics["forecast/expected_final_memorized"]
    direct = forecast(ForecastInputs(mon.history, 40, n_boot=0, with_risk=False,
                                     first_seen=first, learning_rate=lr))
    assert last == pytest.approx(direct.tags["*"].final.expected)
    assert direct.tags["*"].final.decay_ahead
    with pytest.raises(ValueError, match=f"first_seen gives each watchlist row's first "
                                         f"training step: {n} values; got shape \\(2,\\)"):
        monitor(first_seen=[1, 2])
    with pytest.raises(TypeError, match="learning_rate must be vectorised"):
        monitor(learning_rate=lambda step: 1.0)


def test_seen_records_exposures_that_ride_in_the_state_and_reach_the_forecast():
    mon = monitor(every_n_steps=3, total_steps=40)
    for step in range(1, 13):
        mon.seen([step % 4, 0], step)  # row 0 twice a step, rows 1-3 in turn
    exposures = mon.exposure_log.exposures()
    assert not exposures.complete
    assert exposures.counts(12)[:4].tolist() == [15, 3, 3, 3]
    assert exposures.first_seen()[:4].tolist() == [1.0, 1.0, 2.0, 3.0]
    resumed = monitor(every_n_steps=3, total_steps=40)
    resumed.load_state_dict(torch.load(_saved(mon.state_dict()), weights_only=True))
    again = resumed.exposure_log.exposures()
    assert (again.rows == exposures.rows).all() and (again.steps == exposures.steps).all()
    model, opt = fresh()
    _, decisions = loop(model, opt, 12, mon)
    assert "exposures" in mon._forecast().signals
    with pytest.raises(ValueError, match=r"watchlist indices in \[0, "):
        mon.seen([len(watchlist())], 13)


def _saved(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


# ---- never hurt the run ---------------------------------------------------------------------
def fail_probes(model, error, when) -> list[int]:
    """Make the model's eval-mode forwards (the probe's) raise `error` when `when(rows)`;
    training forwards run untouched. Returns the row counts of the forwards that raised."""
    raised: list[int] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not module.training and when(len(ids)):
            raised.append(len(ids))
            raise error

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return raised


def test_a_probe_that_raises_is_skipped_and_training_goes_on(recorder):
    rec = recorder()
    mon = monitor(every_n_steps=2, sinks=[rec])
    model, opt = fresh()
    broken = {"on": False}
    fail_probes(model, RuntimeError("cuDNN error: simulated"), lambda rows: broken["on"])
    decisions = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 11):
            train_step(model, opt, step)
            broken["on"] = step in (4, 6)
            decisions.append(mon.step(model, step))
        final = mon.finish(model, 11)
    ours = [str(w.message) for w in caught if "probe at step" in str(w.message)]
    assert len(ours) == 1 and "step 4 failed" in ours[0] and "cuDNN error: simulated" in ours[0]
    assert list(mon.history.steps) == [2, 8, 10, 11] and final.probed
    skipped = [d for d in decisions if d.alerts and d.alerts[0].kind == "probe_failed"]
    assert [d.step for d in skipped] == [4, 6] and not any(d.probed for d in skipped)
    failed = [x for e, x in rec.events if e == "alert" and x.kind == "probe_failed"]
    assert [(a.step, a.level) for a in failed] == [(4, "WARN"), (6, "WARN")]
    assert "cuDNN error: simulated" in failed[1].text and "2 failed so far" in failed[1].text


def test_a_probe_out_of_memory_halves_the_batch_then_skips(recorder):
    model, opt = fresh()
    train_step(model, opt, 1)
    expected = probe(model, CORPUS.rows, M, N).match_prefix
    raised = fail_probes(model, torch.OutOfMemoryError("CUDA out of memory (simulated)"),
                         lambda rows: rows > 4)
    for batch_size in (None, 8):  # automatic (16 rows on CPU) and explicit
        raised.clear()
        mon = monitor(every_n_steps=1, batch_size=batch_size)
        decision = mon.step(model, 1)
        assert decision.probed, batch_size
        torch.testing.assert_close(torch.from_numpy(mon.history.match_prefix[-1]).long(),
                                   expected.long())
        assert raised[0] == (16 if batch_size is None else 8) and set(raised) <= {16, 8}
        raised.clear()
        assert mon.step(model, 2).probed and not raised  # starts at the size that worked
    rec = recorder()
    mon = monitor(every_n_steps=1, sinks=[rec])
    fail_probes(model, torch.OutOfMemoryError("CUDA out of memory (simulated)"), lambda r: True)
    with pytest.warns(RuntimeWarning, match="step 1 failed.*OutOfMemoryError"):
        decision = mon.step(model, 1)
    assert not decision.probed and len(mon.history) == 0
    assert [a.kind for a in rec.of("alert")] == ["probe_failed"]


def test_a_step_counter_that_goes_back_warns_once():
    mon = monitor(every_n_steps=2)
    model, opt = fresh()
    loop(model, opt, 6, mon)
    with pytest.warns(RuntimeWarning, match="got step 1 after step 6 without a load_state_dict"):
        loop(model, opt, 6, mon)  # a second fit with the same monitor: the count restarts
    assert list(mon.history.steps) == [2, 4, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mon.load_state_dict(mon.state_dict())  # a resume explains a step going back
        loop(model, opt, 8, mon, first=5)
    assert list(mon.history.steps) == [2, 4, 6, 8]


def test_resume_rejects_other_lengths_and_inconsistent_history():
    mon = monitor(every_n_steps=2)
    model, opt = fresh()
    loop(model, opt, 6, mon)
    state = mon.state_dict()
    assert (state["prompt_len"], state["cont_len"]) == (M, N)
    with pytest.raises(ValueError, match="saved with prompt_len=8, cont_len=8; this monitor has "
                                         "prompt_len=8, cont_len=4"):
        monitor(cont_len=4).load_state_dict(state)
    with pytest.raises(ValueError, match="saved with prompt_len=8, cont_len=8; this monitor has "
                                         "prompt_len=6, cont_len=8"):
        monitor(prompt_len=6).load_state_dict(state)
    bad = {**state, "history": {**state["history"]}}
    bad["history"]["match_prefix"] = state["history"]["match_prefix"].clone()
    bad["history"]["match_prefix"][1, 3] = N + 5
    with pytest.raises(ValueError, match="match_prefix holds 13; with cont_len=8"):
        monitor().load_state_dict(bad)
    bad["history"]["match_prefix"] = state["history"]["match_prefix"][:2]
    with pytest.raises(ValueError, match=r"match_prefix has shape \(2, 16\); 3 steps x 16 rows"):
        monitor().load_state_dict(bad)


def test_a_tensor_the_model_caches_during_a_probe_does_not_break_the_next_backward():
    class LazyCacheLM(torch.nn.Module):
        """Scales embeddings by a per-length table built on first use (like a rotary cache)."""

        def __init__(self):
            super().__init__()
            self.emb, self.head = torch.nn.Embedding(512, 32), torch.nn.Linear(32, 512)
            self.table = None

        def get_output_embeddings(self):
            return self.head

        def forward(self, ids):
            if self.table is None or len(self.table) < ids.shape[1]:
                self.table = torch.linspace(1.0, 2.0, M + N)[:, None]
            return self.head(self.emb(ids) * self.table[: ids.shape[1]])

    model = LazyCacheLM()
    mon = MemWatch(watchlist(), prompt_len=M, cont_len=N, every_n_steps=1, abort=NO_ABORT)
    assert mon.step(model, 1).probed  # builds the table
    loss = torch.nn.functional.cross_entropy(model(STREAM[:4]).flatten(0, 1), STREAM[:4].flatten())
    loss.backward()  # inference_mode made the table an inference tensor: backward failed
    assert model.emb.weight.grad is not None


def test_bad_inputs_fail_before_training():
    wl = watchlist()
    with pytest.raises(TypeError, match="needs a Watchlist; got a Tensor.*from_tokens"):
        MemWatch(CORPUS.rows)
    with pytest.raises(ValueError, match="every_n_steps counts optimizer steps.*got 2.5"):
        monitor(every_n_steps=2.5)
    with pytest.raises(ValueError, match="total_steps counts optimizer steps.*got 0"):
        monitor(total_steps=0)
    with pytest.raises(ValueError,
                       match="prompt_len must be an integer >= 1 or a non-empty tuple.*got 0"):
        MemWatch(wl, prompt_len=0, cont_len=N)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1 or None.*got 0"):
        monitor(batch_size=0)
    with pytest.raises(TypeError, match="clock must be vectorised.*raised TypeError"):
        monitor(clock=lambda step: float(step) ** 0.5)
    with pytest.raises(TypeError, match="clock must be vectorised.*returned shape \\(\\)"):
        monitor(clock=lambda steps: 1.0)
    with pytest.warns(DeprecationWarning, match="compute=.*is deprecated: pass clock="):
        old = monitor(compute=lambda steps: 2.0 * steps)
    assert old.clock(np.array([3.0]))[0] == 6.0

    class Plain(torch.nn.Module):  # no config, no output embeddings
        def __init__(self, vocab=256):
            super().__init__()
            self.emb, self.proj = torch.nn.Embedding(vocab, 16), torch.nn.Linear(16, vocab)

        def forward(self, ids):
            return self.proj(self.emb(ids))

    # Token ids up to 511, an embedding of 256: memwatch either cannot tell the vocabulary
    # or reads it from the embedding; both say so before training, not with an IndexError.
    with pytest.raises(ValueError, match="vocabulary"):
        monitor().check(Plain())
    with torch.device("meta"):
        meta = tiny_model(seed=0, hidden_size=32, num_layers=1)
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM has its parameters on the meta"):
        monitor().check(meta)


def test_nan_weights_warn_instead_of_reporting_nothing_memorized():
    model, _ = fresh()
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(float("nan"))
    mon = monitor(every_n_steps=1)
    with pytest.warns(RuntimeWarning, match="logits are NaN at step 1 for 16 of 16 rows"):
        mon.step(model, 1)
    assert mon.history.memorized[-1].sum() == 0


def test_an_epsilon_budget_without_audit_canaries_or_nll_is_refused():
    audited = Watchlist.canaries(8, vocab_size=512, seed=0, audit=True)
    with pytest.raises(ValueError, match="needs audit canaries"):
        monitor(abort=AbortPolicy(max_epsilon=1.0))
    with pytest.raises(ValueError, match="can never act.*with_nll=True"):
        MemWatch(audited, abort=AbortPolicy(max_epsilon=1.0))
    with pytest.warns(RuntimeWarning, match="no audit/\\* metrics"):
        MemWatch(audited)
    MemWatch(audited, abort=AbortPolicy(max_epsilon=1.0),
             probe=ProbeSpec(mode="extractable", with_nll=True))
