"""`memwatch demo`: train a small model on CPU and watch it memorize planted PII."""

from __future__ import annotations

import argparse

from memwatch.commands.args import device, nonnegative_int, output_dir, positive_int

HELP = ("Train a small GPT-NeoX on planted PII and canaries, watch it memorize them live "
        "(W&B offline), and write a report.")


def add_arguments(p) -> None:
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps (default 1500)")
    p.add_argument("--device", type=_demo_device, default="cpu", help="cpu (default) or cuda")
    p.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline",
                   help="W&B mode (default offline; online needs `wandb login`)")
    p.add_argument("--act", choices=["alert", "abort", "mask"], default="alert",
                   help="what a memorized (mask: at-risk) planted row does: alert (default), "
                        "abort the run, or mask it out of the loss (trains twice to compare)")
    p.add_argument("--abort", action="store_true", help="the same as --act abort")
    p.add_argument("--out", type=output_dir, default="memwatch-demo",
                   help="output folder (default ./memwatch-demo)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default 1 on CPU: faster for the tiny model)")


def _demo_device(text: str) -> str:
    """cpu or cuda (the Lightning accelerator names), checked like any --device."""
    if text not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda, got {text!r}")
    return device(text)


def run(args) -> int:
    from memwatch.demos.run import config_from_args, run_demo

    run_demo(config_from_args(args))
    return 0
