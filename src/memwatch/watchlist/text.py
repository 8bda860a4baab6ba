"""Text sources of a watchlist: a tokenizer's ids with character offsets, and text windows.

Every watchlist source that starts from text (`Watchlist.from_texts`, `from_dataset`,
`scan_pii`, text canaries) encodes through `encode`, so that all of them agree on
special tokens (none) and on the tokenizers they accept (fast ones, with offsets).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Window(NamedTuple):
    """One window of `length` tokens cut from text number `text_index`."""

    text_index: int
    index: int  # the window's position in its text (0, 1, ...)
    tokens: list[int]
    start: int  # characters [start, end) of the text that the tokens cover
    end: int
    text: str  # those characters


def encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, without special tokens."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError("the tokenizer gives no offset mapping: use a fast tokenizer "
                         "(AutoTokenizer.from_pretrained(..., use_fast=True))") from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def windows(texts: Iterable[str], tokenizer, length: int) -> Iterator[Window]:
    """Each text's consecutive, non-overlapping windows of `length` tokens, text by text.

    A text shorter than one window gives none; the tail after the last full window is
    dropped.
    """
    for t, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {t} is a {type(text).__name__}, not a str")
        token_ids, offsets = encode(tokenizer, text)
        for w in range(len(token_ids) // length):
            s = w * length
            start, end = offsets[s][0], offsets[s + length - 1][1]
            yield Window(t, w, token_ids[s : s + length], start, end, text[start:end])
