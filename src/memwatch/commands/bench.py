"""`memwatch bench`: probe speed against the Pythia reference on this machine.

Absolute times are noise on a shared machine; the ratios are the result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from memwatch.commands.args import device, existing_file, fraction, positive_int
from memwatch.probe import CONT_LEN, PROMPT_LEN, _Preserved, probe, reference_probe

HELP = "Time probe(exact|extractable) against reference_probe (generate) and print ratios."

SHAPES = {
    # name: (layers, hidden, heads, vocab)
    "pythia-70m": (6, 512, 8, 50304),
    "pythia-160m": (12, 768, 12, 50304),
    "tiny": (2, 128, 4, 512),
}


def add_arguments(p) -> None:
    p.add_argument("--shape", choices=sorted(SHAPES), default="pythia-70m",
                   help="model shape, randomly initialised (default: pythia-70m)")
    p.add_argument("--gguf-file", type=existing_file, metavar="FILE",
                   help="time this GGUF model (real weights, dequantized on load; needs the "
                        "`gguf` package) instead of a --shape")
    p.add_argument("--rows", type=positive_int, default=256, help="watchlist rows (default 256)")
    p.add_argument("--memorized", type=fraction, nargs="+", default=[0.0, 0.1],
                   help="shares of rows memorized, one line each (default 0 0.1)")
    p.add_argument("--device", type=device, default="cpu", help="cpu (default), cuda[:N], mps")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--repeat", type=positive_int, default=2, help="rounds; the best time counts")
    p.add_argument("--trained", action="store_true",
                   help="also time the tiny model trained on a planted stream")


def load_gguf(path: str, dtype: torch.dtype = torch.float32):
    """The causal LM in a GGUF file, dequantized to `dtype` (transformers' ``gguf_file=``)."""
    import os

    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), dtype=dtype)


def random_model(shape: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A randomly initialised GPT-NeoX of one of `SHAPES`, in eval mode (EOS id 0)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    layers, hidden, heads, vocab = SHAPES[shape]
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=2048, rotary_pct=0.25, bos_token_id=0,
                        eos_token_id=0)
    return GPTNeoXForCausalLM(cfg).eval().to(device, dtype)


def run(args) -> int:
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    if args.gguf_file:
        import os

        from memwatch.lm import vocab_size

        model = load_gguf(args.gguf_file, dtype).eval().to(args.device)
        name, vocab = os.path.basename(args.gguf_file), vocab_size(model)
    else:
        model, name, vocab = random_model(args.shape, args.device, dtype), args.shape, \
            SHAPES[args.shape][3]
    rows = torch.randint(1, vocab, (args.rows, 64))
    print(path_line(model, rows[:32]), flush=True)
    for share in args.memorized:
        planted = plant_memorized(model, rows, share)
        secs = compare(model, planted, batch_size=args.batch_size, repeat=args.repeat,
                       progress=f"{share:.0%} memorized")
        print(format_line(f"{name} {args.dtype} {args.device} {args.rows} rows, "
                          f"{share:.0%} memorized", secs), flush=True)
    if args.trained:
        from memwatch.demos.model import planted_corpus, tiny_model, train

        reps = [64] * 6 + [32] * 6 + [16] * 6 + [8] * 6 + [4] * 6 + [1] * 226
        corpus = planted_corpus(reps, vocab_size=512, seed=0)
        tiny = tiny_model(seed=0, hidden_size=128)
        train(tiny, corpus.stream(0), steps=3 * int(corpus.repeats.sum()) // 16, batch_size=16)
        share = float(probe(tiny, corpus.rows, mode="extractable").memorized.float().mean())
        print(format_line(f"tiny trained, {len(reps)} rows, {share:.0%} memorized",
                          compare(tiny, corpus.rows, repeat=args.repeat, progress="tiny trained")),
              flush=True)
    return 0


def path_line(model, rows: torch.Tensor, prompt_len: int = PROMPT_LEN,
              cont_len: int = CONT_LEN) -> str:
    """One line naming the versions, the runner, each mode's strategy and its tokens per row."""
    import transformers

    from memwatch.lm import TokenCounter, device_of, runner
    from memwatch.probe import choose_strategy

    with _Preserved(model):
        lm = runner(model)
    dev = device_of(model)
    parts = []
    for label, mode, nll in (("extractable", "extractable", False), ("exact", "exact", False),
                             ("extractable+nll", "extractable", True)):
        with TokenCounter(model) as count:
            probe(model, rows, prompt_len, cont_len, mode=mode, with_nll=nll)
        parts.append(f"{label} {choose_strategy(dev, nll)} {count.tokens / len(rows):.1f}")
    with TokenCounter(model) as count:
        reference_probe(model, rows, prompt_len, cont_len)
    return (f"transformers {transformers.__version__}, torch {torch.__version__}, {dev}: "
            f"runner {lm.name}{' (projection by position chunks)' if lm.split else ''}; "
            f"tokens/row on {len(rows)} unmemorized rows: {' | '.join(parts)} | "
            f"reference {count.tokens / len(rows):.1f}")


def _plain_forward(model, rows: torch.Tensor) -> None:
    with _Preserved(model):
        model(input_ids=rows)


def plant_memorized(model, rows: torch.Tensor, share: float, prompt_len: int = PROMPT_LEN,
                    cont_len: int = CONT_LEN) -> torch.Tensor:
    """Rows where a `share` of them carry the model's own greedy continuation (memorized)."""
    k = round(share * len(rows))
    if k == 0:
        return rows
    out = rows.clone()
    greedy = probe(model, rows[:k], prompt_len, cont_len, mode="exact").greedy
    out[:k, prompt_len:prompt_len + cont_len] = greedy
    return out


def _with_measures(model, rows: torch.Tensor, **kw) -> None:
    """Extractable probe with every measure, then the reports' (n,p) grid from its log p_z."""
    from memwatch.measures import CURVE_DRAWS, CURVE_PROBS, extraction_rates

    res = probe(model, rows, mode="extractable", with_nll=True, **kw)
    extraction_rates(res.log_pz, CURVE_DRAWS, CURVE_PROBS)


def compare(model, rows: torch.Tensor, prompt_len: int = PROMPT_LEN, cont_len: int = CONT_LEN,
            batch_size: int | None = None, repeat: int = 2,
            progress: str | None = None) -> dict[str, float]:
    """Best-of-`repeat` seconds for reference_probe, probe(exact), probe(extractable), the
    latter with_nll=True, the latter with every measure and its (n,p) grid (`memwatch.measures`,
    all from the same pass), and one forward pass over M+N tokens; rounds interleave the
    methods so load drifts hit all alike. `progress` labels a progress bar on stderr."""
    M, N = prompt_len, cont_len
    kw = dict(prompt_len=M, cont_len=N, batch_size=batch_size)
    methods: dict[str, Callable[[], object]] = {
        "reference": lambda: reference_probe(model, rows, **kw),
        "exact": lambda: probe(model, rows, mode="exact", **kw),
        "extractable": lambda: probe(model, rows, mode="extractable", **kw),
        "extractable+nll": lambda: probe(model, rows, mode="extractable", with_nll=True, **kw),
        "extractable+measures": lambda: _with_measures(model, rows, **kw),
        "forward": lambda: _plain_forward(model, rows[:, :M + N]),
    }
    best = dict.fromkeys(methods, float("inf"))
    with tqdm(total=repeat * len(methods), desc=progress, unit="run", file=sys.stderr,
              leave=False, disable=progress is None) as bar:
        for _ in range(repeat):
            for name, fn in methods.items():
                bar.set_postfix_str(name)
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
                bar.update()
    return best


def format_line(label: str, seconds: dict[str, float]) -> str:
    ref = seconds["reference"]
    return (f"{label}: reference {ref:.2f}s | exact {ref / seconds['exact']:.2f}x | "
            f"extractable {ref / seconds['extractable']:.2f}x | "
            f"extractable+nll {ref / seconds['extractable+nll']:.2f}x | "
            f"extractable+measures {ref / seconds['extractable+measures']:.2f}x | "
            f"forward(M+N) {ref / seconds['forward']:.2f}x  (ratios = reference / method)")
