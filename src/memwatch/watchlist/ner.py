"""Names in text: PERSON and LOCATION spans found by a spaCy NER pipeline the user names.

Pattern recognizers cannot find names; a statistical NER model can. memwatch
never downloads one: ``ner_model`` is an installed pipeline's package name
(``"en_core_web_lg"``, installed with ``python -m spacy download en_core_web_lg``)
or the path of a saved pipeline (``nlp.to_disk(path)``), loaded once per process.
Only its ``ner`` component runs (and the ``tok2vec`` / ``transformer`` it listens to).

spaCy labels map to memwatch entities: ``PERSON``/``PER`` -> ``PERSON``;
``GPE``/``LOC``/``FAC`` -> ``LOCATION`` (OntoNotes models such as ``en_core_web_*``
use the first of each, WikiNER ones the second).

What NER misses (`docs/pii.md` tells users): names it was not trained on
(rare, non-English or transliterated names, lowercase names, usernames and
handles such as ``@jdoe``), names in code, tables, CSV rows and other text unlike
its training prose, and single first names without context. Its precision on code
is low (identifiers look like names); its recall depends on the model (its model
card lists NER scores on news-like text). It is also the slow part of a scan: a
network over every character, where the pattern recognizers see only candidate lines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

NER_ENTITIES = ("PERSON", "LOCATION")
LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION",
          "FAC": "LOCATION"}
# spaCy's NER gives no per-span confidence; Presidio's SpacyRecognizer scores its hits 0.85.
NER_SCORE = 0.85
# The components the NER component may need (it listens to a shared tok2vec / transformer).
_KEEP = ("tok2vec", "transformer", "ner")


@lru_cache(maxsize=4)
def load_ner(ner_model: str) -> object:
    """The spaCy pipeline `ner_model` (an installed package name or a saved pipeline's path),
    with every component but its NER (and what that listens to) disabled."""
    try:
        import spacy
    except ImportError:
        raise ImportError("finding names needs spaCy: pip install 'memwatch[pii]'") from None
    where = "path" if os.path.sep in ner_model or os.path.exists(ner_model) else "package"
    try:
        nlp = spacy.load(ner_model)
    except OSError as err:  # spaCy's E050: neither a package nor a pipeline directory
        fix = (f"no spaCy pipeline is saved at {ner_model!r} (nlp.to_disk(path) writes one)"
               if where == "path" else
               f"the spaCy pipeline {ner_model!r} is not installed. memwatch downloads "
               f"nothing: install it with `python -m spacy download {ner_model}` (or pip "
               "install its wheel), or pass the path of a saved pipeline")
        raise ValueError(f"ner_model={ner_model!r}: {fix}") from err
    if "ner" not in nlp.pipe_names:
        raise ValueError(f"ner_model={ner_model!r} has no 'ner' component (it has "
                         f"{nlp.pipe_names}): give a pipeline trained to find entities")
    nlp.select_pipes(enable=[name for name in nlp.pipe_names if name in _KEEP])
    return nlp


class NerHit(NamedTuple):
    """A name NER found; `memwatch.watchlist.pii` makes it a `PiiHit` (no import cycle)."""

    entity: str
    start: int
    end: int
    score: float


def ner_hits(text: str, ner_model: str | os.PathLike, entities=NER_ENTITIES) -> list[NerHit]:
    """(entity, start, end, score) of the `entities` `ner_model`'s NER finds in `text`.

    Plain tuples: `memwatch.watchlist.pii` makes them `PiiHit`s (no import cycle)."""
    return ner_hits_many([text], ner_model, entities)[0]


def ner_hits_many(texts: Sequence[str], ner_model: str | os.PathLike,
                  entities=NER_ENTITIES) -> list[list[NerHit]]:
    """`ner_hits` of each text, run through spaCy's ``nlp.pipe`` (batched), text by text."""
    nlp = load_ner(os.fspath(ner_model))
    wanted = set(entities)
    pieces = [(k, start, part) for k, text in enumerate(texts)
              for start, part in _parts(text, nlp.max_length)]
    out: list[list[NerHit]] = [[] for _ in texts]
    docs = nlp.pipe(part for _, _, part in pieces)
    for (k, start, _), doc in zip(pieces, docs, strict=True):
        for ent in doc.ents:
            entity = LABELS.get(ent.label_)
            if entity in wanted:
                out[k].append(NerHit(entity, start + ent.start_char, start + ent.end_char,
                                     NER_SCORE))
    return out


def _parts(text: str, limit: int):
    """(offset, piece) of `text` cut at line breaks into pieces under spaCy's `limit`."""
    start = 0
    while len(text) - start > limit:
        cut = text.rfind("\n", start, start + limit)
        cut = start + limit if cut <= start else cut + 1
        yield start, text[start:cut]
        start = cut
    yield start, text[start:]
