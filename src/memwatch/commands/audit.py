"""`memwatch audit RUN_DIR`: the one-run privacy audit of a finished (or crashed) run, post hoc.

Reads the local records a `LocalSink` (or the `WandbSink`'s local copy) wrote: the per-row
history (``history.parquet``, written at the end of the run) gives the audit at every
probe, recomputed from the audit canaries' log p_z, and the last probe's in full (bootstrap
interval, f-DP bound); without it (the run never finished) the ``audit/*`` metrics the
monitor logged at each probe (``records.jsonl``) are shown as they were.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from memwatch.commands.args import existing_dir, fraction, nonnegative_int, positive_int
from memwatch.probe import CONT_LEN

HELP = ("The one-run privacy audit of a run's audit canaries (AUROC, TPR at low FPR, ε lower "
        "bound) from its local records.")


def add_arguments(p) -> None:
    p.add_argument("run_dir", type=existing_dir, metavar="RUN_DIR",
                   help="the run's local records (holding history.parquet / records.jsonl), or "
                        "a folder with one such folder inside (e.g. a demo's output)")
    p.add_argument("--delta", type=fraction, default=1e-5, help="δ of the claim (default 1e-5)")
    p.add_argument("--significance", type=fraction, default=0.05,
                   help="the test's level (default 0.05: 95 %% confidence)")
    p.add_argument("--n-boot", type=nonnegative_int, default=1000,
                   help="bootstrap resamples for the AUROC interval (default 1000)")
    p.add_argument("--no-fdp", action="store_true",
                   help="skip the f-DP bound (Mahloujifar et al. 2024)")
    p.add_argument("--cont-len", type=positive_int, default=CONT_LEN,
                   help=f"the run's continuation length (default {CONT_LEN}); it scales log p_z "
                        "and changes no figure (every statistic here is rank-based)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")


def run(args) -> int:
    try:
        folder = _records_folder(Path(args.run_dir))
        if (folder / "history.parquet").exists():
            out = _from_history(folder / "history.parquet", args)
        else:
            out = _from_records(folder)
    except ValueError as err:
        print(f"memwatch audit: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1) if args.json else _render(out))
    return 0


def _records_folder(root: Path) -> Path:
    """`root` if it holds the records, else the one folder below it that does."""
    if (root / "history.parquet").exists() or (root / "records.jsonl").exists():
        return root
    found = sorted({p.parent for name in ("history.parquet", "records.jsonl")
                    for p in root.rglob(name)})
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{root} holds no history.parquet or records.jsonl: give the folder a "
                         "LocalSink (or WandbSink's local_dir) wrote")
    raise ValueError(f"{root} holds several runs' records: give one of "
                     f"{', '.join(str(p) for p in found[:5])}")


def _from_history(path: Path, args) -> dict:
    import pyarrow.parquet as pq

    from memwatch.audit import audit, audit_rows

    table = pq.read_table(path).to_pydict()
    steps = np.asarray(table["step"], dtype=np.int64)
    unique = np.unique(steps)
    first = steps == unique[0]
    tags = [t for t, f in zip(table["tags"], first, strict=True) if f]
    rows_in, rows_out = audit_rows(tags)
    if not rows_in.any() or not rows_out.any():
        raise ValueError(f"{path}: no audit canaries (rows tagged canary:in and canary:out); "
                         "build them with Watchlist.canaries(n, audit=True)")
    column = "log_pz" if "log_pz" in table else "nll"
    values = np.asarray(table[column], dtype=np.float64).reshape(len(unique), len(tags))
    scores = values if column == "log_pz" else -values * args.cont_len
    curve = []
    for step, score in zip(unique, scores, strict=True):
        if np.isfinite(score[rows_in | rows_out]).all():
            a = audit(score[rows_in], score[rows_out], delta=args.delta,
                      significance=args.significance, n_boot=0)
            curve.append({"step": int(step), **a.metrics()})
    if not curve:
        raise ValueError(f"{path}: no probe measured log p_z (the NLL); run the monitor with "
                         "with_nll=True")
    last = scores[[i for i, s in enumerate(unique) if s == curve[-1]["step"]][0]]
    final = audit(last[rows_in], last[rows_out], delta=args.delta,
                  significance=args.significance, n_boot=args.n_boot, fdp=not args.no_fdp)
    return {"source": str(path), "score": "log p_z", "canaries_in": final.n_in,
            "canaries_out": final.n_out, "delta": args.delta, "significance": args.significance,
            "final": {"step": curve[-1]["step"], **final.metrics(), "guesses": final.guesses,
                      "correct": final.correct},
            "curve": curve}


def _from_records(folder: Path) -> dict:
    from memwatch.sinks.local import read_records

    curve = [{"step": e["step"], **{k: v for k, v in e["metrics"].items()
                                    if k.startswith("audit/")}}
             for e in read_records(folder) if e.get("event") == "probe"]
    curve = [c for c in curve if len(c) > 1]
    if not curve:
        raise ValueError(f"{folder}: no probe logged audit/* metrics (no audit canaries, or "
                         "no log p_z: with_nll=False) and no history.parquet to compute them")
    return {"source": str(folder / "records.jsonl"), "score": "log p_z",
            "note": "no history.parquet (the run did not finish): the figures the monitor "
                    "logged at each probe, without a bootstrap interval",
            "final": curve[-1], "curve": curve}


def _render(out: dict) -> str:
    final = out["final"]
    lines = [f"memwatch audit: {out['source']}"]
    if "canaries_in" in out:
        lines.append(f"{out['canaries_in']} canaries in, {out['canaries_out']} out; score "
                     f"{out['score']}; δ = {out['delta']:g}, significance "
                     f"{out['significance']:g}")
    if "note" in out:
        lines.append(out["note"])
    lines += ["", "| step | AUROC | TPR@0.1%FPR | TPR@1%FPR | ε lower bound |",
              "|---|---|---|---|---|"]
    for row in out["curve"]:
        lines.append(f"| {row['step']} | {_f(row, 'audit/auroc')} | "
                     f"{_f(row, 'audit/tpr@0.1%fpr')} | {_f(row, 'audit/tpr@1%fpr')} | "
                     f"{_f(row, 'audit/epsilon_lb', 2)} |")
    lines.append("")
    text = (f"at step {final['step']}: AUROC {_f(final, 'audit/auroc')}")
    if "audit/auroc_low" in final:
        text += f" ({_f(final, 'audit/auroc_low')}-{_f(final, 'audit/auroc_high')})"
    text += (f", TPR at 1 % FPR {_f(final, 'audit/tpr@1%fpr')}, ε lower bound "
             f"{_f(final, 'audit/epsilon_lb', 2)}")
    if "audit/epsilon_lb_fdp" in final:
        text += f" (f-DP: {_f(final, 'audit/epsilon_lb_fdp', 2)})"
    lines.append(text + ". A lower bound for these canaries, this score and this run "
                 "(docs/audit.md).")
    return "\n".join(lines)


def _f(row: dict, key: str, digits: int = 3) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value:.{digits}f}"
