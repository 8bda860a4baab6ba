import io

import numpy as np
import pytest
import torch
from probe_results import probe_result

from memwatch.history import History


def _result(prefix, counts, nll=None, N=4, nll_first=None, log_pz=None):
    return probe_result(prefix, np.asarray(counts) / N, nll, nll_first, cont_len=N,
                        log_pz=log_pz)


def _history(probes=20):
    h = History(["a", "b", "c"], [("pii:EMAIL",), ("canary",), ()], cont_len=4)
    for k in range(probes):  # row a memorized from probe 5, b from probe 12, c never
        a, b = (4 if k >= 5 else 1), (4 if k >= 12 else 0)
        h.update(10 * (k + 1), _result([a, b, 2], [a, b, 3], [0.5, 1.0, 2.0],
                                       nll_first=[0.25, 3.0, 1.5],
                                       log_pz=[-1e-7 * k, -2.5, -90.0]), "exact")
    return h


def test_derived_views_and_growth():
    h = _history(20)  # past the initial capacity of 8, twice
    assert len(h) == 20 and h.steps.tolist() == [10 * (k + 1) for k in range(20)]
    assert h.match_prefix.dtype == np.uint8 and h.match_prefix.shape == (20, 3)
    assert h.memorized[:, 0].tolist() == [k >= 5 for k in range(20)]
    assert h.scores[0].tolist() == [0.25, 0.0, 0.75]
    assert h.first_memorized_step().tolist() == [60, 130, -1]
    assert h.tag_mask("pii:*").tolist() == [True, False, False]
    np.testing.assert_allclose(h.nll[-1], [0.5, 1.0, 2.0])
    # log p_z kept in float32: a memorized row's -1.9e-6 is not rounded to 0
    assert h.log_pz.dtype == np.float32
    np.testing.assert_allclose(h.log_pz[-1], [-1.9e-6, -2.5, -90.0], rtol=1e-6)


def test_missing_nll_is_nan_and_steps_must_increase():
    h = History(["a"], [()], cont_len=4)
    h.update(5, _result([1], [1]), "extractable")
    assert np.isnan(h.nll).all() and np.isnan(h.log_pz).all()
    with pytest.raises(ValueError, match="already has a probe at step 5"):
        h.update(5, _result([1], [1]), "extractable")
    with pytest.raises(ValueError, match="2 rows, history has 1"):
        h.update(6, _result([1, 1], [1, 1]), "extractable")


def test_state_dict_round_trip_loads_without_pickle():
    h = _history(11)
    buf = io.BytesIO()
    torch.save(h.state_dict(), buf)
    buf.seek(0)
    back = History(h.ids, h.tags, cont_len=h.cont_len)
    back.load_state_dict(torch.load(buf, weights_only=True))
    for name in ("steps", "match_prefix", "scores", "memorized", "nll", "nll_first", "log_pz"):
        np.testing.assert_array_equal(getattr(back, name), getattr(h, name))
    assert back.modes == h.modes and back.tags == h.tags
    back.update(1000, _result([4, 4, 4], [4, 4, 4]), "exact")  # keeps growing after a load
    assert len(back) == 12


def test_the_nll_signal_is_the_continuations_when_measured_else_the_first_tokens():
    h = _history(3)
    np.testing.assert_allclose(h.nll_first[-1], [0.25, 3.0, 1.5])
    np.testing.assert_array_equal(h.nll_signal(), h.nll)
    h.update(40, _result([4, 0, 2], [4, 0, 3], nll_first=[0.5, 2.5, 1.5]), "extractable")
    np.testing.assert_array_equal(h.nll_signal(), h.nll_first)  # the latest probe lacks it
    assert np.isnan(History(["a"], [()], cont_len=4).nll_signal()).all()


def test_a_state_saved_before_nll_first_loads_with_it_unmeasured():
    state = _history(4).state_dict()
    del state["nll_first"], state["log_pz"]
    back = History(state["ids"], state["tags"], cont_len=state["cont_len"])
    back.load_state_dict(state)
    assert back.nll_first.shape == (4, 3) and np.isnan(back.nll_first).all()
    assert back.log_pz.shape == (4, 3) and np.isnan(back.log_pz).all()
    np.testing.assert_array_equal(back.nll, _history(4).nll)


def test_load_into_a_different_watchlist_is_refused():
    with pytest.raises(ValueError, match="different watchlist"):
        History(["x", "y", "z"], [(), (), ()], cont_len=4).load_state_dict(_history(2).state_dict())


def test_head_is_what_was_known_then():
    h = _history(20)
    early = h.head(6)
    assert len(early) == 6 and early.steps[-1] == 60
    assert early.first_memorized_step().tolist() == [60, -1, -1]
    np.testing.assert_array_equal(early.nll_first, h.nll_first[:6])
    np.testing.assert_array_equal(early.log_pz, h.log_pz[:6])
    early.update(61, _result([0, 0, 0], [0, 0, 0]), "extractable")
    assert len(h) == 20  # the original is untouched


def test_zero_rows_history():
    h = History([], [], cont_len=4)
    h.update(1, _result([], []), "extractable")
    assert h.memorized.shape == (1, 0) and h.first_memorized_step().shape == (0,)


def test_scores_at_several_prompt_lengths_are_kept_saved_and_cut():
    from dataclasses import replace

    def result(by_len):  # counts at prompt lengths (2, 3, 4); the last column is the score
        by_len = torch.tensor(by_len, dtype=torch.float32) / 4
        return replace(_result((by_len[:, -1] * 4).int().tolist(), (by_len[:, -1] * 4).tolist()),
                       prompt_lens=(2, 3, 4), scores_by_prompt_len=by_len)

    h = History(["a", "b"], [(), ()], cont_len=4, prompt_lens=(4, 2, 3))
    assert h.prompt_lens == (2, 3, 4)
    for k in range(10):  # past the initial capacity of 8
        h.update(k + 1, result([[1, 4, 4], [0, k % 3, 3]]), "exact")
    assert h.scores_by_prompt_len.shape == (10, 2, 3)
    np.testing.assert_array_equal(h.scores_by_prompt_len[-1], [[0.25, 1, 1], [0, 0, 0.75]])
    np.testing.assert_array_equal(h.scores_by_prompt_len[:, :, -1], h.scores)
    np.testing.assert_array_equal(h.scores_by_prompt_len[:, 1, 1], [k % 3 / 4 for k in range(10)])
    assert h.memorized_by_prompt_len[-1].tolist() == [[False, True, True], [False] * 3]
    np.testing.assert_array_equal(h.head(4).scores_by_prompt_len, h.scores_by_prompt_len[:4])
    buf = io.BytesIO()
    torch.save(h.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    back = History(h.ids, h.tags, cont_len=4, prompt_lens=(2, 3, 4))
    back.load_state_dict(state)
    np.testing.assert_array_equal(back.scores_by_prompt_len, h.scores_by_prompt_len)
    with pytest.raises(ValueError, match=r"prompt lengths \(2, 3, 4\); this one keeps them at "
                                         r"\(3, 4\)"):
        History(h.ids, h.tags, cont_len=4, prompt_lens=(3, 4)).load_state_dict(state)
    with pytest.raises(ValueError, match=r"scores_by_prompt_len of shape None"):
        h.update(11, _result([1, 1], [1, 1]), "exact")
    single = _history(3)  # one prompt length: nothing more is kept
    assert single.scores_by_prompt_len.shape == (3, 3, 1) and single._count_short.nbytes == 0
