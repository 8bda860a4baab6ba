"""Does the model after a resume reproduce the model that was saved? The resume self-check.

A checkpoint carries the monitor's history, and the history's last probe says how many
continuation tokens each row's model reproduced (``match_prefix``). Right after
``load_state_dict`` the monitor re-probes a sample of the rows that reproduced the most
(extractable mode: a prefill and a short verification each) and compares. Training
since that probe moves a few tokens; weights that were not restored (a freshly
initialised head, a model built but never loaded) lose nearly all of them. What
training explains is read off the same history: the largest share of reproduced
tokens the run ever lost between two consecutive probes, scaled up when more steps
separate the checkpoint's probe from the resume than separated those two.

Pure functions on arrays; `MemWatch` calls them and raises the ``resume_mismatch`` alert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_ROWS = 64  # rows re-probed after a resume: the cost of one small extractable probe
FLOOR = 0.5  # a resume may always lose up to half the tokens before it is called a mismatch


def resume_sample(match_prefix: np.ndarray, k: int = SAMPLE_ROWS) -> np.ndarray:
    """Indices (sorted) of at most `k` rows that reproduced the most tokens at the last probe.

    Rows that reproduced nothing say nothing about a lost model, so none is taken.
    """
    mp = np.asarray(match_prefix)
    order = np.argsort(-mp.astype(np.int64), kind="stable")[:k]
    return np.sort(order[mp[order] > 0])


@dataclass(frozen=True)
class ResumeComparison:
    """The resumed model against the last recorded probe, on the sampled rows.

    rows: rows compared; saved_tokens: continuation tokens they reproduced at the last
    recorded probe (step `saved_step`); lost_share: the share of those the resumed model
    no longer reproduces at `step`; allowed_share: the most that training since then
    explains (1.0: nothing can be told apart from training).
    """

    rows: int
    saved_tokens: int
    lost_share: float
    allowed_share: float
    saved_step: int
    step: int

    @property
    def mismatch(self) -> bool:
        """True when the resumed model lost more than training explains."""
        return self.allowed_share < 1.0 and self.lost_share > self.allowed_share

    def describe(self) -> str:
        return (f"{self.rows} rows reproduced {self.saved_tokens} continuation tokens at step "
                f"{self.saved_step}; at step {self.step}, after the resume, "
                f"{self.lost_share:.0%} of them are gone (training since explains up to "
                f"{self.allowed_share:.0%})")


def _lost(before: np.ndarray, after: np.ndarray) -> float:
    total = before.sum()
    return float(np.clip(before - after, 0, None).sum() / total) if total else 0.0


def compare_resumed(history_prefix: np.ndarray, history_steps: np.ndarray,
                    resumed_prefix: np.ndarray, step: int,
                    min_tokens: int = 8) -> ResumeComparison | None:
    """Compare the resumed model's `resumed_prefix` [k] at `step` with the history's.

    `history_prefix` [P, k]: the recorded match_prefix of the same k rows at the P
    probes `history_steps` (the last one is the saved model's). None when the sampled
    rows reproduced fewer than `min_tokens` tokens at that probe (nothing to tell).
    """
    prefix = np.asarray(history_prefix, dtype=np.int64)
    steps = np.asarray(history_steps, dtype=np.int64)
    saved = prefix[-1]
    if saved.sum() < min_tokens:
        return None
    since = max(1, int(step) - int(steps[-1]))
    allowed = FLOOR
    for i in range(1, len(prefix)):
        gap = max(1, int(steps[i] - steps[i - 1]))
        allowed = max(allowed, _lost(prefix[i - 1], prefix[i]) * max(1.0, since / gap))
    return ResumeComparison(rows=len(saved), saved_tokens=int(saved.sum()),
                            lost_share=_lost(saved, np.asarray(resumed_prefix, np.int64)),
                            allowed_share=min(1.0, allowed), saved_step=int(steps[-1]),
                            step=int(step))
