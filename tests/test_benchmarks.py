"""Benchmarks that must not rot: each runs in its CPU smoke form, as CI would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_on_cpu_and_agrees_in_fp32():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(" fp32: reference " in line and "extractable+nll" in line for line in lines)
    # fp32: the probe equals the reference row for row; bf16 is measured, never assumed
    assert "fp32 agreement: scores equal to the reference in fp32 48/48" in out.stdout
    assert any(line.startswith("  bf16 agreement:") for line in lines)


@pytest.mark.slow
def test_prompt_lens_bench_smoke_prints_a_ratio_per_mode():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_prompt_lens.py"),
                          "--shape", "tiny", "--rows", "4", "--lengths", "4", "8", "--repeat",
                          "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["tiny cpu 4 rows, extractable",
                                                       "tiny cpu 4 rows, exact"]
    assert all("the 8-token probe alone (prompt tokens: 1.50x)" in line for line in lines)
