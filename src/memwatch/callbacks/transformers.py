"""`MemWatchTrainerCallback`: drives a `MemWatch` from a `transformers.Trainer`."""

from __future__ import annotations

import os
import re
import warnings

import torch
from transformers import TrainerCallback

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
        self.monitor.check(model)  # bad rows fail here, before any training

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
