"""The CLI rejects bad invocations with one line naming the argument, exit code 2, no traceback."""

from __future__ import annotations

import pytest
import torch

from memwatch.cli import main

NO_CUDA = not torch.cuda.is_available()

# (argv, what the one error line must name)
BAD = [
    (["demo", "--steps", "-5"], "argument --steps: expected a positive integer"),
    (["demo", "--steps", "0"], "argument --steps: expected a positive integer"),
    (["demo", "--steps", "ten"], "argument --steps: expected a positive integer"),
    (["demo", "--device", "gpu"], "argument --device: expected cpu or cuda"),
    (["demo", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
    (["demo", "--threads", "0"], "argument --threads: expected a positive integer"),
    (["demo", "--out", "a-file"], "argument --out: expected a folder to write into"),
    (["demo", "--wandb", "maybe"], "argument --wandb: invalid choice"),
    (["bench", "--rows", "-5"], "argument --rows: expected a positive integer"),
    (["bench", "--memorized", "1.5"], "argument --memorized: expected a fraction"),
    (["bench", "--memorized", "0", "nan"], "argument --memorized: expected a fraction"),
    (["bench", "--repeat", "0"], "argument --repeat: expected a positive integer"),
    (["bench", "--batch-size", "0"], "argument --batch-size: expected a positive integer"),
    (["bench", "--device", "gpu"], "argument --device: expected one of cpu, cuda"),
    (["bench", "--device", "cpu:1"], "argument --device: expected one of cpu, cuda"),
    (["bench", "--shape", "pythia-12b"], "argument --shape: invalid choice"),
    (["watchlist", "build", "--out", "x", "--tokenizer", "./no-such-tok"],
     "argument --tokenizer: expected a tokenizer directory"),
    (["watchlist", "build", "--out", "x", "--steps", "10"], "argument --steps: expected steps A:B"),
    (["watchlist", "build", "--out", "x", "--steps", "5:2"], "argument --steps: expected steps"),
    (["watchlist", "build", "--out", "x", "--texts", "missing.txt"],
     "argument --texts: expected a readable file, got 'missing.txt'"),
    (["watchlist", "build", "--out", "x", "--windows", "-1"], "argument --windows: expected"),
    (["watchlist", "build", "--out", "x", "--canaries", "many"], "argument --canaries: expected"),
    (["watchlist", "build", "--out", "x", "--prompt-len", "0"], "argument --prompt-len: expected"),
    (["watchlist", "build", "--out", "x", "--pythia", "no/such/prefix"],
     "argument --pythia: expected the prefix of a .idx/.bin pair"),
    (["watchlist", "build", "--out", "x", "--indices", "3:1"], "argument --indices: '3:1' selects"),
    (["watchlist", "build", "--out", "x", "--indices", "a:b"], "argument --indices: index range"),
    (["watchlist", "build", "--windows", "3"], "the following arguments are required: --out"),
    (["watchlist", "show", "no-such-dir"], "argument path: expected an existing directory"),
    (["watchlist", "show", ".", "--limit", "-2"], "argument --limit: expected an integer >= 0"),
    (["watchlist"], "the following arguments are required: ACTION"),
    (["frobnicate"], "argument COMMAND: invalid choice"),
]
if NO_CUDA:
    BAD += [(["demo", "--device", "cuda"], "argument --device: 'cuda' asked for, but torch sees "
                                           "no CUDA GPU"),
            (["bench", "--device", "cuda:0"], "argument --device: 'cuda:0' asked for")]


@pytest.mark.parametrize("argv, expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_invocation_is_one_line_and_exit_2(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("memwatch"), err
    assert expected in err, err


def test_watchlist_build_errors_found_while_working_are_one_line(capsys, tmp_path):
    """Errors only the work can find (no tokenizer in a folder, a JSONL line without the
    field, nothing to build) also end in one line and exit code 2."""
    bad_jsonl = tmp_path / "rows.jsonl"
    bad_jsonl.write_text('{"body": "hello"}\n')
    cases = [
        (["--tokenizer", str(tmp_path), "--canaries", "2"],
         f"--tokenizer {str(tmp_path)!r}: no tokenizer could be loaded"),
        (["--texts", str(bad_jsonl), "--windows", "0"], "rows.jsonl:1 has no field 'text'"),
        ([], "nothing to build"),
        (["--canaries", "2"], "need --tokenizer"),
    ]
    for extra, expected in cases:
        code = main(["watchlist", "build", "--out", str(tmp_path / "wl"), *extra])
        err = capsys.readouterr().err
        assert code == 2, extra
        assert err.count("\n") == 1 and expected in err, err
