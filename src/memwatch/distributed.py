"""Probing under torch.distributed: one shard per rank, results gathered, rank 0 decides.

Every rank probes rows ``rank::world`` of the watchlist, padded to the same
length and cut into the same batch size, in lockstep (the same number of model
calls per batch whatever the rows), so sharded models (FSDP, ZeRO-3) never wait
on a rank that has finished; the results are all-gathered into watchlist order on every rank.
Rank 0's schedule ledger and abort decision are broadcast so that every rank
plans the same probe steps and stops at the same step, and `barrier` holds every
rank at the end of ``finish`` until rank 0 has ended its sinks. Without an initialised
process group everything here is the single-process identity.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch

from memwatch.probe import ProbeResult, _auto_batch_size, probe

# The latest collectives' work handles (and through them their tensors); see `_collective`.
# A few suffice: a worker thread lags behind its caller by microseconds, not by collectives.
_FINISHED_WORK: deque = deque(maxlen=8)


def _collective(collective, /, *args, **kwargs) -> None:
    """Run `collective` (a torch.distributed function) to completion; keep its work alive.

    Gloo's worker thread drops its reference to a work only after the caller has woken
    up. If that is the last reference, the work's tensors are freed on the worker thread,
    which must take the GIL, and when the interpreter is already exiting (a script
    that ends right after `finish`) the process aborts with "terminate called without an
    active exception". Holding the latest works here means the main thread frees them,
    later, with the GIL.
    """
    work = collective(*args, async_op=True, **kwargs)
    work.wait()
    _FINISHED_WORK.append(work)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world: int) -> np.ndarray:
    """int64 [ceil(n / world)]: rows ``rank::world``, padded by repeating a row to equal length."""
    per = math.ceil(n / world)
    idx = np.arange(rank, n, world, dtype=np.int64)
    pad = np.full(per - len(idx), idx[0] if len(idx) else 0, dtype=np.int64)
    return np.concatenate([idx, pad])


def _device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather(x: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """Every rank's `x` [per, ...], put back in watchlist order ([n, ...], padding dropped)."""
    dev = _device()
    wide = x.to(torch.int64 if not x.dtype.is_floating_point else torch.float32).to(dev)
    parts = [torch.empty_like(wide) for _ in range(world)]
    _collective(torch.distributed.all_gather, parts, wide.contiguous())
    # Rank r's j-th row is watchlist row r + j * world: interleave the ranks' rows.
    merged = torch.stack(parts, dim=1).flatten(0, 1)[:n]
    return merged.cpu().to(x.dtype)


def probe_sharded(model, tokens: torch.Tensor, prompt_len: int, cont_len: int, mode: str,
                  with_nll: bool, batch_size: int | None) -> ProbeResult:
    """Return the `ProbeResult` of all rows, each rank probing one shard (plain `probe` alone)."""
    rank, world = rank_world()
    kwargs = dict(prompt_len=prompt_len, cont_len=cont_len, mode=mode, with_nll=with_nll)
    if world == 1:
        return probe(model, tokens, batch_size=batch_size, **kwargs)
    idx = shard_indices(len(tokens), rank, world)
    if batch_size is None:  # ranks may see different free memory: agree on the smallest batch
        local = torch.tensor([_auto_batch_size(model, len(idx), prompt_len + cont_len)],
                             device=_device())
        _collective(torch.distributed.all_reduce, local, op=torch.distributed.ReduceOp.MIN)
        batch_size = int(local.item())
    # lockstep: FSDP / ZeRO-3 gather parameters in every forward, so every rank must call the
    # model equally often whatever its rows memorize.
    res = probe(model, tokens[torch.from_numpy(idx)], batch_size=batch_size, lockstep=True,
                **kwargs)
    n = len(tokens)
    prefix = _gather(res.match_prefix, n, world)
    return ProbeResult(
        scores=_gather(res.scores, n, world),
        memorized=prefix == cont_len,
        match_prefix=prefix,
        nll=None if res.nll is None else _gather(res.nll, n, world),
        greedy=None if res.greedy is None else _gather(res.greedy, n, world),
        mode=res.mode,
        nll_first=_gather(res.nll_first, n, world),
    )


def broadcast_floats(values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank (the input itself without a process group)."""
    if rank_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    _collective(torch.distributed.broadcast, t, src=0)
    return t.cpu().tolist()


def broadcast_ints(values: list[int]) -> list[int]:
    """Rank 0's `values`, of any length, on every rank (the input itself without a process
    group)."""
    rank, world = rank_world()
    if world == 1:
        return list(values)
    n = int(broadcast_floats([float(len(values))])[0])
    if n == 0:
        return []
    t = torch.tensor(list(values) if rank == 0 else [0] * n, dtype=torch.int64, device=_device())
    _collective(torch.distributed.broadcast, t, src=0)
    return t.cpu().tolist()


def barrier() -> None:
    """Every rank waits here until all have arrived (nothing without a process group).

    An all-reduce on the backend's device rather than ``dist.barrier()``, which under
    NCCL guesses a GPU when the process has not set one.
    """
    if rank_world()[1] == 1:
        return
    _collective(torch.distributed.all_reduce, torch.zeros(1, device=_device()))


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's `flag` on every rank."""
    return bool(broadcast_floats([float(flag)])[0])
