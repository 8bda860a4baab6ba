"""The probe on a GPU: speed against the yardsticks, peak memory, agreement across dtypes.

    bash benchmarks/gpu_check.sh           # one GPU, < 8 min on an H100
    bash benchmarks/gpu_check.sh --smoke   # CPU, tiny shape, seconds: CI runs it so it cannot rot

For each shape (pythia-70m, pythia-160m; random weights, 4096 rows of which 10 % carry
the fp32 model's own greedy continuation, i.e. are memorized) and dtype (fp32, bf16,
fp16, and bf16 autocast over fp32 weights), prints the seconds of `reference_probe`
(generate() with a KV cache), of EleutherAI's own call (``generate(max_length=64,
min_length=64)`` on a ``.half()`` model loaded with ``use_cache=False``, batch 1024),
the ratios of probe exact / extractable / extractable+nll against both, peak GPU
memory, and how often each dtype agrees with the fp32 probe and with the reference in
the same dtype (low precision is measured, not assumed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

import memwatch as mw
from memwatch.commands.bench import SHAPES, plant_memorized

M, N = 32, 32


def build(shape: str, device: str) -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    layers, hidden, heads, vocab = SHAPES[shape]
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=2048, rotary_pct=0.25, bos_token_id=0,
                        eos_token_id=0)
    return GPTNeoXForCausalLM(cfg).eval().to(device)


def timed(fn, device: str):
    """(seconds, result, peak GiB) of one call; the peak is GPU memory, 0 on CPU."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return time.perf_counter() - t, out, peak


def eleuther_call(model, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """EleutherAI's eval_memorization.py: a .half() model without KV cache, batch 1024."""
    dev = next(model.parameters()).device
    half = copy.deepcopy(model).to(torch.float16 if dev.type == "cuda" else torch.float32)
    half.config.use_cache = False
    scores = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            ctx = rows[i:i + batch, :M].to(dev)
            out = half.generate(ctx, attention_mask=torch.ones_like(ctx), do_sample=False,
                                max_length=M + N, min_length=M + N, use_cache=False,
                                pad_token_id=0)
            scores.append((out[:, M:] == rows[i:i + batch, M:M + N].to(dev)).float().mean(1))
    return torch.cat(scores).cpu()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shape, 48 rows, CPU")
    args = ap.parse_args(argv)
    if args.smoke:
        device, shapes, n_rows, dtypes, batch = "cpu", ["tiny"], 48, ["fp32", "bf16"], 16
    else:
        if not torch.cuda.is_available():
            ap.error("--smoke is the CPU run; the full check needs a CUDA GPU")
        device, shapes, n_rows, batch = "cuda", ["pythia-70m", "pythia-160m"], 4096, 1024
        dtypes = ["fp32", "bf16", "fp16", "autocast-bf16"]
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}", flush=True)
    for shape in shapes:
        base = build(shape, device)
        vocab = SHAPES[shape][3]
        rows = torch.randint(1, vocab, (n_rows, M + N), generator=torch.Generator().manual_seed(0))
        rows = plant_memorized(base, rows, 0.1)
        fp32 = mw.probe(base, rows, mode="exact")
        t_eleuther, eleuther, peak_e = timed(
            lambda b=base, r=rows: eleuther_call(b, r, batch), device)
        print(f"{shape} {n_rows} rows, {fp32.memorized.float().mean():.0%} memorized (fp32): "
              f"EleutherAI's call (use_cache=False, "
              f"{'fp16' if device == 'cuda' else 'fp32'}, batch {batch}) {t_eleuther:.2f}s, "
              f"peak {peak_e:.2f} GiB", flush=True)
        for dtype in dtypes:
            weights = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
            model = base if weights == torch.float32 else copy.deepcopy(base).to(weights)
            ctx = (torch.autocast(device_type=device, dtype=torch.bfloat16)
                   if dtype.startswith("autocast") else contextlib.nullcontext())
            with ctx:
                t_ref, ref, peak_r = timed(
                    lambda m=model, r=rows: mw.reference_probe(m, r), device)
                line = [f"  {dtype}: reference {t_ref:.2f}s ({peak_r:.2f} GiB)"]
                for label, kw in (("exact", dict(mode="exact")),
                                  ("extractable", dict(mode="extractable")),
                                  ("extractable+nll", dict(mode="extractable", with_nll=True))):
                    t, res, peak = timed(
                        lambda m=model, r=rows, kw=kw: mw.probe(m, r, **kw), device)
                    line.append(f"{label} {t_ref / t:.2f}x ref, "
                                f"{t_eleuther / t:.2f}x EleutherAI ({peak:.2f} GiB)")
                    if label == "exact":
                        exact = res
            agree = (f"  {dtype} agreement: scores equal to the reference in {dtype} "
                     f"{int((exact.scores == ref).sum())}/{n_rows}, to the fp32 probe "
                     f"{int((exact.scores == fp32.scores).sum())}/{n_rows}; memorized "
                     f"{int(exact.memorized.sum())} vs fp32 {int(fp32.memorized.sum())}, "
                     f"EleutherAI's call {int((eleuther == 1).sum())}")
            print(" | ".join(line), flush=True)
            print(agree, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
