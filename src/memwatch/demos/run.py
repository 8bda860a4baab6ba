"""`memwatch demo`: a small GPT-NeoX memorizing planted PII on a CPU, watched live.

The Python standard library's sources are the corpus (offline everywhere), a byte-level
BPE is trained on them on the spot, fake customer records (emails, phones, card numbers)
and canaries are planted at graded repetition counts, and the Lightning callback watches
a watchlist built by `scan_pii` + canaries + a random sample of training rows. The
canaries are audit canaries (`Watchlist.canaries(n, audit=True)`): each is in training
with probability ½, and only the in half is planted, so the report carries a one-run
privacy audit (`memwatch.audit`) beside the memorization counts.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from memwatch.probe import CONT_LEN, PROMPT_LEN
from memwatch.watchlist.tags import CANARY_IN

#: Repetitions of each planted record / canary in the training stream (one per level).
PII_REPEATS = (1, 2, 4, 8, 16, 32)
CANARY_REPEATS = (1, 4, 16)  # the canary:in half; the canary:out half is never planted


@dataclass(frozen=True)
class DemoConfig:
    """Settings of `run_demo`; defaults finish in about three minutes on 2 CPU cores.

    `threads`: torch CPU threads while the demo runs (None: 1 on CPU). The tiny model's
    matrices are too small to split: on 2 cores one thread trained 9.3 steps/s where
    torch's default (one per core) trained 2.1 on a busy machine, and 1.2-1.7 vs 0.2-0.4
    under heavier load.
    """

    out_dir: Path = Path("memwatch-demo")
    steps: int = 1500
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    hidden_size: int = 128
    num_layers: int = 2
    vocab_size: int = 1024
    corpus_chars: int = 100_000
    records_per_level: int = 3
    audit_canaries: int = 64
    sample_rows: int = 48
    max_overhead: float = 0.05
    device: str = "cpu"
    wandb: str = "offline"  # "offline" | "online" | "disabled"
    abort: bool = False
    mask: bool = False  # mask planted PII and canaries out of the loss once at risk
    seed: int = 0
    threads: int | None = None


@dataclass(frozen=True)
class DemoData:
    tokenizer: object
    stream: torch.Tensor  # int64 [rows, seq_len], shuffled training rows
    watchlist: object  # memwatch.Watchlist
    repeats: dict[str, int]  # watchlist id -> planted repetitions (0: background, canary:out)


def build_data(cfg: DemoConfig) -> DemoData:
    """The tokenizer, the planted training stream and the watchlist of the demo."""
    from memwatch.demos.data import fake_pii_records, planted_stream, stdlib_texts, token_rows
    from memwatch.demos.tokenizer import train_tokenizer
    from memwatch.watchlist import Watchlist

    texts = stdlib_texts(cfg.corpus_chars)
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size)
    background = token_rows(texts, tokenizer, cfg.seq_len)

    pii_reps = [r for r in PII_REPEATS for _ in range(cfg.records_per_level)]
    records = fake_pii_records(len(pii_reps), seed=cfg.seed)
    canaries = Watchlist.canaries(cfg.audit_canaries, tokenizer=tokenizer, seed=cfg.seed,
                                  audit=True)
    planted = np.flatnonzero(canaries.tag_mask(CANARY_IN))
    can_reps = [CANARY_REPEATS[j % len(CANARY_REPEATS)] for j in range(len(planted))]

    # The records enter training cut to start at a prompt, with no document separator: a
    # hit without room around it has no row here (see short_records).
    pii = Watchlist.scan_pii(records, tokenizer, short_records=False)
    # Each record enters training as a row that starts at its first PII row's prompt, as a
    # Pythia training sequence starts at the prompt its evaluation used; the record's other
    # PII rows sit further in, where memorization comes later.
    record_rows = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"])
                   for t in records]
    start: dict[int, int] = {}
    for i, (t, _, _) in enumerate(pii.spans):
        start[t] = min(start.get(t, len(record_rows[t])), _offset(record_rows[t], pii.tokens[i]))
    record_rows = [row[start.get(t, 0):] for t, row in enumerate(record_rows)]
    stream = planted_stream(background, record_rows + list(canaries.tokens[planted]),
                            pii_reps + can_reps, seed=cfg.seed)

    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(background), generator=g)[: cfg.sample_rows]
    sample = Watchlist.from_tokens(background[pick], ids=[f"sample#{int(i)}" for i in pick],
                                   tags="sample", prompt_len=PROMPT_LEN, cont_len=CONT_LEN)
    repeats = {row_id: pii_reps[pii.spans[i][0]] for i, row_id in enumerate(pii.ids)}
    repeats.update(dict.fromkeys(canaries.ids, 0))  # canary:out: never planted
    repeats.update({canaries.ids[i]: r for i, r in zip(planted, can_reps, strict=True)})
    repeats.update(dict.fromkeys(sample.ids, 0))
    return DemoData(tokenizer, stream, pii + canaries + sample, repeats)


def _offset(tokens: torch.Tensor, row: torch.Tensor) -> int:
    """Where `row` starts inside `tokens` (scan_pii cut it from there)."""
    windows = tokens.unfold(0, len(row), 1)
    return int(torch.nonzero((windows == row).all(dim=1))[0])


def run_demo(cfg: DemoConfig) -> Path:
    """Train, watch, report; returns the path of the Markdown report.

    With `cfg.mask` the same run is trained twice, first without any action (into
    ``<out_dir>/unmitigated``), and the report compares the two.
    """
    threads = cfg.threads or (1 if cfg.device == "cpu" else torch.get_num_threads())
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        baseline = None
        if cfg.mask:
            print("memwatch demo: first the same run without masking, for comparison")
            baseline = _train(replace(cfg, mask=False, abort=False, wandb="disabled",
                                      out_dir=Path(cfg.out_dir) / "unmitigated"))[0].history
            print("memwatch demo: now with masking")
        return _run(cfg, baseline)
    finally:
        torch.set_num_threads(before)


def _run(cfg: DemoConfig, baseline=None) -> Path:
    from memwatch.demos.report import write_report

    monitor, callback, trainer, data = _train(cfg)
    report = write_report(monitor.history, data.watchlist, data.repeats, Path(cfg.out_dir),
                          total_steps=cfg.steps, stopped_early=trainer.global_step < cfg.steps,
                          stop_reason=callback.reason, unmitigated=baseline,
                          flagged=monitor.flagged)
    from memwatch.audit import history_audit

    result = history_audit(monitor.history)
    if result is not None:
        print(f"\nprivacy audit at step {int(monitor.history.steps[-1])}: AUROC "
              f"{result.auroc:.3f}, TPR at 1 % FPR {result.tpr_at_fpr[0.01]:.3f}, "
              f"ε lower bound {result.epsilon_lb:.2f} ({result.n_in} canaries in, "
              f"{result.n_out} out)")
    print(f"\nreport: {report.resolve()}")
    return report


def _train(cfg: DemoConfig):
    """(monitor, callback, trainer, data) of one watched training run."""
    import lightning as L

    import memwatch as mw
    from memwatch.callbacks import MemWatchCallback
    from memwatch.demos.lightning import LitCausalLM, StepProgressBar, stream_loader
    from memwatch.demos.model import tiny_model

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    print(f"memwatch demo: building the corpus, tokenizer and watchlist (seed {cfg.seed}, "
          f"{torch.get_num_threads()} torch thread(s))")
    data = build_data(cfg)
    wl = data.watchlist
    print(textwrap.fill(f"  training stream: {len(data.stream)} rows x {cfg.seq_len} tokens; "
                        f"watchlist: {wl}", 120, subsequent_indent="    "))  # 120 columns

    model = tiny_model(seed=cfg.seed, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                       num_layers=cfg.num_layers, max_len=cfg.seq_len)
    sinks = [mw.ConsoleSink()]
    if cfg.wandb == "disabled":
        sinks.append(mw.LocalSink(out / "records"))
    else:  # the W&B sink keeps the same local copy, and the alerts an offline run cannot send
        sinks.append(mw.WandbSink(project="memwatch-demo", local_dir=out / "records",
                                  init_kwargs={"mode": cfg.wandb, "dir": str(out)}))
    # --act mask: a planted row leaves the loss once the forecast gives it >= 50 % of
    # being memorized at the end, or once it is memorized
    actions = {"pii:*": "mask", "canary": "mask"} if cfg.mask else {}
    policy = mw.AbortPolicy(action="stop" if cfg.abort else "alert", actions=actions,
                            mask_risk=0.5 if cfg.mask else None)
    # with_nll: the per-row NLL trends give the forecast its trajectory estimate
    monitor = mw.MemWatch(wl, total_steps=cfg.steps, max_overhead=cfg.max_overhead,
                          abort=policy, sinks=sinks,
                          probe=mw.ProbeSpec(mode="extractable", with_nll=True))
    callback = MemWatchCallback(monitor)
    trainer = L.Trainer(max_steps=cfg.steps, accelerator=cfg.device, devices=1, logger=False,
                        enable_checkpointing=False, callbacks=[callback, StepProgressBar()],
                        enable_model_summary=False, log_every_n_steps=50)
    # masking: dict batches, whose labels the callback masks before each training step
    trainer.fit(LitCausalLM(model, lr=cfg.lr),
                stream_loader(data.stream, cfg.batch_size, seed=cfg.seed, as_dict=cfg.mask))
    monitor.close()  # finishes the W&B run the sink started
    return monitor, callback, trainer, data


def config_from_args(args) -> DemoConfig:
    cfg = DemoConfig()
    return replace(cfg, out_dir=Path(args.out), steps=args.steps or cfg.steps,
                   device=args.device, wandb=args.wandb, abort=args.abort or args.act == "abort",
                   mask=args.act == "mask", seed=args.seed,
                   threads=args.threads)
