"""The monitor's cost at default settings: the same tiny training with and without MemWatch.

Prints the wall-time ratio (target <= 1 + max_overhead = 1.01) and the monitor's own
share as it measured it. Runs alternate (without, with, without, with, ...) and each
side keeps its fastest run, so that a busy machine hurts both equally.

    python benchmarks/bench_overhead.py [--steps 1000] [--rows 64] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from memwatch.demos.model import planted_corpus, tiny_model
from memwatch.monitor import MemWatch
from memwatch.policy import AbortPolicy
from memwatch.watchlist import Watchlist


def run(stream: torch.Tensor, steps: int, mon: MemWatch | None) -> float:
    """Seconds for `steps` AdamW steps (plus the final probe when monitored)."""
    model = tiny_model(seed=0, hidden_size=64, num_layers=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.arange((step - 1) * 16, step * 16) % len(stream)
        loss = model(input_ids=stream[idx], labels=stream[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(model, step)
    if mon is not None:
        mon.finish(model, steps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=64, help="watchlist rows")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = planted_corpus([8] * args.rows, seq_len=64, vocab_size=512, seed=0)
    stream = corpus.stream(seed=0)
    watchlist = Watchlist.from_tokens(corpus.rows)
    plain, watched, monitors = [], [], []
    for _ in range(args.repeat):
        plain.append(run(stream, args.steps, None))
        mon = MemWatch(watchlist, total_steps=args.steps, abort=AbortPolicy(tags=()))
        watched.append(run(stream, args.steps, mon))
        monitors.append(mon)
    best = min(range(args.repeat), key=watched.__getitem__)
    mon = monitors[best]
    share = mon.schedule.monitor_seconds / watched[best]
    print(f"bench_overhead: {args.steps} steps, {args.rows} rows (64 tokens): wall ratio "
          f"{watched[best] / min(plain):.4f} (with {watched[best]:.2f} s / without "
          f"{min(plain):.2f} s), probe share {share:.2%} over {len(mon.history)} probes "
          f"(steps {', '.join(str(int(s)) for s in mon.history.steps)}); noise: slowest / "
          f"fastest run without the monitor {max(plain) / min(plain):.4f}")


if __name__ == "__main__":
    main()
