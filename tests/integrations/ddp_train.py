"""Tiny distributed training runs with MemWatch on CPU (gloo), driven by test_ddp.py.

    torchrun --nproc_per_node 2 ddp_train.py plain OUT       # raw torch.distributed loop
    torchrun --nproc_per_node 2 ddp_train.py faults OUT      # probe failures, a bad resume
    torchrun --nproc_per_node 2 ddp_train.py mask OUT        # rank 0's flagged rows, a resume
    python ddp_train.py lightning OUT DEVICES                 # Lightning, strategy="ddp"

Each rank writes ``OUT/rank<r>.pt`` (tensors and plain types): the monitor's
state, what its recording sink received, the plain loop's decisions, and an
unsharded probe of the same weights at every probe step.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from memwatch.demos.model import tiny_model
from memwatch.monitor import MemWatch
from memwatch.policy import AbortPolicy
from memwatch.probe import probe
from memwatch.sinks.base import Sink
from memwatch.watchlist import Watchlist

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for the shared planted rows
from planted import CORPUS, STREAM, M, N  # noqa: E402

BATCH = 8  # global batch: every rank takes BATCH / world of it
ROWS = 15  # an odd count, so that the shards need padding


class Counter(Sink):
    def __init__(self):
        self.events: list[str] = []

    def on_probe(self, record):
        self.events.append(f"probe:{record.step}")

    def on_alert(self, alert):
        self.events.append(f"alert:{alert.kind}:{alert.step}")

    def on_end(self, history, watchlist):
        self.events.append(f"end:{len(history)}")


class SlowEnd(Sink):
    """Rank 0's sinks end slowly; `marker` exists once they have."""

    def __init__(self, marker: Path):
        self.marker = marker

    def on_end(self, history, watchlist):
        time.sleep(1.0)
        self.marker.touch()


def monitor(*sinks: Sink, **kwargs) -> MemWatch:
    tags = [("canary",)] * 4 + [("sample",)] * (ROWS - 4)
    wl = Watchlist(CORPUS.rows[:ROWS], [f"row-{i}" for i in range(ROWS)], tags)
    return MemWatch(wl, prompt_len=M, cont_len=N, sinks=list(sinks), **kwargs)


def plain(out: str) -> None:
    """A DDP loop on the default (time-budgeted) schedule, stopped by the abort policy."""
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    model = tiny_model(seed=0, hidden_size=64, num_layers=2)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.0)
    sink, marker = Counter(), Path(out) / "sinks-ended"
    mon = monitor(sink, SlowEnd(marker), total_steps=200, max_overhead=0.5,
                  abort=AbortPolicy(tags=("canary",), patience=2))
    decisions, unsharded = [], []
    for step in range(1, 201):
        idx = torch.arange((step - 1) * BATCH, step * BATCH) % len(STREAM)
        batch = STREAM[idx[rank::world]]
        loss = ddp(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        d = mon.step(ddp, step)
        decisions.append([d.step, d.probed, d.abort, d.reason])
        if d.probed:
            unsharded.append(probe(model, CORPUS.rows[:ROWS], M, N, mode=d.record.mode).scores)
        if d.abort:
            break
    mon.finish(ddp, step)
    torch.save({"state": mon.state_dict(), "decisions": decisions, "events": sink.events,
                "unsharded": torch.stack(unsharded), "sinks_ended": marker.exists()},
               os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def faults(out: str) -> None:
    """Rank 1's probe runs out of memory above 4 rows, and raises at step 4; then a resume
    that loads the monitor's state on rank 0 only."""
    import warnings

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    model = tiny_model(seed=0, hidden_size=64, num_layers=2).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.0)
    failing = {"step": 0}

    def hook(module, args, kwargs):  # the probe runs the unwrapped model in eval mode
        rows = len(kwargs.get("input_ids", args[0] if args else None))
        if module.training or rank != 1:
            return
        if rows > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if failing["step"] == 4:
            raise RuntimeError("simulated failure on rank 1")

    model.register_forward_pre_hook(hook, with_kwargs=True)
    sink = Counter()
    mon = monitor(sink, every_n_steps=2, abort=AbortPolicy(tags=()))
    decisions, unsharded = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 9):
            batch = STREAM[torch.arange((step - 1) * BATCH, step * BATCH) % len(STREAM)]
            loss = ddp(input_ids=batch[rank::2], labels=batch[rank::2]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            failing["step"] = step
            d = mon.step(ddp, step)
            decisions.append([d.step, d.probed, [a.kind for a in d.alerts]])
            if d.probed and rank == 0:
                unsharded.append(probe(model, CORPUS.rows[:ROWS], M, N,
                                       mode=d.record.mode).match_prefix)
        resumed = monitor(every_n_steps=2, abort=AbortPolicy(tags=()))
        if rank == 0:  # the mistake: every rank must load it
            resumed.load_state_dict(mon.state_dict())
        try:
            resumed.step(ddp, 9)
            error = ""
        except RuntimeError as err:
            error = str(err)
    torch.save({"state": mon.state_dict(), "decisions": decisions, "events": sink.events,
                "unsharded": unsharded, "warnings": [str(w.message) for w in caught],
                "resume_error": error}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def mask(out: str) -> None:
    """Masking under a process group. Rank 1's own policy is made to flag nothing, so what it
    masks can only come from rank 0's broadcast. Steps 1-12 train with masked labels; then
    the run resumes from step 8's checkpoint (weights, optimizer, monitor) to step 16."""
    import copy
    import dataclasses
    import io

    import memwatch.monitor as monitor_module

    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if rank == 1:
        own = monitor_module.evaluate
        monitor_module.evaluate = lambda *a, **k: dataclasses.replace(own(*a, **k), flagged=())
    model = tiny_model(seed=0, hidden_size=64, num_layers=2)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=3e-3, weight_decay=0.0)
    policy = AbortPolicy(tags=(), actions={"*": "mask"})
    rows = CORPUS.rows[:ROWS]
    log, alerts, checkpoint = [], [], None

    def train(mon, steps):
        nonlocal checkpoint
        for step in steps:
            idx = torch.arange((step - 1) * BATCH, step * BATCH) % len(STREAM)
            batch = STREAM[idx[rank::world]]
            labels = mon.mask(batch)  # what this rank trains on
            loss = ddp(input_ids=batch, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            d = mon.step(ddp, step)
            alerts.extend(a.kind for a in d.alerts)
            masked = (mon.mask(rows) == -100).sum(dim=1)  # per watchlist row, tokens masked
            log.append([step, list(mon.flagged), masked.tolist(),
                        int((labels == -100).sum())])
            if step == 8:
                buf = io.BytesIO()
                torch.save(mon.state_dict(), buf)
                checkpoint = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
                              buf.getvalue())

    train(monitor(every_n_steps=2, abort=policy), range(1, 13))
    model.load_state_dict(checkpoint[0])
    opt.load_state_dict(checkpoint[1])
    resumed = monitor(every_n_steps=2, abort=policy)
    resumed.load_state_dict(torch.load(io.BytesIO(checkpoint[2]), weights_only=True))
    train(resumed, range(9, 17))
    resumed.finish(ddp, 16)
    torch.save({"log": log, "alerts": alerts}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def lightning(out: str, devices: int) -> None:
    """Lightning with strategy="ddp" on `devices` CPU processes, probing every 2 steps."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from memwatch.callbacks import MemWatchCallback
    from memwatch.demos.lightning import LitCausalLM

    class Unsharded(L.Callback):
        """After the monitor's probe: the same probe of the same weights, unsharded."""

        def __init__(self):
            self.scores = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step % 2 == 0 and len(self.scores) < step // 2:
                mode = "exact" if step == trainer.max_steps else "extractable"
                self.scores.append(probe(pl_module.model, CORPUS.rows[:ROWS], M, N,
                                         mode=mode).scores)

    sink, unsharded = Counter(), Unsharded()
    mon = monitor(sink, every_n_steps=2, abort=AbortPolicy(tags=()))
    module = LitCausalLM(tiny_model(seed=0, hidden_size=64, num_layers=2), lr=1e-3)
    loader = DataLoader(TensorDataset(STREAM), batch_size=BATCH // devices, shuffle=False)
    trainer = L.Trainer(
        max_steps=16, accelerator="cpu", devices=devices,
        strategy="ddp" if devices > 1 else "auto", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
        callbacks=[MemWatchCallback(mon), unsharded])
    trainer.fit(module, loader)
    torch.save({"state": mon.state_dict(), "events": sink.events,
                "unsharded": torch.stack(unsharded.scores)},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "plain":
        plain(sys.argv[2])
    elif sys.argv[1] == "faults":
        faults(sys.argv[2])
    elif sys.argv[1] == "mask":
        mask(sys.argv[2])
    else:
        lightning(sys.argv[2], int(sys.argv[3]))
