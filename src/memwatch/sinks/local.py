"""A sink that keeps everything on local disk: a JSONL event log and a parquet history.

`records.jsonl` gets one line per event as it happens (flushed, so a crash loses
nothing already reported); `history.parquet` is written at the end, one row per
(probe step, watchlist row). A resumed run appends a ``resume`` event, after which it
repeats the probes the crashed run logged after its checkpoint; `read_records` keeps
the latest copy of each. Neither ever holds raw watchlist text: rows appear
by id, tags and the previews the monitor made (redacted unless opted in).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from memwatch.events import Alert, ProbeRecord
from memwatch.sinks.base import Sink
from memwatch.sinks.summary import history_columns, summarize

RECORDS = "records.jsonl"
HISTORY = "history.parquet"


class LocalSink(Sink):
    """Writes every record and alert to ``<path>/records.jsonl`` and the history, at the end,
    to ``<path>/history.parquet``. Appends to an existing log (a resumed run continues it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None
        self._warned = False
        self._lost: dict[str, int] = {}  # event kind (or file) -> times it was not written

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    def write(self, event: str, **fields) -> None:
        """Append one JSON line ``{"event": event, **fields}``; warns once on I/O errors."""
        try:
            if self._file is None:
                self.path.mkdir(parents=True, exist_ok=True)
                torn = _ends_torn(self.records_path)
                self._file = open(self.records_path, "a", encoding="utf-8")
                if torn:  # a crash cut the last line: keep it apart from ours
                    self._file.write("\n")
            self._file.write(json.dumps({"event": event, **_plain(fields)}, allow_nan=False))
            self._file.write("\n")
            self._file.flush()
        except (OSError, TypeError, ValueError) as err:
            self._lost[event] = self._lost.get(event, 0) + 1
            self._warn(err)

    def on_probe(self, record: ProbeRecord) -> None:
        values, counts = np.unique(np.asarray(record.scores, np.float32), return_counts=True)
        self.write("probe", step=record.step, mode=record.mode, metrics=record.metrics,
                   score_counts={"scores": values, "counts": counts},
                   new_rows=[asdict(r) for r in record.new_rows])

    def on_alert(self, alert: Alert) -> None:
        self.write("alert", **asdict(alert))

    def on_resume(self, step: int) -> None:
        self.write("resume", step=step)

    def on_end(self, history, watchlist) -> None:
        rows = summarize(history, watchlist)
        self.write("end", steps=len(history), rows=history.num_rows,
                   memorized=[asdict(r) for r in rows if r.first_memorized_step >= 0])
        try:
            write_history_parquet(history, self.history_path)
        except Exception as err:  # pyarrow raises its own types; never into training
            self._lost[HISTORY] = 1
            self._warn(err)

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as err:  # a full disk: the last flush fails
                self._lost["final flush"] = 1
                self._warn(err)

    def lost(self) -> str:
        if not self._lost:
            return ""
        parts = [f"no {name}" if name in (HISTORY, "final flush") else
                 f"{n} {name} event{'s' if n > 1 else ''}" for name, n in self._lost.items()]
        return f"{self.path} lacks " + ", ".join(parts)

    def _warn(self, err: Exception) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"memwatch LocalSink cannot write to {self.path}: {err}; "
                          "training goes on without the local copy", RuntimeWarning, stacklevel=3)


def write_history_parquet(history, path: str | Path) -> Path:
    """Writes the history in long form (see `history_columns`) to `path`; returns it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = history_columns(history)
    table = pa.table({
        "step": pa.array(cols["step"], pa.int64()),
        "id": pa.array(cols["id"], pa.string()).dictionary_encode(),
        "tags": pa.array(cols["tags"], pa.list_(pa.string())),
        "mode": pa.array(cols["mode"], pa.string()).dictionary_encode(),
        "match_prefix": pa.array(cols["match_prefix"], pa.uint8()),
        "score": pa.array(cols["score"], pa.float32()),
        "nll": pa.array(cols["nll"], pa.float32()),
        "nll_first": pa.array(cols["nll_first"], pa.float32()),
    })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_records(path: str | Path) -> list[dict]:
    """The events a LocalSink wrote under directory `path` (or to the given .jsonl file).

    After a ``resume`` event at step s, the events logged before it for steps after s (and
    any earlier ``end``) are dropped: the resumed run logged them again, so each event
    appears once, in its latest copy. A line cut short by a crash or a full disk is
    skipped with a warning.
    """
    path = Path(path)
    path = path / RECORDS if path.is_dir() else path
    events, torn = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                torn.append(number)
                continue
            if event.get("event") == "resume":
                events = [e for e in events if not _superseded(e, event["step"])]
            events.append(event)
    if torn:
        warnings.warn(f"{path}: skipped {len(torn)} unreadable line(s) {torn[:5]} (cut short "
                      "by a crash or a full disk)", RuntimeWarning, stacklevel=2)
    return events


def _superseded(event: dict, step: int) -> bool:
    """Whether a resume from a state whose last probe was at `step` repeats `event`."""
    if event.get("event") == "end":
        return True
    return isinstance(event.get("step"), int) and event["step"] > step


def _ends_torn(path: Path) -> bool:
    """Whether the file at `path` exists, is not empty and lacks a final newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _plain(x):
    """`x` with numpy values, tuples and non-finite floats made JSON-safe (NaN/inf -> None)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return _plain(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
