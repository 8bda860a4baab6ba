"""The resume self-check: a resumed model that does not reproduce the saved one is flagged."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from memwatch.monitor import MemWatch
from memwatch.policy import AbortPolicy
from memwatch.resume import FLOOR, compare_resumed, resume_sample
from memwatch.watchlist import Watchlist

MISMATCH = "does not reproduce the model that was saved: weights not restored?"


def test_sample_takes_the_rows_that_reproduced_most_and_none_that_reproduced_nothing():
    mp = np.array([0, 5, 32, 1, 0, 32, 7], dtype=np.uint8)
    assert resume_sample(mp, k=3).tolist() == [2, 5, 6]
    assert resume_sample(mp).tolist() == [1, 2, 3, 5, 6]
    assert resume_sample(np.zeros(4, np.uint8)).tolist() == []


def test_a_model_that_lost_everything_is_a_mismatch_and_one_that_trained_on_is_not():
    steps = np.array([10, 20, 30])
    hist = np.array([[8, 2, 0], [8, 4, 1], [8, 6, 3]])  # growing, as a training run does
    lost = compare_resumed(hist, steps, np.array([0, 0, 0]), step=31)
    assert lost.mismatch and lost.lost_share == 1.0 and lost.allowed_share == FLOOR
    assert "17 continuation tokens at step 30" in lost.describe()
    assert not compare_resumed(hist, steps, np.array([8, 5, 3]), step=31).mismatch
    assert not compare_resumed(hist, steps, np.array([8, 7, 4]), step=31).mismatch


def test_what_training_explains_grows_with_the_steps_since_the_checkpoint():
    steps = np.array([10, 20])
    hist = np.array([[8, 8], [4, 8]])  # the run once lost a quarter of its tokens in 10 steps
    resumed = np.array([0, 4])  # 2/3 of the 12 saved tokens lost
    assert compare_resumed(hist, steps, resumed, step=21).mismatch  # allowed 0.5
    far = compare_resumed(hist, steps, resumed, step=50)  # 30 steps: allowed 3 x 0.25
    assert far.allowed_share == pytest.approx(0.75) and not far.mismatch
    # so many steps that even everything lost is explained: never a mismatch
    assert not compare_resumed(hist, steps, np.zeros(2), step=1000).mismatch


def test_too_few_saved_tokens_tell_nothing():
    assert compare_resumed(np.array([[2, 1]]), np.array([5]), np.array([0, 0]), step=6) is None


# ---- MemWatch: a lost head after load_state_dict ---------------------------------------------


@pytest.fixture()
def saved(trained):
    """A monitor's state after one probe of the trained fixture (rows memorized), and its rows."""
    wl = Watchlist.from_tokens(trained.rows)
    mon = MemWatch(wl, every_n_steps=5, abort=AbortPolicy(tags=()))
    mon.step(trained.model, 5)
    assert mon.history.match_prefix[-1].sum() > 100
    return wl, mon.state_dict()


def _resumed(wl, state, recorder):
    rec = recorder()
    mon = MemWatch(wl, every_n_steps=5, abort=AbortPolicy(tags=()), sinks=[rec])
    mon.load_state_dict(state)
    return mon, rec


def test_a_faithful_resume_raises_nothing(trained, saved, recorder):
    wl, state = saved
    mon, rec = _resumed(wl, state, recorder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decision = mon.step(copy.deepcopy(trained.model), 6)
    assert decision.alerts == () and rec.of("alert") == []


def test_a_lost_head_after_resume_warns_once_and_alerts(trained, saved, recorder):
    wl, state = saved
    model = copy.deepcopy(trained.model)
    head = model.get_output_embeddings().weight  # not restored: a fresh draw
    with torch.no_grad():
        head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(123)) * 0.02)
    mon, rec = _resumed(wl, state, recorder)
    with pytest.warns(RuntimeWarning, match=MISMATCH):
        decision = mon.step(model, 6)
    assert [a.kind for a in decision.alerts] == ["resume_mismatch"]
    alert = rec.of("alert")[0]
    assert alert.level == "ERROR" and MISMATCH in alert.text and alert.step == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        later = [mon.step(model, s) for s in (7, 10)]  # checked once per resume
    assert not any(a.kind == "resume_mismatch" for d in later for a in d.alerts)
    assert len(rec.of("alert")) == 1 and len(mon.history) == 2
