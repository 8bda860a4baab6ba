"""Masking flagged rows through the adapters: Lightning (dict batches) and the Trainer's collator.

Each run trains the tiny model on whole watchlist rows (M = N = 8), probing every other
step with a policy that masks canaries once memorized, and records the labels the model
receives; they must equal the input ids with exactly the flagged rows' continuations
set to -100, counting the rows flagged before that batch.
"""

from __future__ import annotations

import pytest
import torch
from planted import CORPUS, TAGS, M, N, Rows

from memwatch.demos.model import tiny_model
from memwatch.monitor import MemWatch
from memwatch.policy import AbortPolicy
from memwatch.watchlist import Watchlist

STEPS = 24

pytestmark = pytest.mark.usefixtures("one_thread")



def monitor() -> MemWatch:
    wl = Watchlist(CORPUS.rows, [f"row-{i}" for i in range(len(CORPUS.rows))], TAGS)
    return MemWatch(wl, prompt_len=M, cont_len=N, every_n_steps=2,
                    abort=AbortPolicy(tags=(), actions={"canary": "mask"}))


def flagged_rows(mon: MemWatch) -> set[int]:
    return {mon.watchlist.ids.index(r) for r in mon.flagged}


def check(seen: list, mon: MemWatch) -> None:
    """Every recorded (input_ids, labels, flagged) batch masks exactly the flagged rows."""
    assert len(seen) == STEPS and mon.flagged
    masked = 0
    for ids, labels, flagged in seen:
        expected = ids.clone()
        for b in range(len(ids)):
            if any(torch.equal(ids[b], CORPUS.rows[r]) for r in flagged):
                expected[b, M:] = -100
        assert torch.equal(labels, expected)
        masked += int((labels == -100).sum())
    assert masked >= 3 * N


@pytest.mark.slow
def test_lightning_masks_dict_batches_in_on_train_batch_start(tmp_path):
    pytest.importorskip("lightning")
    import lightning as L

    from memwatch.callbacks import MemWatchCallback

    mon, seen = monitor(), []

    class DictBatchLM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_model(seed=0, hidden_size=64, num_layers=2).train()

        def training_step(self, batch, batch_idx):
            seen.append((batch["input_ids"].clone(), batch["labels"].clone(), flagged_rows(mon)))
            return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.0)

    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[MemWatchCallback(mon)])
    loader = torch.utils.data.DataLoader(Rows(), batch_size=8, shuffle=False)
    trainer.fit(DictBatchLM(), loader)
    check(seen, mon)


@pytest.mark.slow
def test_trainer_masking_collator_masks_what_the_model_receives(tmp_path):
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments, default_data_collator

    from memwatch.callbacks import MaskingCollator, MemWatchTrainerCallback

    mon, seen, collated = monitor(), [], []
    model = tiny_model(seed=0, hidden_size=64, num_layers=2)

    def collate(features):  # the rows flagged when the batch is collated, in batch order
        collated.append(flagged_rows(mon))
        return default_data_collator(features)

    def record(module, args, kwargs):
        if module.training:
            seen.append((kwargs["input_ids"].clone(), kwargs["labels"].clone(),
                         collated[len(seen)]))

    model.register_forward_pre_hook(record, with_kwargs=True)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=8,
        learning_rate=1e-3, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Rows(),
            data_collator=MaskingCollator(mon, collate),
            callbacks=[MemWatchTrainerCallback(mon)]).train()
    check(seen, mon)


def test_collator_refuses_to_run_in_a_worker_process():
    pytest.importorskip("transformers")
    from memwatch.callbacks import MaskingCollator

    loader = torch.utils.data.DataLoader(Rows(), batch_size=8, num_workers=1,
                                         collate_fn=MaskingCollator(monitor()))
    with pytest.raises(RuntimeError, match="dataloader_num_workers=0"):
        next(iter(loader))
