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

from memwatch.probe import BatchSize, ProbeResult, ProbeSpec, _probe

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


class _Ranks:
    """What `memwatch.probe._batched` asks of the ranks between batches (see there)."""

    def __init__(self, world: int):
        self.world = world

    def smallest(self, bs: int) -> int:
        """The smallest of the ranks' batch sizes (ranks may see different free memory)."""
        if self.world == 1:
            return bs
        local = torch.tensor([bs], device=_device())
        _collective(torch.distributed.all_reduce, local, op=torch.distributed.ReduceOp.MIN)
        return int(local.item())

    def share(self, retry: bool, error: BaseException | None) -> bool:
        """True when some rank ran out of memory (all redo the batch smaller); raises
        `ProbeFailed` on every rank when some rank failed otherwise."""
        oom_ranks, failed_ranks = _any_rank([retry, error is not None], self.world)
        if failed_ranks:
            where = f" on rank(s) {failed_ranks}" if self.world > 1 else ""
            what = f"{type(error).__name__}: {error}" if error is not None else \
                f"see the warning of rank {failed_ranks[0]}"
            raise ProbeFailed(f"the probe failed{where} ({what})") from error
        return bool(oom_ranks)


def probe_sharded(model, tokens: torch.Tensor, spec: ProbeSpec,
                  sizer: BatchSize | None = None) -> ProbeResult:
    """Return the `ProbeResult` of all rows, each rank probing one shard (plain `probe` alone).

    The shard is probed in batches sized by `sizer` (`BatchSize(spec.batch_size)` when None;
    pass the same one to every probe so that it remembers a size that ran out of memory).
    After every batch the ranks share two flags: if any rank ran out of memory, all halve the
    batch and retry it together; if any rank's probe raised anything else (or ran out of
    memory with one row), every rank raises `ProbeFailed` before the gather, so all skip it.
    """
    rank, world = rank_world()
    idx = shard_indices(len(tokens), rank, world)
    shard = tokens[torch.from_numpy(idx)]
    sizer = BatchSize(spec.batch_size) if sizer is None else sizer
    # lockstep: FSDP / ZeRO-3 gather parameters in every forward, so every rank must call the
    # model equally often whatever its rows memorize.
    res = _probe(model, shard, spec, sizer, lockstep=world > 1, ranks=_Ranks(world))
    if world == 1:
        return res
    n = len(tokens)
    values = {}  # every per-row tensor field gathered (the measures too); the rest as is
    for f in dataclasses.fields(ProbeResult):
        value = getattr(res, f.name)
        values[f.name] = _gather(value, n, world) if isinstance(value, torch.Tensor) else value
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

