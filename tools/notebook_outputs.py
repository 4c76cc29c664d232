"""Make a notebook's committed outputs: a run at default settings, or only the compared ones.

    python tools/notebook_outputs.py --default-run notebooks/04_pretraining.ipynb [...]
runs the notebook top to bottom at its default settings (COURSE_FAST unset) on the real data
(set COURSE_DATA_MIRROR to a folder holding the data files to run offline) and saves every
output, as a learner would see it. Cells tagged `needs-weights` (cell metadata "tags") are not
run: their outputs need OpenAI's real GPT-2 weights, which the machine that builds this
repository cannot download. Such a cell keeps only an output that the test suite compares
(NBVAL_CHECK_OUTPUT), from a run at test settings; a cell that is not tagged must not need one
that is. Carriage returns (progress bars) are resolved as a screen shows them.

    python tools/notebook_outputs.py notebooks/05_pretrained_weights.ipynb [...]
keeps only the compared outputs and strips the rest.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

TAG = "needs-weights"


def is_checked(cell) -> bool:
    return "NBVAL_CHECK_OUTPUT" in "".join(cell["source"])


def needs_weights(cell) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", [])


def resolve_carriage_returns(text: str) -> str:
    """What a screen shows of text with \\r: on each line, only what follows its last \\r."""
    text = re.sub(r"\r+\n", "\n", text)
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def merge_streams(outputs: list) -> list:
    """Consecutive outputs of one stream as one, its carriage returns resolved: each refresh of
    a progress bar arrives as an output of its own, and a screen shows only the last."""
    merged = []
    for out in outputs:
        last = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and last is not None
                and last.get("output_type") == "stream" and last["name"] == out["name"]):
            last["text"] += out["text"]
        else:
            merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream":
            out["text"] = resolve_carriage_returns(out["text"])
    return merged


def keep_checked_outputs(path: Path) -> int:
    nb = json.loads(path.read_text(encoding="utf-8"))
    stripped = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or is_checked(cell):
            continue
        if cell["outputs"] or cell["execution_count"] is not None:
            stripped += 1
        cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return stripped


def default_run(path: Path, timeout: int = 7200) -> tuple:
    """Run `path` in place at default settings, skipping cells tagged needs-weights.
    Returns (cells run, cells skipped)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    os.environ.pop("COURSE_FAST", None)
    work = Path(tempfile.mkdtemp(prefix="default-run-"))
    # outputs and (absent) models in a scratch folder: nothing of the run lands in the repo
    os.environ.setdefault("COURSE_OUTPUT_DIR", str(work / "outputs"))
    os.environ.setdefault("COURSE_MODELS_DIR", str(work / "models"))
    ran = skipped = 0
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                if needs_weights(cell):
                    if not is_checked(cell):
                        cell.outputs, cell.execution_count = [], None
                    skipped += 1
                    continue
                client.execute_cell(cell, index)  # raises CellExecutionError on an error
                cell.outputs = merge_streams(cell.outputs)
                ran += 1
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        shutil.rmtree(work, ignore_errors=True)  # the run's outputs and models (GBs at times)
    nbformat.write(nb, path)
    return ran, skipped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--default-run", action="store_true",
                        help="run at default settings and keep every output")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if args.default_run:
            ran, skipped = default_run(path)
            print(f"{path}: ran {ran} code cells at default settings, skipped {skipped} "
                  f"tagged {TAG}")
        else:
            print(f"{path}: stripped the outputs of {keep_checked_outputs(path)} cells")


if __name__ == "__main__":
    sys.exit(main())
