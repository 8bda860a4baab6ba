"""Every example runs, with tiny settings, as a user would run it."""

import os
import re
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


# the stop line names the default rule and the rows that triggered it
STOPPED = re.compile(r"stopped at step (\d+): rule tags=\['pii:\*', 'canary'\]: \d+ watched "
                     r"row\(s\) memorized: canary#\d+ \[canary\]")


def _trained_to_the_end(stdout: str, steps: int) -> bool:
    return f"trained {steps} of {steps} steps" in stdout and "stopped at" not in stdout


@pytest.mark.slow
@pytest.mark.parametrize("script, steps", [("plain_torch_loop.py", 40),
                                           ("lightning_pretrain.py", 40), ("hf_trainer.py", 20)])
def test_example_reaches_its_last_step(script, steps, tmp_path):
    stdout = _run([sys.executable, str(ROOT / "examples" / script), "--steps", str(steps),
                   "--out", str(tmp_path / "logs")], tmp_path)
    assert "memorized at the end:" in stdout
    assert _trained_to_the_end(stdout, steps), stdout[-2000:]
    assert any((tmp_path / "logs").rglob("*.jsonl"))
    if script == "hf_trainer.py":  # the resumed monitor continued the first run's history
        assert stdout.count(f"trained {steps} of {steps} steps") == 2
        assert "(the history continued: True)" in stdout


@pytest.mark.slow
def test_lightning_example_stops_for_its_stated_reason(tmp_path):
    stdout = _run([sys.executable, str(ROOT / "examples" / "lightning_pretrain.py"), "--abort",
                   "--steps", "200", "--out", str(tmp_path / "logs")], tmp_path)
    stop = STOPPED.search(stdout)
    assert stop and int(stop.group(1)) < 200, stdout[-2000:]
    # the console said it too, with the way to keep training
    assert "memwatch stops the run: rule tags=" in stdout and "action='alert'" in stdout


@pytest.mark.slow
def test_ddp_example_runs_on_two_processes(tmp_path):
    stdout = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   "--standalone", str(ROOT / "examples" / "ddp_torchrun.py"),
                   "--steps", "20", "--out", str(tmp_path / "logs")], tmp_path)
    assert "(world size 2)" in stdout
    # its docstring: the default policy stops every rank at the first memorized canary
    assert STOPPED.search(stdout) or _trained_to_the_end(stdout, 20), stdout[-2000:]


@pytest.mark.slow
def test_posthoc_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "examples" / "pythia_posthoc.sh")], check=True)
