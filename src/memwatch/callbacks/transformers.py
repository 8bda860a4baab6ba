"""`MemWatchTrainerCallback`: drives a `MemWatch` from a `transformers.Trainer`;
`MaskingCollator`: masks flagged rows out of its batches' labels."""

from __future__ import annotations

import os
import re
import warnings

import torch
from transformers import TrainerCallback, default_data_collator

from memwatch.monitor import MemWatch

STATE_FILE = "memwatch_state.pt"


class MemWatchTrainerCallback(TrainerCallback):
    """Probes at ``on_step_end`` and sets ``control.should_training_stop`` on abort.

    The monitor's state is written beside every Trainer checkpoint
    (``checkpoint-<step>/memwatch_state.pt``, tensors and plain types) and read
    back when training resumes from ``<output_dir>/checkpoint-<step>``, or from
    `resume_from` (a checkpoint folder) if given. With a `state_key` the file is
    ``memwatch_state_<state_key>.pt``: give each callback its own when two monitors share
    a Trainer.
    """

    def __init__(self, monitor: MemWatch, resume_from: str | None = None,
                 state_key: str | None = None):
        self.monitor = monitor
        self.resume_from = resume_from
        self.reason = ""
        if state_key is not None and not re.fullmatch(r"[\w.-]+", state_key):
            raise ValueError(f"state_key names a file: letters, digits, '_', '.' and '-' only; "
                             f"got {state_key!r}")
        self.state_file = STATE_FILE if state_key is None else f"memwatch_state_{state_key}.pt"

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.monitor.total_steps is None and state.max_steps > 0:
            self.monitor.total_steps = state.max_steps
        if state.global_step > 0:
            folder = self.resume_from or os.path.join(args.output_dir,
                                                      f"checkpoint-{state.global_step}")
            path = os.path.join(folder, self.state_file)
            if os.path.isfile(path):
                self.monitor.load_state_dict(torch.load(path, weights_only=True))
            else:
                warnings.warn(f"memwatch found no {self.state_file} in {folder}; resuming at step "
                              f"{state.global_step} with an empty history", stacklevel=2)
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        self.monitor.check(model, tokenizer)  # bad rows fail here, before any training

    def on_step_end(self, args, state, control, model=None, **kwargs):
        decision = self.monitor.step(model, state.global_step)
        if decision.abort:
            self.reason = decision.reason
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            torch.save(self.monitor.state_dict(), os.path.join(folder, self.state_file))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.monitor.finish(model, state.global_step)


class MaskingCollator:
    """Wraps a data collator: each batch's ``labels`` come back with flagged rows masked.

    ``Trainer(..., data_collator=MaskingCollator(monitor, collator))`` (`collator`
    defaults to transformers' ``default_data_collator``). The monitor flags rows at its
    probes, in the main process, so the collator must run there too
    (``dataloader_num_workers=0``, the Trainer's default): a worker process would mask
    with a stale copy of the flagged rows, and raises instead. The Trainer's data loader
    collates one batch ahead, so a row flagged at a probe is masked from the second
    step after it on (the Lightning and plain-loop adapters: from the next step).
    """

    def __init__(self, monitor: MemWatch, collator=None):
        self.monitor = monitor
        self.collator = default_data_collator if collator is None else collator
        self._told = False

    def __call__(self, features):
        batch = self.collator(features)
        if not self.monitor.policy.masks:
            return batch
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("MaskingCollator runs in a DataLoader worker, where the rows the "
                               "monitor flags never arrive; set dataloader_num_workers=0")
        if not self.monitor.mask_batch(batch) and not self._told:
            self._told = True
            warnings.warn("MaskingCollator masks only batches with 'input_ids' and 'labels'; "
                          f"this collator gives {sorted(batch)}", stacklevel=2)
        return batch
