import subprocess
import sys

import memwatch as mw


def test_import_is_light():
    code = ("import sys, memwatch; heavy = {'transformers', 'lightning', 'wandb',"
            " 'presidio_analyzer', 'matplotlib', 'datasets', 'spacy', 'pytorch_lightning'};"
            " print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_resolve():
    for name in mw.__all__:
        assert getattr(mw, name) is not None, name
    assert callable(mw.probe) and callable(mw.reference_probe)


def test_cli_bench_runs(capsys):
    from memwatch.cli import main

    assert main(["bench", "--shape", "tiny", "--rows", "8", "--memorized", "0", "0.5",
                 "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("extractable" in line and "x |" in line for line in lines)
