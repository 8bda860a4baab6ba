"""A PII hit's watchlist row: the tokens around it, its own prompt length, the PII's tokens.

A hit whose first character lies in token ``t`` of its text gets the row
``[t - M, t + N)``: the PII starts the continuation. ``span_tokens`` counts the
continuation tokens the PII covers, so ``match_prefix >= span_tokens`` means the
model reproduced the PII itself verbatim ("leaked"), usually long before all N
tokens of its row ("memorized").

Most PII lives in short records (a CSV row, a JSON field, a form, a chat turn),
with fewer than M tokens before it or N after it. Each text given to the scanner
is one document of the training stream, and a packed training stream (Pythia's,
GPT-NeoX's, nanoGPT's) puts the end-of-document token between documents. So a
document start is preceded by that separator, and that is all the context the
model ever saw before it: a short record's prompt is the separator then the
record's tokens before the PII (``prompt_len`` of them, fewer than M), and its
continuation is the record's tokens from the PII on, then the separator, padded
with it to N tokens. The row is left-padded to M + N tokens with the separator
(the padding is never fed to the model: rows are probed grouped by their prompt
length, `memwatch.prompt_groups`). Positions past the record's end cannot be
reproduced (the probe bans the end-of-document token, as Pythia's ``min_length``
did), so such a row can leak but never be memorized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HitRow:
    """A hit's row: `tokens` (M + N ids), its own `prompt_len` (<= M), `span_tokens` (>= 1)."""

    tokens: list[int]
    prompt_len: int
    span_tokens: int
    first: int  # the index, in its text's tokens, of the token holding the hit's first char
    short: bool  # the record gave fewer than M tokens before the hit or N after it


def hit_row(token_ids: Sequence[int], offsets: Sequence[tuple[int, int]], start: int, end: int,
            prompt_len: int, cont_len: int, separator: int | None) -> HitRow | None:
    """The row of the PII at characters [start, end) of a text with these tokens and offsets.

    `separator`: the end-of-document token id that precedes and follows each text in
    the training stream; None skips hits in short records (returns None for them).
    """
    M, N = prompt_len, cont_len
    first = next((k for k, (_, e) in enumerate(offsets) if e > start), None)
    if first is None:
        return None
    last = first
    while last + 1 < len(offsets) and offsets[last + 1][0] < end:
        last += 1
    span = min(last - first + 1, N)
    if first >= M:
        prompt, own = list(token_ids[first - M:first]), M
    elif separator is None:
        return None
    else:  # a document start: the separator, then the record (left-padded with it)
        own = first + 1
        prompt = [separator] * (M - own) + [separator] + list(token_ids[:first])
    cont = list(token_ids[first:first + N])
    if len(cont) < N:
        if separator is None:
            return None
        cont += [separator] * (N - len(cont))
    short = first < M or first + N > len(token_ids)
    return HitRow(prompt + cont, own, span, first, short)
