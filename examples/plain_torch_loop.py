"""memwatch in a plain PyTorch training loop: `mon.step(model, step)` after optimizer.step().

    python examples/plain_torch_loop.py --steps 300

Runs offline on CPU: a tiny GPT-NeoX learns a stream where a few rows are repeated
often; the monitor reports the step each becomes extractable and trains to the last
step: its policy only alerts (the default `AbortPolicy()` would stop at the first
memorized canary). `mon.seen(rows, step)` tells the forecast which watchlist rows each
batch held (here every row is planted, so the loop knows). Replace the model, the stream
and the watchlist with your own.
"""

import argparse

import torch

import memwatch as mw
from memwatch.demos.model import planted_corpus, tiny_model


def main(steps: int, out: str) -> None:
    torch.manual_seed(0)
    corpus = planted_corpus([64] * 4 + [16] * 4 + [1] * 8, seq_len=64, vocab_size=512)
    watchlist = mw.Watchlist.from_tokens(
        corpus.rows, ids=[f"planted#{i}" for i in range(len(corpus.rows))], tags="canary")
    model = tiny_model(hidden_size=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # corpus.stream(seed=0), keeping which watchlist row each slot holds, for `mon.seen`
    order = torch.repeat_interleave(torch.arange(len(corpus.rows)), corpus.repeats)
    row_of = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(0))]
    stream = corpus.rows[row_of]

    # action="alert": report memorized canaries but keep training (the default is "stop")
    mon = mw.MemWatch(watchlist, total_steps=steps, every_n_steps=max(1, steps // 10),
                      abort=mw.AbortPolicy(action="alert"),
                      sinks=[mw.ConsoleSink(), mw.LocalSink(out)])
    model.train()
    for step in range(1, steps + 1):
        pick = torch.randint(len(stream), (16,))
        batch = stream[pick]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mon.seen(row_of[pick], step)  # optional: the forecast learns when rows are seen
        decision = mon.step(model, step)  # the monitor's two lines
        if decision.abort:
            print(f"stopped at {decision.reason}")
            break
    else:
        print(f"trained {steps} of {steps} steps")
    mon.finish(model, step)
    mon.close()
    # resumable: save mon.state_dict() with your checkpoint, mon.load_state_dict() on resume
    print(f"memorized at the end: {int(mon.history.memorized[-1].sum())} of {len(watchlist)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default="memwatch-logs/plain")
    a = p.parse_args()
    main(a.steps, a.out)
