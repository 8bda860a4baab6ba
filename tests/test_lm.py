"""Model access: the probe takes its fast path on every supported transformers.

Equality tests cannot see speed; these count the tokens the model embeds. Run under
the newest transformers (the README install) and the oldest (`.ci/run`'s second venv).
"""

import warnings

import pytest
import torch

import memwatch as mw
from memwatch.lm import SlowPathWarning, TokenCounter, eos_ids, runner, vocab_size

M, N, ROWS = 32, 32, 12


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=80, rotary_pct=0.25, bos_token_id=0,
        eos_token_id=0))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=80, n_embd=32, n_layer=2,
                                      n_head=2, bos_token_id=0, eos_token_id=0))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=300, bos_token_id=0, eos_token_id=0, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=80))


MODELS = {"gpt-neox": _gpt_neox, "gpt2": _gpt2, "llama": _llama}


def _model(name):
    torch.manual_seed(0)
    return MODELS[name]().eval()


def _missing_rows(model) -> torch.Tensor:
    """Random rows whose first continuation token is never the model's greedy token."""
    rows = torch.randint(1, 300, (ROWS, M + N), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=rows[:, :M]).logits[:, -1]
    logits[:, 0] = float("-inf")  # EOS is banned
    rows[:, M] = (logits.argmax(-1) % 299) + 1  # never equal to the greedy token
    return rows


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_path_processes_only_the_prompts_when_every_row_misses_at_once(name):
    model = _model(name)
    rows = _missing_rows(model)
    mw.probe(model, rows[:1])  # the runner's trial happens once per model, outside the count
    assert runner(model).name == "kv-cache"
    with TokenCounter(model) as count:
        res = mw.probe(model, rows, mode="extractable", strategy="speculative")
    assert not res.match_prefix.any()
    assert count.tokens == ROWS * M  # recomputation would process many times more
    with TokenCounter(model) as count:
        res = mw.probe(model, rows, mode="exact", strategy="speculative")
    # the prompt once, then one token per decoded position: no prefix is recomputed
    assert count.tokens == ROWS * (M + N - 1)
    assert torch.equal(res.scores, mw.reference_probe(model, rows))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_teacher_forced_path_is_one_pass_and_equal(name):
    model = _model(name)
    rows = _missing_rows(model)
    rows[:4, M:] = mw.probe(model, rows[:4], mode="exact").greedy  # 4 memorized rows
    with TokenCounter(model) as count:
        res = mw.probe(model, rows, mode="extractable", with_nll=True)  # auto: teacher-forced
    # the NLL's pass also finds the first misses and gives every measure (log p_z, min-k %,
    # zlib ratio, per-token log-probs): no extra forward
    assert count.tokens == ROWS * (M + N - 1) and count.calls == 1
    assert res.log_pz is not None and res.min_k_logprob is not None
    assert res.zlib_ratio is not None and res.token_logprobs.shape == (ROWS, N)
    assert res.memorized.tolist() == [True] * 4 + [False] * (ROWS - 4)
    spec = mw.probe(model, rows, mode="exact", strategy="speculative", with_nll=True)
    with TokenCounter(model) as count:
        tf = mw.probe(model, rows, mode="exact", strategy="teacher_forced", with_nll=True)
    # one pass, then the 8 diverged rows decode in one fixed batch: one token per row and step
    assert count.tokens == ROWS * (M + N - 1) + (ROWS - 4) * (N - 1)
    assert torch.equal(tf.scores, spec.scores) and torch.equal(tf.greedy, spec.greedy)
    assert torch.equal(tf.match_prefix, spec.match_prefix)
    torch.testing.assert_close(tf.nll, spec.nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tf.nll_first, spec.nll_first, rtol=1e-5, atol=1e-5)
    assert torch.equal(tf.scores, mw.reference_probe(model, rows))


def test_no_deprecation_warning_from_our_calls():
    model = _model("gpt-neox")
    rows = _missing_rows(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for strategy in ("speculative", "teacher_forced"):
            mw.probe(model, rows, mode="exact", with_nll=True, strategy=strategy)
    bad = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))
           or "deprecat" in str(w.message).lower()]
    assert not bad, [str(w.message) for w in bad]


class IgnoresCache(torch.nn.Module):
    """Takes a `cache` argument and drops it: a model whose cache does not work."""

    def __init__(self, hf):
        super().__init__()
        self.hf, self.config = hf, hf.config

    def forward(self, input_ids, attention_mask=None, cache=None, use_cache=None, **_):
        return self.hf(input_ids=input_ids, use_cache=False)

    def get_input_embeddings(self):
        return self.hf.get_input_embeddings()


class NoCache(torch.nn.Module):
    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, ids):
        return self.hf(input_ids=ids).logits


@pytest.mark.parametrize("wrapper", [IgnoresCache, NoCache])
def test_a_model_without_a_working_cache_is_recomputed_and_says_so_once(wrapper):
    hf = _model("gpt-neox")
    model = wrapper(hf)
    rows = _missing_rows(hf)[:4]
    with pytest.warns(SlowPathWarning, match=wrapper.__name__):
        res = mw.probe(model, rows, mode="exact")
    assert runner(model).name == "recompute"
    assert torch.equal(res.scores, mw.reference_probe(hf, rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPathWarning)
        mw.probe(wrapper(hf), rows, mode="extractable")  # once per class, not per call


def test_vocab_size_of_a_plain_module_is_its_embedding():
    assert vocab_size(torch.nn.Sequential(torch.nn.Embedding(77, 4))) == 77
    assert vocab_size(_model("gpt2")) == 300


def test_every_eos_id_is_banned_as_generate_bans_them(trained):
    """Llama-3 lists two EOS ids; min_length bans both, and so must the probe."""
    model = trained.model
    eos = [0, int(trained.rows[0, 40])]  # the second: a token of memorized row 0's continuation
    saved = model.config.eos_token_id, model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        assert eos_ids(model) == sorted(eos)
        ref = mw.reference_probe(model, trained.rows)
        res = mw.probe(model, trained.rows, mode="exact")
        assert torch.equal(res.scores, ref)
        assert ref[0] < 1 and not res.memorized[0]  # banning only the first id would keep it
        assert not torch.isin(res.greedy, torch.tensor(eos)).any()
    finally:
        model.config.eos_token_id, model.generation_config.eos_token_id = saved


def test_nan_weights_leave_the_fast_path_undecided_not_slow():
    """NaN logits say nothing about a cache: no slow-path verdict sticks to the model."""
    model = _model("gpt-neox")
    rows = _missing_rows(model)
    head = model.get_output_embeddings().weight
    saved = head.detach().clone()
    with torch.no_grad():
        head.fill_(float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPathWarning)
        mw.probe(model, rows, mode="extractable")
    with torch.no_grad():
        head.copy_(saved)
    with TokenCounter(model) as count:
        mw.probe(model, rows, mode="extractable", strategy="speculative")
    assert runner(model).name == "kv-cache" and count.tokens == ROWS * M + 3 + 2 + 1 + 3
