"""Which tokenizer a watchlist's token ids belong to: a name and a fingerprint of its vocabulary.

Token ids mean nothing without their tokenizer: a watchlist built with one tokenizer
and probed on a model trained with another scores (nearly) nothing, with no error
anywhere. So a watchlist built from text records ``{"name", "fingerprint", "size"}``
(`describe`), `watchlist.json` keeps it, ``+`` refuses to mix two, and the monitor
compares it with the model's tokenizer when one is known (`check_same`).
"""

from __future__ import annotations

import hashlib


def describe(tokenizer) -> dict | None:
    """``{"name", "fingerprint", "size"}`` of a tokenizer, or None when it has no vocabulary.

    fingerprint: 16 hex digits of SHA-256 over the sorted (token, id) pairs of
    ``get_vocab()`` below the base vocabulary's size (``tokenizer.vocab_size``: tokens
    added later, such as a pad token, get ids above it and leave the fingerprint as it
    was), so two tokenizers agree when they map the same strings to the same ids.
    size: that base size. name: ``name_or_path`` ("" when unnamed).
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if not callable(get_vocab):
        return None
    vocab = get_vocab()
    base = getattr(tokenizer, "vocab_size", None)
    base = base if isinstance(base, int) and base > 0 else len(vocab)
    digest = hashlib.sha256()
    for token, i in sorted(vocab.items()):
        if int(i) < base:
            digest.update(f"{token}\x00{int(i)}\x01".encode("utf-8", "surrogatepass"))
    return {"name": str(getattr(tokenizer, "name_or_path", "") or ""),
            "fingerprint": digest.hexdigest()[:16], "size": base}


def checked(info, where: str) -> dict | None:
    """A recorded tokenizer description (None, or a dict with a str fingerprint), as a dict."""
    if info is None:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("fingerprint"), str):
        raise ValueError(f"{where}: 'tokenizer' must be null or an object with a "
                         f"'fingerprint' string, got {info!r}")
    return {"name": str(info.get("name", "")), "fingerprint": info["fingerprint"],
            "size": int(info.get("size", 0) or 0)}


def label(info: dict) -> str:
    """``'gpt2' (fingerprint 1a2b..., 50257 tokens)``: a tokenizer as messages name it."""
    name = repr(info["name"]) if info.get("name") else "an unnamed tokenizer"
    size = f", {info['size']} tokens" if info.get("size") else ""
    return f"{name} (fingerprint {info['fingerprint']}{size})"


def merged(infos, what: str = "watchlists") -> dict | None:
    """The one tokenizer of several parts (None if none recorded); ValueError if they differ."""
    known = [i for i in infos if i is not None]
    for other in known[1:]:
        if other["fingerprint"] != known[0]["fingerprint"]:
            raise ValueError(f"cannot combine {what} built with different tokenizers: "
                             f"{label(known[0])} and {label(other)}; their token ids mean "
                             "different text. Build every part with the model's tokenizer")
    return known[0] if known else None


def check_same(recorded: dict | None, tokenizer) -> None:
    """Raise ValueError if `tokenizer` is not the one `recorded` describes (None: no check)."""
    if recorded is None or tokenizer is None:
        return
    mine = describe(tokenizer)
    if mine is None or mine["fingerprint"] == recorded["fingerprint"]:
        return
    raise ValueError(f"the watchlist was built with {label(recorded)}, but the model's "
                     f"tokenizer is {label(mine)}: its token ids mean different text to this "
                     "model, which would memorize none of them. Rebuild the watchlist with the "
                     "model's tokenizer")
