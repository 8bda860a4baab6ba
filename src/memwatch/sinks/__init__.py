"""Where the monitor's records go: W&B, the console, a local JSONL/parquet file."""

from memwatch.sinks.base import Sink

__all__ = ["Sink"]
