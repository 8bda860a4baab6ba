import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memwatch as mw
from memwatch.lm import SlowPathWarning
from memwatch.probe import ProbeSpec


@pytest.mark.parametrize("M,N", [(32, 32), (16, 24), (8, 5), (1, 1)])
@pytest.mark.parametrize("batch_size", [7, 64])
def test_exact_equals_reference(trained, M, N, batch_size):
    ref = mw.reference_probe(trained.model, trained.rows, M, N, batch_size=batch_size)
    for strategy in ("speculative", "teacher_forced"):
        res = mw.probe(trained.model, trained.rows, M, N, mode="exact", batch_size=batch_size,
                       strategy=strategy)
        assert torch.equal(res.scores, ref), strategy
        assert torch.equal(res.memorized, ref == 1), strategy


def test_fixture_memorizes_the_frequent_rows_only(trained):
    ref = mw.reference_probe(trained.model, trained.rows)
    assert torch.equal(ref == 1, trained.memorized)
    assert trained.memorized[trained.repeats >= 8].all()
    assert not trained.memorized[trained.repeats == 1].any()
    # some rows diverge and then match again later: the exact score exceeds match_prefix/N
    res = mw.probe(trained.model, trained.rows, mode="exact")
    rematch = res.scores > res.match_prefix.float() / 32
    assert rematch.any()
    assert ((ref > 0) & (ref < 1)).any()


def test_extractable_agrees_on_memorized_and_prefix(trained):
    ex = mw.probe(trained.model, trained.rows, mode="exact")
    fast = mw.probe(trained.model, trained.rows, mode="extractable")
    assert torch.equal(ex.memorized, fast.memorized)
    assert torch.equal(ex.match_prefix, fast.match_prefix)
    assert torch.equal(fast.scores, fast.match_prefix.float() / 32)
    assert fast.greedy is None and ex.greedy.shape == (64, 32)
    # match_prefix is the length of the greedy run equal to the truth
    eq = ex.greedy == trained.rows[:, 32:64]
    expected = torch.where(eq.all(1), 32, (~eq).int().argmax(1))
    assert torch.equal(ex.match_prefix.long(), expected)


@pytest.mark.parametrize("strategy", ["speculative", "teacher_forced"])
def test_nll_is_teacher_forced_cross_entropy(trained, strategy):
    res = mw.probe(trained.model, trained.rows, mode="extractable", with_nll=True,
                   strategy=strategy)
    with torch.no_grad():
        logits = trained.model(trained.rows).logits[:, 31:63]
    expected = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), trained.rows[:, 32:64], reduction="none").mean(1)
    torch.testing.assert_close(res.nll, expected, rtol=1e-4, atol=1e-5)
    assert res.nll[trained.memorized].max() < res.nll[trained.repeats == 1].min()


@pytest.mark.parametrize("mode", ["exact", "extractable"])
@pytest.mark.parametrize("lockstep", [False, True])
def test_nll_first_is_the_first_tokens_cross_entropy_in_every_mode(trained, mode, lockstep):
    res = mw.probe(trained.model, trained.rows, mode=mode, batch_size=7, lockstep=lockstep)
    with torch.no_grad():
        logits = trained.model(trained.rows[:, :32]).logits[:, -1]
    expected = torch.nn.functional.cross_entropy(logits, trained.rows[:, 32], reduction="none")
    assert res.nll_first.dtype == torch.float32 and res.nll_first.shape == (len(trained.rows),)
    torch.testing.assert_close(res.nll_first, expected, rtol=1e-4, atol=1e-5)
    # one token is a noisier signal than 32: separated in bulk, not row by row
    assert res.nll_first[trained.memorized].max() < res.nll_first[trained.repeats == 1].median()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_exact_equals_reference_on_random_rows(untrained, data):
    n = data.draw(st.integers(1, 9))
    M = data.draw(st.integers(1, 12))
    N = data.draw(st.integers(1, 12))
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 512, (n, M + N + data.draw(st.integers(0, 3))), generator=g)
    bs = data.draw(st.integers(1, n))
    strategy = data.draw(st.sampled_from(["speculative", "teacher_forced"]))
    ref = mw.reference_probe(untrained, rows, M, N, batch_size=bs)
    res = mw.probe(untrained, rows, M, N, mode="exact", batch_size=bs, strategy=strategy)
    assert torch.equal(res.scores, ref)


def test_eos_is_banned_as_pythia_did(trained):
    # declare a token of memorized row 0's continuation to be EOS: min_length bans it, so the
    # row is no longer reproduced, in the reference and in the probe alike
    model, eos = trained.model, int(trained.rows[0, 40])
    saved = model.config.eos_token_id, model.generation_config.eos_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    try:
        ref = mw.reference_probe(model, trained.rows)
        res = mw.probe(model, trained.rows, mode="exact")
        assert torch.equal(res.scores, ref)
        assert not (res.greedy == eos).any() and not res.memorized[0]
        free = mw.probe(model, trained.rows, mode="exact", suppress_eos=False)
        assert free.memorized[0]
        assert torch.equal(free.scores, mw.reference_probe(model, trained.rows, suppress_eos=False))
    finally:
        model.config.eos_token_id, model.generation_config.eos_token_id = saved


class PlainLM(torch.nn.Module):
    """Not a transformers model: token ids -> logits, no cache, no generate()."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, ids):
        return self.hf(input_ids=ids).logits


def test_plain_module_matches_hf(trained):
    plain = PlainLM(trained.model)
    with pytest.warns(SlowPathWarning, match="PlainLM"):
        ex = mw.probe(plain, trained.rows[:16], mode="exact")
    ref = mw.reference_probe(plain, trained.rows[:16])
    hf = mw.reference_probe(trained.model, trained.rows[:16])
    assert torch.equal(ex.scores, ref)
    assert torch.equal(ex.scores, hf)


def test_gpt2_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=80, n_embd=32, n_layer=2,
                                       n_head=2, bos_token_id=0, eos_token_id=0)).eval()
    rows = torch.randint(0, 300, (12, 70))
    ref = mw.reference_probe(model, rows, 32, 32)
    assert torch.equal(mw.probe(model, rows, 32, 32).scores, ref)


def test_llama_model_bf16():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, bos_token_id=0, eos_token_id=0, hidden_size=32,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=80)
    model = LlamaForCausalLM(cfg).eval()
    rows = torch.randint(0, 300, (10, 64))
    assert torch.equal(mw.probe(model, rows).scores, mw.reference_probe(model, rows))
    res = mw.probe(model.to(torch.bfloat16), rows)
    assert res.scores.dtype == torch.float32 and len(res) == 10


def test_model_left_exactly_as_found(trained):
    model = trained.model
    model.train()
    model.gpt_neox.layers[0].eval()  # a mixed train/eval state must survive too
    flags = [m.training for m in model.modules()]
    params = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    with torch.enable_grad():
        mw.probe(model, trained.rows, mode="exact", with_nll=True)
        assert torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    for p, g in zip(model.parameters(), grads, strict=False):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    model.eval()


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(4, 64), "2-D integer"),
    (torch.zeros(64, dtype=torch.long), "2-D integer"),
    (torch.zeros(0, 64, dtype=torch.long), "empty"),
    (torch.zeros(3, 40, dtype=torch.long), "40 tokens.*64"),
])
def test_bad_input_is_named(trained, bad, match):
    with pytest.raises(ValueError, match=match):
        mw.probe(trained.model, bad)


def test_out_of_vocab_row_is_named(trained):
    rows = trained.rows.clone()
    rows[5, 7] = 512
    with pytest.raises(ValueError, match="row 5 has token id 512 at position 7"):
        mw.probe(trained.model, rows)
    with pytest.raises(ValueError, match="row 5"):
        mw.reference_probe(trained.model, rows)
    with pytest.raises(ValueError, match="prompt_len"):
        mw.probe(trained.model, trained.rows, prompt_len=0)
    with pytest.raises(ValueError, match="mode"):
        mw.probe(trained.model, trained.rows, mode="greedy")


@pytest.mark.parametrize("mode", ["exact", "extractable"])
def test_lockstep_calls_the_model_equally_often_whatever_the_rows(trained, mode):
    calls = []
    hook = trained.model.gpt_neox.register_forward_hook(lambda *_: calls.append(1))
    try:
        counts, results = [], []
        for rows in (trained.rows[:8], trained.rows[-8:], trained.rows[20:28]):  # mem / not / mix
            calls.clear()
            results.append(mw.probe(trained.model, rows, mode=mode, lockstep=True, batch_size=8))
            counts.append(len(calls))
            free = mw.probe(trained.model, rows, mode=mode, batch_size=8)
            assert torch.equal(results[-1].scores, free.scores)
            assert torch.equal(results[-1].match_prefix, free.match_prefix)
    finally:
        hook.remove()
    assert counts[0] == counts[1] == counts[2]
    assert results[0].memorized.all() and not results[1].memorized.any()


@pytest.mark.parametrize("mode", ["exact", "extractable"])
def test_several_prompt_lengths_score_the_same_continuation(trained, mode):
    res = mw.probe(trained.model, trained.rows, prompt_len=(16, 8, 32), mode=mode,
                   with_nll=True, batch_size=16)
    assert res.prompt_lens == (8, 16, 32) and res.scores_by_prompt_len.shape == (64, 3)
    assert torch.equal(res.scores_by_prompt_len[:, 2], res.scores)
    # every field is the longest prompt's: the same as a probe with that prompt alone
    alone = mw.probe(trained.model, trained.rows, 32, mode=mode, with_nll=True)
    assert torch.equal(res.scores, alone.scores) and torch.equal(res.log_pz, alone.log_pz)
    assert alone.prompt_lens == (32,) and torch.equal(alone.scores_by_prompt_len[:, 0],
                                                      alone.scores)
    for j, m in enumerate((8, 16)):  # the m tokens right before the continuation
        ref = mw.reference_probe(trained.model, trained.rows[:, 32 - m:], m, 32)
        if mode == "exact":
            assert torch.equal(res.scores_by_prompt_len[:, j], ref)
        assert torch.equal(res.scores_by_prompt_len[:, j] == 1, ref == 1)
    # a longer prompt reproduces more of the planted rows
    memorized = (res.scores_by_prompt_len == 1).sum(0)
    assert memorized[0] <= memorized[2] and memorized[0] < len(trained.rows)


def test_probe_spec_takes_a_tuple_of_prompt_lengths():
    spec = ProbeSpec(prompt_len=(64, 32, 64))
    assert spec.prompt_len == (32, 64) and spec.prompt_lens == (32, 64)
    assert spec.context_len == 64 and spec.total_len == 96
    assert ProbeSpec().prompt_len == 32 and ProbeSpec().prompt_lens == (32,)
    assert ProbeSpec(prompt_len=(25,)).prompt_len == 25
    for bad in ((), (0, 32), (32, 2.5), True, "32"):
        with pytest.raises(ValueError, match="prompt_len"):
            ProbeSpec(prompt_len=bad)


def test_a_spec_is_the_loose_settings_as_one_value(trained):
    spec = mw.ProbeSpec(16, 24, mode="extractable", with_nll=True, batch_size=7)
    assert spec.total_len == 40
    whole = mw.probe(trained.model, trained.rows, spec=spec)
    loose = mw.probe(trained.model, trained.rows, 16, 24, "extractable", True, 7)
    assert torch.equal(whole.match_prefix, loose.match_prefix) and whole.mode == "extractable"
    torch.testing.assert_close(whole.nll, loose.nll)
    with pytest.raises(TypeError, match="either spec= or the loose settings"):
        mw.probe(trained.model, trained.rows, batch_size=3, spec=spec)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        mw.ProbeSpec(batch_size=0)


def test_out_of_memory_halves_the_batch_and_later_probes_start_there(trained):
    """One OOM loop: a batch that runs out of memory is halved and redone, and the size that
    worked is remembered, so the next probe with the same BatchSize never tries the larger."""
    from memwatch.probe import BatchSize, ProbeSpec, _probe

    tried, fits = [], {"rows": 10}

    def hook(module, args, kwargs):
        rows = len(kwargs.get("input_ids", args[0] if args else None))
        tried.append(rows)
        if rows > fits["rows"]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    expected = mw.probe(trained.model, trained.rows, mode="extractable")
    handle = trained.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        sizer = BatchSize(40)
        spec = ProbeSpec(mode="extractable")
        first = _probe(trained.model, trained.rows, spec, sizer)
        assert tried[:3] == [40, 20, 10] and sizer.cap == 10
        tried.clear()
        second = _probe(trained.model, trained.rows, spec, sizer)
        assert tried and max(tried) == 10  # no failing attempt repeated
        tried.clear()
        fits["rows"] = 0
        with pytest.raises(torch.OutOfMemoryError):  # not even one row fits: the error, no loop
            _probe(trained.model, trained.rows, spec, BatchSize(2))
        assert tried == [2, 1]
    finally:
        handle.remove()
    for res in (first, second):
        assert torch.equal(res.match_prefix, expected.match_prefix)

