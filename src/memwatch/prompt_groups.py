"""Probing rows whose own prompts differ in length: grouped by length, never padded.

A PII hit in a short record (`memwatch.watchlist.pii_rows`) has fewer than
``prompt_len`` tokens of context; its watchlist row is left-padded to the common
width, and ``Watchlist.prompt_lens[i]`` says how many of the tokens before
``prompt_len`` are its own. Feeding the padding to the model would change what it
predicts (other tokens to attend to, other positions); masking it out would need
per-row position ids and a model that honours both, and `reference_probe` pads
nothing. So the rows are grouped by prompt
length p and each group is probed on its own, unpadded tokens
``[prompt_len - p, prompt_len + cont_len)`` with ``prompt_len=p``: one `probe` call
per distinct length (a handful: a record's prefix is short or it is not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from memwatch.probe import PROMPT_LEN, ProbeResult, ProbeSpec, probe


def prompt_groups(prompt_lens: Sequence[int | None] | None, n: int,
                  prompt_len: int = PROMPT_LEN) -> list[tuple[int, np.ndarray]]:
    """[(p, rows)]: the rows (int64 indices, ascending) probed with prompt length p, longest p
    first; a row without a length of its own, or with one >= `prompt_len`, has `prompt_len`."""
    lens = np.full(n, prompt_len, dtype=np.int64)
    if prompt_lens is not None:
        if len(prompt_lens) != n:
            raise ValueError(f"{len(prompt_lens)} prompt lengths for {n} rows")
        own = np.array([prompt_len if p is None else p for p in prompt_lens], dtype=np.int64)
        if (own < 1).any():
            raise ValueError(f"row {int(np.flatnonzero(own < 1)[0])} has prompt length "
                             f"{int(own[own < 1][0])}; a prompt has at least one token")
        lens = np.minimum(own, prompt_len)
    return [(int(p), np.flatnonzero(lens == p)) for p in sorted(set(lens.tolist()), reverse=True)]


def check_prompt_lens(ids: Sequence[str], prompt_lens: Sequence[int | None] | None,
                      spec: ProbeSpec) -> None:
    """Raise ValueError, naming the row, when `spec` has several prompt lengths and a row has a
    prompt of its own shorter than the longest: such a row is probed with its own length
    alone (`probe_rows` refuses it at every probe; the monitor and eval refuse it up front)."""
    if len(spec.prompt_lens) < 2 or prompt_lens is None:
        return
    short = next((i for i, p in enumerate(prompt_lens) if p is not None and p < spec.context_len),
                 None)
    if short is not None:
        raise ValueError(f"watchlist sequence {ids[short]!r} has a prompt of its own of "
                         f"{prompt_lens[short]} tokens (PII in a short record), probed with that "
                         f"length alone; probe this watchlist with one prompt_len, not "
                         f"{list(spec.prompt_lens)}")


def probe_rows(model, tokens: torch.Tensor, prompt_lens: Sequence[int | None] | None,
               spec: ProbeSpec = ProbeSpec(),  # noqa: B008 (frozen, so a shared default is safe)
               probe_fn: Callable[..., ProbeResult] | None = None, *args) -> ProbeResult:
    """The `ProbeResult` of every row of `tokens`, each probed with its own prompt length.

    Rows are grouped by `prompt_groups`; each group's tokens ``[prompt_len - p,
    prompt_len + cont_len)`` go to ``probe_fn(model, tokens, spec_p, *args)`` where
    ``spec_p`` is `spec` with ``prompt_len=p`` (a `spec` of several prompt lengths is
    refused when there is more than one group; default `probe_fn`: `probe`; the monitor passes
    `memwatch.distributed.probe_sharded`, and every rank runs the same groups in the
    same order) and the results are put back in row order. With one group this is a
    single ``probe_fn`` call on `tokens` itself.
    """
    run = probe_fn or (lambda m, t, s: probe(m, t, spec=s))
    M, N = spec.context_len, spec.cont_len
    groups = prompt_groups(prompt_lens, len(tokens), M)
    if len(groups) == 1 and groups[0][0] == M:
        return run(model, tokens, spec, *args)
    if len(spec.prompt_lens) > 1:
        raise ValueError(f"the watchlist has rows with prompts of their own shorter than "
                         f"{M} tokens (PII in short records), which are probed with their own "
                         f"prompt length; probe it with one prompt_len, not {spec.prompt_len}")
    parts = [(rows, run(model, tokens[torch.from_numpy(rows), M - p:M + N],
                        replace(spec, prompt_len=p), *args))
             for p, rows in groups]
    return _merge(parts, len(tokens))


def _merge(parts: list[tuple[np.ndarray, ProbeResult]], n: int) -> ProbeResult:
    """One `ProbeResult` of `n` rows from results of row subsets: every per-row tensor field
    scattered into row order; other fields (the mode) taken from the first part."""
    merged = {}
    for f in dataclasses.fields(ProbeResult):
        values = [getattr(res, f.name) for _, res in parts]
        first = values[0]
        if not isinstance(first, torch.Tensor):
            merged[f.name] = first
            continue
        out = first.new_empty((n, *first.shape[1:]))
        for (rows, _), value in zip(parts, values, strict=True):
            out[torch.from_numpy(rows)] = value
        merged[f.name] = out
    return ProbeResult(**merged)
