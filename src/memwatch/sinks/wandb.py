"""A sink that makes memwatch look native in Weights & Biases, and never stops training.

Per probe: every metric under ``memwatch/`` plotted against ``memwatch/step`` (the
training step, as a custom step metric, so the user's own ``step=`` is never
disturbed), a histogram of scores and a table of newly memorized rows. Alerts go
to ``run.alert``. At the end: a per-row summary table and a heatmap of
memorization over time.

Discreet: rows appear by id, tags and redacted preview; raw text only with
``log_text="raw"``. Never fatal: if W&B cannot start or a call raises, the sink
warns once and goes on; a local copy of every record and alert (`LocalSink`) is
always kept, since an offline run drops alerts silently. W&B stages copies of logged
tables before upload; the sink points that staging area (``WANDB_DATA_DIR``) into the
run's own folder (``<run folder>/memwatch-staging``) while it logs, so no copy lands in the
user's home, and the copies go when the run's folder goes.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path

import numpy as np

from memwatch.events import Alert, ProbeRecord, RowReport
from memwatch.figures import png_bytes
from memwatch.sinks.base import Sink
from memwatch.sinks.local import LocalSink
from memwatch.sinks.summary import check_text_mode, heatmap_figure, summarize

LEVELS = ("INFO", "WARN", "ERROR")
ROW_COLUMNS = ["id", "tags", "step", "score", "match_prefix", "preview"]
SUMMARY_COLUMNS = ["id", "tags", "first_memorized_step", "final_score", "final_match_prefix",
                   "preview"]
HEATMAP = "memorization_heatmap.png"


class WandbSink(Sink):
    """Logs to the active W&B run, the `run` given (a `wandb` Run or Lightning's
    `WandbLogger`), or a run it starts itself at the first event (``wandb.init(project=project,
    **init_kwargs)``, at most once).

    Every alert the monitor sends goes to W&B: which rows alert is the `AbortPolicy`'s
    choice alone (``AbortPolicy(tags=...)``).

    alert_on: removed; passing it is an error that points to ``AbortPolicy(tags=...)``.
    alert_level: level of the alerts on memorized rows; an abort always alerts at ERROR.
    log_text: "redacted" (previews the monitor made), "none" (ids and tags only) or "raw"
        (the end-of-run table shows the watchlist's kept raw text; opt-in).
    local_dir: where the local copy goes; default ``./memwatch-logs/<run name>``.
    alert_wait_s: W&B suppresses a repeated alert title for this long.
    init_timeout_s: how long a run this sink starts may take to reach the server before the
        sink gives up (with a warning) and training goes on without W&B (wandb's own default
        blocks the first step about 90 s); ``init_kwargs["settings"]`` overrides it.
    """

    def __init__(
        self,
        run=None,
        project: str | None = None,
        alert_on: None = None,
        alert_level: str = "WARN",
        log_text: str = "redacted",
        local_dir: str | Path | None = None,
        *,
        init_kwargs: dict | None = None,
        alert_wait_s: float = 300.0,
        init_timeout_s: float = 15.0,
        max_table_rows: int = 10_000,
        heatmap_rows: int = 64,
    ):
        if run is not None and not (hasattr(run, "log") or hasattr(run, "experiment")):
            raise TypeError(f"run must be a wandb Run or a Lightning WandbLogger; got "
                            f"{type(run).__name__}")
        if alert_on is not None:
            raise TypeError(f"WandbSink(alert_on={alert_on!r}): the AbortPolicy alone decides "
                            "which rows alert; pass MemWatch(..., abort=AbortPolicy(tags="
                            f"{alert_on!r})) instead")
        if alert_level not in LEVELS:
            raise ValueError(f"alert_level={alert_level!r} is not one of {LEVELS}")
        self.alert_level = alert_level
        self.log_text = check_text_mode(log_text)
        self.project = project
        self.local_dir = None if local_dir is None else Path(local_dir)
        self.init_kwargs = dict(init_kwargs or {})
        self.alert_wait_s = float(alert_wait_s)
        self.init_timeout_s = float(init_timeout_s)
        self.max_table_rows = int(max_table_rows)
        self.heatmap_rows = int(heatmap_rows)
        self._given = run
        self._run = None
        self._owns_run = False
        self._started = False
        self._warned = False
        self._failed: dict[str, int] = {}  # what W&B could not do -> times
        self._local: LocalSink | None = None
        self._partial_step: int | None = None
        self._new_rows = None

    # ---- the Sink interface -------------------------------------------------------------------
    def on_start(self) -> None:
        self._start()

    def on_probe(self, record: ProbeRecord) -> None:
        run = self._start()
        self.local.on_probe(record)
        if run is not None:
            self._guard("log a probe", lambda: self._log(run, self._probe_data(record)))

    def on_alert(self, alert: Alert) -> None:
        run = self._start()
        self.local.on_alert(alert)
        level = self._alert_level(alert)
        if run is None:
            return
        text = alert.text
        if alert.row_ids:
            shown = ", ".join(alert.row_ids[:10])
            more = f" and {len(alert.row_ids) - 10} more" if len(alert.row_ids) > 10 else ""
            text += f"\nRows: {shown}{more}"
        self._guard("send an alert", lambda: run.alert(
            title=alert.title[:63], text=f"{text}\nStep: {alert.step}", level=level,
            wait_duration=self.alert_wait_s))

    def on_resume(self, step: int) -> None:
        self._start()  # first, so that the local copy goes where the run's name says
        self.local.on_resume(step)

    def on_end(self, history, watchlist) -> None:
        run = self._start()
        self.local.on_end(history, watchlist)
        if run is not None:
            self._guard("log the run summary", lambda: self._log_end(run, history, watchlist))

    def close(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            if self._owns_run:
                self._guard("finish the run", run.finish)
            elif self._partial_step is not None and run.step == self._partial_step:
                self._guard("flush the last row", lambda: run.log({}, commit=True))
        if self._local is not None:
            self._local.close()

    def lost(self) -> str:
        """What W&B did not get (each thing it could not do, counted) and what the local copy
        could not write; "" when nothing was lost."""
        parts = [f"W&B could not {what} ({n}x)" for what, n in self._failed.items()]
        local = self._local.lost() if self._local is not None else ""
        if local:
            parts.append(local)
        elif parts and self._local is not None:
            parts.append(f"every record is in the local copy {self._local.records_path}")
        return "; ".join(parts)

    # ---- the run ------------------------------------------------------------------------------
    @property
    def local(self) -> LocalSink:
        """The local copy: every record and alert, whether or not W&B got them."""
        if self._local is None:
            self._local = LocalSink(self.local_dir or default_local_dir(self._run))
        return self._local

    @property
    def run(self):
        """The W&B run in use (started on first use), or None if W&B is unavailable."""
        return self._start()

    def _start(self):
        if self._started:
            return self._run
        self._started = True
        try:
            import wandb

            run = self._given
            if run is not None and hasattr(run, "experiment"):
                run = run.experiment  # Lightning's WandbLogger starts or reuses the run
            if run is None:
                run = wandb.run
            if run is None:
                kwargs = {"settings": wandb.Settings(init_timeout=self.init_timeout_s),
                          **self.init_kwargs}
                run = wandb.init(project=self.project, **kwargs)
                self._owns_run = True
            run.define_metric("memwatch/step")
            run.define_metric("memwatch/*", step_metric="memwatch/step")
            self._run = run
        except Exception as err:  # not installed, not logged in, unreachable, bad settings
            self._run = None
            self._fail("start", err)
        return self._run

    def _log(self, run, data: dict) -> None:
        """Log without ``step=``: rows join the user's next commit, so their step counter is
        never pushed forward; a second row of ours before that commit flushes the first."""
        key, before = "WANDB_DATA_DIR", os.environ.get("WANDB_DATA_DIR")
        os.environ[key] = str(staging_dir(run))  # wandb reads it when it stages a table
        try:
            self._log_now(run, data)
        finally:
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before

    def _log_now(self, run, data: dict) -> None:
        if self._owns_run:
            run.log(data)
            return
        if self._partial_step is not None and run.step == self._partial_step:
            run.log({}, commit=True)
        run.log(data, commit=False)
        self._partial_step = run.step

    def _probe_data(self, record: ProbeRecord) -> dict:
        import wandb

        data: dict = {f"memwatch/{k}": float(v) for k, v in record.metrics.items()}
        data["memwatch/step"] = int(record.step)
        scores = np.asarray(record.scores, dtype=np.float64)
        data["memwatch/score_histogram"] = wandb.Histogram(
            np_histogram=np.histogram(scores, bins=32, range=(0.0, 1.0)))
        if record.new_rows:
            data["memwatch/newly_memorized"] = self._new_rows_table(record.new_rows)
        return data

    def _new_rows_table(self, rows: tuple[RowReport, ...]):
        """One incremental table across probes (each log uploads only the new rows); a W&B
        without incremental tables gets one table per probe."""
        import wandb

        table = self._new_rows
        if table is None:
            try:
                table = self._new_rows = wandb.Table(columns=ROW_COLUMNS, log_mode="INCREMENTAL")
            except TypeError:
                table = wandb.Table(columns=ROW_COLUMNS)
        for r in rows:
            table.add_data(r.id, ",".join(r.tags), int(r.step), float(r.score),
                           int(r.match_prefix), "" if self.log_text == "none" else r.preview)
        return table

    def _alert_level(self, alert: Alert) -> str:
        """The W&B level for `alert`. Every alert is sent: the policy already sends each one
        once per run (`memwatch.policy`), so the sink filters nothing."""
        if alert.kind == "abort":
            return "ERROR"
        if alert.kind != "memorized":
            return alert.level if alert.level in LEVELS else "WARN"
        return self.alert_level

    def _log_end(self, run, history, watchlist) -> None:
        import wandb

        rows = summarize(history, watchlist, self.log_text, self.max_table_rows)
        table = wandb.Table(columns=SUMMARY_COLUMNS, data=[
            [r.id, ",".join(r.tags), r.first_memorized_step, r.final_score,
             r.final_match_prefix, r.preview] for r in rows])
        step = int(history.steps[-1]) if len(history) else 0
        data = {"memwatch/step": step, "memwatch/summary": table}
        try:
            png = png_bytes(heatmap_figure(history, self.heatmap_rows))
        except ImportError as err:
            self._fail("draw the heatmap (install matplotlib)", err)
        else:
            path = self.local.path / HEATMAP
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            data["memwatch/memorization_heatmap"] = wandb.Image(str(path))
        self._log(run, data)
        if len(history):
            run.summary["memwatch/final_memorized_count"] = int(history.memorized[-1].sum())
            run.summary["memwatch/ever_memorized_count"] = int(history.memorized.any(0).sum())

    # ---- never fatal --------------------------------------------------------------------------
    def _guard(self, what: str, call) -> None:
        try:
            call()
        except Exception as err:  # W&B failing must never stop training
            self._fail(what, err)

    def _fail(self, what: str, err: Exception) -> None:
        self._failed[what] = self._failed.get(what, 0) + 1
        self.local.write("sink_error", sink="wandb", action=what,
                         error=f"{type(err).__name__}: {err}")
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"memwatch could not {what} on W&B ({type(err).__name__}: {err}); training goes "
                f"on, and every record is kept in {self.local.records_path}",
                RuntimeWarning, stacklevel=3)


def staging_dir(run) -> Path:
    """``<run folder>/memwatch-staging``: where W&B stages table copies for this run."""
    return Path(run.dir).parent / "memwatch-staging"


def default_local_dir(run=None) -> Path:
    """``./memwatch-logs/<run name or id>``, or a time-stamped name without a run."""
    name = None
    if run is not None:
        name = getattr(run, "name", None) or getattr(run, "id", None)
    if not name:
        name = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    return Path("memwatch-logs") / re.sub(r"[^\w.-]+", "-", str(name))
