"""Probe throughput vs. the Pythia reference (generate), same model, same rows, same run.

    python benchmarks/bench_probe.py                    # pythia-70m shape, CPU, fp32
    python benchmarks/bench_probe.py --shape pythia-160m --device cuda --dtype bf16

Prints one line per memorized share: ratios reference/method (higher is faster).
"""

import sys

from memwatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--trained", *sys.argv[1:]]))
