"""`memwatch analyze`: precision/recall, distributions and scaling fits of a suite's results."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from memwatch.commands.args import positive_int
from memwatch.probe import CONT_LEN

HELP = ("Compare every (model, checkpoint) in result folders (memwatch's or EleutherAI's) "
        "with a target; write a Markdown report with plots.")


def _existing(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist; give result folders or files")
    return text


def _target(text: str) -> str:
    model, at, revision = text.rpartition("@")
    if not at or not model or not revision.partition(":")[0]:
        raise argparse.ArgumentTypeError(
            f"expected MODEL@REVISION[:SOURCE], e.g. pythia-12b@step143000; got {text!r}")
    return text


def add_arguments(p) -> None:
    p.add_argument("results", nargs="+", type=_existing, help="result folders or files")
    p.add_argument("--target", required=True, type=_target, metavar="MODEL@REVISION[:SOURCE]",
                   help="the run to predict, e.g. pythia-12b-deduped@step143000; SOURCE "
                        "(memwatch, pythia-csv, memorized-evals) picks one of several runs of "
                        "that checkpoint (default: memwatch's, then pythia-csv's)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--tokens-per-step", type=positive_int, default=None,
                   help="tokens per optimizer step for compute (default Pythia's 2,097,152)")
    p.add_argument("--cont-len", type=positive_int, default=CONT_LEN,
                   help=f"continuation length, for the histogram bins (default {CONT_LEN})")
    p.add_argument("--no-progress", action="store_true")


def _load(paths, progress: bool):
    """`load_results`, printing each skipped file and repair as one warning line."""
    from memwatch.posthoc.results import ResultsWarning, load_results

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResultsWarning)
            return load_results(paths, progress=progress)
    finally:  # after the with: warnings re-raised here reach the caller's filters
        for w in caught:
            if issubclass(w.category, ResultsWarning):
                print(f"memwatch analyze: warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def run(args) -> int:
    from memwatch.posthoc.analysis import analyze
    from memwatch.posthoc.report import write_report
    from memwatch.posthoc.results import PYTHIA_TOKENS_PER_STEP

    try:
        runs = _load(args.results, progress=not args.no_progress)
        result = analyze(runs, args.target, args.tokens_per_step or PYTHIA_TOKENS_PER_STEP,
                         args.cont_len, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"memwatch analyze: error: {err}", file=sys.stderr)
        return 2
    print(write_report(result, args.out))
    return 0
