"""How extractable a row is: the measures one teacher-forced pass gives, defined once.

A row is a prompt x (M tokens) and its true continuation z (N tokens); the probe's
teacher-forced pass gives log p(z_t | x, z_<t) for every continuation token t. From
those token log-probs (``token_logprobs``, float [n, N]):

- ``log_pz`` -- log p_z, the continuation's log-probability: the sum of the true
  tokens' log-probs (Hayes et al. 2024, "Measuring memorization through probabilistic
  discoverability"). Kept in log space: p_z underflows float32 for most rows.
- ``min_k_logprob`` -- min-k % log-probability: the mean of the k % lowest token
  log-probs of the continuation, k = 20 % by default (Shi et al., ICLR 2024,
  "Detecting pretraining data from large language models"); ``max(1, floor(k N))``
  tokens, the paper's ``int(len * k)`` kept at least one.
- ``zlib_ratio`` -- the continuation's log-perplexity (its mean NLL in nats per token)
  over the zlib-compressed size, in bytes, of its token ids written as little-endian
  uint32 (4 bytes per token; `zlib_bytes`) (Carlini et al., USENIX Security 2021,
  "Extracting training data from large language models"). The paper compresses the
  decoded text; the probe sees token ids only, so the ids are what is compressed: low
  values still flag a continuation the model finds easier than its compressibility says.
- (n, p)-discoverable extraction (Hayes et al. 2024): a row is (n, p)-extractable when
  n independent samples reproduce z with probability at least p,
  ``1 - (1 - p_z)^n >= p``; `extraction_rates` gives the fraction of rows that are, over
  a grid of n and p, and `draws_needed` the smallest such n per row.

Greedy extraction (``ProbeResult.memorized``) is a different event: every true token is
the argmax, while p_z itself can still be small.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch

MIN_K = 0.2  # Shi et al. 2024: k = 20 % in the main results
# Draws n and probabilities p of the (n, p) grids memwatch reports by default: W&B per tag
# (`WANDB_DRAWS` x `WANDB_PROBS`, kept small) and the reports' curves (`CURVE_DRAWS` x
# `CURVE_PROBS`; Levanter's defaults for p).
WANDB_DRAWS = (1, 100, 10_000)
WANDB_PROBS = (0.5, 0.9)
CURVE_DRAWS = tuple(2 ** k for k in range(0, 61, 4))  # 1 ... 2^60
CURVE_PROBS = (0.1, 0.5, 0.9, 0.99, 0.999)


def log_pz(token_logprobs: torch.Tensor) -> torch.Tensor:
    """float32 [n]: log p_z, the sum of the continuation's true-token log-probs [n, N]."""
    return token_logprobs.double().sum(dim=1).float()


def min_k_count(cont_len: int, k: float = MIN_K) -> int:
    """How many tokens min-k % averages over a continuation of `cont_len` tokens."""
    return max(1, int(cont_len * k))


def min_k_logprob(token_logprobs: torch.Tensor, k: float = MIN_K) -> torch.Tensor:
    """float32 [n]: mean of the k % lowest token log-probs of each row (Shi et al. 2024)."""
    check_min_k(k)
    count = min_k_count(token_logprobs.shape[1], k)
    lowest = torch.topk(token_logprobs.float(), count, dim=1, largest=False).values
    return lowest.mean(dim=1)


def check_min_k(k: float) -> None:
    """Raise unless 0 < k <= 1 (a fraction, not a percentage)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
        raise ValueError(f"min_k is the fraction of lowest token log-probs to average, in "
                         f"(0, 1] (0.2 for 20 %); got {k!r}")


def zlib_bytes(cont: torch.Tensor) -> torch.Tensor:
    """int64 [n]: zlib-compressed size (default level) of each row's token ids as LE uint32."""
    ids = cont.detach().cpu().numpy().astype("<u4")
    return torch.tensor([len(zlib.compress(row.tobytes())) for row in ids], dtype=torch.int64)


def zlib_ratio(nll: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """float32 [n]: mean continuation NLL (nats/token) over `zlib_bytes` of the continuation."""
    return (nll.float() / zlib_bytes(cont).float()).float()


# ---- (n, p)-discoverable extraction (Hayes et al. 2024) -------------------------------------


def _log1m_pz(log_pz) -> np.ndarray:
    """float64: log(1 - p_z) from log p_z without cancellation (Maechler's log1mexp)."""
    x = np.minimum(np.asarray(log_pz, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore"):
        return np.where(x > -math.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _as_array(values, name: str, lo: float, hi: float, lo_open: bool, hi_open: bool):
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    bad = (arr <= lo if lo_open else arr < lo) | (arr >= hi if hi_open else arr > hi)
    if arr.ndim != 1 or bad.any() or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be numbers in {'(' if lo_open else '['}{lo}, {hi}"
                         f"{')' if hi_open else ']'}; got {values!r}")
    return arr


def extraction_rates(log_pz, n: Sequence[float] | float = CURVE_DRAWS,
                     p: Sequence[float] | float = CURVE_PROBS) -> np.ndarray:
    """float64 [len(n), len(p)]: fraction of rows (n, p)-extractable (Hayes et al. 2024).

    A row is (n, p)-extractable when ``1 - (1 - p_z)^n >= p``, decided in log space as
    ``n log(1 - p_z) <= log(1 - p)`` (log(1 - p_z) by log1p/expm1), so that n up to
    2^60 and p_z near 0 or 1 stay exact where the direct formula rounds to 0 or 1.
    `log_pz` is float [rows] (`ProbeResult.log_pz`); NaN rows (not measured) are dropped.
    """
    lp = np.asarray(log_pz, dtype=np.float64).reshape(-1)
    lp = lp[~np.isnan(lp)]
    draws = _as_array(n, "n", 1, math.inf, False, True)
    probs = _as_array(p, "p", 0, 1, True, True)
    if not len(lp):
        return np.full((len(draws), len(probs)), np.nan)
    lhs = draws[:, None] * _log1m_pz(lp)[None, :]  # [len(n), rows]; -inf where p_z = 1
    return (lhs[:, :, None] <= np.log1p(-probs)[None, None, :]).mean(axis=1)


def draws_needed(log_pz, p: float = 0.5) -> np.ndarray:
    """float64 [rows]: the fewest samples n with 1 - (1 - p_z)^n >= p (inf when p_z = 0).

    ``n = ceil(log(1 - p) / log(1 - p_z))`` (Hayes et al. 2024), at least 1, computed in
    log space like `extraction_rates` (exact up to 2^50 draws, to float64's relative
    precision beyond).
    """
    (prob,) = _as_array(p, "p", 0, 1, True, True)
    log_q = _log1m_pz(np.atleast_1d(np.asarray(log_pz, dtype=np.float64)))
    never = log_q == 0  # p_z = 0 (or below float64's reach): no number of draws suffices
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.maximum(1.0, np.ceil(np.log1p(-prob) / np.where(never, -1.0, log_q)))
    return np.where(never, np.inf, np.where(np.isnan(log_q), np.nan, n))


def np_key(n: float, p: float) -> str:
    """Metric name of the (n, p) rate: ``extractable_n100_p90`` for n = 100, p = 0.9."""
    return f"extractable_n{int(n)}_p{100 * p:g}"


def extraction_summary(log_pz, n: Sequence[float] = WANDB_DRAWS,
                       p: Sequence[float] = WANDB_PROBS) -> dict[str, float]:
    """``mean_pz`` (mean p_z over the measured rows) and each (n, p) rate, by `np_key` name.

    Empty when no row was measured (every `log_pz` NaN).
    """
    lp = np.asarray(log_pz, dtype=np.float64).reshape(-1)
    lp = lp[~np.isnan(lp)]
    if not len(lp):
        return {}
    rates = extraction_rates(lp, n, p)
    out = {"mean_pz": float(np.exp(lp).mean())}
    for i, draws in enumerate(n):
        for j, prob in enumerate(p):
            out[np_key(draws, prob)] = float(rates[i, j])
    return out
