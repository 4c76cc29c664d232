"""Checkpoints of a pretraining run that survive crashes, for pretraining.py.

A checkpoint is one file, `step_00001200.pt` (torch.save's zip format), holding everything the
run needs to continue exactly: the model's and the optimizer's state, the step, the data position
(samples seen), the model config, and every rank's random-number states (python, numpy, torch,
CUDA). It is written by notebook 04's save_to_file (to `step_00001200.pt.tmp`, flushed to the
disk, and only then renamed into place), so a crash while writing leaves the previous checkpoints
untouched; the oldest files beyond the last `keep` are then removed.

Loading refuses, with a message naming the file, anything that is not a complete checkpoint of
this script (cut short, another program's file, a missing entry); `latest_checkpoint` then falls
back to the newest one that loads. Files are read with torch.load(weights_only=True): tensors and
plain Python values only, never code.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from input_checks import check_int, first_existing, shape_of
from previous_chapters import save_to_file

__all__ = ["FORMAT", "CheckpointError", "rng_state", "set_rng_state", "save_checkpoint",
           "load_checkpoint", "list_checkpoints", "latest_checkpoint"]

FORMAT = "llm-from-scratch-course/pretrain/1"  # changes when the contents change
REQUIRED = ("format", "step", "samples_seen", "model", "optimizer", "config", "tied", "rng",
            "elapsed_s", "train_tokens", "args")
NAME = re.compile(r"step_(\d{8})\.pt")


# what each entry must be (a file of this format with other values is damaged or edited)
KINDS = {"step": int, "samples_seen": int, "model": dict, "optimizer": dict, "config": dict,
         "tied": bool, "rng": list, "elapsed_s": (int, float), "train_tokens": int, "args": dict}
RNG_KEYS = ("python", "numpy", "torch", "cuda")


class CheckpointError(ValueError):
    """A file that is not a complete checkpoint of scripts/pretrain.py."""


def _folder(value, name="ckpt_dir") -> Path:
    """`value` (a str or os.PathLike) as a Path, which is not a file."""
    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str)
                                                     and not value.strip()):
        raise TypeError(f"{name} must be a folder's path (a str or pathlib.Path), not "
                        f"{shape_of(value)}")
    path = Path(value)
    parent = first_existing(path)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{name} {path}: {parent} is a file, not a folder; pass the "
                         "folder that holds (or will hold) the step_XXXXXXXX.pt files.")
    return path


def _check_rng_state(state, source="state") -> None:
    """What set_rng_state restores: rng_state()'s dict."""
    if not isinstance(state, dict) or any(k not in state for k in RNG_KEYS):
        raise ValueError(f"{source} must be what rng_state() returns (a dict with "
                         f"{list(RNG_KEYS)}), not {shape_of(state)}")
    numpy_state = state["numpy"]
    if (not isinstance(state["torch"], torch.Tensor) or state["torch"].dtype != torch.uint8
            or not isinstance(numpy_state, (tuple, list)) or len(numpy_state) != 5
            or not isinstance(numpy_state[1], torch.Tensor)
            or not isinstance(state["python"], (tuple, list))):
        raise ValueError(f"{source} is not rng_state()'s: its 'torch' must be a uint8 tensor, "
                         "its 'numpy' numpy's 5-tuple (keys as a tensor), its 'python' "
                         "random.getstate()'s tuple. Pass what rng_state() returned.")


def rng_state() -> dict:
    """This process's random-number states: python, numpy, torch (CPU) and CUDA if present."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            # numpy's state as a tensor and plain numbers: weights_only loading accepts those
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state returned."""
    _check_rng_state(state)
    try:
        random.getstate()  # (the checks of each library below, before any state is changed)
        np.random.RandomState().set_state((*state["numpy"][:1],
                                           state["numpy"][1].numpy().astype(np.uint32),
                                           *state["numpy"][2:]))
        torch.Generator().set_state(state["torch"])
        random.Random().setstate(state["python"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"state is not rng_state()'s ({type(e).__name__}: {e}); nothing was "
                         "restored. Pass what rng_state() returned.") from None
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(ckpt_dir) -> list:
    """The checkpoint files in ckpt_dir, oldest step first."""
    ckpt_dir = _folder(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if NAME.fullmatch(p.name))


def save_checkpoint(state: dict, ckpt_dir, keep: int = 3) -> Path:
    """Write `state` (with its "step") as ckpt_dir/step_XXXXXXXX.pt by temp file, fsync and
    rename; then keep only the newest `keep` checkpoints (0: all). Returns the new file's path."""
    if not isinstance(state, dict) or "step" not in state:
        raise TypeError(f"state must be a dict with the checkpoint's entries "
                        f"({', '.join(REQUIRED[1:])}), not {shape_of(state)}")
    check_int(state["step"], "state['step']", minimum=0, maximum=10**8 - 1)
    check_int(keep, "keep", minimum=0)
    ckpt_dir = _folder(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = save_to_file({"format": FORMAT, **state}, ckpt_dir / f"step_{state['step']:08d}.pt")
    _fsync_dir(ckpt_dir)  # and the rename itself is on the disk
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path) -> dict:
    """A checkpoint's contents (tensors on the CPU); CheckpointError, naming the file, if it is
    cut short, unreadable, or not a checkpoint of this script; FileNotFoundError if missing."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a checkpoint file's path (a str or pathlib.Path), not "
                        f"{shape_of(path)}")
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{path} {what}; pass a checkpoint file (step_XXXXXXXX.pt), or "
                                "use latest_checkpoint(folder) to find the newest.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip errors, unpickling errors, ...: all mean "not usable"
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]  # torch's first sentence
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{first}); it may have been cut short by a crash or a full "
                              "disk.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a checkpoint of scripts/pretrain.py (format "
                              f"{found!r}, expected {FORMAT!r}).")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it is incomplete.")
    wrong = [f"{k} is {shape_of(state[k])}" for k, kind in KINDS.items()
             if not isinstance(state[k], kind) or (kind is int and isinstance(state[k], bool))]
    if wrong:
        raise CheckpointError(f"{path} has entries of the wrong kind ({'; '.join(wrong)}): it "
                              "was edited or written by another program. Use another checkpoint.")
    return state


def latest_checkpoint(ckpt_dir, log=print):
    """(path, contents) of the newest checkpoint in ckpt_dir that loads, or (None, None) if there
    is none; each refused file is reported through `log` with the one used instead."""
    if not callable(log):
        raise TypeError(f"log must be a function such as print, not {shape_of(log)}")
    refused = []
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            log(f"Refused: {e}")
            refused.append(path)
            continue
        if refused:
            log(f"Using the previous good checkpoint instead: {path}")
        return path, state
    if refused:
        raise CheckpointError(f"no checkpoint in {ckpt_dir} loads (refused: "
                              f"{', '.join(p.name for p in refused)}); start without --resume "
                              "or restore a good copy.")
    return None, None
