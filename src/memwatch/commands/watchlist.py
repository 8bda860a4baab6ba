"""`memwatch watchlist`: build a watchlist from texts / Pythia data, or show one (redacted)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from memwatch.commands.args import (
    existing_dir,
    existing_file,
    nonnegative_int,
    output_dir,
    positive_int,
    step_range,
    tokenizer_source,
)
from memwatch.probe import CONT_LEN, PROMPT_LEN
from memwatch.watchlist.canaries import DEFAULT_TEMPLATE

HELP = "Build a watchlist (text windows, PII, canaries, Pythia sequences) or show one."


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build a watchlist and save it to --out")
    b.add_argument("--texts", nargs="+", type=existing_file, default=[], metavar="FILE",
                   help="text files: .jsonl (one JSON object per line, field --text-field) or "
                        "plain text (one text per file)")
    b.add_argument("--text-field", default="text", help="JSONL field holding the text")
    b.add_argument("--tokenizer", type=tokenizer_source,
                   help="a Hugging Face tokenizer directory (or hub name)")
    b.add_argument("--windows", type=nonnegative_int, default=None, metavar="K",
                   help="K text windows sampled from --texts (default: all; 0: none)")
    b.add_argument("--pii", action="store_true",
                   help="add one row per PII hit in --texts, --dataset or --pythia")
    b.add_argument("--dataset", metavar="NAME_OR_DIR",
                   help="PII corpus: a directory saved with Dataset.save_to_disk, or a "
                        "load_dataset name (read streaming; --split)")
    b.add_argument("--split", default="train", help="split of --dataset (default train)")
    b.add_argument("--fraction", type=_fraction, metavar="F",
                   help="scan a seeded sample: this fraction of the rows (0 < F <= 1)")
    b.add_argument("--max-rows", type=positive_int, metavar="N",
                   help="scan at most N rows (a seeded sample with --fraction)")
    b.add_argument("--num-proc", type=positive_int, default=1, metavar="N",
                   help="scan with N worker processes (datasets' multiprocessing)")
    b.add_argument("--engine", choices=["datasets", "ray"], default="datasets",
                   help="datasets: one machine; ray: Ray Data (a cluster after `ray start`, "
                        "else a local Ray)")
    b.add_argument("--work-dir", metavar="DIR",
                   help="where finished shards are kept until the watchlist is saved (default "
                        "OUT.scan); a killed scan resumes from it")
    b.add_argument("--backend", choices=["auto", "presidio", "regex"], default="auto",
                   help="PII recognizers: Presidio's (extra pii) or memwatch's regexes "
                        "(default: Presidio when installed)")
    b.add_argument("--max-line-bytes", type=positive_int, default=None, metavar="N",
                   help="longest line a .jsonl / text file may have (default 256 MiB)")
    b.add_argument("--ner-model", metavar="NAME_OR_PATH",
                   help="with --pii, also find PERSON and LOCATION with this installed spaCy "
                        "pipeline (e.g. en_core_web_lg, or a saved pipeline's directory); "
                        "memwatch downloads nothing")
    b.add_argument("--canaries", type=nonnegative_int, default=0, metavar="N",
                   help="add N canaries")
    b.add_argument("--template", default=DEFAULT_TEMPLATE, help="canary template")
    b.add_argument("--audit", action="store_true",
                   help="audit canaries: each in or out with probability 1/2 (tags canary:in / "
                        "canary:out); plant only canary:in (docs/audit.md)")
    b.add_argument("--pythia", type=_pythia_prefix, metavar="PREFIX",
                   help="Megatron .idx/.bin prefix")
    b.add_argument("--indices", type=_index_range,
                   help="sequence indices of --pythia, e.g. 0:1000000:97")
    b.add_argument("--steps", type=step_range, metavar="A:B",
                   help="the sequences of --pythia seen in steps [A, B) (1024 per step)")
    b.add_argument("--prompt-len", type=positive_int, default=PROMPT_LEN)
    b.add_argument("--cont-len", type=positive_int, default=CONT_LEN)
    b.add_argument("--keep-text", action="store_true",
                   help="store raw text with the rows (off by default: text may hold PII)")
    b.add_argument("--seed", type=nonnegative_int, default=0)
    b.add_argument("--out", type=output_dir, required=True,
                   help="directory to save the watchlist in")
    s = sub.add_parser("show", help="print counts per tag and redacted previews")
    s.add_argument("path", type=existing_dir, help="a saved watchlist directory")
    s.add_argument("--limit", type=nonnegative_int, default=10, help="rows to preview (default 10)")


def _pythia_prefix(text: str) -> str:
    """A Megatron prefix whose .idx and .bin files exist (a trailing .idx/.bin is allowed)."""
    prefix = text[:-4] if text.endswith((".idx", ".bin")) else text
    missing = [prefix + ext for ext in (".idx", ".bin") if not os.path.isfile(prefix + ext)]
    if missing:
        raise argparse.ArgumentTypeError(f"expected the prefix of a .idx/.bin pair, got "
                                         f"{text!r}: no {' and no '.join(missing)}")
    return prefix


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def _index_range(text: str) -> str:
    """An index spec like 0:1000000:97 (checked here, parsed where it is used)."""
    from memwatch.watchlist.pythia import parse_index_range

    try:
        if len(parse_index_range(text)) == 0:
            raise ValueError(f"{text!r} selects no sequence")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _progress(items, desc: str):
    """`items` with a progress bar on stderr; it shows counts only, never the text."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="text", file=sys.stderr, leave=False)


def _load_tokenizer(source: str):
    from memwatch.watchlist.text import load_tokenizer

    try:
        return load_tokenizer(source)
    except ValueError as err:
        raise ValueError(f"--{err}") from None


def _read_texts(files: list[str], field: str) -> list[str]:
    """The texts of --texts files; a file that holds none, or a bad line, names the file."""
    texts = []
    for path in files:
        found = len(texts)
        try:
            with open(path, encoding="utf-8") as f:
                if path.endswith(".jsonl"):
                    for n, line in enumerate(f, 1):
                        if line.strip():
                            texts.append(_jsonl_text(line, field, f"{path}:{n}"))
                else:
                    text = f.read()
                    if text.strip():
                        texts.append(text)
        except UnicodeDecodeError as err:
            raise ValueError(f"--texts {path} is not UTF-8 text ({err.reason} at byte "
                             f"{err.start}); convert it to UTF-8") from None
        if len(texts) == found:
            raise ValueError(f"--texts {path} holds no text (an empty file"
                             f"{' or only blank lines' if path.endswith('.jsonl') else ''}): "
                             "give files with text, or leave this one out")
    return texts


def _jsonl_text(line: str, field: str, where: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not a JSON object ({err.msg}); .jsonl files hold one "
                         "object per line") from None
    except RecursionError:
        raise ValueError(f"{where} nests too deep to be a JSON text record") from None
    if not isinstance(row, dict) or field not in row:
        raise ValueError(f"{where} has no field {field!r} (set --text-field)")
    return str(row[field])


def _pii_corpus(args, tokenizer):
    """The corpus `--pii` scans: --dataset, --pythia or --texts."""
    from pathlib import Path

    from memwatch.watchlist.corpus import MAX_LINE_BYTES, open_corpus

    sources = [bool(args.dataset), bool(args.pythia), bool(args.texts)]
    if sum(sources) != 1:
        raise ValueError("--pii scans one corpus: give exactly one of --texts, --dataset or "
                         "--pythia")
    sampling = {"fraction": args.fraction, "max_rows": args.max_rows, "seed": args.seed}
    if args.pythia:
        from memwatch.watchlist.pythia import steps_range

        if args.indices and args.steps:
            raise ValueError("--pythia takes one of --indices or --steps A:B, not both")
        indices = steps_range(*args.steps) if args.steps else args.indices
        return open_corpus(f"pythia:{args.pythia}", tokenizer=tokenizer, indices=indices,
                           **sampling)
    if args.dataset:
        source = Path(args.dataset) if os.path.isdir(args.dataset) else args.dataset
        return open_corpus(source, args.text_field, split=args.split, **sampling)
    return open_corpus([Path(p) for p in args.texts], args.text_field, split=args.split,
                       max_line_bytes=args.max_line_bytes or MAX_LINE_BYTES, **sampling)


def _build(args):
    from memwatch.watchlist import Watchlist

    scan_only = args.pii and (args.dataset or args.pythia)
    texts = _read_texts(args.texts, args.text_field) if args.texts and not (
        args.pii and args.windows == 0) else []
    needs_tok = bool(texts) and args.windows != 0 or args.pii or args.canaries
    tokenizer = None
    if needs_tok:
        if not args.tokenizer:
            raise ValueError("--texts, --pii and --canaries need --tokenizer DIR")
        tokenizer = _load_tokenizer(args.tokenizer)
    lengths = {"prompt_len": args.prompt_len, "cont_len": args.cont_len}
    parts = []
    if texts and args.windows != 0:
        wl = Watchlist.from_texts(_progress(texts, "windows"), tokenizer,
                                  keep_text=args.keep_text, **lengths)
        parts.append(wl if args.windows is None else wl.sample(args.windows, seed=args.seed))
    if args.ner_model and not args.pii:
        raise ValueError("--ner-model finds names for --pii; add --pii")
    if args.pii:
        work_dir = args.work_dir or args.out.rstrip("/\\") + ".scan"
        print(f"scanning for PII; finished shards are kept in {work_dir} (a killed scan "
              "resumes from them)", file=sys.stderr)
        parts.append(Watchlist.scan_pii(_pii_corpus(args, tokenizer), tokenizer,
                                        keep_text=args.keep_text, backend=args.backend,
                                        num_proc=args.num_proc, engine=args.engine,
                                        work_dir=work_dir, ner_model=args.ner_model,
                                        **lengths))
    if args.canaries:
        parts.append(Watchlist.canaries(args.canaries, args.template, tokenizer, args.seed,
                                        audit=args.audit, **lengths))
    if args.pythia and not scan_only:
        from memwatch.watchlist.pythia import steps_range

        if bool(args.indices) == bool(args.steps):
            raise ValueError("--pythia needs exactly one of --indices or --steps A:B")
        if args.steps:
            indices = steps_range(*args.steps)
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

    try:
        if args.action == "build":
            wl = _build(args)
            wl.save(args.out)
            if args.pii:  # saved: the shards are no longer needed
                import shutil

                shutil.rmtree(args.work_dir or args.out.rstrip("/\\") + ".scan",
                              ignore_errors=True)
            print(f"saved to {os.path.abspath(args.out)}")
            _show(wl, 0)
            return 0
        _show(Watchlist.load(args.path), args.limit)
    except (ValueError, OSError, ImportError) as err:
        print(f"memwatch watchlist {args.action}: error: {err}", file=sys.stderr)
        return 2
    return 0
