"""Model access: everything the probe needs from a model, across library versions.

The probe drives a causal LM only through this module: its device, its vocabulary,
its EOS ids and a *runner* that prefills, extends, selects, crops and concatenates
KV-cached states. How the cache is passed has drifted across transformers releases
(``past_key_values=`` up to 5.23, ``cache=`` from 5.24; the output attribute
likewise; `DynamicCache`'s layout since 4.56), so the runner is chosen by what the
model *does*, not by an argument name: a short trial (three tokens) checks that a
forward with the cache reproduces the uncached logits. Models without a working
cache are recomputed, and that fallback announces itself once per model class.
"""

from __future__ import annotations

import inspect
import warnings
import weakref

import torch

CACHE_ARGS = ("cache", "past_key_values")  # newest name first: no deprecation warning


class SlowPathWarning(UserWarning):
    """The probe runs on a path that processes many more tokens than the fast one."""


def device_of(model) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def vocab_size(model) -> int | None:
    """Rows of the output embedding, else ``config.vocab_size``, else the first embedding's."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return int(emb.weight.shape[0])
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "vocab_size", None) or getattr(model, "vocab_size", None)
    if size:
        return int(size)
    if isinstance(model, torch.nn.Module):
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding):
                return int(m.num_embeddings)
    return None


def eos_ids(model) -> list[int]:
    """Every EOS id of the model: its generation config's, else its config's (may be [])."""
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(cfg, "eos_token_id", None)
        if eos is not None:
            ids = eos if isinstance(eos, (list, tuple)) else [eos]
            return sorted({int(i) for i in ids})
    return []


def logits_of(out) -> torch.Tensor:
    """The logits of a forward's output: a model output object or a bare tensor."""
    return out if isinstance(out, torch.Tensor) else out.logits


class TokenCounter:
    """Counts the tokens a model embeds, whatever entry point its forwards take.

    ``with TokenCounter(model) as count: ...; count.tokens`` -- proves a fast path is
    taken (a recomputing probe embeds many times more tokens), in tests and `memwatch bench`.
    """

    def __init__(self, model):
        self.tokens = self.calls = 0
        self._emb = model.get_input_embeddings()

    def _count(self, _module, args):
        self.tokens += args[0].numel()
        self.calls += 1

    def __enter__(self):
        self._hook = self._emb.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc):
        self._hook.remove()
        return False


# --------------------------------------------------------------------------------------------
# KV-cache layout: per-layer (keys, values), whatever the transformers version stores.
# --------------------------------------------------------------------------------------------


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56: cache.layers[i].keys / .values
        return [(la.keys, la.values) for la in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # older layout


def _cache_out(out):
    for name in CACHE_ARGS:
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    return None


class CachedLM:
    """A transformers causal LM driven through its KV cache; state = a `DynamicCache`.

    `extend` grows the cache in place (as generate() does); `select`, `crop` and `cat`
    build new caches, so a state handed out earlier is never changed behind its holder.
    ``features``/``project`` split the forward into hidden states and the vocabulary
    projection when the model allows it (checked on the trial), so a caller can
    project a few positions at a time instead of materialising [rows, N, vocab].
    """

    name = "kv-cache"

    def __init__(self, model, cache_arg: str, split: bool):
        from transformers import DynamicCache

        self.model, self.cache_arg, self.split = model, cache_arg, split
        self._cache_cls = DynamicCache
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._head = model.get_output_embeddings() if split else None

    def _call(self, module, tokens, cache, **kwargs):
        past = 0 if cache is None else cache.get_seq_length()
        mask = torch.ones(tokens.shape[0], past + tokens.shape[1], dtype=torch.long,
                          device=tokens.device)
        out = module(input_ids=tokens, attention_mask=mask, use_cache=True,
                     **{self.cache_arg: self._cache_cls() if cache is None else cache}, **kwargs)
        return _cache_out(out), out

    def _forward(self, tokens, cache, keep):
        kwargs = {"logits_to_keep": keep} if self._keep else {}
        state, out = self._call(self.model, tokens, cache, **kwargs)
        return state, logits_of(out)[:, -keep:]

    def prefill(self, tokens, keep=1):
        return self._forward(tokens, None, keep)

    def extend(self, state, tokens, keep):
        return self._forward(tokens, state, keep)

    def features(self, tokens, keep):
        """(state, features of the last `keep` positions): hidden states when split, else logits.

        Split: the model's own forward runs (its hooks and wrappers with it), projecting
        one position; a hook on its base model keeps the final hidden states, which
        `project` turns into logits a few positions at a time.
        """
        if not self.split:
            return self.prefill(tokens, keep)
        captured = {}

        def grab(_module, _args, out):
            captured["hidden"] = out.last_hidden_state if hasattr(out, "last_hidden_state") \
                else out[0]

        handle = self.model.base_model.register_forward_hook(grab)
        try:
            state, _ = self._call(self.model, tokens, None, logits_to_keep=1)
        finally:
            handle.remove()
        return state, captured["hidden"][:, -keep:]

    def project(self, features):
        return self._head(features) if self.split else features

    def _new(self, kv):
        return self._cache_cls(ddp_cache_data=kv)

    def select(self, state, rows):
        kv = _kv(state)
        if len(rows) == kv[0][0].shape[0] and bool(
                (rows == torch.arange(len(rows), device=rows.device)).all()):
            return state  # all rows, in order: no copy
        return self._new([(k[rows], v[rows]) for k, v in kv])

    def crop(self, state, length):
        return self._new([(k[:, :, :length], v[:, :, :length]) for k, v in _kv(state)])

    def cat(self, states):
        layers = [_kv(s) for s in states]
        return self._new([(torch.cat([s[i][0] for s in layers]),
                           torch.cat([s[i][1] for s in layers])) for i in range(len(layers[0]))])


class RecomputedLM:
    """Any module mapping token ids to logits; state = the token prefix, recomputed each call."""

    name = "recompute"
    split = False

    def __init__(self, model):
        self.model = model

    def prefill(self, tokens, keep=1):
        return tokens, logits_of(self.model(tokens))[:, -keep:]

    def extend(self, state, tokens, keep):
        full = torch.cat([state, tokens], dim=1)
        return full, logits_of(self.model(full))[:, -keep:]

    features = prefill

    @staticmethod
    def project(features):
        return features

    @staticmethod
    def select(state, rows):
        return state[rows]

    @staticmethod
    def crop(state, length):
        return state[:, :length]

    @staticmethod
    def cat(states):
        return torch.cat(states)


# --------------------------------------------------------------------------------------------
# Choosing the runner: by a trial, once per model.
# --------------------------------------------------------------------------------------------

_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.float(), b.float()
    return a.shape == b.shape and bool(
        ((a - b).abs().max() <= 0.02 * b.abs().max() + 1e-3).item())


def _trial(model, cache_arg: str) -> tuple[CachedLM | None, bool]:
    """(runner, decided): a `CachedLM` if a cached 2 + 1 token forward equals the uncached
    3-token one, else None; not decided when the model's logits are not finite (NaN
    weights say nothing about its cache: try again at the next probe)."""
    dev = device_of(model)
    ids = torch.arange(3, device=dev)[None] % max(1, vocab_size(model) or 3)
    try:
        full = logits_of(model(input_ids=ids, use_cache=False))
        lm = CachedLM(model, cache_arg, split=False)
        if not bool(torch.isfinite(full).all()):
            return lm, False
        state, _ = lm.prefill(ids[:, :2])
        if state is None or state.get_seq_length() != 2:
            return None, True
        state, last = lm.extend(state, ids[:, 2:], keep=1)
        if state.get_seq_length() != 3 or not _close(last[:, -1], full[:, -1]):
            return None, True
        head = model.get_output_embeddings()
        if head is not None and lm._keep and getattr(model, "base_model", model) is not model:
            split = CachedLM(model, cache_arg, split=True)
            _, feats = split.features(ids, keep=3)
            if _close(split.project(feats), full):
                return split, True
        return lm, True
    except (TypeError, ValueError, AttributeError, NotImplementedError, IndexError):
        return None, True


def _warn_once(model, why: str) -> None:
    name = type(model).__name__
    if name in _WARNED:
        return
    _WARNED.add(name)
    warnings.warn(
        f"memwatch: {name} {why}; the probe recomputes every prefix without a KV cache, "
        f"about N/2 times the tokens of a cached probe per generated position (N = cont_len). "
        f"A transformers causal LM with a working cache takes the fast path.",
        SlowPathWarning, stacklevel=4)


def runner(model) -> CachedLM | RecomputedLM:
    """The fastest working way to drive `model`: its KV cache, else recomputation (warned once).

    Call under ``torch.no_grad()`` with the model in eval mode (as `probe` does); the
    choice is made once per model object and reused.
    """
    try:
        return _RUNNERS[model]
    except (KeyError, TypeError):
        pass
    params = inspect.signature(model.forward).parameters if hasattr(model, "forward") else {}
    args = [a for a in CACHE_ARGS if a in params]
    lm, decided = None, True
    if hasattr(model, "config") and args:
        lm, decided = _trial(model, args[0])
        why = "did not reproduce its uncached logits through its KV cache"
    else:
        why = "takes no KV cache (no `cache`/`past_key_values` argument)"
    if lm is None:
        _warn_once(model, why)
        lm = RecomputedLM(model)
    try:
        if decided:
            _RUNNERS[model] = lm
    except TypeError:
        pass
    return lm
