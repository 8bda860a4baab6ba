"""The memorization probe: Pythia's greedy score, computed by speculative decoding.

For a row ``S`` the Pythia score prompts the model with ``S[:M]``, decodes ``N``
tokens greedily (EOS banned, as ``min_length`` does in EleutherAI's
``generate`` call) and counts positions equal to ``S[M:M+N]``.

Up to its first mismatch greedy decoding reproduces the true continuation, so
the true continuation is a perfect draft: after one prefill of the prompt we
verify it in growing chunks with the KV cache, and every row stops at its first
miss. That yields ``match_prefix`` and ``memorized`` exactly; most rows miss at
the first token and cost only the prefill. ``mode="exact"`` then decodes the
diverged rows greedily from their divergence point, in one batched loop that
rows join when it reaches their position (their caches then have equal
lengths), which reproduces the full Pythia score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from memwatch.lm import device_of, eos_ids, logits_of, runner, vocab_size
from memwatch.measures import MIN_K, check_min_k, log_pz, min_k_logprob, zlib_ratio

MODES = ("exact", "extractable")
STRATEGIES = ("auto", "speculative", "teacher_forced")
PROMPT_LEN = 32  # M: Pythia's prompt (Biderman et al. 2023)
CONT_LEN = 32  # N: the greedy continuation compared with the truth


def prompt_lengths(prompt_len: int | Sequence[int]) -> tuple[int, ...]:
    """The prompt lengths `prompt_len` names, ascending: 32 -> (32,), (64, 32) -> (32, 64).

    Several lengths probe the same continuation (it starts after the longest prompt),
    each prompt being the tokens right before it (Carlini et al., ICLR 2023,
    "Quantifying memorization across neural language models": extraction grows
    log-linearly with the prompt's length).
    """
    values = tuple(prompt_len) if isinstance(prompt_len, (tuple, list)) else (prompt_len,)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"prompt_len must be an integer >= 1 or a non-empty tuple of them; "
                             f"got {prompt_len!r}")
    if not values:
        raise ValueError("prompt_len must be an integer >= 1 or a non-empty tuple of them; got ()")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class ProbeSpec:
    """What to probe, as one value: `probe(spec=...)`, `MemWatch(probe=...)`, `EvalConfig`
    and the CLI all take it whole (the fields are `probe`'s settings of the same names).

    ``prompt_len`` is one length or a tuple of them (`prompt_lengths`): the continuation
    starts after the longest (`context_len`), and the result holds one score per length.
    """

    prompt_len: int | tuple[int, ...] = PROMPT_LEN
    cont_len: int = CONT_LEN
    mode: str = "exact"
    with_nll: bool = False
    batch_size: int | None = None
    suppress_eos: bool = True
    min_k: float = MIN_K

    def __post_init__(self) -> None:
        lengths = prompt_lengths(self.prompt_len)
        object.__setattr__(self, "prompt_len", lengths[0] if len(lengths) == 1 else lengths)
        value = self.cont_len
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"cont_len must be an integer >= 1; got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        BatchSize(self.batch_size)  # validates it
        check_min_k(self.min_k)

    @property
    def prompt_lens(self) -> tuple[int, ...]:
        """Every prompt length, ascending (``(32,)`` by default)."""
        return prompt_lengths(self.prompt_len)

    @property
    def context_len(self) -> int:
        """The longest prompt: where the continuation starts in every row."""
        return self.prompt_lens[-1]

    @property
    def total_len(self) -> int:
        """Tokens a row needs: the longest prompt + cont_len."""
        return self.context_len + self.cont_len


@dataclass(frozen=True)
class ProbeResult:
    """Per-row results of `probe` (CPU tensors, row order of the input).

    scores: float32 [n]. Exact mode: the Pythia score (fraction of the N greedy
        tokens equal to the true continuation). Extractable mode:
        ``match_prefix / N``, a lower bound of it.
    memorized: bool [n]. All N tokens reproduced (score == 1); exact in both modes.
    match_prefix: int16 [n]. Tokens reproduced before the first mismatch.
    nll: float32 [n] mean teacher-forced NLL of the continuation, or None.
    greedy: int64 [n, N] the greedy tokens (exact mode), or None.
    nll_first: float32 [n] NLL of the first continuation token given the prompt (both
        modes: the prompt's forward computes it anyway), or None.

    With ``with_nll=True`` the same teacher-forced pass also gives (else None; each is
    defined in `memwatch.measures`, with its paper):
    log_pz: float32 [n] log p_z, the continuation's log-probability (sum of the true
        tokens' log-probs; Hayes et al. 2024); feeds `memwatch.measures.extraction_rates`.
    min_k_logprob: float32 [n] mean of the k % lowest token log-probs (Shi et al. 2024;
        k = ``min_k``, 20 % by default).
    zlib_ratio: float32 [n] mean NLL over the zlib-compressed bytes of the continuation's
        token ids (Carlini et al. 2021).
    token_logprobs: float32 [n, N] log p(z_t | x, z_<t) of every true continuation token.

    prompt_lens: the prompt lengths probed, ascending; every field above is at the
        longest, where the continuation starts.
    scores_by_prompt_len: float32 [n, len(prompt_lens)] the score (as ``scores``) with
        each prompt length, the prompt being the tokens right before the continuation.
    """

    scores: torch.Tensor
    memorized: torch.Tensor
    match_prefix: torch.Tensor
    nll: torch.Tensor | None = None
    greedy: torch.Tensor | None = None
    mode: str = "exact"
    nll_first: torch.Tensor | None = None
    log_pz: torch.Tensor | None = None
    min_k_logprob: torch.Tensor | None = None
    zlib_ratio: torch.Tensor | None = None
    token_logprobs: torch.Tensor | None = None
    prompt_lens: tuple[int, ...] = (PROMPT_LEN,)
    scores_by_prompt_len: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.scores)


# --------------------------------------------------------------------------------------------
# Input checks and model-state preservation (shared with reference_probe).
# --------------------------------------------------------------------------------------------


def _check(tokens, spec: ProbeSpec, vocab_size: int | None) -> torch.Tensor:
    """`tokens` as int64 [n, spec.total_len], or a ValueError naming the first bad row."""
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype.is_complex \
            or tokens.dtype == torch.bool:
        raise ValueError(
            f"tokens must be a 2-D integer tensor [n, >= prompt_len + cont_len]; got "
            f"shape {tuple(tokens.shape)} dtype {tokens.dtype}")
    if tokens.shape[0] == 0:
        raise ValueError("tokens is empty: the probe needs at least one row")
    need = spec.total_len
    if tokens.shape[1] < need:
        raise ValueError(
            f"every row has {tokens.shape[1]} tokens; prompt_len + cont_len = {need} needs at "
            f"least {need} (row 0 is the first too short)")
    tokens = tokens[:, :need].long()
    bad = (tokens < 0) | (tokens >= vocab_size) if vocab_size else tokens < 0
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"row {row} has token id {int(tokens[row, col])} at position {col}; ids must be in "
            f"[0, {vocab_size if vocab_size else 'vocab size'})")
    return tokens


class _Preserved:
    """Run the probe in eval mode, under no_grad, with RNG states restored after.

    Not inference_mode: a tensor the model creates lazily during the probe (a rotary or
    mask cache sized to the longest input so far) would be an inference tensor, and the
    next training step's backward would fail to save it.
    """

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.flags = [m.training for m in self.model.modules()]
        dev = device_of(self.model)
        cuda = [dev] if dev.type == "cuda" else []
        self.rng = torch.random.fork_rng(devices=cuda)
        self.rng.__enter__()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        self.model.eval()

    def __exit__(self, *exc):
        for m, flag in zip(self.model.modules(), self.flags, strict=False):
            m.training = flag
        self.no_grad.__exit__(*exc)
        self.rng.__exit__(*exc)
        return False


def _auto_batch_size(model, n: int, total_len: int) -> int:
    """The default rows per batch: 128 on a CPU; on a GPU what half its free memory holds."""
    dev = device_of(model)
    if dev.type != "cuda":
        return min(n, 128)
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None)
    hidden = getattr(cfg, "hidden_size", None)
    if not (layers and hidden):
        return min(n, 64)
    free, _ = torch.cuda.mem_get_info(dev)
    elem = next(model.parameters()).element_size()
    vocab = vocab_size(model) or 50304
    # Per row: the KV cache (kept twice while rows are selected and merged), the activations of
    # the prefill, and fp32 logits of a 16-token verification chunk.
    per_row = 4 * layers * hidden * total_len * elem + 16 * hidden * total_len * elem \
        + 2 * 16 * vocab * 4
    return max(1, min(n, int(0.5 * free) // per_row))


class BatchSize:
    """Rows per probe batch: `fixed`, or `_auto_batch_size` when None; remembers out-of-memory.

    An out-of-memory error halves the batch (`halve`), and the size that worked then caps
    every later probe that uses this object (a monitor or an eval keeps one), so they start
    there instead of failing the same larger sizes again.
    """

    def __init__(self, fixed: int | None = None):
        if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, int)
                                  or fixed < 1):
            raise ValueError(f"batch_size must be an integer >= 1 or None (automatic); got "
                             f"{fixed!r}")
        self.fixed = fixed
        self.cap: int | None = None  # the size that worked after an out-of-memory error

    def first(self, model, n: int, total_len: int) -> int:
        """The size to start a probe of `n` rows of `total_len` tokens with."""
        bs = self.fixed or _auto_batch_size(model, n, total_len)
        return max(1, min(bs, n, self.cap or bs))

    def halve(self, bs: int) -> int:
        """The size to retry with after `bs` ran out of memory (remembered as the cap)."""
        self.cap = max(1, bs // 2)
        return self.cap


def _batched(fn, model, tokens, sizer: BatchSize, ranks=None):
    """Apply fn to row batches; an out-of-memory error halves the batch and redoes it.

    The one OOM loop of memwatch. `ranks` (`memwatch.distributed`) makes every rank start
    from the same size and share, after each batch, whether any rank ran out of memory
    (then all halve and redo it together, staying in lockstep) or failed otherwise (then it
    raises on every rank); without it an error other than a retryable OOM is raised as is.
    """
    bs = sizer.first(model, len(tokens), tokens.shape[1])
    if ranks is not None:
        bs = ranks.smallest(bs)
    outs, start = [], 0
    while start < len(tokens):
        error = out = None
        try:
            out = fn(tokens[start:start + bs])
        except torch.OutOfMemoryError as err:
            error = err
        except Exception as err:
            if ranks is None:
                raise
            error = err
        retry = isinstance(error, torch.OutOfMemoryError) and bs > 1
        if ranks is not None:
            retry = ranks.share(retry, None if retry else error)
        elif error is not None and not retry:
            raise error
        if retry:
            error = None  # its traceback holds the failed batch's tensors: free them first
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            bs = sizer.halve(bs)
            continue
        outs.append(out)
        start += bs
    return outs


# --------------------------------------------------------------------------------------------
# The probe.
# --------------------------------------------------------------------------------------------


def _argmax(logits: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """Greedy tokens with every EOS id banned, as ``generate(min_length=...)`` bans them."""
    if eos:
        logits = logits.clone()
        logits[..., eos] = float("-inf")
    return logits.argmax(dim=-1)


def choose_strategy(device: torch.device, with_nll: bool, lockstep: bool = False) -> str:
    """The cheaper way to find each row's first miss, by a two-line cost model.

    ``speculative``: prefill the M prompt tokens, project one position, then verify
    the true continuation in chunks of 1, 2, 4, ... for the rows still matching. Cost
    per unmemorized row: M tokens and 1 vocabulary projection; ~log2(N) + 1
    sequential forwards per batch. ``teacher_forced``: one forward over M + N - 1
    tokens and N projections per row (in position chunks), one call per batch.
    A CPU is compute-bound: the speculative path does ~N x fewer projections and
    (M + N) / M fewer tokens, so it wins unless the NLL is wanted, which needs all N
    projections anyway (then teacher forcing gives both from one pass). A GPU is
    latency-bound at probe sizes: one call beats ~6 sequential ones, so teacher forcing
    wins there. With ``lockstep`` (sharded models) a single call per batch also keeps
    ranks in step without spare forwards.
    """
    if with_nll or lockstep or device.type != "cpu":
        return "teacher_forced"
    return "speculative"


def _chunks(n_rows: int, n_pos: int, vocab: int | None, budget: int = 256 << 20):
    """Position ranges whose fp32 logits [n_rows, len, vocab] stay within `budget` bytes."""
    step = max(1, budget // max(1, n_rows * (vocab or 50304) * 4))
    return [(a, min(a + step, n_pos)) for a in range(0, n_pos, step)]


def _first_miss(pred: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the first position where pred != cont (len when none)."""
    miss = pred != cont
    return torch.where(miss.any(dim=1), miss.int().argmax(dim=1), cont.shape[1])


def _teacher_forced_batch(lm, tokens, M, N, exact, eos, with_nll, vocab, lockstep=False):
    """Probe one batch from one forward over the true M + N - 1 tokens.

    Greedy decoding equals the truth up to the first miss, so the argmax of the
    teacher-forced logits at continuation position i is the greedy token there for
    every row not yet diverged: the first position where it differs from the truth is
    `match_prefix`, exactly. The same logits give the continuation's per-token NLL
    [B, N] (with_nll), from which every measure of `memwatch.measures` follows. In exact
    mode the diverged rows then decode on the cache of their true prefix (`_decode_in_place`).
    """
    cont = tokens[:, M:M + N]
    state, feats = lm.features(tokens[:, :M + N - 1], keep=N)
    pred = torch.empty_like(cont)
    nll = torch.empty(cont.shape, dtype=torch.float32, device=tokens.device)
    for a, b in _chunks(len(tokens), N, vocab):
        logits = lm.project(feats[:, a:b]).float()
        pred[:, a:b] = _argmax(logits, eos)
        if with_nll or a == 0:
            nll[:, a:b] = F.cross_entropy(logits.transpose(1, 2), cont[:, a:b], reduction="none")
    match_prefix = _first_miss(pred, cont)
    greedy = cont.clone() if exact else None
    if exact:
        _decode_in_place(lm, state, match_prefix, pred, greedy, M, N, eos, lockstep)
    return match_prefix, greedy, nll[:, 0], nll if with_nll else None


def _decode_in_place(lm, state, match_prefix, pred, greedy, M, N, eos, lockstep=False):
    """Greedy-decode the diverged rows in one fixed batch on the cache of their true prefix.

    Every diverged row sits in the batch from the first divergence point t0 on; a row
    diverged at p > t feeds its own next token at step t (the truth before p, its first
    wrong token at p), so its cache stays its own and the batch never changes shape: no
    rows are selected or concatenated while decoding, and each step is one forward of
    one token per row. With `lockstep` the sweep runs all N - 1 steps (row 0 stands in
    when no row diverged), so the number of model calls does not depend on the data.
    """
    rows = torch.nonzero(match_prefix < N).squeeze(1)
    if not len(rows) and not lockstep:
        return
    p = match_prefix[rows]
    if not len(rows):  # lockstep without a diverged row: a spare row, never written
        rows, p = torch.zeros(1, dtype=torch.long, device=greedy.device), p.new_full((1,), N)
    greedy[rows[p < N], p[p < N]] = pred[rows[p < N], p[p < N]]  # the first wrong tokens
    t0 = 0 if lockstep else int(p.min())
    state = lm.crop(lm.select(state, rows), M + t0)
    for t in range(t0, N - 1):
        state, logits = lm.extend(state, greedy[rows, t:t + 1], keep=1)
        joined = p <= t
        greedy[rows[joined], t + 1] = _argmax(logits[joined, -1], eos)


def _speculative_batch(lm, tokens, M, N, exact, eos, lockstep=False):
    """Probe one batch: returns (match_prefix [B], greedy [B, N] or None, nll_first [B])."""
    B, dev = tokens.shape[0], tokens.device
    cont = tokens[:, M:M + N]
    match_prefix = torch.zeros(B, dtype=torch.long, device=dev)
    greedy = cont.clone() if exact else None  # positions before the divergence are the truth
    # pending[t]: rows diverged at position M+t, as (row ids, state of length M+t, next token).
    pending: dict[int, list] = {}

    state, logits = lm.prefill(tokens[:, :M])
    nll_first = F.cross_entropy(logits[:, -1].float(), cont[:, 0], reduction="none")
    # lockstep: a spare one-row state runs the forwards that no row needs, so that the number
    # of model calls does not depend on the data (sharded models need every rank in each one).
    row0 = torch.zeros(1, dtype=torch.long, device=dev)
    spare = lm.select(state, row0) if lockstep else None
    spare_decode = lm.select(state, row0) if lockstep and exact else None
    first = _argmax(logits[:, -1], eos)
    alive = torch.nonzero(first == cont[:, 0]).squeeze(1)
    dead = torch.nonzero(first != cont[:, 0]).squeeze(1)
    if exact and len(dead):
        pending[0] = [(dead, lm.select(state, dead), first[dead])]
    state = lm.select(state, alive)

    # Verify the true continuation in chunks of 1, 2, 4, ...: rows stop at their first miss.
    verified, chunk = 1, 1  # continuation tokens verified so far for the alive rows
    while verified < N and (len(alive) or lockstep):
        c = min(chunk, N - verified)
        verified, chunk = verified + c, chunk * 2
        if not len(alive):
            spare, _ = lm.extend(spare, cont[:1, :c], keep=c)
            continue
        state, logits = lm.extend(state, cont[alive, verified - c - 1:verified - 1], keep=c)
        pred = _argmax(logits, eos)  # predictions for continuation positions verified-c..
        miss = pred != cont[alive, verified - c:verified]
        has_miss = miss.any(dim=1)
        at = miss.int().argmax(dim=1)  # first miss within the chunk (0 where no miss)
        for j in torch.unique(at[has_miss]).tolist():
            rows = torch.nonzero(has_miss & (at == j)).squeeze(1)
            p = verified - c + j
            match_prefix[alive[rows]] = p
            if exact:
                sub = lm.crop(lm.select(state, rows), M + p)
                pending.setdefault(p, []).append((alive[rows], sub, pred[rows, j]))
        keep = torch.nonzero(~has_miss).squeeze(1)
        alive, state = alive[keep], lm.select(state, keep)
    match_prefix[alive] = N

    if exact and (pending or lockstep):
        _decode_diverged(lm, pending, greedy, M, N, eos, spare_decode)
    return match_prefix, greedy, nll_first


def _decode_diverged(lm, pending, greedy, M, N, eos, spare=None):
    """Greedy-decode every diverged row from its divergence point, in one batched sweep.

    A row that diverged at continuation position p holds a cache of length M + p,
    exactly the length the sweep's batch has when it reaches p, so it joins there.
    With a `spare` state (lockstep), steps before any row joins run on it instead.
    """
    rows = state = nxt = None
    for t in range(0 if spare is not None else min(pending), N):
        joining = pending.get(t, [])
        if joining:
            parts = ([] if rows is None else [(rows, state, nxt)]) + joining
            if len(parts) == 1:
                rows, state, nxt = parts[0]
            else:
                rows = torch.cat([r for r, _, _ in parts])
                state = lm.cat([s for _, s, _ in parts])
                nxt = torch.cat([x for _, _, x in parts])
        if rows is not None:
            greedy[rows, t] = nxt
        if t == N - 1:
            break
        if rows is None:
            spare, _ = lm.extend(spare, greedy[:1, t:t + 1], keep=1)
            continue
        state, logits = lm.extend(state, nxt[:, None], keep=1)
        nxt = _argmax(logits[:, -1], eos)


def _nll_batch(lm, tokens, M, N):
    """Teacher-forced NLL [B, N] of the continuation: one forward over the first M+N-1 tokens."""
    _, logits = lm.prefill(tokens[:, :M + N - 1], keep=N)
    return F.cross_entropy(logits.float().transpose(1, 2), tokens[:, M:M + N], reduction="none")


def probe(
    model,
    tokens,
    prompt_len: int | Sequence[int] = PROMPT_LEN,
    cont_len: int = CONT_LEN,
    mode: str = "exact",
    with_nll: bool = False,
    batch_size: int | None = None,
    suppress_eos: bool = True,
    lockstep: bool = False,
    strategy: str = "auto",
    min_k: float = MIN_K,
    *,
    spec: ProbeSpec | None = None,
) -> ProbeResult:
    """Return the memorization `ProbeResult` of each row of `tokens` [n, >= M+N].

    Equal to `reference_probe` score for score (fp32) in ``mode="exact"``;
    ``mode="extractable"`` stops at each row's first miss (``memorized`` and
    ``match_prefix`` exact, ``scores = match_prefix / N``) and costs little more
    than one prefill of the prompts when few rows are memorized. ``suppress_eos``
    bans every EOS id from the greedy argmax, as Pythia's ``min_length`` did.
    The model is left exactly as found (train/eval flags, grad mode, RNG state).
    ``spec``: a `ProbeSpec` instead of the seven loose settings (then leave those at
    their defaults). ``batch_size`` (default: `_auto_batch_size`) is halved after an
    out-of-memory error and the batch redone. ``lockstep=True`` makes the number of
    model calls per batch independent of the data (spare forwards fill in), as FSDP /
    ZeRO-3 need when ranks probe different rows; results are unchanged. ``strategy``:
    ``"auto"`` picks ``"speculative"`` or ``"teacher_forced"`` by `choose_strategy`'s
    cost model (device, ``with_nll``); both give the same results. ``with_nll=True`` adds
    the continuation's NLL and the measures of `memwatch.measures` (log p_z, min-k % with
    k = ``min_k``, the zlib ratio, per-token log-probs) from the same teacher-forced pass.
    ``prompt_len`` may be a tuple of lengths (`prompt_lengths`): rows then need the
    longest + N tokens, every field is measured with the longest prompt, and each shorter
    one costs one more probe of its own for ``scores_by_prompt_len``.
    """
    loose = ProbeSpec(prompt_len, cont_len, mode, with_nll, batch_size, suppress_eos, min_k)
    if spec is None:
        spec = loose
    elif loose != ProbeSpec():
        raise TypeError("probe takes either spec= or the loose settings (prompt_len, cont_len, "
                        "mode, with_nll, batch_size, suppress_eos, min_k), not both")
    return _probe(model, tokens, spec, BatchSize(spec.batch_size), lockstep, strategy)


def _probe(model, tokens, spec: ProbeSpec, sizer: BatchSize, lockstep: bool = False,
           strategy: str = "auto", ranks=None) -> ProbeResult:
    """`probe` with its batch size kept in `sizer` (see `_batched` for `ranks`)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    lengths = spec.prompt_lens
    vocab = vocab_size(model)
    tokens = _check(tokens, spec, vocab)
    M, N, exact, with_nll = spec.context_len, spec.cont_len, spec.mode == "exact", spec.with_nll
    dev = device_of(model)
    if strategy == "auto":
        strategy = choose_strategy(dev, with_nll, lockstep)
    with _Preserved(model):
        lm, eos = runner(model), eos_ids(model) if spec.suppress_eos else []

        def run(batch):
            batch = batch.to(dev)
            if strategy == "teacher_forced":
                prefix, greedy, first, nll = _teacher_forced_batch(
                    lm, batch, M, N, exact, eos, with_nll, vocab, lockstep)
            else:
                prefix, greedy, first = _speculative_batch(lm, batch, M, N, exact, eos, lockstep)
                nll = _nll_batch(lm, batch, M, N) if with_nll else None
            return prefix.cpu(), None if greedy is None else greedy.cpu(), \
                None if nll is None else nll.cpu(), first.cpu()

        parts = _batched(run, model, tokens, sizer, ranks)
    match_prefix = torch.cat([p[0] for p in parts])
    greedy = torch.cat([p[1] for p in parts]) if exact else None
    nll_tokens = torch.cat([p[2] for p in parts]).float() if with_nll else None
    nll_first = torch.cat([p[3] for p in parts])
    if exact:
        scores = (greedy == tokens[:, M:M + N]).float().mean(dim=1)
    else:
        scores = match_prefix.float() / N
    measures = {}
    if with_nll:
        logprobs = -nll_tokens
        nll = nll_tokens.mean(dim=1)
        measures = dict(nll=nll, log_pz=log_pz(logprobs), min_k_logprob=min_k_logprob(
            logprobs, spec.min_k), zlib_ratio=zlib_ratio(nll, tokens[:, M:M + N]),
            token_logprobs=logprobs)
    # Shorter prompts: the same continuation after the last m prompt tokens, one probe each.
    by_len = [_probe(model, tokens[:, M - m:], replace(spec, prompt_len=m, with_nll=False),
                     sizer, lockstep, strategy, ranks).scores for m in lengths[:-1]]
    return ProbeResult(scores=scores, memorized=match_prefix == N,
                       match_prefix=match_prefix.to(torch.int16), greedy=greedy,
                       mode=spec.mode, nll_first=nll_first, prompt_lens=lengths,
                       scores_by_prompt_len=torch.stack([*by_len, scores], dim=1), **measures)


def _generation_config(model, M: int, N: int):
    """The model's own generation config (every EOS id it lists), made greedy for M + N tokens.

    Built from the model, not from the probe's `eos_ids`, so that the yardstick cannot
    share a defect with the probe.
    """
    import copy

    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    config.update(do_sample=False, num_beams=1, max_length=M + N, min_length=M + N,
                  max_new_tokens=None, min_new_tokens=None, temperature=None, top_k=None,
                  top_p=None)
    if config.pad_token_id is None:  # every row has M tokens: padding never happens
        eos = config.eos_token_id
        config.pad_token_id = (eos[0] if isinstance(eos, list) and eos else eos) or 0
    return config


def reference_probe(
    model,
    tokens,
    prompt_len: int = PROMPT_LEN,
    cont_len: int = CONT_LEN,
    batch_size: int | None = None,
    suppress_eos: bool = True,
) -> torch.Tensor:
    """Return the Pythia scores float32 [n], computed the way EleutherAI's eval did.

    ``model.generate(S[:, :M], max_length=M+N, min_length=M+N, do_sample=False)``
    with the model's own generation config (``min_length`` bans every EOS id it
    lists, as in Pythia's call) and the elementwise comparison with ``S[:, M:M+N]``.
    Plain modules without ``generate``, and ``suppress_eos=False`` (generate would
    stop at EOS), get the same greedy loop, recomputed without a cache. The yardstick
    that `probe` must equal; slow by design.
    """
    spec = ProbeSpec(prompt_len, cont_len, batch_size=batch_size, suppress_eos=suppress_eos)
    tokens = _check(tokens, spec, vocab_size(model))
    M, N = prompt_len, cont_len
    dev = device_of(model)
    with _Preserved(model):

        def run(batch):
            batch = batch.to(dev)
            ctx = batch[:, :M]
            if hasattr(model, "generate") and suppress_eos:
                out = model.generate(ctx, attention_mask=torch.ones_like(ctx),
                                     generation_config=_generation_config(model, M, N))
            else:  # generate() would stop at an unbanned EOS; the score compares all N tokens
                eos = eos_ids(model) if suppress_eos else []
                out = ctx
                for _ in range(N):
                    nxt = _argmax(logits_of(model(out))[:, -1], eos)
                    out = torch.cat([out, nxt[:, None]], dim=1)
            return (out[:, M:M + N] == batch[:, M:M + N]).float().mean(dim=1).cpu()

        return torch.cat(_batched(run, model, tokens, BatchSize(batch_size)))
