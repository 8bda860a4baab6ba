"""`memwatch eval`: probe every (model, revision) of a checkpoint suite over a watchlist."""

from __future__ import annotations

import argparse
import os
import sys

from memwatch.commands.args import positive_int
from memwatch.probe import CONT_LEN, PROMPT_LEN, ProbeSpec

HELP = ("Probe every (model, revision) over a watchlist or Pythia's training data; one "
        "resumable parquet per checkpoint (run under torchrun to split the rows over ranks).")


def _batch_size(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a positive integer, got {text!r}") from None


def _indices(text: str):
    from memwatch.watchlist.pythia import IndexRanges

    try:
        ranges = IndexRanges.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not len(ranges):
        raise argparse.ArgumentTypeError(f"{text!r} selects no sequence")
    return ranges


def add_arguments(p) -> None:
    p.add_argument("--model", action="append", metavar="PATH_OR_ID",
                   help="hub id (EleutherAI/pythia-70m-deduped) or local suite folder "
                        "<suite>/<model> holding one <revision>/ folder per checkpoint; repeat "
                        "for several models")
    p.add_argument("--gguf-file", metavar="FILE",
                   help="a GGUF model (llama.cpp's format; dequantized on load, needs the "
                        "`gguf` package): its path, or its name inside every --model")
    p.add_argument("--revision", nargs="+", metavar="REV",
                   help="revisions of every model (hub: branches like step143000; local: "
                        "subfolders). Default: hub 'main', local every subfolder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--watchlist", metavar="WL", help="a watchlist saved with Watchlist.save")
    src.add_argument("--pythia-data", metavar="PREFIX",
                     help="Megatron .bin/.idx prefix (Pythia's preshuffled Pile), streamed "
                          "batch by batch: memory does not grow with the rows")
    p.add_argument("--indices", metavar="RANGE", type=_indices,
                   help="sequence indices of --pythia-data: start:stop[:step][,...]")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--mode", choices=["exact", "extractable"], default="exact")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--batch-size", default=None, type=_batch_size, metavar="N|auto",
                   help="rows per probe batch, also the unit a crash can lose (default auto)")
    p.add_argument("--prompt-len", type=positive_int, nargs="+", default=[PROMPT_LEN],
                   metavar="M",
                   help=f"prompt length(s) (default {PROMPT_LEN}); several (32 64 96) score the "
                        "same continuation, after the longest, once per length: one score_p<M> "
                        "column each, `score` being the longest's (Carlini et al., ICLR 2023)")
    p.add_argument("--cont-len", type=positive_int, default=CONT_LEN)
    p.add_argument("--no-nll", action="store_true",
                   help="skip the NLL and the extraction measures (columns written as NaN)")
    p.add_argument("--min-k", type=float, default=0.2, metavar="K",
                   help="min-k %% log-prob averages the K lowest fraction of token log-probs "
                        "(default 0.2, Shi et al. 2024)")
    p.add_argument("--token-logprobs", action="store_true",
                   help="also write each row's per-token log-probs of the true continuation "
                        "(column token_logprobs, N floats a row; from the NLL's pass)")
    p.add_argument("--cache-dir", help="transformers cache for hub checkpoints")
    p.add_argument("--device", help="default: this rank's GPU if any, else cpu")
    p.add_argument("--no-progress", action="store_true")


def _rows(args):
    """The row source of --watchlist or --pythia-data/--indices."""
    from memwatch.posthoc.rows import PythiaRows, WatchlistRows
    from memwatch.watchlist import Watchlist

    if args.watchlist:
        if args.indices:
            raise ValueError("--indices selects rows of --pythia-data; it does not apply to "
                             "--watchlist")
        return WatchlistRows(Watchlist.load(args.watchlist))
    if not args.indices:
        raise ValueError("--pythia-data needs --indices, e.g. --indices 0:5000000")
    return PythiaRows(args.pythia_data, args.indices)


def _init_distributed() -> bool:
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():  # NCCL collectives run on the current device: this rank's
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _models(args) -> tuple[list[str], str | None]:
    """(--model values, --gguf-file name within them): a GGUF path alone stands for its folder."""
    if args.gguf_file and not args.model:
        if not os.path.isfile(args.gguf_file):
            raise ValueError(f"--gguf-file {args.gguf_file!r}: no such file (without --model "
                             "it must be the path of a .gguf file)")
        return [os.path.dirname(os.path.abspath(args.gguf_file))], \
            os.path.basename(args.gguf_file)
    if not args.model:
        raise ValueError("--model is required (or --gguf-file with the path of a .gguf file)")
    return args.model, args.gguf_file


def run(args) -> int:
    from memwatch.posthoc.evaluate import EvalConfig, evaluate, resolve_checkpoints

    started = False
    try:
        spec = ProbeSpec(tuple(args.prompt_len), args.cont_len, args.mode, not args.no_nll,
                         args.batch_size, min_k=args.min_k)
        config = EvalConfig(spec, args.dtype, args.cache_dir, args.device, args.token_logprobs)
        models, gguf_file = _models(args)
        checkpoints = [c for m in models for c in resolve_checkpoints(m, args.revision,
                                                                     gguf_file)]
        rows = _rows(args)
        started = _init_distributed()
        paths = evaluate(checkpoints, rows, args.out, config=config,
                         progress=not args.no_progress)
    except (ValueError, FileNotFoundError, IndexError) as err:
        print(f"memwatch eval: error: {err}", file=sys.stderr)
        return 2
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        for path in paths:
            print(path)
    return 0
