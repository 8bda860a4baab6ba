"""Probe throughput against the Pythia reference, measured in the same run.

Absolute times are noise on a shared machine; the ratios are the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from memwatch.probe import _Preserved, probe, reference_probe


def _plain_forward(model, rows: torch.Tensor) -> None:
    with _Preserved(model):
        model(input_ids=rows)


def plant_memorized(model, rows: torch.Tensor, share: float, prompt_len: int = 32,
                    cont_len: int = 32) -> torch.Tensor:
    """Rows where a `share` of them carry the model's own greedy continuation (memorized)."""
    k = round(share * len(rows))
    if k == 0:
        return rows
    out = rows.clone()
    greedy = probe(model, rows[:k], prompt_len, cont_len, mode="exact").greedy
    out[:k, prompt_len:prompt_len + cont_len] = greedy
    return out


def compare(model, rows: torch.Tensor, prompt_len: int = 32, cont_len: int = 32,
            batch_size: int | None = None, repeat: int = 2) -> dict[str, float]:
    """Best-of-`repeat` seconds for reference_probe, probe(exact), probe(extractable), the
    latter with_nll=True, and one forward pass over M+N tokens; rounds interleave the
    methods so load drifts hit all alike."""
    M, N = prompt_len, cont_len
    kw = dict(prompt_len=M, cont_len=N, batch_size=batch_size)
    methods: dict[str, Callable[[], object]] = {
        "reference": lambda: reference_probe(model, rows, **kw),
        "exact": lambda: probe(model, rows, mode="exact", **kw),
        "extractable": lambda: probe(model, rows, mode="extractable", **kw),
        "extractable+nll": lambda: probe(model, rows, mode="extractable", with_nll=True, **kw),
        "forward": lambda: _plain_forward(model, rows[:, :M + N]),
    }
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeat):
        for name, fn in methods.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def format_line(label: str, seconds: dict[str, float]) -> str:
    ref = seconds["reference"]
    return (f"{label}: reference {ref:.2f}s | exact {ref / seconds['exact']:.2f}x | "
            f"extractable {ref / seconds['extractable']:.2f}x | "
            f"extractable+nll {ref / seconds['extractable+nll']:.2f}x | "
            f"forward(M+N) {ref / seconds['forward']:.2f}x  (ratios = reference / method)")
