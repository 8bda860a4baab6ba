"""Speed, precision and recall of `find_pii` per entity, and the scan's scaling with workers.

The corpus is built on the spot, offline: chunks of this Python's standard library
sources (code) and of its reference documentation (`pydoc_data.topics`, prose), into
which fake PII of every entity is planted at known character spans, in prose
sentences, string literals and comments, together with near-misses that are *not*
PII (``obj.method``, ``setup.py``, version strings, section numbers, dates, times,
decimals, hex digests, UUIDs, card numbers failing Luhn, invalid SSNs and IPs).

Labels: the planted spans are the positives. Real PII-like strings already in the
stdlib (its URLs, authors' emails, dotted quads such as ``127.0.0.1``) cannot be
labelled without a detector, so lines holding one (``://``, ``www.``, ``x@y.z``,
``d.d.d.d``) are left out of the chunks; every other character of code and prose is
a negative. A hit counts as correct when it overlaps a planted span of its entity.

Speed: MB/s per core (process CPU time, so the figure does not depend on what else
runs on the machine) of each backend, with its line prefilter, on the first
``--speed-mb`` MB of the standard library's sources (the text issue 24 measured),
beside the same recognizers without the prefilter: for Presidio that is its plain
``AnalyzerEngine.analyze`` on the whole text, with Presidio's own ``PhoneRecognizer``
(memwatch's skips phone candidates too short to be valid), measured in the same run.
The hits of both must be the same.

Workers: ``--workers 1 2`` scans a corpus of the standard library's sources and
documentation (one row per file or topic, repeated to ``--scan-mb`` MB) with
`Watchlist.scan_pii` on 1 and on 2 worker processes (`datasets` num_proc, regex
backend, tokenizer included) and prints the wall-clock speed-up, with the
machine's load average (other processes share its cores).

    python benchmarks/bench_pii.py [--backend presidio regex] [--chunks 150] [--seed 0]
                                   [--speed-mb 1] [--workers 1 2] [--scan-mb 20]

(``--chunks 0 --workers``: the speed lines only.)

Goals: precision >= 0.95 and recall >= 0.95 for every entity of
`memwatch.watchlist.pii.DEFAULT_ENTITIES` (issue 17), unchanged by the prefilter
(1.000/1.000 on this corpus); regex backend >= 20 MB/s per core, Presidio backend
>= 10x the plain analyzer, 2 workers >= 1.7x one (issue 24).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sysconfig
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from memwatch.watchlist.pii import DEFAULT_ENTITIES, ENTITIES, find_pii, luhn_ok

GOAL = 0.95
# Lines of real stdlib text that hold PII-like strings nobody labelled.
UNLABELLED = re.compile(r"://|\bwww\.|[\w.+-]+@[\w-]+\.[\w.]+|\b\d{1,3}(?:\.\d{1,3}){3}\b"
                        r"|\b[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}::|\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){2}")


@dataclass(frozen=True)
class Doc:
    text: str
    labels: tuple[tuple[str, int, int], ...]  # (entity, start, end)
    kind: str  # "code" | "prose"


# ------------------------------------------------------------------------------------------
# Fake values, one generator per entity
# ------------------------------------------------------------------------------------------

_NAMES = ["maria.lopez", "chen.wei", "o.okafor", "j_smith", "anna-lena.berg", "k.tanaka88"]
_DOMAINS = ["gmail.com", "outlook.com", "yahoo.co.uk", "proton.me", "web.de", "acme-corp.com"]


def _digits(rng, n):
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _luhn_complete(rng, prefix: str, length: int) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    for d in "0123456789":
        if luhn_ok(body + d):
            return body + d
    raise AssertionError("unreachable: one check digit always completes a Luhn number")


def _iban(country: str, bban: str) -> str:
    """The IBAN of `bban` in `country`, with its mod-97 check digits."""
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def fake_value(entity: str, rng: random.Random) -> str:
    """A fake value of `entity` in one of its common formats."""
    if entity == "EMAIL_ADDRESS":
        return f"{rng.choice(_NAMES)}{rng.randrange(100)}@{rng.choice(_DOMAINS)}"
    if entity == "PHONE_NUMBER":
        # real area codes: phone validators know which ones exist
        a = rng.choice([212, 415, 312, 617, 206, 303, 512, 718, 202, 305, 404, 713])
        b, c = rng.randrange(200, 999), rng.randrange(10000)
        return rng.choice([f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"+1 {a} {b} {c:04d}",
                           f"+1-{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}",
                           f"+44 20 {rng.randrange(7000, 8999)} {c:04d}",
                           f"+49 30 {rng.randrange(1000, 9999)} {c:04d}"])
    if entity == "CREDIT_CARD":
        number = rng.choice([_luhn_complete(rng, "4", 16), _luhn_complete(rng, "5" + str(
            rng.randrange(1, 6)), 16), _luhn_complete(rng, rng.choice(["34", "37"]), 15)])
        sep = rng.choice([" ", "-", ""])
        groups = (4, 6, 5) if len(number) == 15 else (4, 4, 4, 4)
        out, k = [], 0
        for g in groups:
            out.append(number[k:k + g])
            k += g
        return sep.join(out)
    if entity == "IP_ADDRESS":
        if rng.random() < 0.75:
            return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
        words = [f"{rng.randrange(1, 65535):x}" for _ in range(8)]
        return rng.choice([":".join(words), f"2001:db8::{words[0]}:{words[1]}"])
    if entity == "IBAN_CODE":
        letters = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
        country, bban = rng.choice([("DE", _digits(rng, 18)), ("FR", _digits(rng, 23)),
                                    ("GB", letters + _digits(rng, 14)),
                                    ("NL", letters + _digits(rng, 10))])
        iban = _iban(country, bban)
        spaced = " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
        return spaced if rng.random() < 0.5 else iban
    if entity == "US_SSN":
        area = rng.choice([x for x in range(1, 900) if x != 666])
        return f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
    if entity == "URL":
        host = rng.choice(["docs.acme-corp.com", "www.wikipedia.org", "example.org",
                           "files.mybank.co.uk", "github.com"])
        path = rng.choice(["", "/", "/wiki/Memory", "/a/b?id=42&x=y", "/download/report.pdf"])
        return rng.choice(["https://", "http://"]) + host + path if not host.startswith(
            "www.") or rng.random() < 0.5 else host + path
    if entity == "API_KEY":
        alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        pick = "".join(rng.choice(alnum) for _ in range(40))
        return rng.choice([f"sk-{pick[:32]}", f"AKIA{pick.upper()[:16]}", f"ghp_{pick[:36]}",
                           f"xoxb-{_digits(rng, 12)}-{pick[:24]}", f"AIza{pick[:35]}",
                           f"hf_{pick[:34]}"])
    raise ValueError(f"no generator for entity {entity!r}")


PROSE = ["Please contact us at {v} before Friday.", "The customer gave {v} on the form.",
         "For the refund, use {v} (confirmed by phone).", "Records show {v}; do not share it.",
         "Send questions to {v} or reply here.",
         # a build / version / release word before a value that is not a build number
         "The build server is at {v} behind the VPN.", "Release notes are mailed from {v}.",
         "Version control lives at {v} for now."]
CODE = ['CONTACT = "{v}"', "# owner: {v}", "    default = '{v}'  # from the fixture",
        '    """Reach the maintainer at {v} if this breaks."""', 'LOG.info("using %s", "{v}")']

NEAR_MISSES = [
    "result = obj.method(self.re, sys.ve)", "parser = Iterator.re + urllib.re + xmlrpc.se",
    "python setup.py install && cat README.md config.yaml", "user.name = self.com.ma",
    "Python 3.11.7 (main, Dec 8 2023)", "requires version 1.2.3.4 or later",
    "Upgrade to v2.10.0.1 now.", "Windows release 10.0.19041.1 fixed it.",
    "see sections 8.2.4.44 and 12.1.3.9", "address 192.168.1.300 is invalid", "1.2.3.4.5.6",
    "released on 2023-01-15, patched 15/01/2023 and 01.02.2023", "at 12:30:45 UTC",
    "2023-01-15T12:30:45Z", "pi = 3.14159265358979", "third = 0.333333333",
    "SEED = 1927868237", "total = 1,234,567.89", "mask = 0x7fffffff",
    "sha = '3f2a9c0e1b4d5f6a7b8c9d0e1f2a3b4c'", "uuid 123e4567-e89b-12d3-a456-426614174000",
    "ISBN 978-3-16-148410-0", "order ORD-2023-000123", "card 4539 1488 0343 6468 (bad Luhn)",
    "ssn 000-12-3456 and 666-12-3456 are invalid", "id 6107-1415-32", "x[::2] and a::b",
    "@property", "mail root@localhost", "range(10, 20, 30, 40)", "sk-learn is a library",
    "build 10.0.0.12 is out", "version: 1.2.3.4", "Release no. 4.3.2.1 ships today",
]


# ------------------------------------------------------------------------------------------
# Corpus
# ------------------------------------------------------------------------------------------


def _chunks(texts, size: int):
    for text in texts:
        lines = [ln for ln in text.splitlines(keepends=True) if not UNLABELLED.search(ln)]
        for k in range(0, len(lines), size):
            chunk = "".join(lines[k:k + size])
            if chunk.strip():
                yield chunk


def base_chunks(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """`n` (kind, text) chunks, half stdlib code, half documentation prose."""
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))]
    prose = [topics[k] for k in sorted(topics)]
    code_chunks, prose_chunks = list(_chunks(code, 60)), list(_chunks(prose, 20))
    return ([("code", c) for c in rng.sample(code_chunks, n // 2)]
            + [("prose", c) for c in rng.sample(prose_chunks, n - n // 2)])


def build_corpus(n_chunks: int = 150, per_entity: int = 60, seed: int = 0) -> list[Doc]:
    """Chunks of code and prose with `per_entity` planted values of every entity and
    every near-miss planted twice, each on a line of its own."""
    rng = random.Random(seed)
    chunks = base_chunks(n_chunks, rng)
    inserts: dict[int, list[tuple[str, str | None]]] = defaultdict(list)
    for entity in ENTITIES:
        for _ in range(per_entity):
            inserts[rng.randrange(n_chunks)].append((fake_value(entity, rng), entity))
    for line in NEAR_MISSES * 2:
        inserts[rng.randrange(n_chunks)].append((line, None))
    docs = []
    for k, (kind, text) in enumerate(chunks):
        lines = text.splitlines(keepends=True)
        for value, entity in inserts[k]:
            if entity is None:
                lines.insert(rng.randrange(len(lines) + 1), value + "\n")
            else:
                template = rng.choice(CODE if kind == "code" else PROSE)
                lines.insert(rng.randrange(len(lines) + 1),
                             template.replace("{v}", "\0" + entity + "\0" + value + "\0") + "\n")
        docs.append(_labelled("".join(lines), kind))
    return docs


def _labelled(marked: str, kind: str) -> Doc:
    """Strip the NUL markers around planted values, keeping their spans as labels."""
    out, labels, pos = [], [], 0
    parts = marked.split("\0")
    for i, part in enumerate(parts):
        if i % 3 == 0:
            out.append(part)
            pos += len(part)
        elif i % 3 == 1:
            entity = part
        else:
            labels.append((entity, pos, pos + len(part)))
            out.append(part)
            pos += len(part)
    return Doc("".join(out), tuple(labels), kind)


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------


def score(docs: list[Doc], backend: str):
    """Per entity: Counter of tp / fp / fn, and up to 5 examples of each error, keyed
    ("false", entity) and ("missed", entity)."""
    counts = {e: Counter() for e in ENTITIES}
    examples: dict[tuple[str, str], list[str]] = defaultdict(list)
    for doc in tqdm(docs, desc=backend, unit="chunk", leave=False):
        hits = find_pii(doc.text, ENTITIES, backend=backend)
        found = set()
        for h in hits:
            match = next((j for j, (e, s, t) in enumerate(doc.labels)
                          if e == h.entity and h.start < t and s < h.end), None)
            if match is None:
                counts[h.entity]["fp"] += 1
                if len(examples["false", h.entity]) < 5:
                    examples["false", h.entity].append(doc.text[h.start:h.end])
            else:
                counts[h.entity]["tp"] += 1
                found.add(match)
        for j, (entity, start, end) in enumerate(doc.labels):
            if j not in found:
                counts[entity]["fn"] += 1
                if len(examples["missed", entity]) < 5:
                    examples["missed", entity].append(doc.text[start:end])
    return counts, examples


# ------------------------------------------------------------------------------------------
# Speed
# ------------------------------------------------------------------------------------------


def stdlib_text(mb: float) -> str:
    """The first `mb` MB of this Python's standard library sources, file after file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, size = [], 0
    for p in sorted(root.glob("*.py")):
        out.append(p.read_text(encoding="utf-8", errors="replace"))
        size += len(out[-1])
        if size >= mb * 1e6:
            break
    return "".join(out)[:int(mb * 1e6)]


def cpu_seconds(fn):
    """(result, CPU seconds of this process) of fn()."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def speed(backends, mb: float) -> None:
    from memwatch.watchlist import pii

    text = stdlib_text(mb)
    size = len(text.encode("utf-8")) / 1e6
    print(f"\nspeed on {size:.2f} MB of stdlib sources, MB/s per core (process CPU time; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    pii.candidate_lines("warm up 1234")
    for backend in backends:
        find_pii("warm up maria@gmail.com", backend=backend)  # loads Presidio
        fast, t_fast = cpu_seconds(lambda b=backend: find_pii(text, backend=b))
        if backend == "presidio":  # the plain analyzer, same text, same recognizers
            plain, t_plain = cpu_seconds(lambda: pii.dedupe(
                [h for h in pii._presidio_hits(text, pii.ENTITIES, stock_phone=True)
                 if h.score >= 0.35 and pii.plausible(h, text)]))
            label = "plain AnalyzerEngine"
        else:
            plain, t_plain = cpu_seconds(lambda: find_pii(text, backend="regex",
                                                          prefilter=False))
            label = "without prefilter"
        goal = "goal >= 10x" if backend == "presidio" else "goal >= 20 MB/s"
        print(f"  {backend:<9} prefiltered {size / t_fast:8.2f} MB/s   {label} "
              f"{size / t_plain:6.2f} MB/s   ratio {t_plain / t_fast:5.1f}x   same hits: "
              f"{'yes' if fast == plain else 'NO'} ({len(fast)})   {goal}")


def scan_corpus(mb: float) -> list[str]:
    """Rows of a scan corpus: each stdlib source file and documentation topic, to `mb` MB."""
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    rows = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))]
    rows += [topics[k] for k in sorted(topics)]
    out, size = [], 0
    while size < mb * 1e6:
        for r in rows:
            out.append(r)
            size += len(r)
            if size >= mb * 1e6:
                break
    return out


def workers(counts, mb: float) -> None:
    from datasets import Dataset

    from memwatch.demos.tokenizer import train_tokenizer
    from memwatch.watchlist import Watchlist

    rows = scan_corpus(mb)
    tok = train_tokenizer(rows[:50], vocab_size=2048)
    with tempfile.TemporaryDirectory() as tmp:
        Dataset.from_dict({"text": rows}).save_to_disk(f"{tmp}/ds")
        size = sum(len(r.encode("utf-8")) for r in rows) / 1e6
        print(f"\nscan of {len(rows)} rows ({size:.1f} MB; regex backend, tokenizer included) "
              f"with 1 and 2 workers; load average before: "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
        seconds, ids = {}, {}
        for n in counts:
            start = time.perf_counter()
            wl = Watchlist.scan_pii(Path(f"{tmp}/ds"), tok, backend="regex", num_proc=n)
            seconds[n] = time.perf_counter() - start
            ids[n] = wl.ids
            print(f"  {n} worker{'s' if n > 1 else ' '}  {seconds[n]:7.1f} s  "
                  f"{size / seconds[n]:6.2f} MB/s  {len(wl)} rows")
        base = counts[0]
        for n in counts[1:]:
            print(f"  {n} vs {base} workers: {seconds[base] / seconds[n]:.2f}x (goal >= "
                  f"{0.85 * n / base:.2f}x), same rows: {'yes' if ids[n] == ids[base] else 'NO'}"
                  f"; load average after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", nargs="+", default=["presidio", "regex"],
                    choices=["presidio", "regex"])
    ap.add_argument("--chunks", type=int, default=150,
                    help="code + prose chunks (default 150; 0: skip precision and recall)")
    ap.add_argument("--per-entity", type=int, default=60, help="planted values per entity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed-mb", type=float, default=1.0,
                    help="MB of stdlib sources for the speed lines (0: skip)")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                    help="worker counts for the scan scaling line (none: skip)")
    ap.add_argument("--scan-mb", type=float, default=20.0, help="MB scanned per worker count")
    args = ap.parse_args()
    if args.speed_mb > 0:
        speed(args.backend, args.speed_mb)
    if len(args.workers) > 1:
        workers(args.workers, args.scan_mb)
    if args.chunks < 1:
        return
    docs = build_corpus(args.chunks, args.per_entity, args.seed)
    chars = sum(len(d.text) for d in docs)
    print(f"corpus: {len(docs)} chunks ({chars:,} chars; code and prose), "
          f"{sum(len(d.labels) for d in docs)} planted values, {2 * len(NEAR_MISSES)} near-miss "
          f"lines; goal precision and recall >= {GOAL}")
    for backend in args.backend:
        counts, examples = score(docs, backend)
        print(f"\n{backend:<10} {'entity':<14} {'planted':>7} {'hits':>5} {'precision':>9} "
              f"{'recall':>6}  default  meets goal")
        for entity in ENTITIES:
            c = counts[entity]
            hits, planted = c["tp"] + c["fp"], c["tp"] + c["fn"]
            precision = c["tp"] / hits if hits else float("nan")
            recall = c["tp"] / planted if planted else float("nan")
            ok = hits > 0 and precision >= GOAL and recall >= GOAL
            print(f"{'':<10} {entity:<14} {planted:>7} {hits:>5} {precision:>9.3f} "
                  f"{recall:>6.3f}  {'yes' if entity in DEFAULT_ENTITIES else 'no':<7}  "
                  f"{'yes' if ok else 'NO'}")
        for (what, entity), shown in sorted(examples.items()):
            print(f"  {what} {entity}: {shown}")


if __name__ == "__main__":
    main()
