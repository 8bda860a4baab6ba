"""A minimal LightningModule around a causal LM, for the demo and the examples.

Needs the `lightning` and `hf` extras.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset


class LitCausalLM(L.LightningModule):
    """Next-token training of a transformers causal LM (`self.model`) with AdamW."""

    def __init__(self, model, lr: float = 2e-3):
        super().__init__()
        self.model = model.train()  # Lightning keeps the modes it is given (tiny_model: eval)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict):  # labels apart: `MemWatchCallback` may mask them
            ids, labels = batch["input_ids"], batch["labels"]
        else:
            (ids,), labels = batch, batch[0]
        loss = self.model(input_ids=ids, labels=labels).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.0)


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar labelled ``step N of M`` (optimizer step, ``max_steps``).

    Lightning labels it ``Epoch E/<max_epochs - 1>``, which reads "Epoch 21/-2" in a run
    bounded by ``max_steps`` (max_epochs = -1); the step is what the monitor reports.
    """

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._describe(trainer)

    def on_train_batch_end(self, trainer, *args) -> None:
        super().on_train_batch_end(trainer, *args)
        self._describe(trainer)

    def _describe(self, trainer) -> None:
        total = f" of {trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        self.train_progress_bar.set_description(f"step {trainer.global_step}{total}",
                                                refresh=False)


def stream_loader(stream: torch.Tensor, batch_size: int, seed: int = 0,
                  as_dict: bool = False) -> DataLoader:
    """A shuffling DataLoader over token rows [n, seq_len], seeded for reproducibility.

    `as_dict`: batches are ``{"input_ids", "labels"}`` (labels a copy), the form whose
    labels `MemWatchCallback` masks when the policy masks rows."""
    collate = _as_dict if as_dict else None
    return DataLoader(TensorDataset(stream), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed), drop_last=True,
                      collate_fn=collate)


def _as_dict(items) -> dict:
    ids = torch.stack([row for (row,) in items])
    return {"input_ids": ids, "labels": ids.clone()}
