"""Framework adapters: they map a framework's step hook to `MemWatch.step` and its decision
to the framework's stop signal. Plain PyTorch needs none: call ``mon.step(model, step)``.

    from memwatch.callbacks import MemWatchCallback          # Lightning
    from memwatch.callbacks import MemWatchTrainerCallback   # transformers.Trainer
    from memwatch.callbacks import MaskingCollator           # masks flagged rows (Trainer)

Each adapter is imported on first use, so this package imports no framework.
"""

from importlib import import_module

# name -> (module, the pip extra that provides its framework)
_LAZY = {
    "MemWatchCallback": ("memwatch.callbacks.lightning", "lightning"),
    "MemWatchTrainerCallback": ("memwatch.callbacks.transformers", "hf"),
    "MaskingCollator": ("memwatch.callbacks.transformers", "hf"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'memwatch.callbacks' has no attribute {name!r}")
    module, extra = _LAZY[name]
    try:
        return getattr(import_module(module), name)
    except ModuleNotFoundError as err:
        raise ImportError(
            f"{name} needs {err.name!r}, which is not installed: "
            f"pip install 'memwatch[{extra}]'") from err
