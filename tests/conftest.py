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
    from memwatch.demo_model import planted_corpus, tiny_model, train
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
    from memwatch.demo_model import tiny_model

    return tiny_model(seed=1, hidden_size=64, num_layers=2)
