"""Model access: what the probe needs to know about a model, across library versions.

The probe drives a causal LM through this module only: its device, its vocabulary,
its EOS ids and (in `runner`) the KV-cached or recomputed forward.
"""

from __future__ import annotations

import torch


def device_of(model) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def vocab_size(model) -> int | None:
    """Rows of the output embedding, else ``config.vocab_size``; None when unknown."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return int(emb.weight.shape[0])
    cfg = getattr(model, "config", None)
    return getattr(cfg, "vocab_size", None) or getattr(model, "vocab_size", None)
