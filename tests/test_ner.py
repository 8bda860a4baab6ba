"""Names through a spaCy NER pipeline the user names: a tiny one, trained and saved here."""

from __future__ import annotations

import random

import pytest

from memwatch.cli import main
from memwatch.watchlist import Watchlist
from memwatch.watchlist.ner import load_ner, ner_hits
from memwatch.watchlist.pii import find_pii

spacy = pytest.importorskip("spacy")

# A dozen sentences, each with a person and a place: enough for a pipeline to learn them.
PEOPLE = ["Maria Lopez", "John Smith", "Anna Berg", "Peter Novak", "Laura Chen", "David Kim"]
PLACES = ["Berlin", "Paris", "Madrid", "Oslo", "Vienna", "Lisbon"]
TEMPLATES = ["{person} moved to {place} last year .", "Yesterday {person} flew to {place} ."]
SENTENCES = [t.format(person=p, place=q) for t in TEMPLATES
             for p, q in zip(PEOPLE, PLACES, strict=True)]


def _annotated(sentence: str):
    ents = []
    for name, label in [(p, "PERSON") for p in PEOPLE] + [(q, "GPE") for q in PLACES]:
        at = sentence.find(name)
        if at >= 0:
            ents.append((at, at + len(name), label))
    return sentence, {"entities": ents}


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    """A blank English pipeline with an NER component trained on SENTENCES, saved to disk."""
    from spacy.training import Example

    nlp = spacy.blank("en")
    ner = nlp.add_pipe("ner")
    for label in ("PERSON", "GPE"):
        ner.add_label(label)
    examples = [Example.from_dict(nlp.make_doc(s), a) for s, a in map(_annotated, SENTENCES)]
    optimizer = nlp.initialize(lambda: examples)
    rng = random.Random(0)
    for _ in range(30):
        rng.shuffle(examples)
        nlp.update(examples, sgd=optimizer, drop=0.0)
    path = tmp_path_factory.mktemp("ner") / "tiny_ner"
    nlp.to_disk(path)
    return path


def test_names_and_places_found_by_the_saved_pipeline(ner_dir):
    text = "Yesterday Maria Lopez flew to Berlin . Mail her at maria.lopez@outlook.com today"
    hits = find_pii(text, backend="regex", ner_model=ner_dir)
    found = {(h.entity, text[h.start:h.end]) for h in hits}
    assert {("PERSON", "Maria Lopez"), ("LOCATION", "Berlin"),
            ("EMAIL_ADDRESS", "maria.lopez@outlook.com")} <= found
    only = find_pii(text, ["PERSON"], backend="regex", ner_model=str(ner_dir))
    assert {h.entity for h in only} == {"PERSON"}
    # without the pipeline nothing finds names
    assert "PERSON" not in {h.entity for h in find_pii(text, backend="regex")}
    assert "ner" in load_ner(str(ner_dir)).pipe_names


def test_long_texts_are_cut_for_spacy(ner_dir, monkeypatch):
    nlp = load_ner(str(ner_dir))
    monkeypatch.setattr(nlp, "max_length", 100)  # spaCy refuses longer texts
    line = "Yesterday John Smith flew to Paris .\n"
    text = line * 8
    hits = ner_hits(text, ner_dir)
    assert len([h for h in hits if h.entity == "PERSON"]) == text.count("John Smith")
    assert all(text[h.start:h.end] in ("John Smith", "Paris") for h in hits)


def test_scan_pii_gives_names_rows(ner_dir, tiny_tokenizer):
    texts = ["John Smith moved to Paris last year . " + "alpha beta gamma " * 20]
    wl = Watchlist.scan_pii(texts, tiny_tokenizer, backend="regex", ner_model=ner_dir)
    assert sorted(wl.tag_counts()) == ["pii:LOCATION", "pii:PERSON"]
    i = wl.tags.index(("pii:PERSON",))
    assert "John Smith" not in wl.redacted_preview(i) and wl.prompt_lens[i] < 32


def test_a_missing_model_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="python -m spacy download en_core_web_nosuch"):
        find_pii("Maria Lopez", backend="regex", ner_model="en_core_web_nosuch")
    with pytest.raises(ValueError, match="no spaCy pipeline is saved at"):
        find_pii("Maria Lopez", backend="regex", ner_model=tmp_path / "nothing")


def test_cli_ner_model(ner_dir, tiny_tokenizer, tmp_path, capsys):
    tok = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok)
    texts = tmp_path / "notes.txt"
    texts.write_text("Anna Berg moved to Oslo last year . " + "river stone " * 30)
    out = tmp_path / "wl"
    code = main(["watchlist", "build", "--texts", str(texts), "--tokenizer", str(tok), "--pii",
                 "--windows", "0", "--ner-model", str(ner_dir), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "pii:PERSON" in Watchlist.load(out).tag_counts()
    code = main(["watchlist", "build", "--texts", str(texts), "--tokenizer", str(tok), "--pii",
                 "--ner-model", "en_core_web_nosuch", "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "spacy download en_core_web_nosuch" in errors[0]
    assert errors[0].startswith("memwatch watchlist build: error: ner_model=")
