"""Per-probe, per-row results of a run: the monitor's memory.

Compact by construction: a probe of n rows costs 10n bytes (match_prefix and
match_count as uint8, the two NLLs as float16, log p_z as float32: float16 cannot tell
a memorized row's log p_z of -1e-6 from 0), so 100k rows x 200 probes is 200 MB, plus n
bytes per shorter prompt length when the probe has several (their match counts).
`memorized` and `scores` are derived, never stored beside what they derive from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from memwatch.probe import CONT_LEN, MODES, PROMPT_LEN, prompt_lengths
from memwatch.watchlist.tags import tag_mask

_NO_NLL = np.float16(np.nan)
_NO_LOG_PZ = np.float32(np.nan)


class History:
    """Accumulates `ProbeResult`s step by step (``update``); answers are derived.

    ``prompt_lens``: the probe's prompt lengths (`ProbeSpec.prompt_lens`); with several, each
    probe's `ProbeResult.scores_by_prompt_len` is kept too (`scores_by_prompt_len`).
    """

    def __init__(self, ids: Sequence[str], tags: Sequence[Sequence[str]], cont_len: int = CONT_LEN,
                 span_tokens: Sequence[int | None] | None = None,
                 prompt_lens: int | Sequence[int] = PROMPT_LEN):
        if cont_len > 255:
            raise ValueError(f"History stores counts as uint8; cont_len={cont_len} exceeds 255")
        if span_tokens is not None and len(span_tokens) != len(ids):
            raise ValueError(f"{len(span_tokens)} span_tokens for {len(ids)} rows")
        self.ids = list(ids)
        # Tokens of each row's PII (0: the row has none, and never leaks); see `leaked`.
        self.span_tokens = np.array([0 if s is None else int(s) for s in span_tokens]
                                    if span_tokens is not None else np.zeros(len(self.ids)),
                                    dtype=np.int64)
        self.tags = [tuple(t) for t in tags]
        self._tag_masks: dict[str, np.ndarray] = {}
        self.cont_len = int(cont_len)
        self.prompt_lens = prompt_lengths(prompt_lens)
        self.reset()

    def reset(self) -> None:
        n = len(self.ids)
        self._len = 0
        self._steps = np.zeros(0, dtype=np.int64)
        self._modes: list[str] = []
        self._prefix = np.zeros((0, n), dtype=np.uint8)
        self._count = np.zeros((0, n), dtype=np.uint8)
        self._nll = np.zeros((0, n), dtype=np.float16)
        self._nll_first = np.zeros((0, n), dtype=np.float16)
        self._log_pz = np.zeros((0, n), dtype=np.float32)
        # match counts with the shorter prompt lengths (the longest's is _count)
        self._count_short = np.zeros((0, n, len(self.prompt_lens) - 1), dtype=np.uint8)

    def __len__(self) -> int:
        return self._len

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    def _grow(self) -> None:
        cap = max(8, 2 * len(self._steps))
        n = self.num_rows

        def grow(a: np.ndarray, fill, *shape) -> np.ndarray:
            out = np.full((cap, *shape), fill, dtype=a.dtype)
            out[: self._len] = a[: self._len]
            return out

        self._steps = grow(self._steps, -1)
        self._prefix = grow(self._prefix, 0, n)
        self._count = grow(self._count, 0, n)
        self._nll = grow(self._nll, _NO_NLL, n)
        self._nll_first = grow(self._nll_first, _NO_NLL, n)
        self._log_pz = grow(self._log_pz, _NO_LOG_PZ, n)
        self._count_short = grow(self._count_short, 0, n, len(self.prompt_lens) - 1)

    def update(self, step: int, result, mode: str) -> None:
        """Append one probe's `ProbeResult` taken at training `step` (steps strictly increase)."""
        if self._len and step <= self._steps[self._len - 1]:
            raise ValueError(
                f"History already has a probe at step {int(self._steps[self._len - 1])}; "
                f"got step {step} (steps must increase)"
            )
        if len(result.match_prefix) != self.num_rows:
            raise ValueError(
                f"probe result has {len(result.match_prefix)} rows, history has {self.num_rows}"
            )
        by_len = getattr(result, "scores_by_prompt_len", None)
        if len(self.prompt_lens) > 1 and (by_len is None or tuple(by_len.shape) !=
                                          (self.num_rows, len(self.prompt_lens))):
            raise ValueError(f"the history keeps scores at prompt lengths {self.prompt_lens}; "
                             f"the probe result has scores_by_prompt_len of shape "
                             f"{None if by_len is None else tuple(by_len.shape)}")
        if self._len == len(self._steps):
            self._grow()
        i = self._len
        self._steps[i] = step
        self._modes.append(mode)
        self._prefix[i] = _np(result.match_prefix).astype(np.uint8)
        counts = np.rint(_np(result.scores).astype(np.float64) * self.cont_len)
        self._count[i] = counts.astype(np.uint8)
        self._nll[i] = _NO_NLL if result.nll is None else _np(result.nll).astype(np.float16)
        first = getattr(result, "nll_first", None)
        self._nll_first[i] = _NO_NLL if first is None else _np(first).astype(np.float16)
        log_pz = getattr(result, "log_pz", None)
        self._log_pz[i] = _NO_LOG_PZ if log_pz is None else _np(log_pz).astype(np.float32)
        if len(self.prompt_lens) > 1:
            short = np.rint(_np(by_len)[:, :-1].astype(np.float64) * self.cont_len)
            self._count_short[i] = short.astype(np.uint8)
        self._len += 1

    # ---- derived views (read-only) ---------------------------------------------------------
    @property
    def steps(self) -> np.ndarray:
        """int64 [P]: training step of each probe."""
        return self._steps[: self._len]

    @property
    def modes(self) -> list[str]:
        """Probe mode ("exact" / "extractable") of each probe."""
        return list(self._modes)

    @property
    def match_prefix(self) -> np.ndarray:
        """uint8 [P, n]: tokens reproduced before the first mismatch."""
        return self._prefix[: self._len]

    @property
    def memorized(self) -> np.ndarray:
        """bool [P, n]: the whole continuation reproduced (score == 1)."""
        return self.match_prefix == self.cont_len

    @property
    def leaked(self) -> np.ndarray:
        """bool [P, n]: the row's PII reproduced verbatim (``match_prefix >= span_tokens``);
        False for rows without a PII span."""
        return (self.match_prefix >= self.span_tokens) & (self.span_tokens > 0)

    @property
    def scores(self) -> np.ndarray:
        """float32 [P, n]: Pythia score (exact probes) or match_prefix / N (extractable)."""
        return self._count[: self._len].astype(np.float32) / self.cont_len

    @property
    def scores_by_prompt_len(self) -> np.ndarray:
        """float32 [P, n, len(prompt_lens)]: the score with each prompt length, ascending (the
        last is `scores`; `ProbeResult.scores_by_prompt_len`)."""
        counts = np.concatenate([self._count_short[: self._len],
                                 self._count[: self._len, :, None]], axis=2)
        return counts.astype(np.float32) / self.cont_len

    @property
    def memorized_by_prompt_len(self) -> np.ndarray:
        """bool [P, n, len(prompt_lens)]: memorized (score == 1) with each prompt length."""
        return self.scores_by_prompt_len == 1.0

    @property
    def nll(self) -> np.ndarray:
        """float32 [P, n]: mean continuation NLL; NaN where the probe did not compute it."""
        return self._nll[: self._len].astype(np.float32)

    @property
    def nll_first(self) -> np.ndarray:
        """float32 [P, n]: NLL of the first continuation token; NaN where not measured."""
        return self._nll_first[: self._len].astype(np.float32)

    @property
    def log_pz(self) -> np.ndarray:
        """float32 [P, n]: log p_z, the continuation's log-probability (Hayes et al. 2024;
        `memwatch.measures`); NaN where the probe did not measure it (``with_nll=False``)."""
        return self._log_pz[: self._len]

    def nll_signal(self) -> np.ndarray:
        """float32 [P, n]: the NLL the forecast follows. The continuation's mean NLL when
        the latest probe measured it (``with_nll=True``), else the first token's NLL,
        which every probe measures almost free (NaN where neither was measured)."""
        nll = self.nll
        if self._len and np.isfinite(nll[-1]).all():
            return nll
        return self.nll_first

    def tag_mask(self, pattern: str) -> np.ndarray:
        """bool [n]: the rows `pattern` names (see `memwatch.watchlist.tags`: ``"*"`` is
        every row, ``pii:*`` every row with a tag starting ``pii:``)."""
        # The monitor and the policy ask for the same patterns at every probe; rows and tags
        # never change, so each pattern is matched against every row once.
        mask = self._tag_masks.get(pattern)
        if mask is None:
            mask = tag_mask(self.tags, pattern)
            mask.setflags(write=False)
            self._tag_masks[pattern] = mask
        return mask

    def first_memorized_step(self) -> np.ndarray:
        """int64 [n]: step of the first probe that found each row memorized, -1 if never."""
        mem = self.memorized
        hit = mem.any(axis=0)
        first = np.where(hit, self.steps[mem.argmax(axis=0)] if len(self) else -1, -1)
        return first.astype(np.int64)

    def head(self, k: int) -> History:
        """A new History holding only the first `k` probes (what was known back then)."""
        h = History(self.ids, self.tags, cont_len=self.cont_len, span_tokens=self.span_tokens,
                    prompt_lens=self.prompt_lens)
        h._steps = self._steps[:k].copy()
        h._modes = self._modes[:k]
        h._prefix = self._prefix[:k].copy()
        h._count = self._count[:k].copy()
        h._nll = self._nll[:k].copy()
        h._nll_first = self._nll_first[:k].copy()
        h._log_pz = self._log_pz[:k].copy()
        h._count_short = self._count_short[:k].copy()
        h._len = len(h._steps)
        return h

    # ---- persistence: tensors and plain types only, loadable with weights_only=True ---------
    def state_dict(self) -> dict:
        return {
            "ids": list(self.ids),
            "tags": [list(t) for t in self.tags],
            "cont_len": self.cont_len,
            "span_tokens": torch.from_numpy(self.span_tokens.copy()),
            "steps": torch.from_numpy(self.steps.copy()),
            "modes": list(self._modes),
            "match_prefix": torch.from_numpy(self.match_prefix.copy()),
            "match_count": torch.from_numpy(self._count[: self._len].copy()),
            "nll": torch.from_numpy(self._nll[: self._len].copy()),
            "nll_first": torch.from_numpy(self._nll_first[: self._len].copy()),
            "log_pz": torch.from_numpy(self.log_pz.copy()),
            "prompt_lens": list(self.prompt_lens),
            "match_count_short": torch.from_numpy(self._count_short[: self._len].copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["ids"]) != self.ids:
            raise ValueError(
                "saved history was recorded on a different watchlist "
                f"({len(state['ids'])} rows, first id {state['ids'][:1]}); "
                f"this one has {self.num_rows} rows, first id {self.ids[:1]}"
            )
        saved = tuple(state.get("prompt_lens", self.prompt_lens[-1:]))
        if len(self.prompt_lens) > 1 and saved != self.prompt_lens:
            raise ValueError(f"saved history kept scores at prompt lengths {saved}; this one "
                             f"keeps them at {self.prompt_lens}: build it with the saved lengths")
        _check_arrays(state)
        self.cont_len = int(state["cont_len"])
        if "span_tokens" in state:  # saved before memwatch knew PII spans: keep the current
            self.span_tokens = state["span_tokens"].numpy().astype(np.int64).copy()
        self._steps = state["steps"].numpy().astype(np.int64).copy()
        self._modes = list(state["modes"])
        self._prefix = state["match_prefix"].numpy().astype(np.uint8).copy()
        self._count = state["match_count"].numpy().astype(np.uint8).copy()
        self._nll = state["nll"].numpy().astype(np.float16).copy()
        if "nll_first" in state:
            self._nll_first = state["nll_first"].numpy().astype(np.float16).copy()
        else:  # saved before memwatch measured it
            self._nll_first = np.full(self._nll.shape, _NO_NLL, dtype=np.float16)
        if "log_pz" in state:
            self._log_pz = state["log_pz"].numpy().astype(np.float32).copy()
        else:  # saved before memwatch measured it
            self._log_pz = np.full(self._nll.shape, _NO_LOG_PZ, dtype=np.float32)
        self._count_short = state["match_count_short"].numpy().astype(np.uint8).copy() \
            if len(self.prompt_lens) > 1 else np.zeros((*self._nll.shape, 0), dtype=np.uint8)
        self._len = len(self._steps)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_arrays(hist: dict) -> None:
    """Raise naming the field if a saved history's arrays disagree in shape or range."""
    steps, cont_len = hist["steps"], int(hist["cont_len"])
    k, n = len(steps), len(hist["ids"])
    if len(hist["modes"]) != k or any(m not in MODES for m in hist["modes"]):
        raise ValueError(f"saved history has {len(hist['modes'])} modes {hist['modes'][:3]}... "
                         f"for {k} steps; each must be one of {MODES}")
    for key in ("match_prefix", "match_count", "nll", "nll_first"):
        if key in hist and tuple(hist[key].shape) != (k, n):
            raise ValueError(f"saved history's {key} has shape {tuple(hist[key].shape)}; "
                             f"{k} steps x {n} rows needs ({k}, {n})")
    short = hist.get("match_count_short")
    if short is not None and tuple(short.shape[:2]) != (k, n):
        raise ValueError(f"saved history's match_count_short has shape {tuple(short.shape)}; "
                         f"{k} steps x {n} rows needs ({k}, {n}, lengths - 1)")
    for key in ("match_prefix", "match_count", "match_count_short"):
        if key not in hist:
            continue
        values = np.asarray(hist[key])
        if values.size and (int(values.min()) < 0 or int(values.max()) > cont_len):
            raise ValueError(f"saved history's {key} holds {int(values.max())}; with "
                             f"cont_len={cont_len} it must lie in [0, {cont_len}]")
