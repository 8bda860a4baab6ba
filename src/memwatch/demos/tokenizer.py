"""A real Hugging Face tokenizer trained on the spot, for demos and tests without the hub.

A byte-level BPE (GPT-2 / GPT-NeoX style, so every string encodes and offsets map
back to characters) trained on a few KB of text in well under a second. Token 0
is ``<|endoftext|>``, the EOS of `memwatch.demos.model`'s tiny GPT-NeoX. Needs the
``hf`` extra.
"""

from __future__ import annotations

from collections.abc import Iterable

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A `PreTrainedTokenizerFast` (byte-level BPE, `vocab_size` ids, EOS id 0) fit to `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 258 ids "
                         "(256 bytes + EOS + one merge)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)
