"""Real `ProbeResult`s from plain numbers, for tests that feed a `History` by hand."""

from __future__ import annotations

import numpy as np
import torch

from memwatch.probe import ProbeResult


def probe_result(match_prefix, scores=None, nll=None, nll_first=None, cont_len: int = 32,
                 mode: str = "exact", log_pz=None) -> ProbeResult:
    """The `ProbeResult` of rows with these `match_prefix` values (int [n]); `scores`
    (default match_prefix / cont_len), `nll`, `nll_first` and `log_pz` (float [n]) as given."""
    prefix = torch.as_tensor(np.asarray(match_prefix), dtype=torch.int16)
    scores = prefix.float() / cont_len if scores is None else torch.as_tensor(
        np.asarray(scores), dtype=torch.float32)

    def floats(x):
        return None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.float32)

    return ProbeResult(scores=scores, memorized=prefix == cont_len, match_prefix=prefix,
                       nll=floats(nll), mode=mode, nll_first=floats(nll_first),
                       log_pz=floats(log_pz))
