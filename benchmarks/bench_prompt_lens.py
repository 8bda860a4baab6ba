"""Cost of several prompt lengths: `probe(prompt_len=(25, 50, 75, 100))` against the 100-token
probe alone, same model, same rows (the same continuation), same run.

    python benchmarks/bench_prompt_lens.py                  # pythia-70m shape, CPU, 64 rows
    python benchmarks/bench_prompt_lens.py --device cuda --rows 1024

Prints one line per mode: the time ratio several / longest alone, beside the ratio of
prompt tokens embedded, sum(lengths) / longest, which a compute-bound probe would follow.
Absolute times are noise on a shared machine; the ratios are the result.
"""

from __future__ import annotations

import argparse
import time

import torch

from memwatch.commands.bench import SHAPES, random_model
from memwatch.probe import probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="pythia-70m")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--lengths", type=int, nargs="+", default=[25, 50, 75, 100])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best time counts")
    args = p.parse_args()
    torch.manual_seed(0)
    model = random_model(args.shape, args.device)
    lengths = tuple(sorted(args.lengths))
    rows = torch.randint(1, SHAPES[args.shape][3], (args.rows, lengths[-1] + 32))
    tokens = sum(lengths) / lengths[-1]
    for mode in ("extractable", "exact"):
        best = {"longest": float("inf"), "several": float("inf")}
        for _ in range(args.repeat):  # rounds interleave the two, so load drifts hit both
            for name, prompt_len in (("longest", lengths[-1]), ("several", lengths)):
                t = time.perf_counter()
                probe(model, rows, prompt_len, mode=mode)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - t)
        print(f"{args.shape} {args.device} {args.rows} rows, {mode}: prompt lengths "
              f"{lengths} cost {best['several'] / best['longest']:.2f}x the {lengths[-1]}-token "
              f"probe alone (prompt tokens: {tokens:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
