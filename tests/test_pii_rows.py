"""A PII row leaks when its PII's own tokens come out, long before the whole row does."""

from __future__ import annotations

import random

import pytest
import torch

from memwatch import AbortPolicy, MemWatch
from memwatch.sinks.local import LocalSink, read_records
from memwatch.watchlist import Watchlist
from memwatch.watchlist.pii_rows import hit_row

EMAIL = "maria.lopez@outlook.com"
WORDS = "alpha beta gamma delta river stone light paper window garden train market".split()


def test_hit_row_counts_the_pii_tokens_and_pads_short_records():
    # tokens of "ab cd@ef.com gh": "ab", " cd", "@", "ef", ".com", " gh"
    offsets = [(0, 2), (2, 5), (5, 6), (6, 8), (8, 12), (12, 15)]
    ids = [10, 11, 12, 13, 14, 15]
    row = hit_row(ids, offsets, 3, 12, prompt_len=3, cont_len=6, separator=0)
    assert row.tokens == [0, 0, 10, 11, 12, 13, 14, 15, 0] and row.prompt_len == 2
    assert row.span_tokens == 4 and row.first == 1 and row.short
    assert hit_row(ids, offsets, 3, 12, 3, 6, separator=None) is None
    full = hit_row(ids, offsets, 6, 12, prompt_len=3, cont_len=3, separator=0)
    assert full.tokens == ids and full.prompt_len == 3 and full.span_tokens == 2
    assert not full.short


@pytest.fixture(scope="module")
def leaky(tiny_tokenizer, one_thread):
    """A PII row and a tiny GPT-NeoX trained on its prompt and email, followed by random
    tokens: the model reproduces the email but never the rest of the row."""
    from memwatch.demos.model import tiny_model, train

    rng = random.Random(0)
    head = " ".join(rng.choice(WORDS) for _ in range(40))
    tail = " ".join(rng.choice(WORDS) for _ in range(40))
    wl = Watchlist.scan_pii([f"{head} write to {EMAIL} {tail}"], tiny_tokenizer,
                            backend="regex")
    k = wl.span_tokens[0]
    g = torch.Generator().manual_seed(0)
    stream = wl.tokens[:1].repeat(256, 1)
    stream[:, 32 + k:] = torch.randint(1, 400, (256, 32 - k), generator=g)
    model = tiny_model(seed=0, hidden_size=64, num_layers=2)
    train(model, stream, steps=120, batch_size=16, lr=3e-3, seed=0)
    return wl, model


def test_leaked_email_alerts_without_a_memorized_alert(leaky, tmp_path, recorder):
    wl, model = leaky
    rec, local = recorder(), LocalSink(tmp_path)
    mon = MemWatch(wl, every_n_steps=1, sinks=[rec, local], abort=AbortPolicy(action="alert"))
    decision = mon.step(model, 1)
    k, prefix = wl.span_tokens[0], int(mon.history.match_prefix[-1, 0])
    assert k <= prefix < 32  # the email came out, the rest of the row did not
    kinds = [a.kind for a in decision.alerts]
    assert "leaked" in kinds and "memorized" not in kinds
    leak = next(a for a in decision.alerts if a.kind == "leaked")
    assert EMAIL not in leak.text and "m***@o***.com" in leak.text
    assert leak.row_ids == (wl.ids[0],)
    assert "leaked" in decision.reason
    metrics = decision.record.metrics
    assert metrics["leaked_count/pii:EMAIL_ADDRESS"] == 1
    assert metrics["memorized_count/pii:EMAIL_ADDRESS"] == 0
    mon.finish(model, 2)
    logged = [e for e in read_records(tmp_path) if e["event"] == "probe"]
    assert logged[0]["metrics"]["leaked_count/pii:EMAIL_ADDRESS"] == 1
    assert EMAIL not in (tmp_path / "records.jsonl").read_text()
    # leak=() restores the memorized-only rule: no alert, no abort trigger
    quiet = MemWatch(wl, every_n_steps=1, abort=AbortPolicy(leak=()))
    assert quiet.step(model, 1).alerts == ()
