"""memwatch in a plain DDP loop launched with torchrun (gloo on CPU, nccl on GPUs).

    torchrun --nproc_per_node=2 examples/ddp_torchrun.py --steps 200

Every rank calls `mon.step(model, step)`: each probes a shard of the watchlist, results
are gathered, only rank 0 writes to sinks, and the abort decision is the same everywhere.
The default `AbortPolicy()` stops at the first probe where a canary is memorized (with 200
steps, around step 40 of 200): every rank leaves the loop at that step, and rank 0 prints
the rule and the rows. `AbortPolicy(action="alert")` would only alert.
"""

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import memwatch as mw
from memwatch.demos.model import planted_corpus, tiny_model


def main(steps: int, out: str) -> None:
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    corpus = planted_corpus([64] * 4 + [16] * 4 + [1] * 8, seq_len=64, vocab_size=512)
    watchlist = mw.Watchlist.from_tokens(
        corpus.rows, ids=[f"canary#{i}" for i in range(len(corpus.rows))], tags="canary")
    model = DDP(tiny_model(hidden_size=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    stream = corpus.stream(seed=0)
    mon = mw.MemWatch(watchlist, total_steps=steps, every_n_steps=max(1, steps // 5),
                      sinks=[mw.ConsoleSink(), mw.LocalSink(out)])
    g = torch.Generator().manual_seed(rank)
    model.train()
    for step in range(1, steps + 1):
        batch = stream[torch.randint(len(stream), (8,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decision = mon.step(model, step)
        if decision.abort:  # same decision on every rank
            break
    mon.finish(model, step)
    if rank == 0:
        print(f"stopped at {decision.reason}" if decision.abort else
              f"trained {steps} of {steps} steps")
        print(f"memorized at the end: {int(mon.history.memorized[-1].sum())} of "
              f"{len(watchlist)} (world size {world})")
    dist.destroy_process_group()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default="memwatch-logs/ddp")
    a = p.parse_args()
    main(a.steps, a.out)
