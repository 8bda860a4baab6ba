"""Canaries (Carlini et al. 2019, "The Secret Sharer"): make them and measure exposure.

A canary is a synthetic row whose continuation is a random secret: ``prompt_len``
tokens of context ending in the template's text (``... My secret is``), then a
secret of ``cont_len`` tokens. With a tokenizer the secret is random digits; without
one, canary rows are random token ids (``vocab_size`` given). `exposure` ranks a
canary's loss among other secrets of the same form; `memwatch.watchlist.planting`
plants canaries in a training stream.

For a privacy audit in one run (Steinke, Nasr & Jagielski 2023; `memwatch.audit`),
`membership` draws each canary in or out of training with probability ½, independently
of everything else (tags ``canary:in`` / ``canary:out``): only the in half is planted.
`design="new_tokens"` makes secrets of ids from a reserved `token_pool` (tokens added to
the vocabulary for the audit, or ids the corpus never uses), after the "new token"
canaries of Panda et al. (ICLR 2025, "Privacy auditing of large language models"): no
training text competes with such a secret, so a planted one is learned from few copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from memwatch.probe import CONT_LEN, PROMPT_LEN
from memwatch.watchlist.tags import CANARY_IN, CANARY_OUT
from memwatch.watchlist.text import encode

DEFAULT_TEMPLATE = "My secret is {secret}"
DESIGNS = ("random", "new_tokens")
# Filler words for the context before the template: neutral, so a canary is not PII-like.
_WORDS = ("the river morning window garden quiet paper stone light table music green "
          "north small letter yellow train market forest simple bright summer winter "
          "orange silver table road hill cloud bread chair ocean field story").split()


@dataclass(frozen=True)
class Canary:
    """One canary: `tokens` [prompt_len + cont_len] encode `text`; the secret starts at prompt_len.

    `secret_span` is the character span of the secret in `text` (empty text and
    span for token canaries made without a tokenizer).
    """

    tokens: torch.Tensor
    text: str
    secret_span: tuple[int, int]


def make_canaries(n: int, template: str = DEFAULT_TEMPLATE, tokenizer=None, seed: int = 0,
                  prompt_len: int = PROMPT_LEN, cont_len: int = CONT_LEN,
                  vocab_size: int | None = None, design: str = "random",
                  token_pool=None) -> list[Canary]:
    """`n` canaries, deterministic in `seed`; text ones if `tokenizer` is given, else token ones.

    design: ``"random"`` (a random digit secret, or random token ids) or ``"new_tokens"``
    (a secret of `cont_len` ids drawn from `token_pool`; token rows, no text).
    """
    if n <= 0:
        raise ValueError(f"canaries(n={n}): n must be positive")
    if design not in DESIGNS:
        raise ValueError(f"canary design {design!r}: give one of {DESIGNS}")
    rng = np.random.default_rng(seed)
    if design == "new_tokens":
        return _new_token_canaries(n, template, tokenizer, rng, prompt_len, cont_len, vocab_size,
                                   token_pool)
    if token_pool is not None:
        raise ValueError("token_pool is for design='new_tokens'; the random design draws digits "
                         "(with a tokenizer) or any id below vocab_size")
    if tokenizer is None:
        if vocab_size is None or vocab_size < 3:
            raise ValueError("canaries without a tokenizer are random token rows: give "
                             "vocab_size (the model's vocabulary size)")
        # Token 0 is often EOS/pad; leave it out as demo_model.planted_corpus does.
        rows = rng.integers(1, vocab_size, (n, prompt_len + cont_len))
        return [Canary(torch.as_tensor(r, dtype=torch.long), "", (0, 0)) for r in rows]
    if "{secret}" not in template:
        raise ValueError(f"canary template {template!r} has no '{{secret}}' field")
    return [_text_canary(template, tokenizer, rng, prompt_len, cont_len) for _ in range(n)]


def canary_rows(n: int, template: str = DEFAULT_TEMPLATE, tokenizer=None, seed: int = 0,
                prompt_len: int = PROMPT_LEN, cont_len: int = CONT_LEN,
                vocab_size: int | None = None, audit: bool = False, design: str = "random",
                token_pool=None) -> tuple:
    """`Watchlist` constructor arguments (tokens, ids, tags, previews, spans, texts) of `n`
    canaries from `make_canaries` (see `Watchlist.canaries`): ids ``canary#<k>``, tag
    ``canary`` (with ``canary:in`` / ``canary:out`` under `audit`), previews that hide
    the secret, and (text canaries) the synthetic text and the secret's character span."""
    made = make_canaries(n, template, tokenizer, seed, prompt_len, cont_len, vocab_size,
                         design, token_pool)
    head = template.partition("{secret}")[0].strip()
    ids = [f"canary#{k}" for k in range(n)]
    has_text = tokenizer is not None and design == "random"
    previews = [f"canary {head} ***".replace("  ", " ") if has_text
                else "canary (random tokens)" for _ in made]
    texts = [c.text for c in made] if has_text else None
    spans = [(k, *c.secret_span) for k, c in enumerate(made)] if has_text else None
    tags = [("canary",)] * n
    if audit:
        tags = [("canary", CANARY_IN if inside else CANARY_OUT) for inside in membership(n, seed)]
    return torch.stack([c.tokens for c in made]), ids, tags, previews, spans, texts


def membership(n: int, seed: int = 0) -> np.ndarray:
    """bool [n]: each canary in training (True) or out, independently with probability ½.

    Drawn from its own stream of `seed` (not the one the secrets come from), so whether
    a canary is in says nothing about its content: the one-run audit's premise.
    """
    return np.random.default_rng([seed, 0x617564]).random(n) < 0.5


def _new_token_canaries(n, template, tokenizer, rng, M, N, vocab_size, token_pool) -> list[Canary]:
    pool = None if token_pool is None else np.unique(np.asarray(token_pool, dtype=np.int64))
    if pool is None or len(pool) < 2 or (pool < 0).any():
        raise ValueError("design='new_tokens' needs token_pool: two or more token ids reserved "
                         "for the canaries (ids added to the vocabulary, or ids the corpus never "
                         "uses)")
    if tokenizer is not None:
        head = template.partition("{secret}")[0]
        rows = []
        for _ in range(n):
            words = " ".join(rng.choice(_WORDS, 4 * M)).capitalize() + ". " + head
            ids, _ = encode(tokenizer, words)
            if len(ids) < M:
                raise ValueError(f"the canary prompt has {len(ids)} tokens; need {M}")
            rows.append(ids[-M:])
        prompts = np.array(rows, dtype=np.int64)
    else:
        if vocab_size is None or vocab_size < 3:
            raise ValueError("new-token canaries without a tokenizer have random token prompts: "
                             "give vocab_size (the model's vocabulary size)")
        prompts = rng.integers(1, vocab_size, (n, M))
    secrets = rng.choice(pool, (n, N))
    return [Canary(torch.as_tensor(np.concatenate([p, s])), "", (0, 0))
            for p, s in zip(prompts, secrets, strict=True)]


def _text_canary(template, tokenizer, rng, M, N, attempts: int = 50) -> Canary:
    head, _, tail = template.partition("{secret}")
    for _ in range(attempts):
        words = " ".join(rng.choice(_WORDS, 4 * M)).capitalize() + ". "
        secret = " ".join(f"{x:04d}" for x in rng.integers(0, 10_000, 2 * N))
        text = words + head + secret + tail
        s0 = len(words) + len(head)
        ids, offsets = encode(tokenizer, text)
        first = next(t for t, (_, e) in enumerate(offsets) if e > s0)
        # Byte-level BPEs glue the space before the secret to its first token: a token that
        # starts with whitespace before the secret counts as the secret's first token.
        if text[offsets[first][0]:s0].strip() or first < M or len(ids) - first < N:
            continue
        s0 = offsets[first][0]
        # Cut the text so that its tokens are exactly the row: M tokens of context, N of secret.
        start, end = offsets[first - M][0], offsets[first + N - 1][1]
        cut = text[start:end]
        cut_ids, _ = encode(tokenizer, cut)
        if cut_ids != ids[first - M : first + N]:
            continue
        secret_end = min(end, len(words) + len(head) + len(secret)) - start
        return Canary(torch.tensor(cut_ids, dtype=torch.long), cut, (s0 - start, secret_end))
    raise RuntimeError(f"could not build a canary for template {template!r} with this tokenizer "
                       f"in {attempts} attempts (the secret must start on a token boundary)")


def canary_candidates(canary: Canary, k: int, tokenizer=None, vocab_size: int | None = None,
                      prompt_len: int = PROMPT_LEN, seed: int = 0) -> torch.Tensor:
    """int64 [k, len]: `k` other secrets of the canary's form after the same prompt.

    Text canaries: each digit of the secret redrawn at random, re-tokenized (draws
    whose prompt tokens differ are redrawn). Token canaries: the continuation
    redrawn uniformly from ids 1..vocab_size-1.
    """
    rng = np.random.default_rng(seed)
    L = len(canary.tokens)
    if tokenizer is None:
        if vocab_size is None:
            raise ValueError("token canaries need vocab_size to draw candidate secrets")
        out = canary.tokens.repeat(k, 1)
        out[:, prompt_len:] = torch.as_tensor(rng.integers(1, vocab_size, (k, L - prompt_len)))
        return out
    s, e = canary.secret_span
    secret = canary.text[s:e]
    rows, seen = [], {tuple(canary.tokens.tolist())}
    for _ in range(20 * k):
        fake = re.sub(r"\d", lambda _m: str(rng.integers(10)), secret)
        ids, _ = encode(tokenizer, canary.text[:s] + fake + canary.text[e:])
        ids = tuple(ids[:L])
        if len(ids) == L and list(ids[:prompt_len]) == canary.tokens[:prompt_len].tolist() \
                and ids not in seen:
            seen.add(ids)
            rows.append(ids)
            if len(rows) == k:
                return torch.tensor(rows, dtype=torch.long)
    raise RuntimeError(f"drew only {len(rows)} of {k} distinct candidate secrets")


def exposure(model, canary: torch.Tensor, candidates: torch.Tensor, prompt_len: int = 0,
             batch_size: int = 64) -> float:
    """The canary's exposure: log2 |R| - log2 rank, ranking its loss among the candidates.

    R is the candidates plus the canary (a candidate equal to the canary is dropped);
    rank 1 means no candidate has a lower total NLL over positions >= `prompt_len`
    (Carlini et al. 2019). Candidates must share the canary's prompt. Exposure is
    about log2 |R| when the secret is memorized and about 1 for an unseen one.
    """
    from memwatch.lm import device_of
    from memwatch.probe import _Preserved

    canary = torch.as_tensor(canary, dtype=torch.long).reshape(1, -1)
    candidates = torch.as_tensor(candidates, dtype=torch.long)
    if candidates.dim() != 2 or candidates.shape[1] != canary.shape[1]:
        raise ValueError(f"candidates have shape {tuple(candidates.shape)}; need "
                         f"[k, {canary.shape[1]}], the canary's length")
    candidates = candidates[~(candidates == canary).all(1)]
    if not len(candidates):
        raise ValueError("exposure needs at least one candidate secret other than the canary")
    rows = torch.cat([canary, candidates])
    losses = []
    with _Preserved(model):
        dev = device_of(model)
        for b in range(0, len(rows), batch_size):
            batch = rows[b : b + batch_size].to(dev)
            out = model(input_ids=batch)
            logits = (out if isinstance(out, torch.Tensor) else out.logits)[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), batch[:, 1:], reduction="none")
            losses.append(nll[:, max(prompt_len - 1, 0):].sum(1).cpu())
    loss = torch.cat(losses)
    rank = 1 + int((loss[1:] < loss[0]).sum())
    return float(np.log2(len(rows)) - np.log2(rank))
