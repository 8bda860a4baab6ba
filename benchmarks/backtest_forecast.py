"""Backtest `memwatch.forecast`: train a tiny GPT-NeoX to the end, then pretend to stop early.

The stream mixes filler rows (seen once, learnable) with random planted rows at graded
repetition counts. Half the planted rows are scattered over the whole run, half
appear only inside a random window (40 % of training, starting anywhere in the
first 60 %), so the memorized set grows through training as in pretraining.
The learning rate follows a cosine decay to 10 %, as Pythia's did. Every
`total/40` steps the run is probed (``mode="extractable"``, with NLL) into a
`History`. Afterwards, for a stop at 25 / 50 / 75 % of training, the history up
to that step is forecast and compared with the truth (the probe at the end):

- ``final``: expected_final_memorized (interval) vs. the true final count, its
  relative error, whether the interval covers the truth, and the count-curve estimate;
- ``recall``: recall_now vs. the true recall of "memorized now" against the end;
- ``risk``: recall of the final memorized set by the top-k risk rows vs. the paper's
  baseline "memorized now" (padded to k with random rows, expected value), at
  k = the forecast's expected final count; and among rows not memorized yet, the
  share of the ones memorized later that the top-k' risk rows find vs. random.

Run: ``python benchmarks/backtest_forecast.py`` (CPU, a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import memwatch as mw
from memwatch.demo_model import tiny_model
from memwatch.history import History

REPEATS = (6, 10, 16, 24, 32, 48, 64)


def planted_stream(rows_per_repeat: int, total_steps: int, batch_size: int, seed: int):
    """(batches int64 [T, B, L], rows [n, L], repeats [n], windowed bool [n])."""
    g = np.random.default_rng(seed)
    repeats = np.repeat(REPEATS, rows_per_repeat)
    n, seq_len, vocab = len(repeats), 64, 512
    rows = torch.from_numpy(g.integers(1, vocab, (n, seq_len)))
    windowed = g.random(n) < 0.5
    slots = total_steps * batch_size
    owner = np.full(slots, -1)
    free = np.ones(slots, bool)
    for k in g.permutation(n):
        lo, hi = 0, slots
        if windowed[k]:
            lo = int(g.uniform(0, 0.6) * slots)
            hi = lo + int(0.4 * slots)
        cand = np.flatnonzero(free[lo:hi]) + lo
        pick = g.choice(cand, size=min(repeats[k], len(cand)), replace=False)
        owner[pick], free[pick] = k, False
    # Filler rows are learnable (arithmetic progressions mod the vocabulary), as most
    # pretraining text is; random filler would crowd memorization out of a tiny model.
    start, stride = g.integers(1, vocab, (slots, 1)), g.integers(1, 8, (slots, 1))
    stream = torch.from_numpy((start + stride * np.arange(seq_len)) % (vocab - 1) + 1)
    used = owner >= 0
    stream[torch.from_numpy(used)] = rows[torch.from_numpy(owner[used])]
    return stream.view(total_steps, batch_size, seq_len), rows, repeats, windowed


def row_tags(repeats, windowed) -> list[tuple[str, str]]:
    """Each row's tags: its repetition count and whether it is confined to a window."""
    spread = np.where(windowed, "window", "scattered")
    return [(f"rep:{r:02d}", str(w)) for r, w in zip(repeats, spread, strict=True)]


def run(total_steps: int, rows_per_repeat: int, probes: int, seed: int):
    batches, rows, repeats, windowed = planted_stream(rows_per_repeat, total_steps, 16, seed)
    tags = row_tags(repeats, windowed)
    ids = [f"row{k}" for k in range(len(rows))]
    model = tiny_model(seed=seed, hidden_size=128, num_layers=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    # Cosine decay to 10 % of the peak rate, as Pythia was trained.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.45 * (1 + np.cos(np.pi * s / total_steps))
    )
    every = total_steps // probes
    results = []
    for step in range(1, total_steps + 1):
        model.train()
        batch = batches[step - 1]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == total_steps:
            res = mw.probe(model, rows, mode="extractable", with_nll=True)
            results.append((step, res))
    return results, ids, tags, repeats


def history_until(results, ids, tags, last_step: int) -> History:
    h = History(ids, tags, cont_len=32)
    for step, res in results:
        if step <= last_step:
            h.update(step, res, "extractable")
    return h


def report(results, ids, tags, repeats, total_steps: int) -> None:
    final = results[-1][1].memorized.numpy()
    n_final = int(final.sum())
    print(f"rows {len(ids)}, true final memorized {n_final}, probes {len(results)}")
    for frac in (0.25, 0.5, 0.75):
        h = history_until(results, ids, tags, int(frac * total_steps))
        fc = mw.forecast(h, total_steps, duplicates=repeats)
        t = fc.tags["*"]
        now = h.memorized[-1]
        true_recall = (now & final).sum() / max(n_final, 1)
        err = (t.expected_final_memorized - n_final) / max(n_final, 1)
        covered = t.expected_final_low <= n_final <= t.expected_final_high
        kind = t.recall_fit.kind if t.recall_fit else None
        curve_err = (t.curve_final_memorized - n_final) / max(n_final, 1)
        rec_err = (t.recall_now - true_recall) / max(true_recall, 1e-9)
        print(
            f"stop {frac:.0%}: now {t.memorized_now}; final {t.expected_final_memorized:.0f}"
            f" [{t.expected_final_low:.0f}, {t.expected_final_high:.0f}] vs true {n_final}"
            f" rel.err {err:+.1%} covered {covered}; curve {t.curve_final_memorized:.0f}"
            f" rel.err {curve_err:+.1%} agreement {t.agreement:.2f}; fit {kind}"
            f" prior_weight {t.prior_weight:.2f}"
        )
        print(
            f"  recall_now {t.recall_now:.3f} [{t.recall_low:.3f}, {t.recall_high:.3f}]"
            f" vs true {true_recall:.3f} rel.err {rec_err:+.1%};"
            f" precision_now {t.precision_now:.3f} vs true"
            f" {(now & final).sum() / max(now.sum(), 1):.3f}"
        )
        for k_label, k in (("k=forecast", int(round(t.expected_final_memorized))),
                           ("k=true final", n_final)):
            risk_lines(h, results, ids, tags, repeats, total_steps, frac, final, k_label, k)


def risk_lines(h, results, ids, tags, repeats, total_steps, frac, final, k_label, k) -> None:
    """Print the risk ranking's recall vs. "memorized now" (+ random fill) at equal k."""
    n_final = int(final.sum())
    now = h.memorized[-1]
    k = max(k, int(now.sum()))
    rest = ~now
    fill = (k - now.sum()) * (final & rest).sum() / max(rest.sum(), 1)
    base = ((now & final).sum() + fill) / max(n_final, 1)
    # Without duplicate counts the rep:NN tags would leak them: rank on the spread tag only.
    blind = history_until(results, ids, [t[1:] for t in tags], int(frac * total_steps))
    for label, hist, dups in (("with dups", h, repeats), ("no dups", blind, None)):
        risk = mw.forecast(hist, total_steps, duplicates=dups, n_boot=0).risk
        top = risk.top(k, include_memorized=True)
        rec = final[top].sum() / max(n_final, 1)
        new = final & rest
        k_new = max(k - int(now.sum()), 1)
        top_new = risk.top(k_new)
        found = final[top_new].sum() / max(new.sum(), 1)
        rand = k_new / max(rest.sum(), 1)
        print(
            f"  risk ({label}, {k_label}={k}): recall {rec:.3f} vs memorized-now"
            f"+random {base:.3f} ({rec / max(base, 1e-9):.2f}x); memorized-now alone"
            f" {(now & final).sum() / max(n_final, 1):.3f} at k={int(now.sum())};"
            f" later-memorized found by top-{k_new} {found:.3f} vs random {rand:.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--rows-per-repeat", type=int, default=30)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.time()
    results, ids, tags, repeats = run(args.steps, args.rows_per_repeat, args.probes, args.seed)
    print(f"trained {args.steps} steps with {len(results)} probes in {time.time() - t0:.0f}s")
    report(results, ids, tags, repeats, args.steps)


if __name__ == "__main__":
    main()
