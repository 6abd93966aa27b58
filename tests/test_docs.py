"""Every ```python block of the README and docs/ runs (so the documentation cannot rot).

A block whose first line is ``# continuing the block above`` runs after that block, in its namespace (the docs
then need not repeat a model's training to show the next step)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


CONTINUED = "# continuing the block above\n"


def blocks():
    for path in DOCS:
        previous = ""
        for i, code in enumerate(BLOCK.findall(path.read_text())):
            if code.startswith(CONTINUED):
                assert previous, f"{path.name}#{i} continues a block, but it is the first"
                code = previous + code
            previous = code
            yield pytest.param(code, id=f"{path.name}#{i}")


@pytest.mark.parametrize("code", list(blocks()))
def test_code_block_runs(code, fmnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<doc>", "exec"), {"__name__": "__doc__"})


def test_docs_have_code():
    assert len(list(blocks())) >= 1
