"""Pretrain the course's GPTModel on train.bin / val.bin (scripts/prepare_data.py).

One process (GPU if there is one, else Apple's MPS, else the CPU):
    python scripts/pretrain.py --data-dir data/books --out-dir runs/books --max-steps 2000
Several GPUs on one machine (one process each, DistributedDataParallel over NCCL):
    torchrun --standalone --nproc_per_node=4 scripts/pretrain.py --data-dir ... --out-dir ...
Several machines (the same command on each; HOST is the first machine's address):
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:29500 --rdzv_id=run1 scripts/pretrain.py --data-dir ... --out-dir ...
Continue after an interruption: the same command with --resume.
The loop, the schedule and the checkpoints: pretraining.py; `--help` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the course's root modules

from pretraining import main  # noqa: E402

if __name__ == "__main__":
    main()
