"""The repository's own rules: notebook structure, the Colab cell, and previous_chapters.py
matching the notebooks that build it (a guard against the two drifting apart)."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
HELPERS = ROOT / "previous_chapters.py"
BANNER = re.compile(r"^# ===== (\S+\.ipynb) =====$")


def code_cells(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def normalise(src):
    return "\n".join(line.rstrip() for line in src.strip().splitlines())


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.name)
def test_notebook_opens_with_title_lectures_colab_cell_and_settings(path):
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    from colab_cell import colab_cell_source

    nb = json.loads(path.read_text(encoding="utf-8"))
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    assert re.search(r"[Ll]ectures? \d+", "".join(first["source"])), "name the lectures at the top"
    cells = code_cells(path)
    assert cells[0] == colab_cell_source(), "run `make colab-cells`"
    assert "COURSE_FAST" in cells[1], "the second code cell is the settings cell"
    branching = [i for i, c in enumerate(cells) if re.search(r"\bFAST\b|COURSE_FAST", c)]
    assert branching == [1], f"only the settings cell may read the test mode; also {branching}"


def helper_definitions():
    """(name, source, notebook) for each top-level definition in previous_chapters.py."""
    text = HELPERS.read_text(encoding="utf-8")
    lines = text.splitlines()
    banners = [(i + 1, m.group(1)) for i, line in enumerate(lines) if (m := BANNER.match(line))]
    out = []
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "__all__":
                continue
        else:
            continue
        section = [nb for line, nb in banners if line < node.lineno]
        assert section, f"{name} stands before the first notebook banner"
        start = node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else None
        src = "\n".join(lines[(start or node.lineno) - 1:node.end_lineno])
        out.append((name, src, section[-1]))
    return out


def test_helpers_are_listed_once_in_notebook_order():
    import previous_chapters

    names = [name for name, _, _ in helper_definitions()]
    assert len(names) == len(set(names)), "something is defined twice"
    assert names == list(previous_chapters.__all__), "__all__ lists every helper in file order"
    notebooks = [nb for _, _, nb in helper_definitions()]
    assert notebooks == sorted(notebooks), "sections follow the notebook order"


@pytest.mark.parametrize("name,src,notebook",
                         helper_definitions(), ids=[d[0] for d in helper_definitions()])
def test_helper_source_appears_in_its_notebook(name, src, notebook):
    path = ROOT / "notebooks" / notebook
    assert path.exists(), f"{notebook} (named by the banner above {name}) does not exist"
    assert normalise(src) in normalise("\n".join(code_cells(path))), (
        f"{name} in previous_chapters.py differs from its code in {notebook}: change both"
    )
