"""Backtest `memwatch.forecast`: train a tiny GPT-NeoX to the end, then pretend to stop early.

The run: random planted rows at graded repetition counts (1 to 64 copies) in a stream
of learnable filler. 40 % of the planted rows are spread over the whole run, 40 % enter
late (their copies spread from a random point in the first 60 % to the end), 20 % are
seen only in the first 30 % ("early-only"). Two learning-rate schedules: a cosine decay
to 10 %, as Pythia's, and warmup-stable-decay (5 % warmup, constant, a linear decay to 0
over the last 15 %: rows seen in the decay become more extractable than earlier ones).
Every ``steps / probes`` steps the planted rows are probed (``mode="extractable"``, with
NLL; log p_z and min-k % are recorded beside it). Trained runs are saved with ``--cache
DIR`` (npz, no pickle) so the forecasts can be re-run without training. Defaults: 600
steps, 312 rows, 30 probes, hidden size 96, seeds 200 201 202. Seed 200 tuned the
combination (seeds 0-14, 100-104 and 200-203 ran on earlier versions); 411-413 were
evaluated once, after tuning. One training run takes 15-20 min of wall time on 2 CPU
cores shared by 8 developers (under 2 CPU minutes), the forecasts of one run 4-5 min.

Per seed and schedule, at a stop of 16 / 25 / 30 / 50 / 75 % of training, from the
history up to that step:

- the count (at 25 / 50 / 75 %), for each of VARIANTS (what the forecast is told; the
  first in full, the others as their error): expected final count [interval] vs. the true
  final count, its relative error, whether the interval covers the truth, its upper /
  lower ratio and interval score (Gneiting & Raftery 2007, over the truth), whether a
  decay lies ahead that the probes have not seen begin (``decay ahead``), the estimates
  with their weights, and the signals the forecast used;
- the rows (told HEADLINE), judged the paper's way, over the rows seen by the stop:
  precision / recall against the final memorized set of "memorized now" (the paper's
  predictor), of the ranking by `Forecast.end_probability` cut at the same precision (read off its
  precision-recall curve; ``nan`` when fewer than 5 rows are memorized now), cut at
  precision 0.9, and cut at p >= 0.5 (a decision the user can take without the truth);
  the expected calibration error of the probabilities over all rows (10 bins).

The summary counts, per schedule, variant and stop, the seeds whose final-count forecast
fell within ±25 % and whose interval held the truth, with the interval's median upper /
lower ratio and mean interval score, and averages the per-row figures.

Run: ``python benchmarks/backtest_forecast.py [--seeds S ...] [--schedules cosine wsd]
[--variants ...] [--cache DIR] [--train-only]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import memwatch as mw
from memwatch.demos.model import tiny_model
from memwatch.forecast import Exposures
from memwatch.forecast.stats import (
    calibration_error,
    interval_score,
    precision_recall,
    recall_at_precision,
    width_ratio,
)
from memwatch.history import History

# Graded repetition counts. The rarely seen rows (1-4 copies, twice as many of them)
# are never memorized, as most of a real watchlist is; they set the base rate that
# an uninformed guess gets.
REPEATS = (1, 2, 4, 6, 10, 16, 24, 32, 48, 64)
RARE = 4
# Where a planted row's copies go: over the whole run, from a random point in the first
# 60 % to the end ("late"), or all within the first 30 % ("early-only": rows the run
# stops showing, which may be forgotten, or become extractable only later).
PLACEMENTS = ("spread", "late", "early-only")
PLACEMENT_SHARES = (0.4, 0.4, 0.2)
SCHEDULES = ("cosine", "wsd")
WARMUP, DECAY = 0.05, 0.15
STOPS = (0.16, 0.25, 0.3, 0.5, 0.75)
COUNT_STOPS = (0.25, 0.5, 0.75)
MIN_NOW = 5
MIN_K = 0.2  # min-k %: the mean of the lowest 20 % token log-probabilities (Shi et al. 2024)
# What the forecast is told (the first is the headline): "planted": every row's copies
# (steps known from planting), the learning rate, the duplicate counts; "seen so far":
# the copies up to the stop only (what `MemWatch.seen` records), with the duplicate
# counts; "no exposures": duplicate counts and learning rate only (the forecast before
# exposures); "first-token NLL": planted, probes without the continuation's NLL;
# "cumulative LR": planted, with the summed learning rate as the clock.
VARIANTS = ("planted", "seen so far", "no exposures", "first-token NLL", "cumulative LR")
HEADLINE = VARIANTS[0]


def planted_stream(rows_per_repeat: int, total_steps: int, batch_size: int, seed: int):
    """(batches int64 [T, B, L], rows [n, L], repeats [n], placement [n] str,
    first_seen [n], last_seen [n]: the steps (1-based) of each row's first and last copy,
    exposure_row, exposure_step: one entry per copy, the row and the step it is trained at)."""
    g = np.random.default_rng(seed)
    per = [2 * rows_per_repeat if r <= RARE else rows_per_repeat for r in REPEATS]
    repeats = np.repeat(REPEATS, per)
    n, seq_len, vocab = len(repeats), 64, 512
    rows = torch.from_numpy(g.integers(1, vocab, (n, seq_len)))
    placement = np.array(PLACEMENTS)[g.choice(len(PLACEMENTS), n, p=PLACEMENT_SHARES)]
    slots = total_steps * batch_size
    owner = np.full(slots, -1)
    free = np.ones(slots, bool)
    for k in g.permutation(n):
        lo = int(g.uniform(0, 0.6) * slots) if placement[k] == "late" else 0
        hi = int(0.3 * slots) if placement[k] == "early-only" else slots
        cand = np.flatnonzero(free[lo:hi]) + lo
        pick = g.choice(cand, size=min(repeats[k], len(cand)), replace=False)
        owner[pick], free[pick] = k, False
    # Filler rows are learnable (arithmetic progressions mod the vocabulary), as most
    # pretraining text is; random filler would crowd memorization out of a tiny model.
    start, stride = g.integers(1, vocab, (slots, 1)), g.integers(1, 8, (slots, 1))
    stream = torch.from_numpy((start + stride * np.arange(seq_len)) % (vocab - 1) + 1)
    used = owner >= 0
    stream[torch.from_numpy(used)] = rows[torch.from_numpy(owner[used])]
    step_of = np.flatnonzero(used) // batch_size + 1
    first_seen = np.full(n, total_steps + 1)
    last_seen = np.zeros(n, np.int64)
    np.minimum.at(first_seen, owner[used], step_of)
    np.maximum.at(last_seen, owner[used], step_of)
    return (stream.view(total_steps, batch_size, seq_len), rows, repeats, placement,
            first_seen, last_seen, owner[used], step_of)


def row_tags(repeats, placement) -> list[tuple[str, str]]:
    """Each row's tags: its repetition count and where its copies go."""
    return [(f"rep:{r:02d}", str(w)) for r, w in zip(repeats, placement, strict=True)]


def lr_factor(schedule: str, step, total_steps: int):
    """The learning-rate multiplier at `step`.

    cosine: from 1 to 10 % over the run, as Pythia's. wsd (warmup-stable-decay): a
    linear warmup over the first 5 %, constant, then a linear decay to 0 over the last
    15 % (rows seen in the decay become more extractable than rows seen before it).
    """
    s = np.asarray(step, np.float64) / total_steps
    if schedule == "cosine":
        return 0.1 + 0.45 * (1 + np.cos(np.pi * s))
    return np.clip(np.minimum(s / WARMUP, (1 - s) / DECAY), 0.0, 1.0)


def token_logprobs(model, rows: torch.Tensor, prompt_len: int = 32) -> torch.Tensor:
    """float64 [n, N]: the teacher-forced log-probability of every continuation token (for
    log p_z and min-k %, the signals the probe's extraction measures add)."""
    with torch.no_grad():
        logits = model(input_ids=rows).logits[:, prompt_len - 1:-1].double()
    return torch.log_softmax(logits, -1).gather(-1, rows[:, prompt_len:, None])[..., 0]


def train(schedule: str, total_steps: int, rows_per_repeat: int, probes: int, seed: int,
          hidden: int) -> dict:
    """dict of arrays: probe steps, match_prefix/scores/nll/nll_first/logp_z/min_k [P, n],
    per row repeats, placement, first_seen, last_seen, and per copy exposure_row/_step."""
    batches, rows, repeats, placement, first_seen, last_seen, exp_row, exp_step = \
        planted_stream(rows_per_repeat, total_steps, 16, seed)
    model = tiny_model(seed=seed, hidden_size=hidden, num_layers=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: float(lr_factor(schedule, s, total_steps)))
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
            model.eval()
            lp = token_logprobs(model, rows)
            k = max(1, int(MIN_K * lp.shape[1]))
            extra = (lp.sum(1).numpy(), lp.sort(1).values[:, :k].mean(1).numpy())
            results.append((step, res, extra))
    return {
        "steps": np.array([s for s, _, _ in results], np.int64),
        "match_prefix": np.stack([r.match_prefix.numpy() for _, r, _ in results]),
        "scores": np.stack([r.scores.numpy() for _, r, _ in results]),
        "nll": np.stack([r.nll.numpy() for _, r, _ in results]),
        "nll_first": np.stack([r.nll_first.numpy() for _, r, _ in results]),
        "logp_z": np.stack([e[0] for _, _, e in results]),
        "min_k": np.stack([e[1] for _, _, e in results]),
        "exposure_row": exp_row,
        "exposure_step": exp_step,
        "repeats": repeats,
        "placement": placement,
        "first_seen": first_seen,
        "last_seen": last_seen,
    }


def load_or_train(args, schedule: str, seed: int) -> dict:
    """The run's arrays, from `--cache` (npz, no pickle) when that run was saved before."""
    key = (f"v6_{schedule}_s{args.steps}_r{args.rows_per_repeat}_p{args.probes}"
           f"_h{args.hidden}_seed{seed}")
    path = None if args.cache is None else Path(args.cache) / f"backtest_{key}.npz"
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    t0 = time.time()
    run = train(schedule, args.steps, args.rows_per_repeat, args.probes, seed, args.hidden)
    print(f"trained {schedule} seed {seed}: {args.steps} steps, {len(run['steps'])} probes"
          f" in {time.time() - t0:.0f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **run)
    return run


def history_until(run: dict, tags, last_step: int, with_nll: bool = True) -> History:
    """The `History` of the probes at or before `last_step` (without their continuation
    NLL if not `with_nll`, as a monitor probing without it would have: the first token's
    NLL only). The probe's extraction measures (log p_z, min-k %) ride along, for a
    `History` that keeps them."""
    n = run["match_prefix"].shape[1]
    h = History([f"row{k}" for k in range(n)], tags, cont_len=32)
    for p, step in enumerate(run["steps"]):
        if step <= last_step:
            res = SimpleNamespace(match_prefix=run["match_prefix"][p], scores=run["scores"][p],
                                  nll=run["nll"][p] if with_nll else None,
                                  nll_first=run["nll_first"][p], log_pz=run["logp_z"][p],
                                  min_k_logprob=run["min_k"][p])
            h.update(int(step), res, "extractable")
    return h


def cumulative_lr(schedule: str, total_steps: int):
    """Vectorised step -> summed learning-rate multiplier up to that step (the run's compute)."""
    factors = lr_factor(schedule, np.arange(total_steps), total_steps)
    table = np.concatenate([[0.0], np.cumsum(factors)])
    return lambda steps: table[np.clip(np.asarray(steps, np.int64), 0, total_steps)]


def inputs_for(run: dict, schedule: str, total_steps: int, stop: int, variant: str,
               **settings) -> mw.ForecastInputs:
    """What the forecast is told at `stop` in each VARIANTS entry (see the module doc)."""
    tags = row_tags(run["repeats"], run["placement"])
    h = history_until(run, tags, stop, variant != "first-token NLL")
    n = h.num_rows
    given = {"duplicates": run["repeats"],
             "learning_rate": lambda s: lr_factor(schedule, s, total_steps)}
    if variant == "no exposures":
        return mw.ForecastInputs(h, total_steps, **given, **settings)
    if variant == "seen so far":
        sel = run["exposure_step"] <= stop
        exp = Exposures(run["exposure_row"][sel], run["exposure_step"][sel], n, complete=False)
    else:
        exp = Exposures(run["exposure_row"], run["exposure_step"], n, complete=True)
    compute = cumulative_lr(schedule, total_steps) if variant == "cumulative LR" else None
    return mw.ForecastInputs(h, total_steps, exposures=exp, compute=compute, **given, **settings)


def count_forecast(run: dict, schedule: str, total_steps: int, frac: float, variant: str
                   ) -> dict:
    """{final, low, high, err, covered, ratio, score, ...} of the final-count forecast at
    `frac` of training, told what `variant` says."""
    final = int((run["match_prefix"][-1] == 32).sum())
    inputs = inputs_for(run, schedule, total_steps, int(frac * total_steps), variant,
                        with_risk=False)
    t = mw.forecast(inputs).tags["*"]
    f = t.final
    return {"decay_ahead": f.decay_ahead, "final": f.expected, "low": f.low, "high": f.high,
            "truth": final, "now": t.memorized_now, "err": (f.expected - final) / max(final, 1),
            "covered": f.low <= final <= f.high, "ratio": width_ratio(f.low, f.high),
            "score": interval_score(f.low, f.high, final, inputs.level) / max(final, 1),
            "estimates": t.estimates, "signals": t.signals}


def row_metrics(run: dict, schedule: str, total_steps: int, frac: float) -> dict:
    """Per-row predictions at `frac` of training against the final memorized set, the
    paper's way: over the rows seen by then, precision and recall of "memorized now" and
    of the forecast's end probabilities (told HEADLINE), ranked and cut at the same
    precision (when at least MIN_NOW rows are memorized now), at precision 0.9, and at
    p >= 0.5; the expected calibration error of the probabilities over all rows."""
    stop = int(frac * total_steps)
    final = run["match_prefix"][-1] == 32
    seen = run["first_seen"] <= stop
    inputs = inputs_for(run, schedule, total_steps, stop, HEADLINE, n_boot=0)
    p = mw.forecast(inputs).end_probability
    now = inputs.history.memorized[-1]
    now_p, now_r = precision_recall(now[seen], final[seen])
    rank_p, rank_r = recall_at_precision(p[seen], final[seen], now_p)
    if now.sum() < MIN_NOW:  # too few rows to measure "memorized now"'s precision by
        rank_p = rank_r = np.nan
    at90_p, at90_r = recall_at_precision(p[seen], final[seen], 0.9)
    half_p, half_r = precision_recall(p[seen] >= 0.5, final[seen])
    return {"now": (now_p, now_r), "ranked": (rank_p, rank_r), "P>=0.9": (at90_p, at90_r),
            "p>=0.5": (half_p, half_r), "sum_p": float(p.sum()),
            "ece": calibration_error(p, final), "seen": int(seen.sum()),
            "final_seen": int((final & seen).sum())}


def latent_rows(run: dict) -> str:
    """How many rows are memorized at the end without being memorized at any probe up to
    their last copy (extractable only later), by placement."""
    mp, steps = run["match_prefix"], run["steps"]
    final = mp[-1] == 32
    upto = steps[:, None] <= run["last_seen"][None, :]
    before = ((mp == 32) & upto).any(0)
    late = final & ~before
    return ", ".join(f"{w} {int((late & (run['placement'] == w)).sum())}"
                     f"/{int((final & (run['placement'] == w)).sum())}" for w in PLACEMENTS)


def pr(pair) -> str:
    """'precision/recall', or 'n/a' where not measured."""
    return "n/a" if np.isnan(pair[0]) else f"{pair[0]:.2f}/{pair[1]:.2f}"


def report(run: dict, schedule: str, seed: int, total_steps: int, variants) -> list[dict]:
    """Print one seed's comparison at each stop; return the rows for the summary."""
    final = run["match_prefix"][-1] == 32
    print(f"== {schedule} seed {seed}: rows {len(final)}, final memorized {int(final.sum())};"
          f" memorized at the end but at no probe up to their last copy: {latent_rows(run)}")
    out = []
    for frac in STOPS:
        line = f"stop {frac:.0%}:"
        if frac in COUNT_STOPS:
            for variant in variants:
                c = count_forecast(run, schedule, total_steps, frac, variant)
                out.append({"kind": "count", "schedule": schedule, "variant": variant,
                            "stop": frac, **c})
                if variant == variants[0]:
                    line += (f" final {c['final']:.0f} [{c['low']:.0f}, {c['high']:.0f}] vs"
                             f" {c['truth']} ({c['err']:+.0%}, covered {c['covered']}"
                             + (", decay ahead" if c["decay_ahead"] else "") + ");"
                             " estimates " + ", ".join(f"{e.method} {e.final_memorized:.0f}"
                                                       f" ({e.weight:.2f})"
                                                       for e in c["estimates"])
                             + f"; signals {', '.join(c['signals']) or 'none'};")
                else:
                    line += f" {variant} {c['err']:+.0%};"
        r = row_metrics(run, schedule, total_steps, frac)
        out.append({"kind": "rows", "schedule": schedule, "stop": frac, **r})
        line += (f" rows seen {r['seen']} ({r['final_seen']} memorized at the end):"
                 f" memorized-now P/R {r['now'][0]:.2f}/{r['now'][1]:.2f},"
                 f" ranked at equal P {pr(r['ranked'])},"
                 f" at P>=0.9 {r['P>=0.9'][0]:.2f}/{r['P>=0.9'][1]:.2f},"
                 f" p>=0.5 {r['p>=0.5'][0]:.2f}/{r['p>=0.5'][1]:.2f}, ECE {r['ece']:.3f},"
                 f" sum of p {r['sum_p']:.0f}")
        print(line, flush=True)
    return out


def print_summary(rows: list[dict], seeds, variants) -> None:
    """Per schedule, variant and stop over all seeds: how often the final count was within
    ±25 % and inside its interval, the interval's median upper / lower ratio and mean
    interval score (over the truth), and the per-row precision / recall and calibration."""
    print(f"summary over seeds {list(seeds)}:")
    for schedule in dict.fromkeys(r["schedule"] for r in rows):
        for variant in variants:
            for frac in COUNT_STOPS:
                sel = [r for r in rows if r["kind"] == "count" and r["schedule"] == schedule
                       and r["variant"] == variant and r["stop"] == frac]
                errs = np.array([r["err"] for r in sel])
                within = int((np.abs(errs) <= 0.25).sum())
                covered = sum(r["covered"] for r in sel)
                ratio = float(np.median([r["ratio"] for r in sel]))
                score = float(np.mean([r["score"] for r in sel]))
                print(f"  {schedule}, {variant}, stop {frac:.0%}: final count within ±25 % on"
                      f" {within}/{len(sel)} seeds, truth inside the interval on"
                      f" {covered}/{len(sel)}, median upper/lower {ratio:.1f}, interval score"
                      f" / truth {score:.2f}; errors " + " ".join(f"{e:+.0%}" for e in errs))
        for frac in STOPS:
            sel = [r for r in rows if r["kind"] == "rows" and r["schedule"] == schedule
                   and r["stop"] == frac]

            def mean(key, i=None, sel=sel):
                vals = [r[key] if i is None else r[key][i] for r in sel]
                vals = [v for v in vals if not np.isnan(v)]
                return float(np.mean(vals)) if vals else np.nan

            print(f"  {schedule}, stop {frac:.0%}, rows seen (mean over seeds):"
                  f" memorized-now P/R {mean('now', 0):.2f}/{mean('now', 1):.2f};"
                  f" ranked at equal P {pr((mean('ranked', 0), mean('ranked', 1)))};"
                  f" at P>=0.9 {mean('P>=0.9', 0):.2f}/{mean('P>=0.9', 1):.2f};"
                  f" p>=0.5 {mean('p>=0.5', 0):.2f}/{mean('p>=0.5', 1):.2f};"
                  f" ECE {mean('ece'):.3f} (max {max(r['ece'] for r in sel):.3f})")
    for frac in COUNT_STOPS:
        sel = [r for r in rows if r["kind"] == "count" and r["variant"] == variants[0]
               and r["stop"] == frac]
        within = sum(abs(r["err"]) <= 0.25 for r in sel)
        covered = sum(r["covered"] for r in sel)
        ratio = float(np.median([r["ratio"] for r in sel]))
        print(f"  all schedules, {variants[0]}, stop {frac:.0%}: within ±25 % on {within}/"
              f"{len(sel)} (seed, schedule) pairs, covered {covered}/{len(sel)}, median"
              f" upper/lower {ratio:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rows-per-repeat", type=int, default=24)
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--seeds", type=int, nargs="+", default=[200, 201, 202])
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    ap.add_argument("--cache", default=None, help="folder to save / reuse the trained runs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="what the forecast is told (the first is reported in full)")
    ap.add_argument("--train-only", action="store_true",
                    help="train (and cache) the runs, forecast nothing")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = []
    for seed in args.seeds:
        for schedule in args.schedules:
            run = load_or_train(args, schedule, seed)
            if not args.train_only:
                rows += report(run, schedule, seed, args.steps, args.variants)
    if args.train_only:
        return
    print_summary(rows, args.seeds, args.variants)


if __name__ == "__main__":
    main()
