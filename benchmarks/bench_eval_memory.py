"""Peak memory of `memwatch eval --pythia-data` on a 1-million-row Megatron .bin.

Writes a .bin/.idx pair of `--rows` random rows (uint16, `--seq-len` tokens each)
and a tiny GPT-NeoX checkpoint, then runs, each in its own process:

1. `memwatch eval` over the first 1,024 rows (one batch): the baseline, i.e. Python,
   torch, transformers and the model;
2. `memwatch eval` over all rows, streamed batch by batch;
3. for contrast, `Watchlist.from_pythia` over all rows, which holds them in RAM as int64.

and prints each one's peak resident set size (the kernel's ru_maxrss). Streaming
holds one batch of rows at a time, so (2) should stay within a few tens of MiB of
(1) whatever the row count, while (3) grows by rows x (prompt + continuation) x 8
bytes. Extractable mode and a tiny model keep it to a few minutes on 2 CPU cores.

    python benchmarks/bench_eval_memory.py [--rows 1000000] [--seq-len 64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from memwatch.demos.model import tiny_model
from memwatch.watchlist.pythia import write_indexed_dataset

FROM_PYTHIA = ("import sys; from memwatch.watchlist import Watchlist; "
               "wl = Watchlist.from_pythia(sys.argv[1], sys.argv[2]); print(len(wl))")


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of `cmd` run to completion in a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return usage.ru_maxrss / 1024, seconds  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seq-len", type=int, default=64,
                        help="tokens per row on disk (Pythia's are 2049; eval reads 64)")
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tokens = np.random.default_rng(0).integers(0, 512, (args.rows, args.seq_len), np.uint16)
        prefix = write_indexed_dataset(work / "data", tokens)
        del tokens
        tiny_model(seed=0, hidden_size=16, num_layers=1, num_heads=1).save_pretrained(
            work / "suite" / "tiny" / "step1")
        print(f"data: {args.rows:,} rows x {args.seq_len} tokens, uint16, "
              f"{os.path.getsize(prefix + '.bin') / 2**20:.0f} MiB on disk")

        def eval_cmd(rows: int, out: str) -> list[str]:
            return [sys.executable, "-m", "memwatch.cli", "eval", "--model",
                    str(work / "suite" / "tiny"), "--pythia-data", prefix, "--indices",
                    f"0:{rows}", "--out", str(work / out), "--mode", "extractable",
                    "--no-nll", "--batch-size", "1024", "--no-progress"]

        base, base_s = peak_rss(eval_cmd(1024, "out-base"))
        full, full_s = peak_rss(eval_cmd(args.rows, "out-full"))
        held, held_s = peak_rss([sys.executable, "-c", FROM_PYTHIA, prefix, f"0:{args.rows}"])
        in_ram = args.rows * 64 * 8 / 2**20
        print(f"memwatch eval, 1,024 rows (baseline):   peak RSS {base:7.0f} MiB  ({base_s:.0f} s)")
        print(f"memwatch eval, {args.rows:,} rows streamed: peak RSS {full:7.0f} MiB  "
              f"({full_s:.0f} s, {args.rows / full_s:,.0f} rows/s)  = baseline + "
              f"{full - base:.0f} MiB")
        print(f"Watchlist.from_pythia, {args.rows:,} rows in RAM: peak RSS {held:7.0f} MiB "
              f"({held_s:.0f} s; the int64 rows alone are {in_ram:.0f} MiB)")


if __name__ == "__main__":
    main()
