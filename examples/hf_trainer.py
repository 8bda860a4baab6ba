"""memwatch with transformers.Trainer: one callback.

    python examples/hf_trainer.py --steps 300

Offline on CPU. The monitor's state is saved beside each Trainer checkpoint and read
back on `trainer.train(resume_from_checkpoint=...)`: the script trains to the last step,
then resumes a second Trainer from the half-way checkpoint with a fresh monitor, which
continues the first run's probe history instead of starting over. The policy only alerts
(the default `AbortPolicy()` would stop the run at the first memorized canary).

The resumed Trainer gets the model loaded with `from_pretrained(checkpoint)`, not a fresh
model: resuming a fresh GPT-NeoX through `resume_from_checkpoint` alone takes a path on
which transformers 5.24 drops the output head's weights (tied-weight handling), so the
resumed model would silently train from a random head and memorize nothing the first run
had. Loading the checkpoint's model first gives it every weight; the Trainer then restores
the optimizer, scheduler and step from the same folder.
"""

import argparse

import torch
from transformers import GPTNeoXForCausalLM, Trainer, TrainingArguments

import memwatch as mw
from memwatch.callbacks import MemWatchTrainerCallback
from memwatch.demos.model import planted_corpus, tiny_model


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def train(steps: int, out: str, corpus, watchlist, resume: str | None = None) -> mw.MemWatch:
    """Train (or resume) with a fresh monitor; returns the monitor."""
    monitor = mw.MemWatch(watchlist, every_n_steps=max(1, steps // 10),
                          abort=mw.AbortPolicy(action="alert"),
                          sinks=[mw.ConsoleSink(), mw.LocalSink(f"{out}/memwatch")])
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16,
                             learning_rate=3e-3, save_steps=max(1, steps // 2), report_to=[],
                             logging_steps=50, use_cpu=True, seed=0, disable_tqdm=True)
    # resuming: the checkpoint's own model (see the module docstring), not a fresh one
    model = tiny_model(hidden_size=128) if resume is None else \
        GPTNeoXForCausalLM.from_pretrained(resume)
    trainer = Trainer(model=model, args=args,
                      train_dataset=Rows(corpus.stream(seed=0)),
                      callbacks=[MemWatchTrainerCallback(monitor)])
    trainer.train(resume_from_checkpoint=resume)
    print(f"trained {trainer.state.global_step} of {steps} steps")
    return monitor


def main(steps: int, out: str) -> None:
    corpus = planted_corpus([64] * 4 + [16] * 4 + [1] * 8, seq_len=64, vocab_size=512)
    watchlist = mw.Watchlist.from_tokens(
        corpus.rows, ids=[f"canary#{i}" for i in range(len(corpus.rows))], tags="canary")
    first = train(steps, out, corpus, watchlist)
    half = f"{out}/checkpoint-{max(1, steps // 2)}"
    print(f"resuming from {half} with a fresh monitor")
    resumed = train(steps, out, corpus, watchlist, resume=half)
    print(f"probes: {len(first.history)} in the first run, {len(resumed.history)} after resuming "
          f"(the history continued: {resumed.history.steps[0] == first.history.steps[0]})")
    print(f"memorized at the end: {int(resumed.history.memorized[-1].sum())} of {len(watchlist)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default="memwatch-logs/hf")
    a = p.parse_args()
    main(a.steps, a.out)
