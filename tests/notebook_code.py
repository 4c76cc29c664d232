"""The lectures' versions of pieces that previous_chapters.py keeps in a faster form, taken from
the notebooks' own code cells, so that the tests compare the fast versions with exactly what a
learner runs (and nothing is written out a second time)."""

import json
from pathlib import Path

import torch
import torch.nn as nn

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def class_from_notebook(notebook, name, marker):
    """The class `name` as defined by the one code cell of `notebook` that starts with its
    definition and contains `marker` (which tells the lecture's version from the fast one)."""
    nb = json.loads((NOTEBOOKS / notebook).read_text(encoding="utf-8"))
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    [cell] = [s for s in sources if s.startswith(f"class {name}(nn.Module):") and marker in s]
    namespace = {"torch": torch, "nn": nn}
    exec(cell, namespace)  # the cell holds the class only
    return namespace[name]
