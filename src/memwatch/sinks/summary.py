"""End-of-run views of a `History` that sinks share: per-row summary, long table, heatmap.

Pure: these functions only read a History (and a watchlist's previews) and
return rows, columns or a figure; writing them anywhere is the sinks' job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memwatch.figures import new_figure
from memwatch.watchlist.tags import tag_label

TEXT_MODES = ("redacted", "none", "raw")


@dataclass(frozen=True)
class RowSummary:
    """One watchlist row at the end of a run, as safe to show as its preview."""

    id: str
    tags: tuple[str, ...]
    first_memorized_step: int  # -1 if never memorized
    final_score: float
    final_match_prefix: int
    preview: str


def check_text_mode(log_text: str) -> str:
    """`log_text` itself, after checking it is one of TEXT_MODES."""
    if log_text not in TEXT_MODES:
        raise ValueError(f"log_text={log_text!r} is not one of {TEXT_MODES}; "
                         "'redacted' (the default) shows redacted previews only")
    return log_text


def row_text(watchlist, i: int, log_text: str) -> str:
    """What a sink may show for row `i`: its redacted preview, nothing, or (opt-in) raw text.

    "raw" uses the watchlist's kept raw text (`watchlist.texts`, present only when the
    watchlist was built with ``keep_text=True``) and falls back to the redacted preview.
    """
    if watchlist is None or log_text == "none":
        return ""
    if log_text == "raw":
        texts = getattr(watchlist, "texts", None)
        if texts is not None and texts[i] is not None:
            return str(texts[i])
    return watchlist.redacted_preview(i)


def ranked_rows(history) -> np.ndarray:
    """int64 [n]: row indices, memorized rows first (earliest first), then by final score."""
    n = history.num_rows
    if len(history) == 0:
        return np.arange(n)
    first = history.first_memorized_step()
    never = first < 0
    final = history.scores[-1]
    # lexsort sorts by the last key first: never-memorized last, then first step, then score.
    return np.lexsort((-final, np.where(never, 0, first), never)).astype(np.int64)


def summarize(history, watchlist=None, log_text: str = "redacted",
              max_rows: int | None = None) -> list[RowSummary]:
    """Per-row summaries, memorized rows first, at most `max_rows` of them."""
    check_text_mode(log_text)
    order = ranked_rows(history)[:max_rows]
    if len(history) == 0:
        first = np.full(history.num_rows, -1)
        final = np.zeros(history.num_rows, np.float32)
        prefix = np.zeros(history.num_rows, np.uint8)
    else:
        first, final, prefix = (history.first_memorized_step(), history.scores[-1],
                                history.match_prefix[-1])
    return [RowSummary(history.ids[i], history.tags[i], int(first[i]), float(final[i]),
                       int(prefix[i]), row_text(watchlist, i, log_text)) for i in order]


def history_columns(history) -> dict[str, np.ndarray | list]:
    """The history in long form, one entry per (probe step, row): step, id, tags, mode,
    match_prefix, score, nll, nll_first. No text."""
    p, n = len(history), history.num_rows
    return {
        "step": np.repeat(history.steps, n),
        "id": history.ids * p,
        "tags": [list(t) for t in history.tags] * p,
        "mode": [m for m in history.modes for _ in range(n)],
        "match_prefix": history.match_prefix.reshape(-1),
        "score": history.scores.reshape(-1),
        "nll": history.nll.reshape(-1),
        "nll_first": history.nll_first.reshape(-1),
    }


def heatmap_figure(history, max_rows: int = 64):
    """A matplotlib Figure: score (match_prefix / N) of the top `max_rows` rows at every
    probe, rows ordered by when they were first memorized and labelled ``id [tags]``
    (never text); one column per probe, labelled with its training step. Needs matplotlib."""
    rows = ranked_rows(history)[:max_rows]
    values = (history.match_prefix[:, rows].T.astype(np.float32) / history.cont_len
              if len(history) else np.zeros((len(rows), 0), np.float32))
    fig = new_figure(8, 1.5 + 0.12 * len(rows))
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis",
                      vmin=0.0, vmax=1.0)
    steps = history.steps
    ticks = np.unique(np.linspace(0, max(len(steps) - 1, 0), min(len(steps), 8)).astype(int))
    ax.set_xticks(ticks, [str(int(steps[t])) for t in ticks] if len(steps) else [])
    labels = [f"{history.ids[i]} [{tag_label(history.tags[i])}]" for i in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=6 if len(rows) <= 40 else 5)
    ax.set_xlabel("probe (training step)")
    ax.set_ylabel(f"watchlist rows (top {len(rows)} of {history.num_rows})")
    ax.set_title("memorization over time (tokens reproduced before the first miss / N)")
    fig.colorbar(image, ax=ax, label="match_prefix / N")
    return fig
