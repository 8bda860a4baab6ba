"""Text sources of a watchlist: a tokenizer's ids with character offsets, and text windows.

Every watchlist source that starts from text (`Watchlist.from_texts`, `from_dataset`,
`scan_pii`, text canaries) encodes through `encode`, so that all of them agree on
special tokens (none) and on the tokenizers they accept (fast ones, with offsets).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np


class Window(NamedTuple):
    """One window of tokens cut from text number `text_index`."""

    text_index: int
    index: int  # the window's position in its text (0, 1, ...)
    tokens: list[int]
    start: int  # characters [start, end) of the text that the tokens cover
    end: int
    text: str  # those characters


def load_tokenizer(source: str):
    """The Hugging Face tokenizer in directory `source` (or hub name), as the CLI loads it.

    A value that looks like a path (starts with ``.``, ``/`` or ``~``, or exists) must be
    a directory; one that cannot be loaded raises ValueError naming it. A hub name is
    looked up in the local cache first; one that is not there fails at once when the hub
    cannot be reached (``HF_HUB_OFFLINE`` set, or no connection to it), where the hub
    client would retry for about a minute before failing.
    """
    import os

    from transformers import AutoTokenizer

    path = os.path.expanduser(source)
    if (source.startswith((".", "/", "~")) or os.path.exists(path)) and not os.path.isdir(path):
        raise ValueError(f"tokenizer {source!r}: no such directory (give a tokenizer "
                         "directory or a hub name like EleutherAI/pythia-70m)")
    if os.path.isdir(path):
        return _from_pretrained(source, path)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        offline = _hub_unreachable()
    if offline:
        raise ValueError(f"tokenizer {source!r}: not in the local Hugging Face cache, and "
                         f"{offline}; give the directory of a saved tokenizer (on a machine "
                         f"with access: AutoTokenizer.from_pretrained({source!r})"
                         ".save_pretrained(DIR))")
    return _from_pretrained(source, source)


def _from_pretrained(source: str, where: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"tokenizer {source!r}: no tokenizer could be loaded ({first})") \
            from None


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, no connection), or None."""
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
            "1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return None  # only the proxy knows whether the hub is reachable
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        return f"the hub ({constants.ENDPOINT}) cannot be reached ({err})"
    return None


def encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, without special tokens."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError("the tokenizer gives no offset mapping: use a fast tokenizer "
                         "(AutoTokenizer.from_pretrained(..., use_fast=True))") from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def windows(texts: Iterable[tuple[int, str]], tokenizer, length: int) -> Iterator[Window]:
    """Each text's consecutive, non-overlapping windows of `length` tokens, text by text.

    `texts` holds (number, text) pairs, e.g. ``enumerate(texts)``. A text shorter than
    one window gives none; the tail after the last full window is dropped.
    """
    for t, text in texts:
        if not isinstance(text, str):
            raise TypeError(f"text {t} is a {type(text).__name__}, not a str")
        token_ids, offsets = encode(tokenizer, text)
        for w in range(len(token_ids) // length):
            s = w * length
            start, end = offsets[s][0], offsets[s + length - 1][1]
            yield Window(t, w, token_ids[s : s + length], start, end, text[start:end])


def dataset_texts(ds, text_column: str, sample: int | None, seed: int,
                  shuffle_buffer: int) -> Iterator[tuple[int, str]]:
    """(number, text) pairs of a `datasets.Dataset` or IterableDataset, in a seeded order.

    A `Dataset` is read in a seeded random order of its rows, numbered by row. An
    `IterableDataset` (streaming) is shuffled with ``ds.shuffle(seed, buffer_size=
    shuffle_buffer)`` and numbered by position in that stream; it needs `sample` (the
    reader stops once it has that many rows), since it may never end.
    """
    from datasets import Dataset

    if isinstance(ds, Dataset):
        if text_column not in ds.column_names:
            raise ValueError(f"dataset has no column {text_column!r}; it has {ds.column_names}")
        order = np.random.default_rng(seed).permutation(len(ds))
        return ((int(i), ds[int(i)][text_column]) for i in order)
    if sample is None:
        raise ValueError("a streaming dataset needs sample=<rows> (it may never end)")
    return enumerate(row[text_column] for row in ds.shuffle(seed=seed, buffer_size=shuffle_buffer))
