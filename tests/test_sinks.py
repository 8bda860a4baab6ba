"""LocalSink, ConsoleSink and the shared summaries, driven by real probe events."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from tqdm import tqdm

from memwatch.sinks import ConsoleSink, LocalSink
from memwatch.sinks.local import read_records
from memwatch.sinks.summary import heatmap_figure, summarize


def drive(sink, ev, end: bool = True):
    for kind, event in ev.events:
        getattr(sink, f"on_{kind}")(event)
    if end:
        sink.on_end(ev.history, ev.watchlist)
    sink.close()


def leaked(texts: list[str], secrets) -> list[str]:
    return [s for s in secrets if any(s in t for t in texts)]


@pytest.mark.slow
def test_importing_sinks_does_not_import_wandb():
    code = ("import sys, memwatch, memwatch.sinks as s; s.LocalSink; s.ConsoleSink; "
            "print('wandb' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_local_sink_keeps_every_record_and_alert(tmp_path, sink_events):
    ev = sink_events
    drive(LocalSink(tmp_path), ev)
    lines = read_records(tmp_path)
    assert [line["event"] for line in lines] == [k for k, _ in ev.events] + ["end"]
    for line, (kind, event) in zip(lines, ev.events, strict=False):
        if kind == "alert":
            assert line == {"event": "alert", **json.loads(json.dumps(asdict(event)))}
            continue
        assert line["step"] == event.step and line["mode"] == event.mode
        assert line["metrics"] == pytest.approx(event.metrics)
        counts = dict(zip(line["score_counts"]["scores"], line["score_counts"]["counts"],
                          strict=True))
        assert sum(counts.values()) == len(ev.watchlist)
        assert counts.get(1.0, 0) == event.metrics["memorized_count"]
        assert [r["id"] for r in line["new_rows"]] == [r.id for r in event.new_rows]
    probes = [line for line in lines if line["event"] == "probe"]
    memorized = [ev.watchlist.ids[i] for i in np.flatnonzero(ev.history.memorized[1])]
    assert len(memorized) >= 24 and [r["id"] for r in probes[1]["new_rows"]] == memorized
    assert probes[0]["new_rows"] == probes[2]["new_rows"] == []
    end = lines[-1]
    assert {r["id"] for r in end["memorized"]} == set(memorized)
    assert all(r["first_memorized_step"] == 20 for r in end["memorized"])


def test_local_sink_history_parquet_is_the_history(tmp_path, sink_events):
    ev = sink_events
    drive(LocalSink(tmp_path), ev)
    table = pq.read_table(tmp_path / "history.parquet").to_pydict()
    h, n = ev.history, ev.history.num_rows
    assert len(table["step"]) == len(h) * n
    assert table["step"] == np.repeat(h.steps, n).tolist()
    assert table["id"] == h.ids * len(h)
    assert table["tags"] == [list(t) for t in h.tags] * len(h)
    assert table["mode"] == ["extractable"] * 2 * n + ["exact"] * n
    assert table["match_prefix"] == h.match_prefix.reshape(-1).tolist()
    np.testing.assert_array_equal(np.array(table["score"], np.float32), h.scores.reshape(-1))
    np.testing.assert_allclose(np.array(table["nll"], np.float32), h.nll.reshape(-1))
    assert np.isfinite(h.nll_first).all()  # every probe measures it
    np.testing.assert_allclose(np.array(table["nll_first"], np.float32),
                               h.nll_first.reshape(-1))


def test_local_sink_writes_no_raw_text(tmp_path, sink_events):
    ev = sink_events
    drive(LocalSink(tmp_path), ev)
    texts = [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    assert leaked(texts, ev.secrets) == []
    assert ev.watchlist.redacted_preview(0) in "".join(texts)  # previews do go out


def test_local_sink_appends_on_resume(tmp_path, sink_events):
    ev = sink_events
    first, *rest = ev.events
    sink = LocalSink(tmp_path)
    sink.on_probe(first[1])
    sink.close()
    resumed = LocalSink(tmp_path)
    for kind, event in rest:
        getattr(resumed, f"on_{kind}")(event)
    resumed.close()
    assert len(read_records(tmp_path)) == len(ev.events)


def test_local_log_after_a_crash_and_resume_holds_each_event_once(tmp_path, sink_events):
    ev = sink_events
    drive(LocalSink(tmp_path / "clean"), ev)
    clean = [(r["event"], r.get("step"), r.get("kind")) for r in read_records(tmp_path / "clean")]
    # Checkpoint after the probe at step 10; the run logs steps 20 and 30, then dies mid-line
    # (a full disk), and resumes from the checkpoint: steps 20 and 30 are logged again.
    drive(LocalSink(tmp_path), ev, end=False)
    with open(tmp_path / "records.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "probe", "step": 40, "metr')
    resumed = LocalSink(tmp_path)
    resumed.on_resume(10)
    drive(resumed, type(ev)(ev.watchlist, ev.history, tuple(
        e for e in ev.events if e[1].step > 10), ev.emails, ev.secrets))
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable line"):
        records = read_records(tmp_path)
    got = [(r["event"], r.get("step"), r.get("kind")) for r in records]
    assert got.count(("resume", 10, None)) == 1
    assert [g for g in got if g[0] != "resume"] == clean


def test_local_sink_never_raises(tmp_path, sink_events):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    sink = LocalSink(blocker / "logs")
    with pytest.warns(RuntimeWarning, match="cannot write") as caught:
        drive(sink, sink_events)
    assert len([w for w in caught if "cannot write" in str(w.message)]) == 1


def test_console_sink_one_line_per_event(sink_events):
    ev = sink_events
    out = io.StringIO()
    drive(ConsoleSink(file=out, max_rows=2, width=10_000), ev)  # one line per event
    lines = out.getvalue().splitlines()
    # a row's memorized alert is not repeated after the probe line announced it
    repeats = sum(1 for kind, e in ev.events if kind == "alert" and e.kind == "memorized")
    assert len(lines) == len(ev.events) - repeats + 1
    assert not any(re.search(r"watched row [\w-]+ memorized", line) for line in lines)
    probe20 = next(line for line in lines if line.startswith("memwatch step 20"))
    record20 = ev.events[[k for k, _ in ev.events].index("probe", 1)][1]
    count = int(record20.metrics["memorized_count"])
    assert f"{count} memorized" in probe20 and f"+{len(record20.new_rows)} new" in probe20
    assert "row-00 [pii:EMAIL_ADDRESS]@20 'a***@g***.com'" in probe20
    assert f"... {len(record20.new_rows) - 2} more" in probe20
    stop = [line for line in lines
            if line.startswith("memwatch ERROR at step 20: memwatch stops the run")]
    abort = next(e for kind, e in ev.events if kind == "alert" and e.kind == "abort")
    assert len(stop) == 1 and abort.text.removeprefix("step 20: ") in stop[0]  # the reason
    assert lines[-1].startswith(f"memwatch end: {count}/{len(ev.watchlist)} rows memorized "
                                "at step 30")
    assert leaked(lines, ev.secrets) == []


def test_console_lines_fit_120_columns_and_say_step_n_of_m(sink_events):
    from dataclasses import replace

    out, wide = io.StringIO(), io.StringIO()
    drive(ConsoleSink(file=out, max_rows=5), sink_events)
    drive(ConsoleSink(file=wide, max_rows=5, width=10_000), sink_events)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in wide.getvalue().splitlines()) > 120  # there is wrapping
    assert max(len(line) for line in lines) <= 120
    assert " ".join(line.strip() for line in lines).split() == wide.getvalue().split()
    record = next(e for kind, e in sink_events.events if kind == "probe")
    one = io.StringIO()
    ConsoleSink(file=one).on_probe(replace(record, total_steps=1500))
    assert one.getvalue().startswith(f"memwatch step {record.step} of 1500 [")


def test_console_sink_keeps_tqdm_bars_intact(sink_events):
    out = io.StringIO()
    bar = tqdm(total=3, file=out, ascii=True, dynamic_ncols=False, ncols=40)
    sink = ConsoleSink(file=out, show_previews=False)
    for kind, event in sink_events.events[:1]:
        bar.update()
        getattr(sink, f"on_{kind}")(event)
    bar.close()
    text = out.getvalue()
    assert "memwatch step 10 [extractable]" in text
    assert "***" not in text  # no previews asked for
    line = next(s for s in text.replace("\r", "\n").splitlines() if "memwatch step" in s)
    assert line.startswith("memwatch step"), "the bar was not cleared before the line"


def test_summary_orders_memorized_rows_first(sink_events):
    ev = sink_events
    rows = summarize(ev.history, ev.watchlist)
    memorized = ev.history.memorized.any(0)
    k = int(memorized.sum())
    assert {r.id for r in rows[:k]} == {ev.watchlist.ids[i] for i in np.flatnonzero(memorized)}
    assert all(r.first_memorized_step == 20 and r.final_score == 1.0 for r in rows[:k])
    assert all(r.first_memorized_step == -1 for r in rows[k:])
    tail = [r.final_score for r in rows[k:]]
    assert tail == sorted(tail, reverse=True)
    assert [r.preview for r in summarize(ev.history, ev.watchlist, "none")] == [""] * len(rows)
    assert len(summarize(ev.history, ev.watchlist, max_rows=5)) == 5
    with pytest.raises(ValueError, match="log_text='secret'"):
        summarize(ev.history, ev.watchlist, "secret")


def test_heatmap_shows_match_prefix_over_time(sink_events):
    pytest.importorskip("matplotlib")
    ev = sink_events
    fig = heatmap_figure(ev.history, max_rows=16)
    (image,) = fig.axes[0].get_images()
    shown = np.asarray(image.get_array())
    assert shown.shape == (16, len(ev.history))
    top = [r.id for r in summarize(ev.history, ev.watchlist, max_rows=16)]
    rows = [ev.history.ids.index(i) for i in top]
    np.testing.assert_allclose(shown, ev.history.match_prefix[:, rows].T / 32)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [f"{i} [{','.join(ev.history.tags[r])}]"
                      for i, r in zip(top, rows, strict=True)]
    assert fig.axes[0].get_xlabel() == "probe (training step)"


def test_console_sink_names_swings_and_announces_each_row_once():
    from memwatch.events import Alert, ProbeRecord, RowReport

    def record(step, memorized, new=()):
        scores = np.where(np.array(memorized, dtype=bool), 1.0, 0.25).astype(np.float32)
        metrics = {"memorized_count": float(sum(memorized)),
                   "forecast/expected_final_memorized": 2.0 + step / 10}
        return ProbeRecord(step, "exact", metrics, scores,
                           tuple(RowReport(f"r{i}", ("canary",), step, 1.0, 32, "") for i in new))

    out = io.StringIO()
    sink = ConsoleSink(file=out)
    sink.on_probe(record(10, [1, 1, 0], new=(0, 1)))
    sink.on_alert(Alert("memorized", "WARN", "memwatch: watched row r0 memorized", "", 10, ("r0",)))
    sink.on_probe(record(20, [0, 0, 1], new=(2,)))
    sink.on_probe(record(30, [1, 0, 1]))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # r0's alert repeats what the first line announced
    assert "2 memorized, " in lines[0] and "+2 new: r0 [canary]@10; r1 [canary]@10" in lines[0]
    assert "1 memorized (-2 forgotten), forecast final 4 (was 3)" in lines[1]
    assert "2 memorized (+1 memorized again)" in lines[2] and "new" not in lines[2]
