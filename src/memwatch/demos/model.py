"""A tiny GPT-NeoX and a planted token stream it memorizes in seconds on a CPU.

Shipped in the package (like Lightning's `demos/boring_classes.py`) so that the
demo, the examples and the tests build the same model. Needs the `hf` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def tiny_config(
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_len: int = 128,
):
    """A GPTNeoXConfig small enough to train on 2 CPU cores in seconds."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_len,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )


def tiny_model(seed: int = 0, **config):
    """A freshly initialised `GPTNeoXForCausalLM` built from `tiny_config(**config)`."""
    from transformers import GPTNeoXForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(tiny_config(**config))
    return model.eval()


@dataclass(frozen=True)
class PlantedCorpus:
    """Random token rows, each repeated `repeats[i]` times in a shuffled training stream."""

    rows: torch.Tensor  # int64 [n, seq_len]
    repeats: torch.Tensor  # int64 [n]

    def stream(self, seed: int = 0) -> torch.Tensor:
        """int64 [sum(repeats), seq_len]: every row `repeats[i]` times, shuffled."""
        order = torch.repeat_interleave(torch.arange(len(self.rows)), self.repeats)
        g = torch.Generator().manual_seed(seed)
        return self.rows[order[torch.randperm(len(order), generator=g)]]


def planted_corpus(
    repeats: Sequence[int], seq_len: int = 64, vocab_size: int = 512, seed: int = 0
) -> PlantedCorpus:
    """Rows of uniform random tokens (token 0, the EOS, excluded), one per entry of `repeats`."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, vocab_size, (len(repeats), seq_len), generator=g)
    return PlantedCorpus(rows=rows, repeats=torch.as_tensor(list(repeats), dtype=torch.long))


def train_steps(
    model, stream: torch.Tensor, steps: int, batch_size: int = 16, lr: float = 3e-3, seed: int = 0
):
    """Yield (step, loss) for `steps` AdamW steps of causal-LM training on `stream`, cycling it.

    Deterministic for a given seed; the caller may run anything between steps
    (that is where a monitor goes).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(stream), generator=g)
    pos = 0
    for step in range(1, steps + 1):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(stream), generator=g), 0
        batch = stream[order[pos : pos + batch_size]]
        pos += batch_size
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        yield step, float(loss.detach())
    model.eval()


def train(model, stream: torch.Tensor, steps: int, **kwargs) -> list[float]:
    """Train `model` for `steps` steps on `stream`; returns the losses."""
    return [loss for _, loss in train_steps(model, stream, steps, **kwargs)]
