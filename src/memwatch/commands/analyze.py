"""`memwatch analyze`: precision/recall, distributions and scaling fits of a suite's results."""

from __future__ import annotations

import sys

from memwatch.probe import CONT_LEN

HELP = ("Compare every (model, checkpoint) in result folders (memwatch's or EleutherAI's) "
        "with a target; write a Markdown report with plots.")


def add_arguments(p) -> None:
    p.add_argument("results", nargs="+", help="result folders or files")
    p.add_argument("--target", required=True, metavar="MODEL@REVISION",
                   help="the run to predict, e.g. pythia-12b-deduped@step143000")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--tokens-per-step", type=int, default=None,
                   help="tokens per optimizer step for compute (default Pythia's 2,097,152)")
    p.add_argument("--cont-len", type=int, default=CONT_LEN,
                   help=f"continuation length, for the histogram bins (default {CONT_LEN})")


def run(args) -> int:
    from memwatch.posthoc.analysis import PYTHIA_TOKENS_PER_STEP, analyze, load_results
    from memwatch.posthoc.report import write_report

    try:
        runs = load_results(args.results)
        result = analyze(runs, args.target, args.tokens_per_step or PYTHIA_TOKENS_PER_STEP,
                         args.cont_len)
    except (ValueError, FileNotFoundError) as err:
        print(f"memwatch analyze: error: {err}", file=sys.stderr)
        return 2
    print(write_report(result, args.out))
    return 0
