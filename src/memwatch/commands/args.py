"""Argument types shared by the subcommands: each checks one value before any work starts.

Every function takes the command-line string and returns the parsed value, or raises
`argparse.ArgumentTypeError` saying what is expected; argparse then prints one line
naming the argument and exits with code 2.
"""

from __future__ import annotations

import argparse
import os

DEVICE_KINDS = ("cpu", "cuda", "mps")


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def existing_file(text: str) -> str:
    """The path of a readable file."""
    if not os.path.isfile(text):
        what = "a directory" if os.path.isdir(text) else "no such file"
        raise argparse.ArgumentTypeError(f"expected a readable file, got {text!r} ({what})")
    return text


def existing_dir(text: str) -> str:
    """The path of an existing directory."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected an existing directory, got {text!r}")
    return text


def output_dir(text: str) -> str:
    """A directory to write into: it may exist already, but must not be a file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a folder to write into, got {text!r}: it "
                                         "is a file")
    return text


def step_range(text: str) -> tuple[int, int]:
    """``A:B`` with integers 0 <= A < B: the steps [A, B)."""
    a, sep, b = text.partition(":")
    try:
        start, stop = int(a), int(b)
    except ValueError:
        start = stop = -1
    if not sep or not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"expected steps A:B with integers 0 <= A < B, e.g. "
                                         f"0:1000, got {text!r}")
    return start, stop


def tokenizer_source(text: str) -> str:
    """A tokenizer directory, or a hub name (``owner/name``) when no such path exists.

    A value that looks like a path (starts with ``.``, ``/`` or ``~``, or names an
    existing file) must be a directory: transformers would otherwise try it as a hub
    name and fail with a chain of tracebacks.
    """
    path = os.path.expanduser(text)
    looks_local = text.startswith((".", "/", "~")) or os.path.exists(path)
    if looks_local and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"expected a tokenizer directory (or a hub name "
                                         f"like EleutherAI/pythia-70m), got {text!r}: no "
                                         "such directory")
    return path if looks_local else text


def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, available on this machine."""
    kind, _, index = text.partition(":")
    if kind not in DEVICE_KINDS or (index and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected one of cpu, cuda, cuda:N, mps; got "
                                         f"{text!r}")
    if kind == "cpu":
        return text
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees no CUDA GPU "
                                             "here (use --device cpu)")
        if index and int(index) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has "
                                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("'mps' asked for, but torch sees no Apple GPU here "
                                         "(use --device cpu)")
    return text
