"""`memwatch bench`: probe speed against the Pythia reference on this machine."""

from __future__ import annotations

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
    p.add_argument("--rows", type=int, default=256, help="watchlist rows (default 256)")
    p.add_argument("--memorized", type=float, nargs="+", default=[0.0, 0.1],
                   help="shares of rows memorized, one line each (default 0 0.1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best time counts")
    p.add_argument("--trained", action="store_true",
                   help="also time the tiny model trained on a planted stream")


def run(args) -> int:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from memwatch.bench import compare, format_line, plant_memorized
    from memwatch.probe import probe

    layers, hidden, heads, vocab = SHAPES[args.shape]
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=2048, rotary_pct=0.25, bos_token_id=0,
                        eos_token_id=0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = GPTNeoXForCausalLM(cfg).eval().to(args.device, dtype)
    rows = torch.randint(1, vocab, (args.rows, 64))
    for share in args.memorized:
        planted = plant_memorized(model, rows, share)
        secs = compare(model, planted, batch_size=args.batch_size, repeat=args.repeat)
        print(format_line(f"{args.shape} {args.dtype} {args.device} {args.rows} rows, "
                          f"{share:.0%} memorized", secs), flush=True)
    if args.trained:
        from memwatch.demo_model import planted_corpus, tiny_model, train

        reps = [64] * 6 + [32] * 6 + [16] * 6 + [8] * 6 + [4] * 6 + [1] * 226
        corpus = planted_corpus(reps, vocab_size=512, seed=0)
        tiny = tiny_model(seed=0, hidden_size=128)
        train(tiny, corpus.stream(0), steps=3 * int(corpus.repeats.sum()) // 16, batch_size=16)
        share = float(probe(tiny, corpus.rows, mode="extractable").memorized.float().mean())
        print(format_line(f"tiny trained, {len(reps)} rows, {share:.0%} memorized",
                          compare(tiny, corpus.rows, repeat=args.repeat)), flush=True)
    return 0

