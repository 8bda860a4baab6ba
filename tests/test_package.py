import ast
import subprocess
import sys
from pathlib import Path

import pytest

import memwatch as mw

SRC = Path(mw.__file__).parent.parent


@pytest.mark.slow
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


def _import_graph() -> dict[str, set[str]]:
    """memwatch module -> the memwatch modules it imports, at the top or inside a function."""
    files = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (SRC / "memwatch").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files
                            else node.module for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_no_import_cycle():
    graph = _import_graph()
    assert "memwatch.watchlist" in graph["memwatch.watchlist.planting"]  # a top-level import
    assert "memwatch.watchlist.canaries" in graph["memwatch.watchlist"]  # one in a function
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):]
                                                                 + [module]))
        if module not in done:
            for target in sorted(graph[module]):
                visit(target, [*path, module])
            done.add(module)

    for module in sorted(graph):
        visit(module, [])


@pytest.mark.slow
def test_cli_bench_runs(capsys):
    from memwatch.cli import main

    assert main(["bench", "--shape", "tiny", "--rows", "8", "--memorized", "0", "0.5",
                 "--repeat", "1"]) == 0
    path, *lines = capsys.readouterr().out.strip().splitlines()
    assert "runner kv-cache" in path and "extractable speculative 32.0" in path  # the fast path
    assert len(lines) == 2 and all("extractable" in line and "x |" in line for line in lines)
