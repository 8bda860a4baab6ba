"""`memwatch watchlist`: build a watchlist from texts / Pythia data, or show one (redacted)."""

from __future__ import annotations

import json
import os

from memwatch.probe import CONT_LEN, PROMPT_LEN

HELP = "Build a watchlist (text windows, PII, canaries, Pythia sequences) or show one."


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build a watchlist and save it to --out")
    b.add_argument("--texts", nargs="+", default=[], metavar="FILE",
                   help="text files: .jsonl (one JSON object per line, field --text-field) or "
                        "plain text (one text per file)")
    b.add_argument("--text-field", default="text", help="JSONL field holding the text")
    b.add_argument("--tokenizer", help="a Hugging Face tokenizer directory (or hub name)")
    b.add_argument("--windows", type=int, default=None, metavar="K",
                   help="K text windows sampled from --texts (default: all; 0: none)")
    b.add_argument("--pii", action="store_true", help="add one row per PII hit in --texts")
    b.add_argument("--canaries", type=int, default=0, metavar="N", help="add N canaries")
    b.add_argument("--template", default="My secret is {secret}", help="canary template")
    b.add_argument("--pythia", metavar="PREFIX", help="Megatron .idx/.bin prefix")
    b.add_argument("--indices", help="sequence indices of --pythia, e.g. 0:1000000:97")
    b.add_argument("--steps", metavar="A:B",
                   help="the sequences of --pythia seen in steps [A, B) (1024 per step)")
    b.add_argument("--prompt-len", type=int, default=PROMPT_LEN)
    b.add_argument("--cont-len", type=int, default=CONT_LEN)
    b.add_argument("--keep-text", action="store_true",
                   help="store raw text with the rows (off by default: text may hold PII)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True, help="directory to save the watchlist in")
    s = sub.add_parser("show", help="print counts per tag and redacted previews")
    s.add_argument("path", help="a saved watchlist directory")
    s.add_argument("--limit", type=int, default=10, help="rows to preview (default 10)")


def _read_texts(files: list[str], field: str) -> list[str]:
    texts = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for n, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if field not in row:
                            raise ValueError(f"{path}:{n} has no field {field!r}")
                        texts.append(str(row[field]))
            else:
                texts.append(f.read())
    return texts


def _build(args):
    from memwatch.watchlist import Watchlist

    texts = _read_texts(args.texts, args.text_field)
    needs_tok = bool(texts) and args.windows != 0 or args.pii or args.canaries
    tokenizer = None
    if needs_tok:
        if not args.tokenizer:
            raise ValueError("--texts, --pii and --canaries need --tokenizer DIR")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    lengths = {"prompt_len": args.prompt_len, "cont_len": args.cont_len}
    parts = []
    if texts and args.windows != 0:
        wl = Watchlist.from_texts(texts, tokenizer, keep_text=args.keep_text, **lengths)
        parts.append(wl if args.windows is None else wl.sample(args.windows, seed=args.seed))
    if args.pii:
        if not texts:
            raise ValueError("--pii scans --texts; give at least one file")
        parts.append(Watchlist.scan_pii(texts, tokenizer, keep_text=args.keep_text, **lengths))
    if args.canaries:
        parts.append(Watchlist.canaries(args.canaries, args.template, tokenizer, args.seed,
                                        **lengths))
    if args.pythia:
        from memwatch.watchlist.pythia import steps_range

        if bool(args.indices) == bool(args.steps):
            raise ValueError("--pythia needs exactly one of --indices or --steps A:B")
        if args.steps:
            a, _, b = args.steps.partition(":")
            indices = steps_range(int(a), int(b))
        else:
            indices = args.indices
        parts.append(Watchlist.from_pythia(args.pythia, indices, **lengths))
    if not parts:
        raise ValueError("nothing to build: give --texts, --pii, --canaries or --pythia")
    wl = parts[0]
    for part in parts[1:]:
        wl = wl + part
    return wl


def _show(wl, limit: int) -> None:
    print(f"{len(wl)} rows x {wl.tokens.shape[1]} tokens"
          f"{', raw text kept' if wl.texts is not None else ''}")
    for tag, count in sorted(wl.tag_counts().items()):
        print(f"  {tag:<24} {count}")
    for i in range(min(limit, len(wl))):
        print(f"  {wl.ids[i]:<32} {wl.redacted_preview(i)}")


def run(args) -> int:
    from memwatch.watchlist import Watchlist

    if args.action == "build":
        wl = _build(args)
        wl.save(args.out)
        print(f"saved to {os.path.abspath(args.out)}")
        _show(wl, 0)
        return 0
    _show(Watchlist.load(args.path), args.limit)
    return 0
