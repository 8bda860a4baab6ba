"""A minimal LightningModule around a causal LM, for the demo and the examples.

Needs the `lightning` and `hf` extras.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class LitCausalLM(L.LightningModule):
    """Next-token training of a transformers causal LM (`self.model`) with AdamW."""

    def __init__(self, model, lr: float = 2e-3):
        super().__init__()
        self.model = model.train()  # Lightning keeps the modes it is given (tiny_model: eval)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        loss = self.model(input_ids=ids, labels=ids).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.0)


def stream_loader(stream: torch.Tensor, batch_size: int, seed: int = 0) -> DataLoader:
    """A shuffling DataLoader over token rows [n, seq_len], seeded for reproducibility."""
    return DataLoader(TensorDataset(stream), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed), drop_last=True)
