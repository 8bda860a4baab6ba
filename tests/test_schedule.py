"""The probe schedule: fixed cadence, budget-bounded planning, persistence (pure, no timing)."""


import numpy as np
import pytest
import torch

from memwatch.schedule import EXACT_COST_GUESS, MAX_REGULAR_PROBES, Schedule


def simulate(schedule: Schedule, steps: int, step_seconds: float, probe_seconds: float):
    """Drive `schedule` through a run with constant costs; returns the probed steps."""
    probed = []
    for step in range(1, steps + 1):
        schedule.observe_training(step_seconds, 1)
        if schedule.due(step):
            schedule.observe_probe(step, "extractable", probe_seconds)
            probed.append(step)
    return probed


def test_every_n_steps_is_a_fixed_cadence():
    s = Schedule(every_n_steps=7)
    assert simulate(s, 50, 1.0, 100.0) == [7, 14, 21, 28, 35, 42, 49]


@pytest.mark.parametrize("probe_over_step", [0.5, 3.0, 8.0])
@pytest.mark.parametrize("total", [None, 20_000])
def test_overhead_stays_within_budget_after_the_first_probe(probe_over_step, total):
    s = Schedule(total_steps=total, max_overhead=0.01)
    probed = simulate(s, 20_000, 1.0, probe_over_step)
    assert probed[0] == 2  # the first probe, which measures the cost, after one timed step
    assert len(probed) > 2
    spent_after_first = (len(probed) - 1) * probe_over_step
    assert spent_after_first <= 0.01 * 20_000
    assert s.monitor_seconds == pytest.approx((len(probed) - 1) * probe_over_step)


def test_cheap_probes_are_log_spaced_early_and_regular_later():
    s = Schedule(total_steps=10_000, max_overhead=0.01)
    probed = simulate(s, 10_000, 1.0, 0.001)
    early = [p for p in probed if p < 64]
    assert early == [2, 4, 8, 16, 32]
    gaps = {int(g) for a, g in zip(probed, np.diff(probed), strict=False) if a >= 64}
    assert gaps == {10_000 // MAX_REGULAR_PROBES}


def test_expensive_probes_are_spaced_by_the_budget():
    s = Schedule(max_overhead=0.01)
    probed = simulate(s, 3000, 1.0, 5.0)
    gaps = np.diff(probed)
    assert all(g >= 400 for g in gaps[1:])  # 5 s of probing per 500 s of training


def test_exact_probe_reserve_delays_probes_when_the_run_length_is_known():
    known, unknown = Schedule(total_steps=100_000), Schedule()
    for s in (known, unknown):
        s.observe_training(100.0, 100)
        s.observe_probe(100, "extractable", 20.0)  # calibrates, outside the ledger
        s.observe_training(900.0, 900)
        s.observe_probe(1000, "extractable", 20.0)
    # the known-length run saves for the final exact probe (EXACT_COST_GUESS probes' worth)
    # in proportion to progress (1 %), at 0.01 s of budget per 1 s training step
    extra = EXACT_COST_GUESS * 20.0 * (1000 / 100_000) / 0.01
    assert known.next_step - unknown.next_step == pytest.approx(extra, abs=1)


def test_unknown_step_time_reprobes_next_step():
    s = Schedule()
    s.observe_probe(1, "extractable", 1.0)
    assert s.next_step == 2


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_overhead"):
        Schedule(max_overhead=0)
    with pytest.raises(ValueError, match="every_n_steps"):
        Schedule(every_n_steps=0)
    with pytest.raises(ValueError, match="total_steps"):
        Schedule(total_steps=-3)


def test_state_dict_round_trip(tmp_path):
    s = Schedule(total_steps=1000)
    simulate(s, 300, 0.2, 0.01)
    path = tmp_path / "schedule.pt"
    torch.save(s.state_dict(), path)
    fresh = Schedule(total_steps=1000)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert np.array_equal(fresh.ledger(), s.ledger(), equal_nan=True)
    assert [fresh.due(k) for k in range(300, 400)] == [s.due(k) for k in range(300, 400)]
    with pytest.raises(ValueError, match="lacks"):
        fresh.load_state_dict({"train_seconds": 1.0})


def test_first_probe_calibrates_outside_the_ledger():
    s = Schedule(total_steps=10_000, max_overhead=0.05)
    s.observe_training(0.2, 2)
    # a first probe of 0.05 s whose sinks spent 2 s setting up (a W&B run, say)
    s.observe_probe(2, "extractable", 2.05, compute_seconds=0.05)
    assert s.monitor_seconds == 0.0 and s.cost["extractable"] == 0.05
    assert s.next_step <= 32  # early, log-spaced probes are not pushed back by the set-up
    s.observe_training(3.0, s.next_step - 2)
    s.observe_probe(s.next_step, "extractable", 0.06, compute_seconds=0.05)
    assert s.monitor_seconds == pytest.approx(0.06)


def test_the_schedule_says_when_a_probe_is_exact_and_backs_off_after_a_failure():
    s = Schedule(total_steps=100, exact_every=3)
    assert s.mode(10, "extractable") == "extractable"
    s.probes = 2  # the third probe
    assert s.mode(10, "extractable") == "exact"
    s.probes = 3
    assert s.mode(99, "extractable") == "extractable" and s.mode(100, "extractable") == "exact"
    s.next_step = 12
    s.back_off(40)
    assert s.next_step == 60  # half the steps so far again
    fixed = Schedule(every_n_steps=5)
    fixed.back_off(40)
    assert fixed.next_step == 5  # a fixed cadence goes on
    with pytest.raises(ValueError, match="exact_every counts probes.*got 0"):
        Schedule(exact_every=0)
    with pytest.raises(ValueError, match="total_steps counts optimizer steps.*got 0"):
        s.total_steps = 0
