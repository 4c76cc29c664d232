"""Fetch OpenAI's GPT-2 checkpoint files and read them into nested dicts of numpy arrays.

`download_and_load_gpt2(model_size, models_dir)` -> (settings, params) is what notebook 05 calls;
`load_gpt2_params_from_tf_ckpt(ckpt_path, settings)` reads the TensorFlow checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["MODEL_SIZES", "CHECKPOINT_FILES", "download_and_load_gpt2",
           "load_gpt2_params_from_tf_ckpt"]

MODEL_SIZES = ("124M", "355M", "774M", "1558M")
CHECKPOINT_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
                    "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"


def download_and_load_gpt2(model_size, models_dir):
    """Return (settings, params) of GPT-2 `model_size`, downloading its files if needed."""
    model_dir = Path(models_dir) / model_size
    missing = [f for f in CHECKPOINT_FILES if not (model_dir / f).is_file()]
    if missing:
        if model_size not in MODEL_SIZES:
            raise ValueError(f"unknown model size {model_size!r}; choose one of {MODEL_SIZES}")
        from course_data import download_file

        model_dir.mkdir(parents=True, exist_ok=True)
        for fname in missing:
            download_file(f"{BASE_URL}/{model_size}/{fname}", model_dir / fname)
    settings = json.loads((model_dir / "hparams.json").read_text(encoding="utf-8"))
    params = load_gpt2_params_from_tf_ckpt(str(model_dir / "model.ckpt"), settings)
    return settings, params


def _read_checkpoint_with_tensorflow(ckpt_path):
    """{variable name: array} through TensorFlow's own checkpoint reader (the lecture's route)."""
    import tensorflow as tf

    return {name: tf.train.load_variable(ckpt_path, name)
            for name, _ in tf.train.list_variables(ckpt_path)}


def load_gpt2_params_from_tf_ckpt(ckpt_path, settings):
    """Nest the checkpoint's `model/...` variables: wte, wpe, blocks[i][...], g, b (squeezed)."""
    params = {"blocks": [{} for _ in range(settings["n_layer"])]}
    for name, array in _read_checkpoint_with_tensorflow(ckpt_path).items():
        parts = name.split("/")[1:]  # drop the leading "model/"
        target = params
        if parts[0].startswith("h"):  # "h0", "h1", ...: a transformer block
            target = params["blocks"][int(parts[0][1:])]
        for key in parts[1:-1]:
            target = target.setdefault(key, {})
        target[parts[-1]] = np.squeeze(array)
    return params
