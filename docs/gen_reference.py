"""Write docs/reference.md from the public objects' signatures and docstrings and the CLI's
help. tests/test_docs.py fails when the file is out of date: rerun

    python docs/gen_reference.py
"""

from __future__ import annotations

import inspect
import io
import os
from contextlib import redirect_stdout
from importlib import import_module
from pathlib import Path

OUT = Path(__file__).with_name("reference.md")

# Names under `memwatch` (``mw.<name>``), or full paths to objects outside its namespace.
OBJECTS = {
    "The probe": ["probe", "reference_probe", "ProbeResult", "memwatch.probe.ProbeSpec"],
    "Extraction measures": ["memwatch.measures.log_pz", "memwatch.measures.min_k_logprob",
                            "memwatch.measures.zlib_ratio", "memwatch.measures.zlib_bytes",
                            "extraction_rates", "draws_needed",
                            "memwatch.measures.extraction_summary"],
    "The watchlist": ["Watchlist", "Watchlist.from_tokens", "Watchlist.from_texts",
                      "Watchlist.from_dataset", "Watchlist.from_pythia", "Watchlist.scan_pii",
                      "Watchlist.canaries", "Watchlist.sample", "Watchlist.duplicate_counts",
                      "Watchlist.save", "Watchlist.load", "memwatch.watchlist.tags.tag_mask",
                      "insert_canaries", "exposure"],
    "The monitor": ["MemWatch", "MemWatch.step", "MemWatch.finish", "MemWatch.check",
                    "MemWatch.mask", "MemWatch.seen", "MemWatch.state_dict",
                    "MemWatch.load_state_dict",
                    "AbortPolicy", "MaskSpec",
                    "History", "Decision", "Alert"],
    "Forecast": ["forecast", "ForecastInputs", "memwatch.forecast.Exposures", "Forecast",
                 "memwatch.forecast.TagForecast", "memwatch.forecast.FinalCount",
                 "memwatch.forecast.Band", "memwatch.forecast.Estimate"],
    "Privacy audit": ["audit", "Audit", "memwatch.audit.history_audit", "memwatch.audit.log_pz"],
    "Sinks": ["WandbSink", "LocalSink", "ConsoleSink", "Sink"],
    "Framework adapters": ["callbacks.MemWatchCallback", "callbacks.MemWatchTrainerCallback",
                           "callbacks.MaskingCollator"],
}


def _resolve(path: str):
    import memwatch
    import memwatch.callbacks

    if path.startswith("memwatch."):
        module, _, name = path.rpartition(".")
        return getattr(import_module(module), name)
    obj = memwatch
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _home(obj) -> str:
    """Where `obj` is defined: ``memwatch.watchlist.planting.insert_canaries``."""
    return f"{obj.__module__}.{obj.__qualname__}"


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def render() -> str:
    from memwatch.cli import build_parser

    lines = ["# Configuration reference", "",
             "Generated from the code by `python docs/gen_reference.py`; a test keeps it in "
             "sync.", ""]
    for section, names in OBJECTS.items():
        lines += [f"## {section}", ""]
        for name in names:
            obj = _resolve(name)
            kind = "class" if inspect.isclass(obj) else "def"
            title = name.removeprefix("memwatch.")
            lines += [f"### `{title}`", "", f"Defined in `{_home(obj)}`.", "", "```python",
                      f"{kind} {name.split('.')[-1]}{_signature(obj)}", "```", "",
                      inspect.cleandoc(obj.__doc__ or "").strip(), ""]
    lines += ["## Command line", ""]
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal: make it stable
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        buf = io.StringIO()
        with redirect_stdout(buf):
            p.print_help()
        lines += [f"### `memwatch {name}`", "", "```", buf.getvalue().rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
