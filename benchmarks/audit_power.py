"""How many canaries give how much ε lower bound: `memwatch.audit` on simulated scores.

The one-run audit (Steinke, Nasr & Jagielski 2023) can only certify as much ε as its
canaries allow: with every guess right, r guesses reject ε up to logit(α^(1/r)). This
simulation shows the bound one can expect for m audit canaries (each in with
probability ½) when a share f of the planted (canary:in) ones are memorized: their
log p_z stands far above every other canary's, and the rest score like the held-out
ones (a normal draw). The last column is a milder signal: every in-canary's score
shifted by 2 standard deviations (AUROC about 0.92), nothing memorized outright.

Prints a Markdown table of the median ε lower bound over `--seeds` draws (δ = 1e-5,
significance 0.05, the default k grid with its Bonferroni correction). No model, no
training; about a minute on 2 CPU cores.

    python benchmarks/audit_power.py [--seeds 20]
"""

from __future__ import annotations

import argparse

import numpy as np

from memwatch.audit import audit

CANARIES = (50, 100, 200, 500, 1000, 2000)
SHARES = (0.1, 0.25, 0.5, 1.0)


def draw(m: int, share: float | None, rng) -> tuple[np.ndarray, np.ndarray]:
    """(scores_in, scores_out) of m canaries; share None: every in-score shifted by 2."""
    inside = rng.random(m) < 0.5
    score = rng.normal(size=m)
    if share is None:
        score[inside] += 2.0
    else:
        score[inside & (rng.random(m) < share)] += 100.0  # memorized: far above the rest
    return score[inside], score[~inside]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    cols = [*(f"f = {s:g}" for s in SHARES), "shift 2 sd"]
    print("| canaries m | " + " | ".join(cols) + " | every guess right |")
    print("|---|" + "---|" * (len(cols) + 1))
    for m in CANARIES:
        cells = []
        for share in (*SHARES, None):
            eps = [audit(*draw(m, share, np.random.default_rng([m, seed])), n_boot=0,
                         seed=seed).epsilon_lb for seed in range(args.seeds)]
            cells.append(f"{np.median(eps):.2f}")
        ceiling = audit(np.full(m // 2, 1.0), np.zeros(m - m // 2), n_boot=0).epsilon_lb
        print(f"| {m} | " + " | ".join(cells) + f" | {ceiling:.2f} |")


if __name__ == "__main__":
    main()
