"""`memwatch eval` and `memwatch bench` on a GGUF model (`--gguf-file`): a tiny Llama file."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("gguf", reason="the `gguf` package reads GGUF files: pip install "
                                   "'memwatch[realmodel]'")

from gguf_models import write_tiny_llama_gguf  # noqa: E402

from memwatch.cli import main  # noqa: E402
from memwatch.probe import reference_probe  # noqa: E402
from memwatch.watchlist import Watchlist  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_llama_gguf(path)


def test_gguf_file_loads_as_the_model_it_was_written_from(tiny_gguf):
    from memwatch.commands.bench import load_gguf

    path, model = tiny_gguf
    loaded = load_gguf(str(path))
    x = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("with_model", [False, True])
def test_eval_scores_a_gguf_file_like_the_reference(tiny_gguf, tmp_path, with_model):
    path, model = tiny_gguf
    rows = torch.randint(3, 512, (12, 40), generator=torch.Generator().manual_seed(0))
    rows[:4, 16:32] = reference_probe_greedy(model, rows[:4])  # memorized rows as well
    Watchlist.from_tokens(rows).save(tmp_path / "wl")
    where = ["--model", str(path.parent), "--gguf-file", path.name] if with_model \
        else ["--gguf-file", str(path)]
    code = main(["eval", *where, "--watchlist", str(tmp_path / "wl"), "--prompt-len", "16",
                 "--cont-len", "16", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    table = pq.read_table(tmp_path / "out" / "tiny-llama" / "main.parquet")
    want = reference_probe(model, rows, prompt_len=16, cont_len=16)
    assert table["score"].to_pylist() == want.tolist()
    assert sum(s == 1.0 for s in table["score"].to_pylist()) >= 4


def reference_probe_greedy(model, rows):
    """The model's own greedy continuation of rows[:, :16] (16 tokens): memorized rows."""
    from memwatch.probe import probe

    return probe(model, rows, prompt_len=16, cont_len=16).greedy


def test_eval_names_a_missing_gguf_file(tiny_gguf, tmp_path, capsys):
    path, _ = tiny_gguf
    Watchlist.from_tokens(torch.randint(3, 512, (2, 64))).save(tmp_path / "wl")
    code = main(["eval", "--model", str(path.parent), "--gguf-file", "other.gguf",
                 "--watchlist", str(tmp_path / "wl"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no GGUF file 'other.gguf' in" in capsys.readouterr().err


def test_bench_times_a_gguf_file(tiny_gguf, capsys):
    path, _ = tiny_gguf
    assert main(["bench", "--gguf-file", str(path), "--rows", "8", "--memorized", "0",
                 "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "runner kv-cache" in out
    assert "tiny-llama.gguf fp32 cpu 8 rows, 0% memorized: reference" in out
