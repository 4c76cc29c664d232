"""The course as a learner meets it: section numbers and lectures in the headings, the figures
the notebooks link (and the script that draws them), references between notebooks, exercises
and their solutions, and no notebook using what a later one builds."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
FIGURES = ROOT / "notebooks" / "figures"
LECTURE_NOTEBOOKS = [p for p in NOTEBOOKS if int(p.name[:2]) <= 7]  # 01-07 follow lectures 7-42
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
EXERCISE = re.compile(r"\*\*Exercise (\d+)\.(\d+)\*\*")
# a later notebook may be named as a pointer forward, never as where something was already done
BACKWARD_WORDS = re.compile(r"\b(built|defined|saw|seen|showed|shown|introduced|wrote|written|"
                            r"earlier|learned|learnt|did|made)\b", re.I)
BUILT_IN = re.compile(r"\b(?:built|defined|written) in notebook (\d\d)\b", re.I)


def cells(path, kind):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == kind]


def number(path):
    return int(path.name[:2])


def headings(path):
    return [line for md in cells(path, "markdown") for line in md.splitlines()
            if line.startswith("## ")]


def ids(paths):
    return [p.name for p in paths]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_sections_are_numbered_n_m_and_name_their_lecture(path):
    n = number(path)
    found = headings(path)
    assert found, "a notebook has sections"
    for m, heading in enumerate(found, start=1):
        assert heading.startswith(f"## {n}.{m} "), f"expected section {n}.{m}: {heading!r}"
        assert re.search(r"\blectures? \d+", heading, re.I), f"name the lecture: {heading!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_ends_with_two_to_four_exercises_and_has_their_solutions(path):
    n = number(path)
    last = headings(path)[-1]
    assert "Exercises" in last, f"the last section is the exercises, not {last!r}"
    text = "\n".join(cells(path, "markdown"))
    exercises = [(int(a), int(b)) for a, b in EXERCISE.findall(text)]
    assert exercises == [(n, k) for k in range(1, len(exercises) + 1)], exercises
    assert 2 <= len(exercises) <= 4, f"{len(exercises)} exercises"
    solution = ROOT / "solutions" / path.name.replace(".ipynb", "_solutions.ipynb")
    assert solution.exists(), f"{solution.name} is missing"
    solved = re.findall(r"^## Exercise (\d+)\.(\d+)", "\n".join(cells(solution, "markdown")),
                        re.M)
    assert [(int(a), int(b)) for a, b in solved] == exercises, "one solution per exercise"


def linked_figures(path):
    return [(alt, link) for md in cells(path, "markdown") for alt, link in IMAGE.findall(md)]


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=ids(NOTEBOOKS + SOLUTIONS))
def test_every_linked_figure_exists_and_has_alt_text(path):
    for alt, link in linked_figures(path):
        assert not link.startswith(("http:", "https:")), f"{link}: a local file, not the web"
        assert (path.parent / link).is_file(), f"{link} does not exist"
        assert alt.strip(), f"{link} needs alt text"


@pytest.mark.parametrize("path", LECTURE_NOTEBOOKS, ids=ids(LECTURE_NOTEBOOKS))
def test_each_lecture_notebook_has_its_diagrams(path):
    assert len(linked_figures(path)) >= 2


def test_every_figure_is_linked_and_drawn_again_the_same_by_the_script(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    committed = {p.name for p in FIGURES.glob("*.png")}
    linked = {Path(link).name for p in NOTEBOOKS + SOLUTIONS for _, link in linked_figures(p)}
    assert committed, "no figures"
    assert committed <= linked, f"figures no notebook links: {sorted(committed - linked)}"
    subprocess.run([sys.executable, str(ROOT / "figures" / "make_figures.py"), "--out",
                    str(tmp_path)], check=True, cwd=ROOT, capture_output=True, timeout=600)
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == committed, "run python figures/make_figures.py and commit its output"
    for name in sorted(drawn):
        old, new = imread(FIGURES / name), imread(tmp_path / name)
        assert old.shape == new.shape, f"{name}: {old.shape} committed, {new.shape} drawn"
        # tolerance for anti-aliasing differences between matplotlib/freetype builds only
        assert np.abs(old - new).mean() < 0.01, f"{name} differs from what the script draws"


SECTION_REF = re.compile(r"\bsections? (\d+)\.(\d+)", re.I)
NOTEBOOK_REF = re.compile(r"\bnotebooks? (\d\d)(?:\s*(?:-|–|and|or|to)\s*(\d\d))?", re.I)


def sentences(text):
    return re.split(r"(?<=[.!?:])\s+|\n\s*\n", text)


def section_numbers():
    found = set()
    for p in NOTEBOOKS:
        for h in headings(p):
            if m := re.match(rf"## {number(p)}\.(\d+) ", h):
                found.add((number(p), int(m[1])))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=ids(NOTEBOOKS + SOLUTIONS))
def test_references_to_notebooks_and_sections_exist_and_come_earlier(path):
    """"notebook 04", "notebooks 05-07", "section 4.8": the notebook or section exists; a later
    one is named only as a pointer forward ("notebook 06 fine-tunes ..."), never as where
    something was built or shown; and "`name` (built in notebook 04)" names the notebook whose
    section of previous_chapters.py defines `name`."""
    n = number(path)
    existing = {number(p) for p in NOTEBOOKS}
    sections = section_numbers()
    text = "\n\n".join(cells(path, "markdown") + cells(path, "code"))
    owner = helper_sections()
    problems = []
    for sentence in sentences(text):
        forward = not BACKWARD_WORDS.search(sentence)
        built_in = {int(k) for k in BUILT_IN.findall(sentence)}
        if len(built_in) == 1 and len(NOTEBOOK_REF.findall(sentence)) == 1:
            k = built_in.pop()
            for name in re.findall(r"`(\w+)", sentence):
                if name in owner and owner[name] != k:
                    problems.append(f"{name} is built in notebook {owner[name]:02d}, not {k:02d}: "
                                    f"{sentence[:90]!r}")
        for a, b in NOTEBOOK_REF.findall(sentence):
            for k in {int(a), int(b or a)}:
                if k not in existing:
                    problems.append(f"notebook {k:02d} does not exist: {sentence[:90]!r}")
                elif k > n and not forward and path.parent.name == "notebooks":
                    problems.append(f"notebook {k:02d} comes later, yet the sentence speaks of it "
                                    f"as done: {sentence[:90]!r}")
        for a, b in SECTION_REF.findall(sentence):
            k, m = int(a), int(b)
            if (k, m) not in sections:
                problems.append(f"section {k}.{m} does not exist: {sentence[:90]!r}")
            elif k > n and not forward and path.parent.name == "notebooks":
                problems.append(f"section {k}.{m} comes later: {sentence[:90]!r}")
    assert not problems, "\n".join(problems)


def helper_sections():
    """{name: notebook number} for what each section of previous_chapters.py defines."""
    owner, section = {}, None
    for line in (ROOT / "previous_chapters.py").read_text(encoding="utf-8").splitlines():
        if m := re.match(r"# =+ (\d\d)_\S+\.ipynb", line):
            section = int(m[1])
        elif (m := re.match(r"(?:def|class)\s+(\w+)|([A-Z_][A-Z0-9_]*)\s*=", line)) and section:
            owner.setdefault(m[1] or m[2], section)
    return owner


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=ids(NOTEBOOKS + SOLUTIONS))
def test_no_notebook_uses_what_a_later_notebook_builds(path):
    n = number(path)
    code = "\n".join(cells(path, "code"))
    own = set(re.findall(r"^\s*(?:def|class)\s+(\w+)", code, re.M))
    later = sorted(name for name, section in helper_sections().items()
                   if section > n and name not in own and re.search(rf"\b{name}\b", code))
    assert not later, f"uses {later} from a later notebook's section of previous_chapters.py"
