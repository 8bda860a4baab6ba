"""AbortPolicy and evaluate(): triggers, patience, alert-once, actions (pure, on a History)."""

from dataclasses import dataclass

import pytest
import torch

from memwatch.forecast import FinalCount
from memwatch.history import History
from memwatch.policy import AbortPolicy, evaluate
from memwatch.probe import ProbeResult

N = 8
IDS = ["c0", "c1", "p0", "s0", "s1", "s2"]
TAGS = [("canary",), ("canary",), ("pii:EMAIL_ADDRESS",), ("sample",), ("sample",), ("sample",)]


def add_probe(h: History, rows: set[str]) -> History:
    """Append a probe at the next step (10, 20, ...) with the named rows memorized."""
    prefix = torch.tensor([N if i in rows else 1 for i in IDS], dtype=torch.int16)
    h.update(10 * (len(h) + 1), ProbeResult(prefix.float() / N, prefix == N, prefix,
                                             mode="extractable"), "extractable")
    return h


def history(*memorized_sets: set[str]) -> History:
    """A history with one probe per set, the named rows memorized at it."""
    h = History(IDS, TAGS, cont_len=N)
    for rows in memorized_sets:
        add_probe(h, rows)
    return h


def run(policy: AbortPolicy, *memorized_sets: set[str], **kwargs):
    """Evaluate after every probe, carrying sent keys and streak, as the monitor does."""
    h, verdicts, sent, streak = History(IDS, TAGS, cont_len=N), [], frozenset(), 0
    for rows in memorized_sets:
        v = evaluate(policy, add_probe(h, rows), sent, streak, **kwargs)
        sent, streak = v.sent, v.streak
        verdicts.append(v)
    return verdicts


def test_watched_rows_alert_once_each_and_abort():
    v = run(AbortPolicy(), set(), {"s0"}, {"c1"}, {"c1", "p0"}, {"c1", "p0"})
    assert [x.abort for x in v] == [False, False, True, True, True]
    kinds = [[(a.kind, a.row_ids) for a in x.alerts] for x in v]
    assert kinds == [[], [], [("memorized", ("c1",)), ("abort", ())],
                     [("memorized", ("p0",))], []]
    assert "step 30" in v[2].reason and "c1" in v[2].reason and "canary" in v[2].reason


def test_untagged_memorization_is_not_a_trigger_by_default():
    v = run(AbortPolicy(), {"s0", "s1", "s2"})
    assert not v[0].abort and v[0].alerts == ()


def test_patience_counts_consecutive_probes():
    v = run(AbortPolicy(patience=3), {"c0"}, set(), {"c0"}, {"c0"}, {"c0"})
    assert [x.abort for x in v] == [False, False, False, False, True]
    assert [x.streak for x in v] == [1, 0, 1, 2, 3]
    # the row alert is immediate; only the abort waits
    assert [a.kind for a in v[0].alerts] == ["memorized"]


def test_max_fraction_per_pattern():
    policy = AbortPolicy(tags=(), max_fraction={"sample": 0.5, "*": 0.9})
    v = run(policy, {"s0"}, {"s0", "s1"}, {"s0", "s1", "s2"})
    assert [x.abort for x in v] == [False, True, True]
    assert [a.kind for a in v[1].alerts] == ["fraction", "abort"]
    assert "'sample' is 0.667 > 0.5" in v[1].reason


def test_alert_action_never_aborts():
    v = run(AbortPolicy(action="alert"), {"c0"})
    assert not v[0].abort
    assert [(a.kind, a.level) for a in v[0].alerts] == [("memorized", "WARN"), ("abort", "WARN")]


@dataclass(frozen=True)
class _Tag:
    memorized_now: float
    expected_final_memorized: float
    expected_final_low: float
    expected_final_high: float

    @property
    def final(self) -> FinalCount:
        return FinalCount(self.expected_final_memorized, self.expected_final_low,
                          self.expected_final_high)


@dataclass(frozen=True)
class _Forecast:
    tags: dict


def test_forecast_budget():
    fc = _Forecast({"*": _Tag(1, 4.2, 3, 6), "sample": _Tag(1, 2.0, 1, 3)})
    h = history({"s0"})
    over = evaluate(AbortPolicy(tags=(), forecast_budget=3), h, forecast=fc)
    assert over.abort and "4 rows memorized by the end" in over.reason
    assert [a.kind for a in over.alerts] == ["forecast", "abort"]
    under = evaluate(AbortPolicy(tags=(), forecast_budget={"sample": 2}), h, forecast=fc)
    assert not under.abort
    assert not evaluate(AbortPolicy(tags=(), forecast_budget=3), h).abort  # no forecast yet


@pytest.mark.parametrize("key", ["*", "pii:*", "pii:EMAIL*", "pii:EMAIL_ADDRESS"])
def test_a_forecast_budget_key_is_a_pattern_like_every_other_key(key):
    fc = _Forecast({"*": _Tag(1, 9.0, 7, 12), "pii:EMAIL_ADDRESS": _Tag(1, 4.0, 3, 6),
                    "pii:PHONE_NUMBER": _Tag(0, 2.0, 1, 3), "canary": _Tag(0, 3.0, 2, 4)})
    v = evaluate(AbortPolicy(tags=(), forecast_budget={key: 3}), history(set()), forecast=fc)
    assert v.abort and f"rule forecast_budget[{key!r}]" in v.reason
    expected = {"*": 9, "pii:*": 6, "pii:EMAIL*": 4, "pii:EMAIL_ADDRESS": 4}[key]
    assert f"{expected} rows memorized by the end" in v.reason


def test_policy_keys_are_checked_against_the_watchlist_tags():
    AbortPolicy(tags=("pii:*",), max_fraction={"*": 0.1}, actions={"canary": "mask"},
                forecast_budget={"sample": 1}).check(TAGS)
    AbortPolicy().check([("sample",)])  # the default tags name no row here: not an error
    with pytest.raises(ValueError, match=r"'Sample' names no watchlist row \(tags are "
                                         r"case-sensitive"):
        AbortPolicy(tags=(), actions={"Sample": "alert"}).check(TAGS)
    with pytest.raises(ValueError, match="needs the forecast"):
        AbortPolicy(forecast_budget=3).check(TAGS, None, run_length=True)
    AbortPolicy(forecast_budget=3).check(TAGS, 100, run_length=True)


def test_alert_text_has_ids_tags_and_preview_only():
    v = evaluate(AbortPolicy(), history({"p0"}), preview=lambda i: f"<redacted {i}>")
    text = v.alerts[0].text
    assert "p0" in text and "pii:EMAIL_ADDRESS" in text and "<redacted 2>" in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(action="halt"), "action"),
    (dict(patience=0), "patience"),
    (dict(max_fraction={"sample": 1.5}), "max_fraction"),
    (dict(forecast_budget={"*": -1}), "forecast_budget"),
])
def test_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AbortPolicy(**kwargs)


def test_single_tag_string_is_one_pattern():
    assert AbortPolicy(tags="canary").tags == ("canary",)


def _audit_history(separation: float, probes: int = 2) -> History:
    """64 audit canaries (half in), scored by NLL: the in half `separation` nats lower."""
    import numpy as np

    rng = np.random.default_rng(0)
    inside = rng.random(64) < 0.5
    h = History([f"c{i}" for i in range(64)],
                [("canary", "canary:in" if x else "canary:out") for x in inside], cont_len=N)
    for _ in range(probes):
        nll = torch.tensor(rng.normal(5, 0.3, 64) - separation * inside, dtype=torch.float32)
        prefix = torch.zeros(64, dtype=torch.int16)
        h.update(10 * (len(h) + 1), ProbeResult(prefix.float(), prefix == N, prefix, nll=nll,
                                                 mode="exact"), "exact")
    return h


def test_max_epsilon_aborts_when_the_audit_passes_the_budget():
    from memwatch.audit import audit_metrics

    separated = _audit_history(separation=3.0)
    eps = audit_metrics(separated)["audit/epsilon_lb"]
    assert eps > 0.5
    v = evaluate(AbortPolicy(tags=(), max_epsilon=eps - 0.1), separated)
    assert v.abort and "rule max_epsilon" in v.reason
    assert [a.kind for a in v.alerts] == ["epsilon", "abort"]
    assert not evaluate(AbortPolicy(tags=(), max_epsilon=eps + 0.1), separated).abort
    assert not evaluate(AbortPolicy(tags=(), max_epsilon=0.0), _audit_history(0.0)).abort
    with pytest.raises(ValueError, match="privacy budget"):
        AbortPolicy(max_epsilon=-1)
