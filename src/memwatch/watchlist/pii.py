"""PII in text: character spans found by Presidio's pattern recognizers, and redaction.

Presidio (extra ``pii``) runs on a blank spaCy pipeline, so nothing is downloaded;
its email check uses tldextract's bundled public-suffix snapshot for the same
reason. Without Presidio a built-in regex set (same entities, Luhn and IBAN
checksums) is used, with a warning.

Pretraining data is full of code, so both backends drop what code looks like:
a URL needs a scheme or ``www.`` (``self.re`` or ``setup.py`` is not one), a phone
number is not a bare digit run, a decimal or a dotted quad, and an IP address is
not part of a longer dotted number nor a version or section number.
``benchmarks/bench_pii.py`` measures precision and recall per entity on stdlib
code and prose with planted PII and near-misses.
"""

from __future__ import annotations

import bisect
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE",
            "US_SSN", "URL", "API_KEY")
# Every entity reaches precision and recall >= 0.95 on benchmarks/bench_pii.py (both backends).
DEFAULT_ENTITIES = ENTITIES
BACKENDS = ("auto", "presidio", "regex")

# Secrets with a recognisable vendor prefix; the span is the whole key.
API_KEY_PATTERNS = (
    r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}",  # OpenAI
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",  # GitHub
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google
    r"\bhf_[A-Za-z0-9]{30,}\b",  # Hugging Face
)


@dataclass(frozen=True)
class PiiHit:
    """One PII span: ``text[start:end]`` is an `entity`; `score` is the recognizer's confidence."""

    entity: str
    start: int
    end: int
    score: float


def find_pii(text: str, entities: Iterable[str] | None = None, score_threshold: float = 0.35,
             backend: str = "auto", prefilter: bool = True,
             ner_model: str | os.PathLike | None = None) -> list[PiiHit]:
    """Non-overlapping PII hits in `text`, sorted by start.

    Overlapping hits are resolved by keeping the higher score, then the longer
    span (Presidio's URL recognizer also fires on parts of emails). With
    `prefilter` (the default) the pattern recognizers only see the lines that hold
    a trigger (see `candidate_lines`); the hits are the same as without it.
    `ner_model`: an installed spaCy pipeline (name or path) that also finds PERSON
    and LOCATION in the whole text (`memwatch.watchlist.ner`); without it those
    entities cannot be asked for.
    """
    entities, names = _check_entities(entities, ner_model)
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        backend = "presidio" if _presidio_available() else "regex"
        if backend == "regex":
            warnings.warn("presidio-analyzer is not installed: PII is found with memwatch's "
                          "built-in regexes; install memwatch[pii] for Presidio's recognizers",
                          stacklevel=2)
    recognize = _presidio_hits if backend == "presidio" else _regex_hits
    hits = []
    if entities:
        hits = _prefiltered(recognize, text, entities, backend) if prefilter else \
            recognize(text, entities)
    if names:  # a statistical model needs the whole text around a name
        from memwatch.watchlist.ner import ner_hits

        hits = [*hits, *(PiiHit(*t) for t in ner_hits(text, ner_model, names))]
    return dedupe([h for h in hits if h.score >= score_threshold and plausible(h, text)])


def find_pii_many(texts: Sequence[str], entities: Iterable[str] | None = None,
                  score_threshold: float = 0.35, backend: str = "auto",
                  ner_model: str | os.PathLike | None = None) -> list[list[PiiHit]]:
    """`find_pii` of each text, found in one pass over the texts joined by newlines.

    The same hits as one call per text (no hit crosses a newline and every check
    reads only its hit's line), without the per-call cost that dominates short rows.
    Names (`ner_model`) are found text by text, in one batched spaCy pass.
    """
    texts = list(texts)
    patterns, names = _check_entities(entities, ner_model)
    starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]]).tolist() if texts else []
    out: list[list[PiiHit]] = [[] for _ in texts]
    if patterns and texts:
        for h in find_pii("\n".join(texts), patterns, score_threshold, backend):
            k = bisect.bisect_right(starts, h.start) - 1
            out[k].append(PiiHit(h.entity, h.start - starts[k], h.end - starts[k], h.score))
    if names and texts:
        from memwatch.watchlist.ner import ner_hits_many

        for k, found in enumerate(ner_hits_many(texts, ner_model, names)):
            out[k] = dedupe(out[k] + [PiiHit(*t) for t in found if t[3] >= score_threshold])
    return out


def plausible(hit: PiiHit, text: str) -> bool:
    """False for the look-alikes code and prose are full of (see the module docstring)."""
    span = text[hit.start:hit.end]
    if hit.entity == "URL":
        return re.match(r"(?i)(?:[a-z][a-z0-9+.-]*://|www\.)", span) is not None
    if hit.entity == "PHONE_NUMBER":  # glued to a word it is an id: ORD-2023-000123
        return _phone_ok(span) and not re.search(r"\w[-/]?$", text[max(0, hit.start - 2):hit.start])
    if hit.entity == "IP_ADDRESS":
        return _ip_ok(text, hit.start, hit.end)
    return True


def _phone_ok(span: str) -> bool:
    if re.fullmatch(r"\+?[\d.]+", span) and (span[0] != "+" or "." in span):
        # bare digits, decimals, dotted quads; dotted phones are 212.555.0199 (+1.212.555.0199)
        return re.fullmatch(r"(?:\+\d{1,3}\.)?\d{3}\.\d{3}\.\d{4}", span) is not None
    # without a country code or an area code in parentheses, a phone number ends in a group
    # of at least four digits (555-0199); ids like 6107-1415-32 do not
    return span.lstrip().startswith(("+", "(")) or len(re.split(r"\D+", span.rstrip())[-1]) >= 4


# A version, build or section number: the keyword, then only numbers, punctuation and a few
# linking words up to the address ("version 1.2.3.4", "sections 8.2.4.44 and 12.1.3.9", "build
# no. 10.0.0.1"). Any other word in between ("The build server is at 203.0.113.77") makes the
# keyword about something else, and the address stands.
_NOT_AN_ADDRESS = re.compile(r"(?i)\b(?:version|release|build|sections?|chapter|§)\b"
                             r"(?:[^\w\n]|\d|\b(?:and|or|to|no|nr|number|v)\b){0,16}$")


def _ip_ok(text: str, start: int, end: int) -> bool:
    span = text[start:end]
    if ":" in span:  # IPv6: "a::b", "::2" and "::1" come from code, not from people
        return len([g for g in span.split("/")[0].split(":") if g]) >= 3
    if re.match(r"\.\d", text[end:end + 2]) or re.search(r"\d\.$", text[max(0, start - 2):start]):
        return False  # part of a longer dotted number (1.2.3.4.5)
    return _NOT_AN_ADDRESS.search(text[max(0, start - 32):start]) is None


def dedupe(hits: Iterable[PiiHit]) -> list[PiiHit]:
    """The hits left after dropping each one that overlaps a stronger (or longer) one."""
    kept: list[PiiHit] = []
    for h in sorted(hits, key=lambda h: (-h.score, -(h.end - h.start), h.start)):
        if all(h.end <= k.start or h.start >= k.end for k in kept):
            kept.append(h)
    return sorted(kept, key=lambda h: h.start)


def redact(span: str, entity: str = "") -> str:
    """A preview of a PII string that keeps its shape but not its content.

    ``john.doe@example.com`` -> ``j***@e***.com``; ``https://x.org/a`` ->
    ``https://x***.org/***``; anything else keeps its first and last character
    when longer than 7 characters (``4***1``), else becomes ``***``.
    """
    if entity == "EMAIL_ADDRESS" or (not entity and "@" in span):
        local, _, domain = span.rpartition("@")
        host, dot, tld = domain.rpartition(".")
        if not host:
            host, dot, tld = domain, "", ""
        return f"{local[:1]}***@{host[:1]}***{dot}{tld}"
    if entity == "URL":
        m = re.match(r"(?i)([a-z][a-z0-9+.-]*://)?(?:www\.)?([^/?#:]+)(.*)", span)
        if m:
            scheme, host, rest = m.group(1) or "", m.group(2), m.group(3)
            head, dot, tld = host.rpartition(".")
            host = f"{head[:1]}***{dot}{tld}" if head else f"{host[:1]}***"
            return f"{scheme}{host}{'/***' if rest.strip('/') else ''}"
    if len(span) > 7:
        return f"{span[0]}***{span[-1]}"
    return "***"


def _check_entities(entities, ner_model=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(pattern entities, NER entities) to look for; NER ones only with a `ner_model`."""
    from memwatch.watchlist.ner import NER_ENTITIES

    if entities is None:
        return DEFAULT_ENTITIES, NER_ENTITIES if ner_model is not None else ()
    entities = (entities,) if isinstance(entities, str) else tuple(entities)
    unknown = [e for e in entities if e not in ENTITIES + NER_ENTITIES]
    if unknown or not entities:
        raise ValueError(f"unknown PII entities {unknown or '(none given)'}; choose from "
                         f"{ENTITIES + NER_ENTITIES}")
    names = tuple(e for e in entities if e in NER_ENTITIES)
    if names and ner_model is None:
        raise ValueError(f"{names} are found by a spaCy NER model: pass ner_model= (an "
                         "installed pipeline such as 'en_core_web_lg', or a saved pipeline's "
                         "path; memwatch downloads nothing)")
    return tuple(e for e in entities if e in ENTITIES), names


# --------------------------------------------------------------------------------------------
# Presidio: pattern recognizers only, blank spaCy pipeline, bundled public-suffix list.
# --------------------------------------------------------------------------------------------


def _presidio_available() -> bool:
    try:
        import presidio_analyzer  # noqa: F401
        import spacy  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=2)
def _analyzer(stock_phone: bool = False):
    """Presidio's AnalyzerEngine with memwatch's recognizers; `stock_phone`: with Presidio's own
    PhoneRecognizer instead of `_bounded_phone_recognizer` (the same hits, slower)."""
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    # Empty suffix_list_urls: use the snapshot shipped with tldextract, never the network.
    offline_tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return offline_tld(pattern_text.rpartition("@")[2]).fqdn != ""

    class BlankSpacy(SpacyNlpEngine):
        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    engine = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    # Presidio's UrlRecognizer also matches scheme-less "host.tld" (self.re, setup.py): on
    # code that is nearly every attribute access, so URLs use memwatch's stricter pattern.
    phone = PhoneRecognizer() if stock_phone else _bounded_phone_recognizer()
    for rec in (OfflineEmailRecognizer(), phone, CreditCardRecognizer(),
                IpRecognizer(), IbanRecognizer(), UsSsnRecognizer(),
                PatternRecognizer(supported_entity="URL", name="SchemeUrlRecognizer",
                                  patterns=[Pattern("url", _REGEXES["URL"], 0.6)]),
                PatternRecognizer(supported_entity="API_KEY", name="ApiKeyRecognizer",
                                  patterns=[Pattern(f"api_key_{i}", p, 0.9)
                                            for i, p in enumerate(API_KEY_PATTERNS)])):
        registry.add_recognizer(rec)
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def _presidio_hits(text: str, entities: tuple[str, ...],
                   stock_phone: bool = False) -> list[PiiHit]:
    results = _analyzer(stock_phone).analyze(text, language="en", entities=list(entities))
    return [PiiHit(r.entity_type, r.start, r.end, float(r.score)) for r in results]


# Presidio's PhoneRecognizer runs phonenumbers' PhoneNumberMatcher once per region (8 of them)
# over its text, and the matcher parses every digit group it meets (versions, dates, decimals,
# ids): on code and prose that is most of the Presidio backend's time. A number phonenumbers
# calls valid has a national significant number of one of its region's possible lengths, and,
# written internationally, its country code too; every one of those digits is a digit of the
# text (a letter of a vanity number becomes one). A candidate with fewer digits and letters than
# the shortest such number cannot be valid, so the bounded matcher rejects it without parsing,
# where the matcher would parse it and reject it: the matches, and the number of tries the
# matcher counts, are the same. tests/test_pii.py compares both on adversarial text.

_LETTERS_AND_DIGITS = re.compile(r"[^\W_]")


@lru_cache(maxsize=64)
def fewest_phone_digits(region: str) -> int:
    """The fewest digits a phone number valid to phonenumbers holds when `region` is the default.

    A national number of `region`'s country code is at least its shortest possible national
    length; one written with ``+`` or an international prefix holds its country code and a
    national number of that code (Germany: 4 digits nationally; +43 1234: 6 internationally).
    """
    import phonenumbers
    from phonenumbers.phonemetadata import PhoneMetadata

    def shortest_national(code: int) -> int:
        lengths = []
        for region_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]:
            meta = PhoneMetadata.metadata_for_region_or_calling_code(code, region_code)
            desc = meta.general_desc if meta is not None else None
            # no lengths listed: phonenumbers' own floor for any national number, 2 digits
            lengths.append(min((n for n in (desc.possible_length if desc else ()) if n > 0),
                               default=2))
        return min(lengths)

    international = min(len(str(code)) + shortest_national(code)
                        for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    code = phonenumbers.country_code_for_region(region) if region else 0
    return min(international, shortest_national(code)) if code else international


@lru_cache(maxsize=1)
def _bounded_phone_recognizer():
    """Presidio's PhoneRecognizer on a matcher that skips candidates too short to be valid."""
    import phonenumbers
    from phonenumbers.phonenumbermatcher import PhoneNumberMatcher
    from presidio_analyzer import EntityRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    rejected: set[tuple] = set()

    class BoundedMatcher(PhoneNumberMatcher):
        def _parse_and_verify(self, candidate, offset):
            if len(_LETTERS_AND_DIGITS.findall(candidate)) < fewest_phone_digits(
                    self.preferred_region):
                return None
            # all the outcome depends on (the characters on either side are checked)
            end = offset + len(candidate)
            key = (candidate, self.preferred_region, self.leniency,
                   self.text[offset - 1] if offset > 0 else None,
                   self.text[end] if end < len(self.text) else None)
            if key in rejected:
                return None
            match = super()._parse_and_verify(candidate, offset)
            if match is None:
                if len(rejected) >= 1 << 16:
                    rejected.clear()
                rejected.add(key)
            return match

    class BoundedPhoneRecognizer(PhoneRecognizer):
        def analyze(self, text, entities, nlp_artifacts=None):
            # PhoneRecognizer.analyze (presidio-analyzer 2.2), on the bounded matcher
            results = []
            for region in self.supported_regions:
                for match in BoundedMatcher(text, region, leniency=self.leniency):
                    try:
                        found = phonenumbers.region_code_for_number(
                            phonenumbers.parse(text[match.start:match.end]))
                    except phonenumbers.NumberParseException:
                        found = region
                    results.append(self._get_recognizer_result(match, text, found,
                                                               nlp_artifacts))
            return EntityRecognizer.remove_duplicates(results)

    return BoundedPhoneRecognizer(name="PhoneRecognizer")


# --------------------------------------------------------------------------------------------
# Fallback regexes: the same entities, with Luhn / IBAN / SSN checks.
# --------------------------------------------------------------------------------------------

_REGEXES = {
    "EMAIL_ADDRESS": r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b",
    "PHONE_NUMBER": r"(?<![\w+])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]\d{4}\b"
                    r"|(?<![\w+])\+\d{1,3}(?:[ .-]\d{1,4}){2,4}\b",
    # Not preceded by "<digit><separator>": a card number never starts inside a digit group run.
    "CREDIT_CARD": r"(?<!\d[ -])(?<!\w)(?:\d[ -]?){12,18}\d\b",
    "IP_ADDRESS": r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"
                  r"|(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])",
    "IBAN_CODE": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    "US_SSN": r"\b\d{3}([- .])\d{2}\1\d{4}\b",
    "URL": r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)\]]",
    "API_KEY": "|".join(f"(?:{p})" for p in API_KEY_PATTERNS),
}
_SCORES = {"PHONE_NUMBER": 0.4, "US_SSN": 0.5, "URL": 0.6, "IP_ADDRESS": 0.6}


def luhn_ok(number: str) -> bool:
    """True if the digits of `number` pass the Luhn checksum (credit-card numbers do)."""
    digits = [int(c) for c in number if c.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits))
    return len(digits) >= 13 and total % 10 == 0


def iban_ok(iban: str) -> bool:
    """True if `iban` passes the ISO 13616 mod-97 check."""
    s = iban.replace(" ", "").upper()
    moved = s[4:] + s[:4]
    return len(s) >= 15 and int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ssn_ok(ssn: str) -> bool:
    d = re.sub(r"\D", "", ssn)
    return not (len(set(d)) == 1 or d[:3] in ("000", "666") or d[0] == "9" or d[3:5] == "00"
                or d[5:] == "0000")


def _ip_syntax_ok(address: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


_CHECKS = {"CREDIT_CARD": luhn_ok, "IBAN_CODE": iban_ok, "US_SSN": _ssn_ok,
           "IP_ADDRESS": _ip_syntax_ok}


def _regex_hits(text: str, entities: tuple[str, ...]) -> list[PiiHit]:
    hits = []
    for entity in entities:
        check = _CHECKS.get(entity)
        for m in re.finditer(_REGEXES[entity], text):
            if check is None or check(m.group()):
                hits.append(PiiHit(entity, m.start(), m.end(), _SCORES.get(entity, 1.0)))
    return hits


# --------------------------------------------------------------------------------------------
# Prefilter: the recognizers only see the lines that hold a trigger.
# --------------------------------------------------------------------------------------------
#
# Why the hits are exactly those of the whole text: no recognizer's match crosses a newline
# (their separators are spaces, dots and dashes), every match holds one of the triggers below,
# and every check that reads context (`plausible`, the regexes' look-behinds, phonenumbers'
# neighbour test) reads only the match's own line, which starts after a newline (or the
# text's start) in both texts. tests/test_pii.py compares both on a varied corpus.

# Literal triggers: email, URL schemes, vendor key prefixes.
_LITERALS = (b"@", b"://", b"www.", b"sk-", b"AKIA", b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_",
             b"xox", b"AIza", b"hf_")
_HEX_PAIR = re.compile(rb":[0-9A-Fa-f]{1,4}:")  # an IPv6 address with >= 3 groups holds one
_PRESIDIO_CHUNK_CHARS = 2000
_MAX_GAP = 4  # phonenumbers allows up to 4 punctuation characters between digit groups


@lru_cache(maxsize=1)
def _unicode_digits() -> np.ndarray:
    """bool [0x110000]: the code points `\\d` matches (phone numbers may use any of them)."""
    table = np.zeros(0x110000, dtype=bool)
    every = "".join(map(chr, range(0x110000)))
    table[[ord(c) for c in re.findall(r"\d", every)]] = True
    return table


def candidate_lines(text: str) -> list[tuple[int, int]]:
    """Character ranges [start, end) of the lines of `text` that may hold PII, in order.

    A line is a candidate when it holds an ``@``, ``://``, ``www.``, a vendor key
    prefix (``sk-``, ``AKIA``, ``ghp_`` …), ``+`` before a digit, two capitals
    before two digits (IBAN), ``:`` hex ``:`` (IPv6), or a digit run: four digits,
    each at most four characters from the next. Adjacent candidate lines are merged.
    """
    if not text:
        return []
    data = text.encode("ascii", "replace")  # one byte per character: positions are kept
    b = np.frombuffer(data, dtype=np.uint8)
    digit = (b - 48) < 10
    if not text.isascii():
        code = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        digit |= _unicode_digits()[code]
    newlines = np.flatnonzero(b == 10)
    found = [np.flatnonzero(b == 64)]
    for lit in _LITERALS[1:]:
        k = data.find(lit)
        while k >= 0:
            found.append(np.array([k]))
            k = data.find(b"\n", k)
            k = -1 if k < 0 else data.find(lit, k)
    plus = np.flatnonzero(b[:-1] == 43)
    found.append(plus[digit[plus + 1]])
    colons = np.flatnonzero(b == 58)
    pairs = colons[:-1][(np.diff(colons) >= 2) & (np.diff(colons) <= 5)]
    found.append(np.array([k for k in pairs if _HEX_PAIR.match(data, k)], dtype=np.int64))
    pos = np.flatnonzero(digit)
    if len(pos) >= 2:
        line = np.searchsorted(newlines, pos)
        close = (np.diff(pos) <= _MAX_GAP + 1) & (line[1:] == line[:-1])
        if len(close) >= 3:
            found.append(pos[:-3][close[:-2] & close[1:-1] & close[2:]])
        runs = pos[:-1][np.diff(pos) == 1]  # a digit followed by a digit
        runs = runs[runs >= 2]
        upper = (b - 65) < 26
        found.append(runs[upper[runs - 1] & upper[runs - 2]])
    hits = np.concatenate(found)
    if not len(hits):
        return []
    lines = np.unique(np.searchsorted(newlines, hits))
    bounds = np.concatenate([[-1], newlines, [len(text)]])
    starts, ends = bounds[lines] + 1, bounds[lines + 1]
    merged: list[tuple[int, int]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if merged and s == merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def _prefiltered(recognize, text: str, entities: tuple[str, ...],
                 backend: str) -> list[PiiHit]:
    """`recognize(text, entities)`, run on the candidate lines only, in `text`'s coordinates.

    The lines are joined by newlines; for Presidio in groups of about 2000
    characters, since its context step walks every token of its text for every hit.
    """
    chunk_chars = _PRESIDIO_CHUNK_CHARS if backend == "presidio" else None
    pieces = candidate_lines(text)
    groups: list[list[tuple[int, int]]] = []
    size = 0
    for s, e in pieces:
        if not groups or (chunk_chars is not None and size >= chunk_chars):
            groups.append([])
            size = 0
        groups[-1].append((s, e))
        size += e - s + 1
    out = []
    for group in groups:
        reduced = "\n".join(text[s:e] for s, e in group)
        offsets = np.cumsum([0] + [e - s + 1 for s, e in group[:-1]])
        for h in recognize(reduced, entities):
            k = int(np.searchsorted(offsets, h.start, side="right")) - 1
            shift = group[k][0] - int(offsets[k])
            out.append(PiiHit(h.entity, h.start + shift, h.end + shift, h.score))
    return out
