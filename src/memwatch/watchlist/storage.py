"""Watchlist storage: ``<path>/tokens.safetensors`` beside ``<path>/watchlist.json``.

Tokens go to safetensors in the smallest unsigned dtype that holds them; ids, tags,
previews, spans, the width, the tokenizer's description (and texts, only if kept) to
JSON. Nothing is ever pickled. `save` writes under a temporary name and renames into
place, so a killed save leaves no half-written watchlist; `load` checks every field
(`_check_meta`) before building the watchlist, which then validates itself like a new one.
`Watchlist.save` / `Watchlist.load` are these functions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from memwatch.watchlist.tokenizer import checked as checked_tokenizer

FORMAT = "memwatch.watchlist"
FORMAT_VERSION = 1
_FILES = ("tokens.safetensors", "watchlist.json")


def save(wl, path: str | os.PathLike) -> str:
    """Write watchlist `wl` to directory `path` (created); returns the path.

    Tokens go to ``tokens.safetensors`` in the smallest unsigned dtype that holds
    them; ids, tags, previews, spans (and texts, only if kept) to ``watchlist.json``.
    The directory is written under a temporary name and renamed into place (an
    existing one is replaced), so a killed save leaves no half-written watchlist.
    """
    path = os.fspath(path).rstrip("/\\") or os.fspath(path)
    # Written beside `path`, then renamed into place: a killed save never leaves a
    # half-written watchlist that loads.
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if os.path.isdir(path) and not set(os.listdir(path)) <= set(_FILES):
        raise ValueError(f"{path} exists and holds files other than a watchlist's: save "
                         "to a new or empty directory")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        _write(wl, tmp)
        if os.path.isdir(path) and os.listdir(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.replace(path, os.path.join(old, "watchlist"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if os.path.isdir(path):
                os.rmdir(path)
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write(wl, path: str) -> None:
    from safetensors.torch import save_file

    top = int(wl.tokens.max())
    dtype = torch.uint16 if top < 2**16 else torch.int32 if top < 2**31 else torch.int64
    save_file({"tokens": wl.tokens.to(dtype).contiguous()},
              os.path.join(path, "tokens.safetensors"))
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "ids": wl.ids,
            "tags": [list(t) for t in wl.tags], "previews": wl._previews,
            "spans": None if wl.spans is None else
            [None if s is None else list(s) for s in wl.spans],
            "texts": wl.texts, "width": int(wl.tokens.shape[1]),
            "tokenizer": wl.tokenizer, "span_tokens": wl.span_tokens,
            "prompt_lens": wl.prompt_lens}
    with open(os.path.join(path, "watchlist.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)


def load(cls, path: str | os.PathLike):
    """The `cls` (a `Watchlist`) saved at directory `path` by `save`, validated like a new one."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    tok_path, meta_path = (os.path.join(path, f) for f in
                           ("tokens.safetensors", "watchlist.json"))
    for p in (tok_path, meta_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} is missing: {path!r} is not a saved watchlist "
                                    "(Watchlist.save writes a directory with both files)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not valid JSON ({err}): truncated or corrupt; "
                         "save the watchlist again") from err
    except RecursionError:
        raise ValueError(f"{meta_path} nests too deep to be a watchlist.json (corrupt or "
                         "not written by Watchlist.save); save the watchlist again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT \
            or meta.get("version") != FORMAT_VERSION:
        got = meta if not isinstance(meta, dict) else \
            f"format {meta.get('format')!r}, version {meta.get('version')!r}"
        raise ValueError(f"{meta_path} is not a {FORMAT} version {FORMAT_VERSION} file "
                         f"({got})")
    _check_meta(meta, meta_path)
    try:
        tokens = load_file(tok_path)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{tok_path} is unreadable ({err}): truncated or corrupt; save the "
                         "watchlist again") from err
    if "tokens" not in tokens:
        raise ValueError(f"{tok_path} has no 'tokens' tensor; it has {sorted(tokens)}")
    tokens = tokens["tokens"]
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{tok_path}: 'tokens' has dtype {tokens.dtype}, not integer token "
                         "ids (Watchlist.save writes unsigned integers)")
    width = meta.get("width")
    if width is not None and (tokens.dim() != 2 or width != tokens.shape[1]):
        raise ValueError(f"{tok_path} holds rows of shape {tuple(tokens.shape)}, but "
                         f"{meta_path} records {width} tokens per row: the two files are "
                         "from different saves; save the watchlist again")
    try:
        return cls(tokens, meta["ids"], meta["tags"], meta.get("previews"),
                   meta.get("spans"), meta.get("texts"),
                   checked_tokenizer(meta.get("tokenizer"), meta_path),
                   meta.get("span_tokens"), meta.get("prompt_lens"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _check_meta(meta: dict, where: str) -> None:
    """Raise naming `where` and the field if a watchlist.json field has the wrong shape."""

    def fail(field: str, what: str):
        raise ValueError(f"{where}: {field!r} {what}; the file is corrupt or was not written "
                         "by Watchlist.save")

    for field in ("ids", "tags"):
        if field not in meta:
            fail(field, "is missing")
        if not isinstance(meta[field], list):
            fail(field, f"must be a list, got {type(meta[field]).__name__}")
    width = meta.get("width")
    if width is not None and (type(width) is not int or width < 1):
        fail("width", f"must be a row length (an int >= 1), got {width!r}")
    n = len(meta["ids"])
    if not all(isinstance(i, str) for i in meta["ids"]):
        fail("ids", "must hold strings only")
    if not all(isinstance(t, list) and all(isinstance(x, str) for x in t) for t in meta["tags"]):
        fail("tags", "must hold one list of strings per row")
    for field, ok in (("previews", lambda v: v is None or isinstance(v, str)),
                      ("texts", lambda v: v is None or isinstance(v, str)),
                      ("spans", lambda v: v is None or (isinstance(v, list) and len(v) == 3 and
                                                        all(type(x) is int for x in v))),
                      ("span_tokens", lambda v: v is None or type(v) is int),
                      ("prompt_lens", lambda v: v is None or type(v) is int)):
        values = meta.get(field)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != n:
            fail(field, f"must be null or a list of {n} entries (one per id)")
        bad = next((i for i, v in enumerate(values) if not ok(v)), None)
        if bad is not None:
            shape = {"spans": "[text, start, end] integers", "span_tokens": "an integer",
                     "prompt_lens": "an integer"}.get(field, "a string")
            fail(field, f"entry {bad} is {values[bad]!r}, not null or {shape}")
