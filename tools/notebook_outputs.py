"""Keep only the outputs that the test suite compares (cells marked NBVAL_CHECK_OUTPUT).

For notebooks whose default settings need what this machine cannot have (OpenAI's real GPT-2
weights), the committed outputs are only the compared ones: run the notebook at test settings,
then strip every other output with this script.
Run: python tools/notebook_outputs.py notebooks/05_pretrained_weights.ipynb [...]
"""

import json
import sys
from pathlib import Path


def keep_checked_outputs(path: Path) -> int:
    nb = json.loads(path.read_text(encoding="utf-8"))
    stripped = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "NBVAL_CHECK_OUTPUT" in "".join(cell["source"]):
            continue
        if cell["outputs"] or cell["execution_count"] is not None:
            stripped += 1
        cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return stripped


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}: stripped the outputs of {keep_checked_outputs(Path(arg))} cells")
