"""Solutions notebooks hold only solutions (issue 14): they rebuild the state they need from package functions,
not from copies of their chapter's cells. A copy doubles CI time and drifts (chapter 6's 2-layer encoder did).

A code cell counts as shared when its normalised source (comments, blank lines and trailing spaces dropped,
runs of whitespace collapsed) equals that of a code cell of the chapter. Every chapter present is covered,
including chapters whose solutions are still being slimmed.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("*_solutions.ipynb"))

#: the most code cells a solutions notebook may share with its chapter
MAX_SHARED = 3


def normalised(source: str) -> str:
    lines = []
    for line in source.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if line.strip():
            lines.append(re.sub(r"\s+", " ", line.strip()))
    return "\n".join(lines)


def code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [normalised("".join(c["source"])) for c in cells if c["cell_type"] == "code"]


def chapter_of(solutions: Path) -> Path:
    return NOTEBOOKS / solutions.name.replace("_solutions.ipynb", ".ipynb")


def shared_cells(solutions: Path) -> list[str]:
    chapter = set(code_cells(chapter_of(solutions)))
    return [cell for cell in code_cells(solutions) if cell and cell in chapter]


def test_every_solutions_notebook_has_its_chapter():
    assert SOLUTIONS, "no solutions notebooks found"
    for path in SOLUTIONS:
        assert chapter_of(path).exists(), f"{path.name}: no chapter notebook {chapter_of(path).name}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_share_few_code_cells_with_their_chapter(path):
    limit = MAX_SHARED
    shared = shared_cells(path)
    assert len(shared) <= limit, (
        f"{path.name} shares {len(shared)} code cells with its chapter (at most {limit}): rebuild the state from "
        "package functions instead of copying the chapter's cells. Shared:\n\n" + "\n---\n".join(s[:200] for s in shared))


def test_the_comparison_can_fail(tmp_path):
    # a copy is found even when its comments and spacing differ
    assert normalised("x = f(1)   # one\n\n# note\ny  =  2\n") == normalised("x = f(1)\ny = 2")
    assert normalised("x = f(1)") != normalised("x = f(2)")
