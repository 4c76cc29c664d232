"""Time and measure loading a full-size GPT-2 124M checkpoint, each route in a fresh process.

Writes a random checkpoint of the 124M model in OpenAI's exact layout (TensorFlow's SaveV2 op, a
497,759,232-byte data shard) to a temporary folder once, then runs every contender in its own
Python process and prints whole-process wall time (interpreter start to exit), the time spent
importing TensorFlow, and the peak resident memory (the child's ru_maxrss; Linux's VmHWM as a
cross-check). The shard stays in
the operating system's page cache, so every route reads it warm.

Rows (d) build GPTModel on the meta device, so that the memory-mapped arrays become the weights
themselves (previous_chapters.assign_, gpt_from_pretrained(mmap=True)), then run one forward
pass, which reads every weight: mapped pages count in the resident memory once read. For them the
table also gives the growth over the process's memory after its imports (torch alone is ~200 MB).

Run: .venv/bin/python benchmarks/bench_checkpoint_loading.py [--repeat 3]
Targets (issue 5): (a) >= 5x faster than (b) as whole processes, peak < 1.2x the shard;
(c) built-in route <= 2.5x the shard at peak. (issue 17): (d) peak growth <= 1.3x the model's
fp32 bytes (the shard's size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # benchmarks/common.py

ROOT = Path(__file__).resolve().parent.parent
HPARAMS = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
DATA = "model.ckpt.data-00000-of-00001"

CONTENDERS = {  # key: (label, code run in the child; `folder` is the models dir)
    "a": ("(a) files -> params, numpy reader (CRC on)", "numpy_params"),
    "a+": ("(a') the same, then every array read once", "numpy_params_touched"),
    "b": ("(b) files -> params, tf.train.load_variable loop", "tf_loop_params"),
    "b+": ("(b') files -> params, our reader='tensorflow'", "tf_reader_params"),
    "c": ("(c) files -> GPTModel, numpy reader", "numpy_model"),
    "c-tf": ("(c) files -> GPTModel, tf.train.load_variable loop", "tf_loop_model"),
    "c-hf": ("(c) files -> GPTModel, from_pretrained (safetensors)", "hf_model"),
    "c+": ("(c+) as (c), then one forward pass", "numpy_model_forward"),
    "d": ("(d) meta device, numpy reader, + forward pass", "numpy_meta_forward"),
    "d-hf": ("(d) from_pretrained(mmap=True), + forward pass", "hf_mmap_forward"),
}


def write_checkpoint(folder: Path) -> None:
    """A random 124M GPT-2 in OpenAI's layout, plus the same weights as a Hugging Face folder."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from tests.tiny_checkpoint import (
        random_gpt2_tensors,
        write_hf_checkpoint,
        write_openai_checkpoint_raw,
    )

    model_dir = folder / "124M-random"
    tensors = random_gpt2_tensors(HPARAMS, seed=123)
    write_openai_checkpoint_raw(model_dir, HPARAMS, tensors)
    assert (model_dir / DATA).stat().st_size == 497_759_232

    write_hf_checkpoint(folder / "hf", HPARAMS, tensors)  # the Hugging Face layout of the same


# ----- what each child process runs ------------------------------------------------------------

def _import_tf():
    start = time.perf_counter()
    import tensorflow as tf

    return tf, time.perf_counter() - start


def _tf_loop(tf, ckpt):
    """The common course code: one tf.train.load_variable call per variable."""
    import numpy as np

    params = {"blocks": [{} for _ in range(HPARAMS["n_layer"])]}
    for name, _ in tf.train.list_variables(ckpt):
        array = np.squeeze(tf.train.load_variable(ckpt, name))
        parts = name.split("/")[1:]
        target = params
        if parts[0].startswith("h"):
            target = params["blocks"][int(parts[0][1:])]
        for key in parts[1:-1]:
            target = target.setdefault(key, {})
        target[parts[-1]] = array
    return params


def child(kind: str, folder: Path) -> dict:
    import gpt_download3

    if kind.endswith("_forward"):
        import torch  # noqa: F401  (imported before the baseline: it is not the model's memory)

        import previous_chapters  # noqa: F401
    before = _vm_status("VmRSS")
    tf_import = 0.0
    ckpt = str(folder / "124M-random" / "model.ckpt")
    if kind in ("numpy_params", "numpy_params_touched", "numpy_model", "numpy_model_forward",
                "numpy_meta_forward"):
        settings, params = gpt_download3.download_and_load_gpt2("124M-random", folder)
    elif kind in ("tf_loop_params", "tf_loop_model"):
        tf, tf_import = _import_tf()
        settings, params = HPARAMS, _tf_loop(tf, ckpt)
    elif kind == "tf_reader_params":
        tf, tf_import = _import_tf()
        settings, params = gpt_download3.download_and_load_gpt2("124M-random", folder,
                                                                reader="tensorflow")
    if kind == "numpy_params_touched":
        total = float(params["wte"].sum()) + float(params["wpe"].sum())
        for block in params["blocks"]:
            for sub in block.values():
                for leaf in sub.values():
                    total += float(leaf["w"].sum() if isinstance(leaf, dict) else leaf.sum())
    if kind.endswith(("_model", "_forward")):
        import torch

        from previous_chapters import GPTModel, config_from_hparams, load_weights_into_gpt

        if kind == "hf_model":
            gpt = GPTModel.from_pretrained(folder / "hf")
        elif kind == "hf_mmap_forward":
            gpt = GPTModel.from_pretrained(folder / "hf", mmap=True)
        else:
            with torch.device("meta") if kind == "numpy_meta_forward" else torch.device("cpu"):
                gpt = GPTModel(config_from_hparams(settings))
            gpt = load_weights_into_gpt(gpt, params).eval()
        assert gpt.out_head.weight is gpt.tok_emb.weight
        if kind.endswith("_forward"):
            with torch.no_grad():
                gpt(torch.tensor([[15496, 11, 314, 716, 257, 3303, 2746, 13]]))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"tf_import": tf_import, "peak_bytes": peak_kb * 1024,
            "hwm_bytes": _vm_status("VmHWM"), "before_bytes": before}


def _vm_status(key="VmHWM"):
    """A figure of Linux's /proc/self/status in bytes (VmHWM: this process image's own peak
    resident memory, a cross-check; VmRSS: the resident memory now); else 0."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(kind: str, folder: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "TIKTOKEN_CACHE_DIR": str(folder / "tiktoken-cache")}
    start = time.perf_counter()
    result = common.run_child(__file__, [kind, folder], env=env)
    return {**result, "wall": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--only", nargs="*", choices=list(CONTENDERS), help="contenders to run")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--write", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_checkpoint(Path(args.write))
        return
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        # Written by a child process too: a child inherits its parent's peak-memory figure
        # (ru_maxrss), so this process must stay small for the children's figures to be theirs.
        subprocess.run([sys.executable, __file__, "--write", str(folder)], check=True, cwd=ROOT,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        shard = (folder / "124M-random" / DATA).stat().st_size
        print(f"wrote a random 124M checkpoint ({shard:,}-byte shard) and its safetensors twin "
              f"in {time.perf_counter() - start:.1f} s; {args.repeat} run(s) per contender, "
              f"median wall time, largest peak memory\n")
        results = {}
        print(f"{'contender':54} {'wall s':>7} {'TF import s':>11} {'peak MB':>8} {'x shard':>7} "
              f"{'VmHWM MB':>8}")
        for key in args.only or CONTENDERS:
            label, kind = CONTENDERS[key]
            runs = [run_child(kind, folder) for _ in range(args.repeat)]
            r = {"wall": statistics.median(x["wall"] for x in runs),
                 "tf_import": statistics.median(x["tf_import"] for x in runs),
                 "peak": max(x["peak_bytes"] for x in runs),
                 "hwm": max(x["hwm_bytes"] for x in runs),
                 "grown": max(x["hwm_bytes"] - x["before_bytes"] for x in runs)}
            results[key] = r
            tf_col = f"{r['tf_import']:.2f}" if r["tf_import"] else "-"
            print(f"{label:54} {r['wall']:7.2f} {tf_col:>11} {r['peak'] / 1e6:8.0f} "
                  f"{r['peak'] / shard:7.2f} {r['hwm'] / 1e6:8.0f}", flush=True)
        print()
        if {"a", "b"} <= results.keys():
            speedup = results["b"]["wall"] / results["a"]["wall"]
            print(f"(a) vs (b): {speedup:.1f}x faster (target >= 5x): "
                  f"{'met' if speedup >= 5 else 'NOT met'}")
            ratio = results["a"]["peak"] / shard
            print(f"(a) peak {ratio:.2f}x the shard (target < 1.2x): "
                  f"{'met' if ratio < 1.2 else 'NOT met'}")
        for key in ("c+", "d", "d-hf"):
            if key in results:
                ratio = results[key]["grown"] / shard
                verdict = "" if key == "c+" else (
                    f" (target <= 1.3x): {'met' if ratio <= 1.3 else 'NOT met'}")
                print(f"{CONTENDERS[key][0]}: grew {results[key]['grown'] / 1e6:.0f} MB after "
                      f"its imports = {ratio:.2f}x the model{verdict}")
        if "c" in results:
            ratio = results["c"]["peak"] / shard
            print(f"(c) built-in route peak {ratio:.2f}x the shard (target <= 2.5x): "
                  f"{'met' if ratio <= 2.5 else 'NOT met'}")
        print("The machine may be shared: wall times are noisy; compare them within one run.")


if __name__ == "__main__":
    main()
