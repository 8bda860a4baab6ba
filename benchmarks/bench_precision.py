"""The probe in low precision, measured on a trained model (not assumed).

    python benchmarks/bench_precision.py            # CPU: the tests' trained tiny GPT-NeoX
    python benchmarks/bench_precision.py --device cuda

Trains the test suite's fixture (a 2-layer GPT-NeoX that memorizes its frequent planted
rows), then probes it in fp32, with bf16 and fp16 weights, and under bf16 autocast over
fp32 weights (how people train), and prints per dtype: rows whose score equals the fp32
probe's, rows equal to `reference_probe` run in the same dtype, and memorized counts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch

import memwatch as mw
from memwatch.demos.model import planted_corpus, tiny_model, train

REPEATS = [64] * 6 + [32] * 6 + [16] * 6 + [8] * 6 + [4] * 6 + [1] * 34


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    corpus = planted_corpus(REPEATS, seq_len=64, vocab_size=512, seed=0)
    model = tiny_model(seed=0, hidden_size=128, num_layers=2)
    stream = corpus.stream(seed=0)
    train(model, stream, steps=3 * len(stream) // 16, batch_size=16, lr=3e-3, seed=0)
    model = model.to(args.device).eval()
    rows, n = corpus.rows, len(corpus.rows)
    fp32 = mw.probe(model, rows, mode="exact")
    print(f"fp32: {int(fp32.memorized.sum())}/{n} memorized; equal to the reference: "
          f"{int((fp32.scores == mw.reference_probe(model, rows)).sum())}/{n}")
    for name in ("bf16", "fp16", "autocast-bf16"):
        dtype = torch.float16 if name == "fp16" else torch.bfloat16
        m = model if name.startswith("autocast") else copy.deepcopy(model).to(dtype)
        ctx = (torch.autocast(device_type=torch.device(args.device).type, dtype=dtype)
               if name.startswith("autocast") else contextlib.nullcontext())
        with ctx:
            res = mw.probe(m, rows, mode="exact")
            ref = mw.reference_probe(m, rows)
            fast = mw.probe(m, rows, mode="extractable", with_nll=True)
        print(f"{name}: {int(res.memorized.sum())}/{n} memorized; scores equal to fp32 "
              f"{int((res.scores == fp32.scores).sum())}/{n}, to the reference in {name} "
              f"{int((res.scores == ref).sum())}/{n}; memorized flags equal to fp32 "
              f"{int((res.memorized == fp32.memorized).sum())}/{n}; teacher-forced "
              f"memorized equal to its exact probe {int((fast.memorized == res.memorized).sum())}"
              f"/{n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
