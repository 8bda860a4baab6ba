"""The cost of masking flagged rows, as a share of a training step (goal <= 0.5 %).

Masks a batch of 8 x 2048 random tokens against 10,000 flagged rows (32-token
continuations, 16-token windows; a few rows planted in the batch so the mask path
runs) with `MemWatch.mask`'s machinery, and times the reference in the same run: one
forward + backward + AdamW step of a pythia-70m-shaped GPT-NeoX (6 layers, hidden 512,
vocab 50304) on the same batch. On a CPU that step takes minutes at 8 x 2048, so
``--ref-batch`` (default 1 on CPU) times it on fewer sequences and scales linearly to
the batch (attention's quadratic part is per sequence, so this is what 8 sequences cost);
on a GPU it runs the full batch.

    python benchmarks/bench_masking.py [--device cuda] [--rows 10000] [--ref-batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from memwatch.masking import FlaggedWindows, MaskSpec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> float:
    """Median seconds of `repeat` calls of `fn` (after one warm-up call)."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--ref-batch", type=int, default=None,
                    help="sequences in the timed reference step (default: all on a GPU, 1 on CPU)")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    device = torch.device(args.device)
    vocab = 50304
    g = torch.Generator().manual_seed(0)
    conts = torch.randint(1, vocab, (args.rows, 32), generator=g)
    ids = torch.randint(1, vocab, (args.batch, args.seq_len), generator=g)
    for b in range(args.batch):  # one flagged continuation per sequence, one cut in two
        ids[b, 100:132] = conts[b]
    ids[0, -10:] = conts[args.batch, :10]
    ids = ids.to(device)

    start = time.perf_counter()
    windows = FlaggedWindows(conts, MaskSpec(window=16))
    build = time.perf_counter() - start
    masked = int((windows.apply(ids) == -100).sum())
    mask_s = timed(lambda: windows.apply(ids, ids), device, args.repeat)

    from memwatch.demos.model import tiny_model

    ref_batch = args.ref_batch or (args.batch if device.type == "cuda" else 1)
    model = tiny_model(seed=0, hidden_size=512, num_layers=6, num_heads=8, vocab_size=vocab,
                       max_len=args.seq_len).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ref_ids = ids[:ref_batch]

    def step():
        loss = model(input_ids=ref_ids, labels=ref_ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_s = timed(step, device, 2 if device.type == "cpu" else args.repeat)
    step_full = step_s * args.batch / ref_batch
    scaled = ("" if ref_batch == args.batch
              else f", timed on {ref_batch} and scaled x{args.batch / ref_batch:g}")
    print(f"bench_masking {device.type} threads={torch.get_num_threads()}: batch {args.batch} x "
          f"{args.seq_len}, {args.rows} flagged rows (window 16): mask {mask_s * 1e3:.2f} ms "
          f"({masked} positions masked), pythia-70m-shaped train step {step_full:.2f} s"
          f"{scaled}: mask share {mask_s / step_full:.4%} of the step (goal <= 0.5 %); "
          f"index build {build:.2f} s, once per probe that flags rows")


if __name__ == "__main__":
    main()
