"""Offline training text for the demo: the Python standard library's own sources, plus
synthetic PII records and canaries planted at graded repetition counts.

Every PII string here is fake (generated from a seed); emails use real public TLDs so
that pattern recognizers, which check the TLD, find them.
"""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import torch

_FIRST = ["alice", "bruno", "chen", "dana", "emeka", "farah", "goran", "hana", "ivan", "jules",
          "keiko", "lars", "maya", "nils", "olga", "pavel", "quinn", "rosa", "sami", "tariq"]
_LAST = ["smith", "garcia", "novak", "okafor", "tanaka", "muller", "rossi", "silva", "kowalski",
         "haddad", "jensen", "moreau", "ivanova", "nguyen", "costa", "berg", "weber", "khan"]
_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "fastmail.com", "gmx.de"]


def stdlib_texts(max_chars: int = 2_000_000) -> list[str]:
    """Source files of this Python's standard library, sorted by path, up to `max_chars`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not texts:
        raise RuntimeError(f"no Python sources found under {root}")
    return texts


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i:i + 4] for i in range(0, 16, 4))


def fake_pii_records(n: int, seed: int = 0) -> list[str]:
    """`n` customer-record paragraphs, each with a fake email, phone number and card number.

    A fixed preamble gives every PII span a long prompt before it, as a row of a
    leaked database export in a web crawl would have.
    """
    rng = random.Random(seed)
    out = []
    for k in range(n):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first}.{last}{rng.randrange(10, 99)}@{rng.choice(_DOMAINS)}"
        phone = f"+1 {rng.randrange(201, 989)}-555-{rng.randrange(1000, 9999)}"
        card = _luhn_card(rng)
        out.append(
            f"# customer export {k:04d}, kept for audits only. Holder {first.title()} "
            f"{last.title()}, email {email}, phone {phone}, card {card}. Do not copy this "
            f"record into tickets or logs; ask billing for access. End {k:04d}.\n")
    return out


def token_rows(texts: Sequence[str], tokenizer, seq_len: int) -> torch.Tensor:
    """int64 [n, seq_len]: the texts tokenized, concatenated and cut into rows."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"{len(ids)} tokens are fewer than one row of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def planted_stream(background: torch.Tensor, planted: Sequence[torch.Tensor],
                   repeats: Sequence[int], seed: int = 0) -> torch.Tensor:
    """int64 [rows, seq_len]: background rows plus each planted row `repeats[i]` times,
    shuffled. A planted row shorter than seq_len is completed with background tokens."""
    if len(planted) != len(repeats):
        raise ValueError(f"{len(planted)} planted rows but {len(repeats)} repeat counts")
    seq_len = background.shape[1]
    g = torch.Generator().manual_seed(seed)
    rows = [background]
    for k, (row, r) in enumerate(zip(planted, repeats, strict=True)):
        row = row[:seq_len]
        if len(row) < seq_len:
            fill = background[k % len(background), : seq_len - len(row)]
            row = torch.cat([row, fill])
        rows.append(row.repeat(int(r), 1))
    stream = torch.cat(rows)
    return stream[torch.randperm(len(stream), generator=g)]
