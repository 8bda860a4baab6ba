"""memwatch with Lightning: one callback.

    python examples/lightning_pretrain.py --steps 300

Offline on CPU: a tiny GPT-NeoX pretrains on a stream with planted rows; the callback
probes on an overhead-bounded schedule, logs under `memwatch/` and stops the run
(`--abort`) when a canary becomes extractable.
"""

import argparse

import lightning as L
import torch

import memwatch as mw
from memwatch.callbacks import MemWatchCallback
from memwatch.demos.lightning import LitCausalLM, stream_loader
from memwatch.demos.model import planted_corpus, tiny_model


def main(steps: int, abort: bool, out: str) -> None:
    torch.manual_seed(0)
    corpus = planted_corpus([64] * 4 + [16] * 4 + [1] * 8, seq_len=64, vocab_size=512)
    watchlist = mw.Watchlist.from_tokens(
        corpus.rows, ids=[f"canary#{i}" for i in range(len(corpus.rows))], tags="canary")
    monitor = mw.MemWatch(watchlist, max_overhead=0.05,
                          abort=mw.AbortPolicy(action="stop" if abort else "alert"),
                          sinks=[mw.ConsoleSink(), mw.LocalSink(out)])
    callback = MemWatchCallback(monitor)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[callback])
    trainer.fit(LitCausalLM(tiny_model(hidden_size=128), lr=3e-3),
                stream_loader(corpus.stream(seed=0), batch_size=16))
    if callback.reason:
        print(f"stopped at {callback.reason}")
    else:
        print(f"trained {trainer.global_step} of {steps} steps")
    print(f"memorized at the end: {int(monitor.history.memorized[-1].sum())} of {len(watchlist)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--abort", action="store_true")
    p.add_argument("--out", default="memwatch-logs/lightning")
    a = p.parse_args()
    main(a.steps, a.abort, a.out)
