"""A sink that prints one line per probe, alert and run end, without breaking progress bars.

Lines go through `tqdm.write`, which clears and redraws any active tqdm bar (and
plain stdout under a rich live display, which redirects it). Rows appear by id,
tags and redacted preview only: W&B and other loggers capture the console.
"""

from __future__ import annotations

from typing import TextIO

from tqdm import tqdm

from memwatch.events import Alert, ProbeRecord, RowReport
from memwatch.sinks.base import Sink
from memwatch.sinks.summary import summarize


class ConsoleSink(Sink):
    """One-line summaries on the console; at most `max_rows` rows named per line.

    `show_previews=False` prints ids and tags only.
    """

    def __init__(self, file: TextIO | None = None, max_rows: int = 3, show_previews: bool = True):
        if max_rows < 0:
            raise ValueError(f"max_rows={max_rows} must be >= 0")
        self.file = file
        self.max_rows = int(max_rows)
        self.show_previews = bool(show_previews)

    def on_probe(self, record: ProbeRecord) -> None:
        m = record.metrics
        parts = [f"memwatch step {record.step} [{record.mode}]"]
        if "memorized_count" in m:
            frac = f" ({100 * m['memorized_fraction']:.1f}%)" if "memorized_fraction" in m else ""
            parts.append(f"{int(m['memorized_count'])} memorized{frac}")
        if "mean_score" in m:
            parts.append(f"mean score {m['mean_score']:.3f}")
        if "forecast/expected_final_memorized" in m:
            parts.append(f"forecast final {m['forecast/expected_final_memorized']:.0f}")
        line = ", ".join(parts)
        if record.new_rows:
            line += f"; +{len(record.new_rows)} new: " + self._rows(record.new_rows)
        self._print(line)

    def on_alert(self, alert: Alert) -> None:
        ids = f" ({', '.join(alert.row_ids[: self.max_rows])}" \
              f"{', ...' if len(alert.row_ids) > self.max_rows else ''})" if alert.row_ids else ""
        self._print(f"memwatch {alert.level} at step {alert.step}: {alert.title}{ids}")

    def on_end(self, history, watchlist) -> None:
        if len(history) == 0:
            self._print("memwatch end: no probe ran")
            return
        rows = summarize(history, watchlist, "redacted" if self.show_previews else "none")
        memorized = [r for r in rows if r.first_memorized_step >= 0]
        final = int(history.memorized[-1].sum())
        line = (f"memwatch end: {final}/{history.num_rows} rows memorized at step "
                f"{int(history.steps[-1])} ({len(memorized)} ever, {len(history)} probes)")
        if memorized:
            line += "; first: " + self._rows([
                RowReport(r.id, r.tags, r.first_memorized_step, r.final_score,
                          r.final_match_prefix, r.preview) for r in memorized])
        self._print(line)

    def _rows(self, rows) -> str:
        shown = [self._row(r) for r in rows[: self.max_rows]]
        if len(rows) > self.max_rows:
            shown.append(f"... {len(rows) - self.max_rows} more")
        return "; ".join(shown)

    def _row(self, r: RowReport) -> str:
        tags = f" [{','.join(r.tags)}]" if r.tags else ""
        preview = f" {r.preview!r}" if self.show_previews and r.preview else ""
        return f"{r.id}{tags}@{r.step}{preview}"

    def _print(self, line: str) -> None:
        tqdm.write(line, file=self.file)
