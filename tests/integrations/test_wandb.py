"""WandbSink against a real W&B in offline mode: what it writes is read back from the run's
files (the ``run-*.wandb`` transaction log, tables, media), never mocked."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")
if tuple(int(x) for x in wandb.__version__.split(".")[:2]) < (0, 31):
    pytest.skip(f"reading a run back needs wandb's own reader, `wandb leet inspect` (wandb >= "
                f"0.31; this is {wandb.__version__})", allow_module_level=True)
pytestmark = pytest.mark.slow  # real offline W&B runs: seconds each to start and to finish

from memwatch.sinks import WandbSink  # noqa: E402
from memwatch.sinks.local import read_records  # noqa: E402

# ---- reading an offline run back ------------------------------------------------------------
# With W&B's own reader of its transaction log, `wandb leet inspect --json` (wandb >= 0.31): one
# JSON object per record, as the protobuf `Record` in JSON form ({"type": "history",
# "history": {...}}); a logged value's nested keys come joined with dots.


def read_transaction_log(path: Path) -> list[dict]:
    """The records of a ``run-*.wandb`` file, read by wandb's own reader."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"wandb leet inspect failed ({out.returncode}): {out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _nested(item: dict) -> dict:
    """A history item with its dotted keys (a logged dict, a histogram) as nested dicts."""
    row: dict = {}
    for key, value in item.items():
        *parents, leaf = key.split(".")
        node = row
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return row


class OfflineRun:
    """One offline run directory, read once W&B has written its exit record (in offline
    mode `run.finish()` can return before the writer has flushed the log)."""

    def __init__(self, run_dir: Path, timeout_s: float = 120.0):
        self.dir = run_dir
        deadline = time.monotonic() + timeout_s
        while True:
            self.records = read_transaction_log(next(run_dir.glob("run-*.wandb")))
            if any(r["type"] == "exit" for r in self.records) or time.monotonic() > deadline:
                break
            time.sleep(0.5)

    def of(self, kind: str) -> list[dict]:
        return [r[kind] for r in self.records if r["type"] == kind]

    @property
    def history(self) -> list[dict]:
        return [_nested(h.get("item", {})) for h in self.of("history")]

    def memwatch_rows(self) -> list[dict]:
        return [r for r in self.history if "memwatch/step" in r]

    def tables(self, key: str) -> list[dict]:
        files = sorted((self.dir / "files" / "media" / "table").glob(f"{key}_*.table.json"),
                       key=lambda p: int(p.name[len(Path(key).name) + 1:].split("_")[0]))
        return [json.loads(p.read_text()) for p in files]

    def table_rows(self, key: str) -> list[dict]:
        return [dict(zip(t["columns"], row, strict=True)) for t in self.tables(key)
                for row in t["data"]]


def only_run(wandb_dir: Path) -> OfflineRun:
    (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
    return OfflineRun(run_dir)


def leaks(root: Path, secrets) -> list[tuple[str, str]]:
    """(file, secret) for every secret found in any file under root (bytes, as UTF-8)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            found += [(str(path), s) for s in secrets if s.encode() in blob]
    return found


def drive(sink, ev, end: bool = True) -> None:
    for kind, event in ev.events:
        getattr(sink, f"on_{kind}")(event)
    if end:
        sink.on_end(ev.history, ev.watchlist)
    sink.close()


def probes(ev) -> list:
    return [e for k, e in ev.events if k == "probe"]


# ---- one run the sink starts itself, reused by the tests below ------------------------------
@pytest.fixture(scope="module")
def own_run(tmp_path_factory, sink_events):
    root = tmp_path_factory.mktemp("wandb-own")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_BASE_URL", raising=False)
        sink = WandbSink(project="memwatch-test", local_dir=root / "local",
                         init_kwargs={"dir": str(root)})
        drive(sink, sink_events)
    assert wandb.run is None, "the sink must finish the run it started"
    return root, only_run(root)


def test_metrics_plot_against_the_training_step(own_run, sink_events):
    _, run = own_run
    (glob,) = [m for m in run.of("metric") if m.get("glob_name") == "memwatch/*"]
    assert glob["step_metric"] == "memwatch/step"
    rows = run.memwatch_rows()
    assert [r["memwatch/step"] for r in rows] == [10, 20, 30, 30]  # three probes, then the end
    for row, record in zip(rows, probes(sink_events), strict=False):
        for key, value in record.metrics.items():
            assert row[f"memwatch/{key}"] == pytest.approx(value)
        hist = row["memwatch/score_histogram"]
        assert hist["_type"] == "histogram" and sum(hist["values"]) == len(record.scores)
        assert hist["values"][-1] == record.metrics["memorized_count"]


def test_tables_of_new_and_summary_rows(own_run, sink_events):
    _, run = own_run
    ev = sink_events
    new = run.table_rows("memwatch/newly_memorized")
    expected = [r for p in probes(ev) for r in p.new_rows]
    assert [(r["id"], r["tags"], r["step"], r["score"], r["preview"]) for r in new] == [
        (r.id, ",".join(r.tags), r.step, r.score, r.preview) for r in expected]
    (summary,) = run.tables("memwatch/summary")
    rows = [dict(zip(summary["columns"], r, strict=True)) for r in summary["data"]]
    assert len(rows) == len(ev.watchlist)
    ever = ev.history.memorized.any(0)
    memorized = {ev.watchlist.ids[i] for i in np.flatnonzero(ever)}
    assert {r["id"] for r in rows[:len(memorized)]} == memorized
    assert all(r["first_memorized_step"] == 20 for r in rows[:len(memorized)])
    assert rows[0]["preview"] == ev.watchlist.redacted_preview(ev.watchlist.ids.index(
        rows[0]["id"]))
    (png,) = (run.dir / "files" / "media" / "images" / "memwatch").glob(
        "memorization_heatmap_*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_alerts_follow_the_policy_and_are_kept_locally(own_run, sink_events):
    root, run = own_run
    ev = sink_events
    sent = run.of("alert")
    memorized = [r for p in probes(ev) for r in p.new_rows]
    watched = [r.id for r in memorized if r.tags[0] in ("pii:EMAIL_ADDRESS", "canary")]
    assert len(watched) >= 12 and len(watched) < len(memorized)
    assert [a["title"] for a in sent if a["level"] == "WARN"] == [
        f"memwatch: watched row {i} memorized" for i in watched]
    (abort,) = [a for a in sent if a["level"] == "ERROR"]
    assert abort["title"] == "memwatch stops the run" and "Step: 20" in abort["text"]
    assert all(int(a["wait_duration"]) == 300_000 for a in sent)
    local = [r for r in read_records(root / "local") if r["event"] == "alert"]
    assert [r["title"] for r in local] == [e.title for k, e in ev.events if k == "alert"]


def test_nothing_raw_reaches_wandb(own_run, sink_events):
    root, run = own_run
    assert leaks(root, sink_events.secrets) == []
    found = {s for _, s in leaks(run.dir, ["row-00", "a***@g***.com", "pii:EMAIL_ADDRESS"])}
    assert found == {"row-00", "a***@g***.com", "pii:EMAIL_ADDRESS"}  # the grep does see text


def test_raw_text_only_when_asked(tmp_path, sink_events, monkeypatch):
    from memwatch.watchlist import Watchlist

    home = tmp_path / "home-data"  # stands for ~/.local/share/wandb, where staging went before
    monkeypatch.setenv("WANDB_DATA_DIR", str(home))
    ev = sink_events
    wl = ev.watchlist
    raw = Watchlist(wl.tokens, wl.ids, wl.tags, [wl.redacted_preview(i) for i in range(len(wl))],
                    texts=list(ev.emails) + [None] * (len(wl) - len(ev.emails)))
    for log_text in ("redacted", "raw"):
        sink = WandbSink(project="memwatch-test", log_text=log_text, local_dir=tmp_path / "l",
                         init_kwargs={"dir": str(tmp_path / log_text)})
        sink.on_end(ev.history, raw)
        sink.close()
    redacted_run, raw_run = (only_run(tmp_path / m).dir for m in ("redacted", "raw"))
    assert leaks(redacted_run, ev.emails) == []
    assert {s for _, s in leaks(raw_run, ev.emails)} == set(ev.emails)
    # W&B's staged table copies sit in the run's own folder, none in the user's data dir
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*"))
    staged = raw_run / "memwatch-staging"
    assert {s for _, s in leaks(staged, ev.emails)} == set(ev.emails)
    assert os.environ["WANDB_DATA_DIR"] == str(home)  # restored after logging


def test_the_policy_alone_decides_which_rows_alert(tmp_path, sink_events):
    """A policy watching the sample rows gets their alerts to W&B: the sink filters nothing."""
    from memwatch.policy import AbortPolicy, evaluate

    ev = sink_events
    verdict = evaluate(AbortPolicy(tags=("sample",), action="alert"), ev.history.head(2),
                       preview=ev.watchlist.redacted_preview)
    rows = [a.row_ids[0] for a in verdict.alerts if a.kind == "memorized"]
    assert len(rows) >= 12
    assert all(ev.watchlist.tags[ev.watchlist.ids.index(i)] == ("sample",) for i in rows)
    sink = WandbSink(project="memwatch-test", local_dir=tmp_path / "local",
                     init_kwargs={"dir": str(tmp_path)})
    sink.on_probe(probes(ev)[1])  # the sink sees the rows' tags before their alerts
    for alert in verdict.alerts:
        sink.on_alert(alert)
    sink.close()
    assert [a["title"] for a in only_run(tmp_path).of("alert")] == [a.title for a in verdict.alerts]


# ---- someone else's run --------------------------------------------------------------------
def test_reuses_the_active_run_and_leaves_the_users_steps_alone(tmp_path, sink_events):
    run = wandb.init(project="memwatch-test", dir=str(tmp_path))
    try:
        sink = WandbSink(project="ignored", local_dir=tmp_path / "local")
        for step in range(1, 41):  # the user logs with explicit steps, less often than we probe
            if step in (5, 25, 35):
                run.log({"loss": 1.0 / step}, step=step)
            for kind, event in sink_events.events:
                if event.step == step:
                    getattr(sink, f"on_{kind}")(event)
        assert sink.run is run, "the sink must log to the active run"
        sink.close()
        assert wandb.run is run, "the sink must not end a run it did not start"
    finally:
        run.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    parsed = OfflineRun(run_dir)
    assert [r["_step"] for r in parsed.history if "loss" in r] == [5, 25, 35]
    assert [r["memwatch/step"] for r in parsed.memwatch_rows()] == [10, 20, 30]
    logs = "".join(p.read_text() for p in (run_dir / "logs").glob("*.log"))
    assert "less than the current step" not in logs


# ---- W&B that cannot start -----------------------------------------------------------------
def test_wandb_that_cannot_start_warns_once_and_keeps_everything(tmp_path, sink_events):
    sink = WandbSink(project="memwatch-test", local_dir=tmp_path / "local",
                     init_kwargs={"mode": "no-such-mode", "dir": str(tmp_path)})
    with pytest.warns(RuntimeWarning, match="could not start") as caught:
        drive(sink, sink_events)
    assert len([w for w in caught if "memwatch" in str(w.message)]) == 1
    lines = read_records(tmp_path / "local")
    kinds = [line["event"] for line in lines]
    assert kinds == ["sink_error"] + [k for k, _ in sink_events.events] + ["end"]
    assert (tmp_path / "local" / "history.parquet").exists()
    assert not (tmp_path / "wandb").exists()


def test_default_local_dir_is_named_after_the_run(tmp_path, monkeypatch, sink_events):
    monkeypatch.chdir(tmp_path)
    sink = WandbSink(project="memwatch-test", init_kwargs={"name": "my run/1",
                                                           "dir": str(tmp_path)})
    sink.on_start()
    assert wandb.run is sink.run and wandb.run.name == "my run/1"
    drive(sink, sink_events, end=False)
    assert wandb.run is None, "the sink finishes the run it started"
    assert read_records(tmp_path / "memwatch-logs" / "my-run-1")[0]["event"] == "probe"


def test_a_run_the_sink_starts_gives_up_on_the_server_after_init_timeout_s(tmp_path):
    # wandb's own default (90 s) would block the first training step that long when the
    # server does not answer; the sink's runs wait 15 s, unless told otherwise.
    # A run of the user's settings keeps the user's timeout over init_timeout_s.
    for kwargs, expected in (({}, 15.0), ({"init_timeout_s": 3, "init_kwargs": {
            "settings": wandb.Settings(init_timeout=7)}}, 7.0)):
        init = {"dir": str(tmp_path), **kwargs.pop("init_kwargs", {})}
        sink = WandbSink(project="memwatch-test", local_dir=tmp_path, init_kwargs=init, **kwargs)
        sink.on_start()
        assert sink.run.settings.init_timeout == expected
        sink.close()


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="alert_level='LOUD'"):
        WandbSink(alert_level="LOUD")
    with pytest.raises(ValueError, match="log_text='all'"):
        WandbSink(log_text="all")
    with pytest.raises(TypeError, match="wandb Run or a Lightning WandbLogger; got str"):
        WandbSink(run="my-run")
    with pytest.raises(TypeError, match=r"AbortPolicy alone decides .* abort=AbortPolicy\(tags="):
        WandbSink(alert_on=("pii:*",))
    with pytest.raises(TypeError, match="unexpected keyword argument 'alert_tags'"):
        WandbSink(alert_tags=("pii:*",))


# ---- a real Lightning run ------------------------------------------------------------------
@pytest.mark.parametrize("wandb_up", [True, False], ids=["offline", "unreachable"])
def test_lightning_training_with_wandb_logger(tmp_path, trained, sink_events, wandb_up):
    """Lightning + WandbLogger + MemWatch: the planted rows show up as memorized; when W&B
    cannot start (unreachable server), training still completes and the local copy is full."""
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import WandbLogger

    from memwatch.callbacks import MemWatchCallback
    from memwatch.demos.lightning import LitCausalLM, stream_loader
    from memwatch.monitor import MemWatch
    from memwatch.policy import AbortPolicy

    ev = sink_events
    logger = WandbLogger(project="memwatch-test", save_dir=str(tmp_path)) if wandb_up else None
    unreachable = {"mode": "online", "settings": wandb.Settings(
        base_url="http://127.0.0.1:9", api_key="x" * 40, init_timeout=1), "dir": str(tmp_path)}
    sink = WandbSink(run=logger, local_dir=tmp_path / "local", init_kwargs=unreachable)
    mon = MemWatch(ev.watchlist, every_n_steps=2, abort=AbortPolicy(action="alert"),
                   sinks=[sink])
    trainer = L.Trainer(max_steps=4, logger=logger or False, callbacks=[MemWatchCallback(mon)],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, accelerator="cpu",
                        default_root_dir=str(tmp_path))
    model = LitCausalLM(copy.deepcopy(trained.model), lr=1e-5)
    loader = stream_loader(trained.rows[trained.memorized], batch_size=8)
    if wandb_up:
        trainer.fit(model, loader)
    else:
        with pytest.warns(RuntimeWarning, match="could not start"):
            trainer.fit(model, loader)
    mon.close()
    if logger is not None:
        logger.experiment.finish()
    assert trainer.global_step == 4
    local = read_records(tmp_path / "local")
    probed = [line["step"] for line in local if line["event"] == "probe"]
    assert probed[:2] == [2, 4]
    first = next(line for line in local if line["event"] == "probe")
    memorized = {ev.watchlist.ids[i] for i in np.flatnonzero(trained.memorized.numpy())}
    assert {r["id"] for r in first["new_rows"]} == memorized
    assert any(line["event"] == "alert" for line in local)
    assert (tmp_path / "local" / "history.parquet").exists()
    if wandb_up:
        errors = [line for line in local if line["event"] == "sink_error"]
        assert errors == []
        run = only_run(tmp_path)
        assert [r["memwatch/step"] for r in run.memwatch_rows()][:2] == [2, 4], run.history
        assert {r["id"] for r in run.table_rows("memwatch/newly_memorized")} == memorized
        assert any(a["title"].startswith("memwatch: watched row") for a in run.of("alert"))
        assert leaks(tmp_path / "wandb", ev.secrets) == []
    else:
        assert local[0]["event"] == "sink_error" and "start" in local[0]["action"]
