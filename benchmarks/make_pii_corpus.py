"""Write a generated corpus for scale tests of the PII scan: .jsonl rows of prose, a few % with PII.

Each row is about `--row-chars` characters of words drawn from this Python's
documentation (`pydoc_data.topics`), split into lines (one of 20,000 filler rows);
in a fraction `--pii-rate` of the rows one fresh fake PII value
(`bench_pii.fake_value`, every entity) is planted in a prose sentence in the middle
of the row, with room for a 32-token prompt and continuation on each side.
Seeded: the same arguments write the same file.

    python benchmarks/make_pii_corpus.py --out /tmp/corpus.jsonl --mb 1000 [--pii-rate 0.03]
    memwatch watchlist build --pii --windows 0 --texts /tmp/corpus.jsonl --tokenizer TOK \\
        --out /tmp/wl --num-proc 2
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pii import ENTITIES, PROSE, fake_value  # noqa: E402


def vocabulary() -> list[str]:
    """Words of the documentation, without digits (they would look like numbers)."""
    from pydoc_data.topics import topics

    words = re.findall(r"[A-Za-z][a-z]{1,11}", " ".join(topics.values()))
    return sorted(set(words))


def rows(n_bytes: int, pii_rate: float, row_chars: int, seed: int):
    """(row, entity or None) until `n_bytes` of JSON lines are written."""
    rng = random.Random(seed)
    words = vocabulary()
    # Rows are cut from a pool of 20,000 filler rows, JSON-escaped once (a gigabyte is written
    # in seconds); a PII row plants a fresh value between the halves of a pool row.
    pool = []
    for _ in range(20_000):
        lines, size = [], 0
        while size < row_chars:
            lines.append(" ".join(rng.choices(words, k=rng.randrange(6, 16))) + ".")
            size += len(lines[-1]) + 1
        half = len(lines) // 2
        pool.append((json.dumps("\n".join(lines[:half]) + "\n")[:-1],
                     json.dumps("\n" + "\n".join(lines[half:]))[1:]))
    written = 0
    while written < n_bytes:
        head, tail = pool[rng.randrange(len(pool))]
        entity = None
        middle = ""
        if rng.random() < pii_rate:
            entity = rng.choice(ENTITIES)
            middle = json.dumps(rng.choice(PROSE).replace("{v}", fake_value(entity, rng)))[1:-1]
        line = '{"text": ' + head + middle + tail + "}\n"
        written += len(line)
        yield line, entity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the .jsonl file to write")
    ap.add_argument("--mb", type=float, default=1000.0, help="size in MB (default 1000)")
    ap.add_argument("--pii-rate", type=float, default=0.03, help="rows with PII (default 0.03)")
    ap.add_argument("--row-chars", type=int, default=2000, help="characters per row")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = planted = 0
    with open(args.out, "w", encoding="utf-8") as f:
        for line, entity in rows(int(args.mb * 1e6), args.pii_rate, args.row_chars, args.seed):
            f.write(line)
            n += 1
            planted += entity is not None
    print(f"wrote {args.out}: {n} rows, {planted} with PII ({planted / max(n, 1):.1%})")


if __name__ == "__main__":
    main()
