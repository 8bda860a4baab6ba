"""MemWatchCallback on a real lightning.Trainer with a tiny GPT-NeoX on CPU."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
import lightning as L  # noqa: E402
from planted import CORPUS, STREAM, TAGS, M, N  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from memwatch.callbacks import MemWatchCallback  # noqa: E402
from memwatch.demos.lightning import LitCausalLM  # noqa: E402
from memwatch.demos.model import tiny_model  # noqa: E402
from memwatch.monitor import MemWatch  # noqa: E402
from memwatch.policy import AbortPolicy  # noqa: E402
from memwatch.probe import reference_probe  # noqa: E402
from memwatch.watchlist import Watchlist  # noqa: E402

BATCH = 8  # the planted stream's 88 rows: 11 optimizer steps per epoch


pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(L.Callback):
    """Records the loss of every batch and, optionally, a copy of the weights after each step."""

    def __init__(self, snapshots: bool = False):
        self.losses, self.weights, self.snapshots = [], [], snapshots

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        if self.snapshots:
            self.weights.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})


class Killed(RuntimeError):
    """Stands for the process dying mid-run."""


class Kill(L.Callback):
    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise Killed(f"killed at step {self.at}")


def monitor(**kwargs) -> MemWatch:
    wl = Watchlist(CORPUS.rows, [f"row-{i}" for i in range(len(CORPUS.rows))], TAGS)
    return MemWatch(wl, **{"prompt_len": M, "cont_len": N, "abort": AbortPolicy(tags=()),
                           **kwargs})


def fit(root, max_steps: int, callbacks=(), dropout: float = 0.0, ckpt_path=None,
        checkpoint_every_epoch: bool = False, accumulate: int = 1, **trainer_kwargs):
    torch.manual_seed(0)
    model = tiny_model(seed=0, hidden_size=64, num_layers=2)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    module = LitCausalLM(model, lr=1e-3)
    loader = DataLoader(TensorDataset(STREAM), batch_size=BATCH // accumulate, shuffle=False)
    callbacks = list(callbacks)
    if checkpoint_every_epoch:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(
            dirpath=root, every_n_epochs=1, save_top_k=-1, filename="{epoch}-{step}"))
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=checkpoint_every_epoch, enable_progress_bar=False,
        enable_model_summary=False, deterministic=True, default_root_dir=root,
        callbacks=callbacks, accumulate_grad_batches=accumulate, **trainer_kwargs)
    trainer.fit(module, loader, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return trainer, module


@pytest.mark.slow
def test_bit_identical_and_detects_memorization_at_its_step(tmp_path, recorder):
    plain = Recorder(snapshots=True)
    fit(tmp_path / "a", 12, [plain], dropout=0.1)
    rec, watched = recorder(), Recorder()
    mon = monitor(every_n_steps=1, sinks=[rec])
    _, module = fit(tmp_path / "b", 12, [MemWatchCallback(mon), watched], dropout=0.1)
    assert watched.losses == plain.losses
    for name, value in module.model.state_dict().items():
        assert torch.equal(value, plain.weights[-1][name]), name
    # The monitor's history equals the Pythia-way probe of the unmonitored run, step by step.
    assert list(mon.history.steps) == list(range(1, 13))
    model = tiny_model(seed=0, hidden_size=64, num_layers=2)
    expected = []
    for weights in plain.weights:
        model.load_state_dict(weights)
        expected.append((reference_probe(model, CORPUS.rows, M, N) == 1).numpy())
    assert np.array(expected)[-1].sum() >= 2
    np.testing.assert_array_equal(mon.history.memorized, np.array(expected))
    assert mon.history.modes[-1] == "exact"  # step 12 == estimated_stepping_batches
    assert mon.total_steps == 12 and rec.events[-2:] == [("end", 12), ("close", None)]


@pytest.mark.slow
def test_gradient_accumulation_probes_on_optimizer_steps(tmp_path):
    mon = monitor(every_n_steps=1)
    fit(tmp_path, 6, [MemWatchCallback(mon)], accumulate=2)
    assert list(mon.history.steps) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_abort_stops_the_trainer_with_the_reason(tmp_path, recorder):
    rec = recorder()
    mon = monitor(every_n_steps=2, abort=AbortPolicy(tags=("canary",)), sinks=[rec])
    callback = MemWatchCallback(mon)
    trainer, _ = fit(tmp_path, 40, [callback])
    stop = int(mon.history.steps[-1])
    assert trainer.global_step == stop < 40
    assert callback.reason.startswith(f"step {stop}:") and "canary" in callback.reason
    alerts = rec.of("alert")
    assert alerts[-1].kind == "abort" and alerts[-1].text == callback.reason
    assert rec.events[-2:] == [("end", len(mon.history)), ("close", None)]


@pytest.mark.slow
def test_two_monitors_share_a_trainer_and_an_abort_before_min_steps_says_it_waits(tmp_path):
    canaries = monitor(every_n_steps=2, abort=AbortPolicy(tags=("canary",)))
    sample = monitor(every_n_steps=5)
    first = MemWatchCallback(canaries, state_key="canaries")
    trainer, _ = fit(tmp_path, 22, [first, MemWatchCallback(sample, state_key="sample")],
                     checkpoint_every_epoch=True, min_steps=22)
    stop = canaries.history.first_memorized_step()[:4]
    abort_step = int(stop[stop > 0].min())
    assert trainer.global_step == 22 > abort_step  # Lightning ignored the stop until min_steps
    assert first.reason.startswith(f"step {abort_step}:")
    assert "(deferred: Lightning trains on until min_steps=22" in first.reason
    ckpt = torch.load(tmp_path / "epoch=1-step=22.ckpt", weights_only=True)
    states = {k: v for k, v in ckpt["callbacks"].items() if k.startswith("MemWatchCallback")}
    assert sorted(states) == ["MemWatchCallback{'key': 'canaries'}",
                              "MemWatchCallback{'key': 'sample'}"]
    assert states["MemWatchCallback{'key': 'sample'}"]["history"]["steps"].tolist() == \
        [5, 10, 15, 20]


@pytest.mark.slow
def test_kill_and_resume_from_a_checkpoint_continues_the_history(tmp_path, recorder):
    full = monitor(every_n_steps=3, abort=AbortPolicy(tags=("canary",), action="alert"))
    fit(tmp_path / "full", 30, [MemWatchCallback(full)])
    # Checkpoints after epochs 1 (step 11) and 2 (step 22); killed at step 17.
    rec_a, rec_b = recorder(), recorder()
    first = monitor(every_n_steps=3, abort=AbortPolicy(tags=("canary",), action="alert"),
                    sinks=[rec_a])
    with pytest.raises(Killed):
        fit(tmp_path / "run", 30, [MemWatchCallback(first), Kill(17)],
            checkpoint_every_epoch=True)
    ckpt = tmp_path / "run" / "epoch=0-step=11.ckpt"
    resumed = monitor(every_n_steps=3, abort=AbortPolicy(tags=("canary",), action="alert"),
                      sinks=[rec_b])
    _, module = fit(tmp_path / "run", 30, [MemWatchCallback(resumed)], ckpt_path=ckpt)
    steps = list(resumed.history.steps)
    assert steps == list(range(3, 31, 3)) == list(full.history.steps)
    # Probes up to the checkpoint come from it; later ones from the resumed model (Lightning's
    # data order after an epoch-end resume differs from the uninterrupted run's, so no more).
    np.testing.assert_array_equal(resumed.history.match_prefix[:3], full.history.match_prefix[:3])
    assert resumed.history.modes[-1] == "exact"
    np.testing.assert_array_equal(resumed.history.scores[-1],
                                  reference_probe(module.model, CORPUS.rows, M, N).numpy())
    sent_before = {a.row_ids for a in rec_a.of("alert") if a.step <= 11}
    sent_after = {a.row_ids for a in rec_b.of("alert")}
    assert sent_before and not sent_before & sent_after
    assert [p.step for p in rec_b.of("probe")] == list(range(12, 31, 3))


@pytest.mark.slow
def test_bad_watchlist_fails_at_fit_start_before_any_step(tmp_path):
    rows = CORPUS.rows.clone()
    rows[2, 0] = 4096
    mon = MemWatch(Watchlist(rows, [f"row-{i}" for i in range(16)], TAGS), prompt_len=M,
                   cont_len=N)
    plain = Recorder()
    with pytest.raises(ValueError, match="'row-2' has token id 4096"):
        fit(tmp_path, 5, [MemWatchCallback(mon), plain])
    assert plain.losses == []


def test_missing_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "memwatch.callbacks.lightning")
    import memwatch.callbacks as callbacks

    with pytest.raises(ImportError, match=r"pip install 'memwatch\[lightning\]'"):
        callbacks.MemWatchCallback  # noqa: B018
