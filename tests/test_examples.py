"""Every example runs, with tiny settings, as a user would run it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def _run(args, tmp_path, timeout=300):
    out = subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", ["plain_torch_loop.py", "lightning_pretrain.py",
                                    "hf_trainer.py"])
def test_example_runs(script, tmp_path):
    stdout = _run([sys.executable, str(ROOT / "examples" / script), "--steps", "40",
                   "--out", str(tmp_path / "logs")], tmp_path)
    assert "memorized at the end:" in stdout
    assert any((tmp_path / "logs").rglob("*.jsonl"))


@pytest.mark.slow
def test_ddp_example_runs_on_two_processes(tmp_path):
    stdout = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   "--standalone", str(ROOT / "examples" / "ddp_torchrun.py"),
                   "--steps", "20", "--out", str(tmp_path / "logs")], tmp_path)
    assert "(world size 2)" in stdout


def test_posthoc_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "examples" / "pythia_posthoc.sh")], check=True)
