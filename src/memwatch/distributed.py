"""Probing under torch.distributed: one shard per rank, results gathered, rank 0 decides.

Every rank probes rows ``rank::world`` of the watchlist, padded to the same
length and cut into the same batch size, in lockstep (the same number of model
calls per batch whatever the rows), so sharded models (FSDP, ZeRO-3) never wait
on a rank that has finished; the results are all-gathered into watchlist order on every rank.
Rank 0's schedule ledger and abort decision are broadcast so that every rank
plans the same probe steps and stops at the same step, and `barrier` holds every
rank at the end of ``finish`` until rank 0 has ended its sinks. A probe that runs out of
memory or fails on any rank is retried with smaller batches, or skipped, by every rank
together (flags shared after each batch); `agree` lets the monitor check, once after a
resume, that every rank loaded the same state. Without an initialised process group
everything here is the single-process identity.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import numpy as np
import torch

from memwatch.measures import MIN_K
from memwatch.probe import ProbeResult, _auto_batch_size, probe, prompt_lengths

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


class ProbeFailed(RuntimeError):
    """A probe failed on at least one rank; raised on every rank, so that all skip it."""


def _any_rank(flags: list[bool], world: int) -> list[list[int]]:
    """For each flag, the ranks where it is set (every rank learns every rank's flags)."""
    local = torch.tensor([float(f) for f in flags], device=_device()) if world > 1 else None
    if local is None:
        return [[0] if f else [] for f in flags]
    parts = [torch.empty_like(local) for _ in range(world)]
    _collective(torch.distributed.all_gather, parts, local)
    table = torch.stack(parts).cpu()
    return [[r for r in range(world) if table[r, i]] for i in range(len(flags))]


def probe_sharded(model, tokens: torch.Tensor, prompt_len: int | tuple[int, ...],
                  cont_len: int, mode: str,
                  with_nll: bool, batch_size: int | None, min_k: float = MIN_K) -> ProbeResult:
    """Return the `ProbeResult` of all rows, each rank probing one shard (plain `probe` alone).

    The shard is probed in batches of `batch_size` rows (automatic when None). After every
    batch the ranks share two flags: if any rank ran out of memory, all halve the batch and
    retry it together; if any rank's probe raised anything else (or ran out of memory with
    one row), every rank raises `ProbeFailed` before the gather, so all skip this probe.
    """
    rank, world = rank_world()
    kwargs = dict(prompt_len=prompt_len, cont_len=cont_len, mode=mode, with_nll=with_nll,
                  min_k=min_k)
    idx = shard_indices(len(tokens), rank, world)
    shard = tokens[torch.from_numpy(idx)]
    bs = batch_size or _auto_batch_size(model, len(idx), max(prompt_lengths(prompt_len)) + cont_len)
    if world > 1 and batch_size is None:  # ranks may see different free memory: the smallest
        local = torch.tensor([bs], device=_device())
        _collective(torch.distributed.all_reduce, local, op=torch.distributed.ReduceOp.MIN)
        bs = int(local.item())
    parts, start = [], 0
    while start < len(shard):
        oom, error, part = False, None, None
        try:
            # lockstep: FSDP / ZeRO-3 gather parameters in every forward, so every rank must
            # call the model equally often whatever its rows memorize.
            part = probe(model, shard[start:start + bs], batch_size=bs, lockstep=world > 1,
                         **kwargs)
        except torch.OutOfMemoryError as err:
            oom, error = True, err
        except Exception as err:  # noqa: BLE001 - shared with every rank below, then raised
            error = err
        retry = oom and bs > 1
        oom_ranks, failed_ranks = _any_rank([retry, error is not None and not retry], world)
        if failed_ranks:
            where = f" on rank(s) {failed_ranks}" if world > 1 else ""
            what = f"{type(error).__name__}: {error}" if error is not None else \
                f"see the warning of rank {failed_ranks[0]}"
            raise ProbeFailed(f"the probe failed{where} ({what})") from error
        if oom_ranks:
            error = None  # its traceback holds the failed batch's tensors: free them first
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            bs //= 2  # every rank halves together and redoes the batch: they stay in lockstep
            continue
        parts.append(part)
        start += bs
    res = _per_row(parts, lambda name: torch.cat([getattr(p, name) for p in parts]))
    if world == 1:
        return res
    n = len(tokens)
    return _per_row([res], lambda name: _gather(getattr(res, name), n, world))


def _per_row(parts: list[ProbeResult], combine) -> ProbeResult:
    """A `ProbeResult` whose per-row tensor fields are ``combine(name)`` (None stays None)."""
    values = {}
    for f in dataclasses.fields(ProbeResult):
        first = getattr(parts[0], f.name)
        values[f.name] = combine(f.name) if isinstance(first, torch.Tensor) else first
    return ProbeResult(**values)


def broadcast_floats(values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank (the input itself without a process group)."""
    if rank_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    _collective(torch.distributed.broadcast, t, src=0)
    return t.cpu().tolist()


def agree(values: list[float]) -> bool:
    """True when every rank holds the same `values` (always, without a process group)."""
    if rank_world()[1] == 1:
        return True
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    both = torch.cat([t, -t])
    _collective(torch.distributed.all_reduce, both, op=torch.distributed.ReduceOp.MAX)
    return bool(torch.equal(both[: len(t)], -both[len(t):]))


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

