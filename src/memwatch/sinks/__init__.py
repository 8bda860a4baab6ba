"""Where the monitor's records go: W&B, the console, a local JSONL/parquet file.

Sinks are imported on first use, so that importing this package never imports wandb.
"""

from importlib import import_module

from memwatch.sinks.base import Sink

_LAZY = {
    "LocalSink": "memwatch.sinks.local",
    "ConsoleSink": "memwatch.sinks.console",
    "WandbSink": "memwatch.sinks.wandb",
}

__all__ = ["Sink", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memwatch.sinks' has no attribute {name!r}")
