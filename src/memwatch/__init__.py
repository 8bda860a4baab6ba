"""memwatch: watch a language model memorize its training data while it trains.

`import memwatch` imports only torch and numpy; integrations (transformers,
lightning, wandb, presidio) are imported when first used.
"""

from importlib import import_module

from memwatch.audit import Audit, audit
from memwatch.forecast import Forecast, ForecastInputs, forecast
from memwatch.probe import ProbeResult, ProbeSpec, probe, reference_probe

__version__ = "0.1.0"

# Public names whose module differs from the name, imported on first use so that
# `import memwatch` stays light. (`probe` and `forecast` share their module's name
# and are imported eagerly, or the submodule would shadow the function; so is `audit`.)
_LAZY = {
    "Watchlist": "memwatch.watchlist",
    "insert_canaries": "memwatch.watchlist.planting",
    "exposure": "memwatch.watchlist.canaries",
    "extraction_rates": "memwatch.measures",
    "draws_needed": "memwatch.measures",
    "History": "memwatch.history",
    "Alert": "memwatch.events",
    "Decision": "memwatch.events",
    "ProbeRecord": "memwatch.events",
    "RowReport": "memwatch.events",
    "AbortPolicy": "memwatch.policy",
    "MemWatch": "memwatch.monitor",
    "MaskSpec": "memwatch.masking",
    "Sink": "memwatch.sinks",
    "LocalSink": "memwatch.sinks",
    "ConsoleSink": "memwatch.sinks",
    "WandbSink": "memwatch.sinks",
}

__all__ = ["ProbeResult", "ProbeSpec", "probe", "reference_probe", "Forecast", "ForecastInputs",
           "forecast", "Audit", "audit", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memwatch' has no attribute {name!r}")
