"""Shared tiny models, trained once per session on CPU until planted rows are memorized."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

# Planted rows and how often each appears in the training stream (3 epochs): the model
# memorizes every row seen >= 8 times per epoch, some of those seen 4 times, none seen once.
REPEATS = [64] * 6 + [32] * 6 + [16] * 6 + [8] * 6 + [4] * 6 + [1] * 34


@dataclass(frozen=True)
class Trained:
    model: torch.nn.Module
    rows: torch.Tensor  # int64 [64, 64] planted rows
    repeats: torch.Tensor  # int64 [64]
    memorized: torch.Tensor  # bool [64]: the reference probe's score == 1


@pytest.fixture(scope="session")
def trained() -> Trained:
    """A 2-layer, hidden-128 GPT-NeoX trained 3 epochs on the planted stream (~5 s)."""
    from memwatch.demos.model import planted_corpus, tiny_model, train
    from memwatch.probe import reference_probe

    corpus = planted_corpus(REPEATS, seq_len=64, vocab_size=512, seed=0)
    model = tiny_model(seed=0, hidden_size=128, num_layers=2)
    stream = corpus.stream(seed=0)
    train(model, stream, steps=3 * len(stream) // 16, batch_size=16, lr=3e-3, seed=0)
    memorized = reference_probe(model, corpus.rows) == 1
    frequent, once = corpus.repeats >= 8, corpus.repeats == 1
    if not (memorized[frequent].all() and not memorized[once].any()):
        raise RuntimeError(f"fixture training did not memorize as planned: {memorized.tolist()}")
    return Trained(model, corpus.rows, corpus.repeats, memorized)


@pytest.fixture()
def untrained():
    """A freshly initialised tiny GPT-NeoX (vocab 512)."""
    from memwatch.demos.model import tiny_model

    return tiny_model(seed=1, hidden_size=64, num_layers=2)


# A checkpoint suite for `memwatch eval` / `analyze`: 2 sizes x 3 checkpoints, trained on a
# planted stream written as a Megatron .bin/.idx pair (sequence index = position in the stream).
SUITE_REPEATS = [24] * 4 + [6] * 4 + [1] * 8
SUITE_STEPS = (12, 24, 48)
SUITE_SIZES = {"small": dict(hidden_size=32, num_layers=1, num_heads=2),
               "large": dict(hidden_size=64, num_layers=2)}


@dataclass(frozen=True)
class Suite:
    root: object  # pathlib.Path: <root>/<model>/step<N>/ save_pretrained folders
    prefix: str  # the .bin/.idx prefix of the training stream
    stream: torch.Tensor  # int64 [128, 64], the rows in training order


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> Suite:
    """Two tiny GPT-NeoX models saved at steps 12, 24 and 48 (~10 s on 2 cores)."""
    from memwatch.demos.model import planted_corpus, tiny_model, train_steps
    from memwatch.watchlist.pythia import write_indexed_dataset

    root = tmp_path_factory.mktemp("suite")
    corpus = planted_corpus(SUITE_REPEATS, seq_len=64, vocab_size=512, seed=3)
    stream = corpus.stream(seed=0)
    prefix = write_indexed_dataset(root / "stream", stream.tolist())
    for name, size in SUITE_SIZES.items():
        model = tiny_model(seed=0, **size)
        for step, _ in train_steps(model, stream, SUITE_STEPS[-1], batch_size=16, lr=1e-2):
            if step in SUITE_STEPS:
                model.save_pretrained(root / name / f"step{step}")
    return Suite(root, prefix, stream)


@dataclass(frozen=True)
class SinkEvents:
    """Real sink events: three probes of real models, as the monitor would report them."""

    watchlist: object  # memwatch.Watchlist; pii rows carry redacted previews of `emails`
    history: object  # memwatch.History after the three probes
    events: tuple  # ("probe", ProbeRecord) | ("alert", Alert), in the order a monitor sends
    emails: tuple[str, ...]  # the raw PII behind the pii rows' previews
    secrets: tuple[str, ...]  # every string no sink may write: emails, decoded rows, token ids


@pytest.fixture(scope="session")
def sink_events(trained) -> SinkEvents:
    """Probes at steps 10 (an untrained model), 20 and 30 (the `trained` fixture, extractable
    then exact with NLL) of the planted rows: 0-5 tagged pii:EMAIL_ADDRESS, 6-11 canary,
    the rest sample; records and alerts as the monitor derives them (`memwatch.events`,
    the default `AbortPolicy`). The secrets include each row decoded by a byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from memwatch.demos.data import fake_pii_records
    from memwatch.demos.model import tiny_model
    from memwatch.events import ProbeRecord, newly_memorized, probe_metrics, row_reports
    from memwatch.history import History
    from memwatch.policy import AbortPolicy, evaluate
    from memwatch.probe import probe
    from memwatch.watchlist import Watchlist

    n = len(trained.rows)
    tags = [("pii:EMAIL_ADDRESS",)] * 6 + [("canary",)] * 6 + [("sample",)] * (n - 12)
    emails = tuple(f"{name}.example{i}@gmail.com" for i, name in enumerate(
        ["alice", "bruno", "chen", "dana", "emeka", "farah"]))
    previews = [f"{e[0]}***@g***.com" for e in emails] + [f"[{t[0]}] 64 tokens" for t in tags[6:]]
    wl = Watchlist(trained.rows, [f"row-{i:02d}" for i in range(n)], tags, previews)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(fake_pii_records(40), trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    secrets = set(emails)
    for row in trained.rows.tolist():
        secrets.add(bpe.decode(row))
        secrets.add(bpe.decode(row[32:64]))
        secrets.add(", ".join(map(str, row[32:40])))
        secrets.add(" ".join(map(str, row[32:40])))

    history = History(wl.ids, wl.tags)
    policy, sent, streak = AbortPolicy(), frozenset(), 0
    events: list = []
    probes = [(10, tiny_model(seed=1, hidden_size=64), "extractable"),
              (20, trained.model, "extractable"), (30, trained.model, "exact")]
    for step, model, mode in probes:
        history.update(step, probe(model, wl.tokens, mode=mode, with_nll=True), mode)
        verdict = evaluate(policy, history, sent, streak, preview=wl.redacted_preview)
        sent, streak = verdict.sent, verdict.streak
        rows = row_reports(history, newly_memorized(history), wl.redacted_preview)
        events.append(("probe", ProbeRecord(step, mode, probe_metrics(history, wl.tag_counts()),
                                            history.scores[-1].copy(), rows)))
        events += [("alert", alert) for alert in verdict.alerts]
    return SinkEvents(wl, history, tuple(events), emails, tuple(sorted(secrets)))


TOKENIZER_WORDS = ("alpha beta gamma delta river stone light paper window garden train market "
                   "write call send email contact today please number card secret my is the "
                   "of and to at or see key").split()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE (vocab 512, EOS id 0) trained on filler words, digits and PII-like text."""
    import random

    from memwatch.demos.tokenizer import train_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(TOKENIZER_WORDS) for _ in range(200)) for _ in range(20)]
    texts += ["john.doe@gmail.com https://www.example.org 192.168.0.1 (415) 555-0132 "
              "0123456789 " * 5]
    return train_tokenizer(texts, vocab_size=512)


class RecordingSink:
    """A `Sink` that records every call, in order, as (event, payload) (memwatch monitor tests)."""

    def __init__(self):
        self.events: list[tuple[str, object]] = []

    def on_probe(self, record) -> None:
        self.events.append(("probe", record))

    def on_alert(self, alert) -> None:
        self.events.append(("alert", alert))

    def on_end(self, history, watchlist) -> None:
        self.events.append(("end", len(history)))

    def close(self) -> None:
        self.events.append(("close", None))

    def of(self, event: str) -> list:
        """The payloads of one kind of event, in order."""
        return [x for e, x in self.events if e == event]

    def kinds(self) -> list[tuple]:
        """(event, step, new row ids / alert kind) for probes and alerts; (event, payload) else."""
        out = []
        for event, x in self.events:
            if event == "probe":
                out.append(("probe", x.step, tuple(r.id for r in x.new_rows)))
            elif event == "alert":
                out.append(("alert", x.step, x.kind))
            else:
                out.append((event, x))
        return out


@pytest.fixture(scope="session")
def recorder():
    """A factory of `RecordingSink`s, the one recording sink of the tests: ``rec = recorder()``
    (a class, so module-scoped fixtures can use it too)."""
    from memwatch.sinks.base import Sink

    return type("RecordingSink", (RecordingSink, Sink), {})


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
