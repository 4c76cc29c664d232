"""Write the same Colab set-up cell into every notebook and solution notebook (its first code cell).

The repository URL is set in one place, pyproject.toml's [project.urls] Repository; this script
renders the cell from it. tests/test_repository.py checks every notebook's cell is up to date.
Run: python tools/colab_cell.py   (or make colab-cells)
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "# Colab set-up"

TEMPLATE = '''\
# Colab set-up: on Google Colab this fetches the course's helper modules and the packages Colab
# lacks; anywhere else it does nothing (`make lab` has set everything up). See README.md.
import sys

if "google.colab" in sys.modules:
    import os
    import pathlib
    import subprocess

    REPO_URL = "{url}"
    repo = pathlib.Path("/content/llm-from-scratch")
    if not repo.exists():
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "tiktoken", "google-crc32c"],
                   check=True)
    sys.path.insert(0, str(repo))  # what `pip install -e .` does in the local set-up
    os.chdir(repo / "notebooks")'''


def repository_url() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^Repository\s*=\s*"([^"]+)"', text, flags=re.M)
    if not match:
        sys.exit("pyproject.toml has no [project.urls] Repository")
    return match.group(1)


def colab_cell_source() -> str:
    return TEMPLATE.format(url=repository_url())


def first_code_cell(nb: dict) -> dict | None:
    return next((c for c in nb["cells"] if c["cell_type"] == "code"), None)


def main() -> None:
    source = colab_cell_source()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
            (ROOT / "solutions").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        cell = first_code_cell(nb)
        if cell is None or not "".join(cell["source"]).startswith(MARKER):
            print(f"{path.name}: its first code cell is not the Colab cell; fix it by hand")
            continue
        if "".join(cell["source"]) == source:
            continue  # up to date: leave the file as it is
        cell["source"] = source.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path.name}: Colab cell written")


if __name__ == "__main__":
    main()
