"""The docs stay true: the reference is generated from the code, links resolve, the README
starts with the two commands a new user types."""

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reference_is_in_sync_with_the_code():
    gen = runpy.run_path(str(ROOT / "docs" / "gen_reference.py"))
    current = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert gen["render"]() == current, "docs/reference.md is stale: python docs/gen_reference.py"


def test_readme_starts_with_install_and_demo_then_tests():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert "pip install torch==2.13.0" in blocks[0] and blocks[0].endswith("memwatch demo")
    assert blocks[1] == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install torch==2.13.0 && pip install -e ".[all,dev]"' in ci
    assert "python -m pytest -q" in ci


def test_markdown_links_resolve():
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", md.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (md.parent / target).exists(), f"{md.name} links to missing {target}"
