"""Run by tests/test_pretraining_script.py under torchrun: scripts/pretrain.py's training, then
this rank's final parameters to OUT_DIR/params_rank<RANK>.pt, so that the test can compare the
ranks with each other and with a single-process run."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pretraining import build_parser, train  # noqa: E402

if __name__ == "__main__":
    args = build_parser().parse_args()
    model, _ = train(args)
    rank = os.environ.get("RANK", "0")
    torch.save(model.state_dict(), Path(args.out_dir) / f"params_rank{rank}.pt")
