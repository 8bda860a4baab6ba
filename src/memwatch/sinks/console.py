"""A sink that prints one line per probe, alert and run end, without breaking progress bars.

Lines go through `tqdm.write`, which clears and redraws any active tqdm bar (and
plain stdout under a rich live display, which redirects it). Rows appear by id,
tags and redacted preview only: W&B and other loggers capture the console.

Each row is announced once, when first memorized (its alert is not repeated);
changes of the memorized count that are not first-time memorizations are named
(rows forgotten, rows memorized again), and so is the forecast's previous value.
A stop or would-stop line names the rule and the rows that triggered it.
"""

from __future__ import annotations

import textwrap
from typing import TextIO

import numpy as np
from tqdm import tqdm

from memwatch.events import Alert, ProbeRecord, RowReport
from memwatch.sinks.base import Sink
from memwatch.sinks.summary import summarize


class ConsoleSink(Sink):
    """One-line summaries on the console; at most `max_rows` rows named per line.

    `show_previews=False` prints ids and tags only. A line longer than `width` columns
    (120) is wrapped, its continuation lines indented by two spaces.
    """

    def __init__(self, file: TextIO | None = None, max_rows: int = 3, show_previews: bool = True,
                 width: int = 120):
        if max_rows < 0:
            raise ValueError(f"max_rows={max_rows} must be >= 0")
        if not isinstance(width, int) or width < 40:
            raise ValueError(f"width={width!r}: give the console's columns, an int >= 40")
        self.width = width
        self.file = file
        self.max_rows = int(max_rows)
        self.show_previews = bool(show_previews)
        self._announced: set[str] = set()
        self._memorized: np.ndarray | None = None  # at the previous probe
        self._forecast: float | None = None

    def on_probe(self, record: ProbeRecord) -> None:
        m = record.metrics
        of = f" of {record.total_steps}" if record.total_steps else ""
        parts = [f"memwatch step {record.step}{of} [{record.mode}]"]
        if "memorized_count" in m:
            frac = f" ({100 * m['memorized_fraction']:.1f}%)" if "memorized_fraction" in m else ""
            parts.append(f"{int(m['memorized_count'])} memorized{frac}{self._swing(record)}")
        if "mean_score" in m:
            parts.append(f"mean score {m['mean_score']:.3f}")
        if "forecast/expected_final_memorized" in m:
            value = m["forecast/expected_final_memorized"]
            was = self._forecast
            parts.append(f"forecast final {value:.0f}"
                         + (f" (was {was:.0f})" if was is not None and round(was) != round(value)
                            else ""))
            self._forecast = value
        line = ", ".join(parts)
        if record.new_rows:
            line += f"; +{len(record.new_rows)} new: " + self._rows(record.new_rows)
            self._announced.update(r.id for r in record.new_rows)
        self._print(line)

    def _swing(self, record: ProbeRecord) -> str:
        """`` (-2 forgotten, +1 memorized again)``: what first-time memorizations don't explain.

        A row is memorized when its score is 1 (the exact score and the teacher-forced
        bound agree there), so the record's scores give the memorized set.
        """
        memorized = np.asarray(record.scores) >= 1.0
        previous, self._memorized = self._memorized, memorized
        if previous is None or previous.shape != memorized.shape:
            return ""
        forgotten = int((previous & ~memorized).sum())
        again = int((memorized & ~previous).sum()) - len(record.new_rows)
        words = ([f"-{forgotten} forgotten"] if forgotten else []) + \
                ([f"+{again} memorized again"] if again > 0 else [])
        return f" ({', '.join(words)})" if words else ""

    def on_alert(self, alert: Alert) -> None:
        if alert.kind == "memorized" and alert.row_ids and \
                self._announced.issuperset(alert.row_ids):
            return  # the probe line already named the row
        head = f"memwatch {alert.level} at step {alert.step}: {alert.title}"
        if alert.kind == "abort":
            why = alert.text.removeprefix(f"step {alert.step}: ")
            hint = ("AbortPolicy(action='alert') only alerts" if alert.level == "ERROR"
                    else "action='alert': training goes on")
            self._print(f"{head}: {why} ({hint})")
            return
        if alert.kind in ("fraction", "forecast"):
            self._print(f"{head}: {alert.text}")
            return
        ids = f" ({', '.join(alert.row_ids[: self.max_rows])}" \
              f"{', ...' if len(alert.row_ids) > self.max_rows else ''})" if alert.row_ids else ""
        self._print(f"{head}{ids}")

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
        lines = textwrap.wrap(line, self.width, subsequent_indent="  ", break_on_hyphens=False)
        tqdm.write("\n".join(lines) or line, file=self.file)
