"""Tokens per second of scripts/pretrain.py (pretraining.py) on this machine: GPT-2 124M from
random weights, context 256, the same global batch for every contender, each in its own
process(es):

- 1 process, 2 threads (fp32), and 1 process, 1 thread (the per-core figure scaling is judged by);
- 2 gloo ranks started by torchrun on 127.0.0.1, 1 thread each (DDP: each rank half the batch);
- the same two with --bf16 (autocast), if the CPU has bf16 instructions (avx512_bf16 or amx_bf16).

A contender runs pretraining.main for --steps + 1 steps on random token ids (speed does not
depend on the text), no evaluation, no checkpoints; its figure is the median of the steps after
the first (tokens per step / seconds of the step, as log.csv records it on rank 0).
Scaling efficiency = tokens/s of 2 ranks / (2 x tokens/s of 1 process with 1 thread).

Expected GPU figures: training FLOPs per token = 6 x N (N: the parameters of the matrix
products, the head included, embeddings not) + 12 x n_layers x T x C (attention scores and their
use, forward and backward), against a stated peak at an assumed model-FLOPs utilisation (MFU).

Run: .venv/bin/python benchmarks/bench_pretrain.py [--steps 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common  # benchmarks/common.py
from common import cpu_flags, cpu_name

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 256
SIZE = {"emb_dim": 768, "n_layers": 12, "n_heads": 12, "vocab_size": 50257}  # GPT-2 124M
# (name, peak FLOP/s of the precision used, the precision): dense, no sparsity
GPUS = [("A100 (bf16)", 312e12), ("H100 SXM (bf16)", 989e12), ("T4, Colab's free GPU (fp32)",
                                                                   8.1e12)]
MFU = 0.40  # assumed share of the peak a plain PyTorch loop reaches (nanoGPT reports ~40-50%)


def flops_per_token(cfg=SIZE, context=CONTEXT) -> tuple:
    """(matmul parameters N, training FLOPs per token) of GPTModel with an untied head."""
    c, n_layers, vocab = cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"]
    per_layer = 4 * c * c + 8 * c * c  # query, key, value, out_proj; the MLP's C->4C->C
    n = n_layers * per_layer + c * vocab  # + the output head
    return n, 6 * n + 12 * n_layers * context * c


def child(args):
    """Train --steps + 1 steps in this process (or as one torchrun rank); print a JSON line."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import pretraining

    data = Path(args.data)
    out = tempfile.mkdtemp(prefix="bench-pretrain-")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    argv = ["--data-dir", str(data), "--out-dir", out, "--model", "124M",
            "--context-length", str(CONTEXT), "--batch-size", str(args.batch // world),
            "--max-steps", str(args.steps + 1), "--warmup-steps", "1", "--eval-every", "0",
            "--ckpt-every", "0", "--sample-tokens", "0", "--log-every", "1000",
            "--threads", str(args.threads), "--device", "cpu"] + (["--bf16"] if args.bf16 else [])
    _, rows = pretraining.main(argv)
    if int(os.environ.get("RANK", "0")) == 0:
        speeds = [r["tokens_per_s"] for r in rows[1:]]
        print(json.dumps({"tokens_per_s": statistics.median(speeds),
                          "loss": rows[-1]["train_loss"], "threads": args.threads,
                          "steps": len(speeds), "numpy": np.__version__}))


def run_torchrun(script, nproc, extra) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(Path(script).resolve()),
           "--child", *map(str, extra)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_data(folder: Path, tokens: int):
    """Random GPT-2 token ids as train.bin and val.bin (uint16), enough for every step."""
    import numpy as np

    rng = np.random.default_rng(0)
    for name in ("train.bin", "val.bin"):
        rng.integers(0, 50257, tokens, dtype=np.uint16).astype("<u2").tofile(folder / name)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--batch", type=int, default=4, help="rows of 256 tokens per step, in all")
    args = p.parse_args()
    if args.child:
        return child(args)

    flags = cpu_flags()
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); flags: {flags}")
    print(f"load average before: {os.getloadavg()}")
    n, fpt = flops_per_token()
    print(f"GPT-2 124M, untied head: N = {n / 1e6:.1f}M matmul parameters, "
          f"{fpt / 1e6:.0f} MFLOP per trained token at context {CONTEXT}; global batch "
          f"{args.batch} x {CONTEXT} = {args.batch * CONTEXT:,} tokens per step")
    contenders = [("1 process x 2 threads, fp32", 1, 2, False),
                  ("1 process x 1 thread, fp32", 1, 1, False),
                  ("2 gloo ranks x 1 thread, fp32", 2, 1, False)]
    if bf16:
        contenders += [("1 process x 2 threads, bf16 autocast", 1, 2, True),
                       ("2 gloo ranks x 1 thread, bf16 autocast", 2, 1, True)]
    else:
        print("No avx512_bf16 / amx_bf16 on this CPU: the bf16 rows are left out.")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), args.batch * CONTEXT * (args.steps + 2) + 1)
        for label, nproc, threads, use_bf16 in contenders:
            extra = ["--data", tmp, "--threads", threads, "--steps", args.steps,
                     "--batch", args.batch] + (["--bf16"] if use_bf16 else [])
            r = (common.run_child(__file__, extra) if nproc == 1
                 else run_torchrun(__file__, nproc, extra))
            results[label] = r["tokens_per_s"]
            print(f"  {label}: {r['tokens_per_s']:,.0f} tokens/s", flush=True)
    print(f"load average after: {os.getloadavg()}\n")
    print("| Contender | tokens/s | achieved GFLOP/s |\n|---|---:|---:|")
    for label, tps in results.items():
        print(f"| {label} | {tps:,.0f} | {tps * fpt / 1e9:,.1f} |")
    per_core = results["1 process x 1 thread, fp32"]
    print(f"\nScaling efficiency (fp32): 2 ranks / (2 x 1 process with 1 thread) = "
          f"{results['2 gloo ranks x 1 thread, fp32'] / (2 * per_core):.0%}")
    for prec in ["fp32"] + (["bf16 autocast"] if bf16 else []):
        two, one = (results[f"2 gloo ranks x 1 thread, {prec}"],
                    results[f"1 process x 2 threads, {prec}"])
        print(f"Same 2 cores ({prec}): 2 ranks x 1 thread / 1 process x 2 threads = "
              f"{two / one:.0%}")
    print(f"\nExpected on a GPU (124M, context {CONTEXT}, {fpt / 1e6:.0f} MFLOP/token, "
          f"MFU {MFU:.0%} assumed):")
    for name, peak in GPUS:
        print(f"  {name}: peak {peak / 1e12:,.1f} TFLOP/s -> ~{MFU * peak / fpt:,.0f} tokens/s "
              f"per GPU")


if __name__ == "__main__":
    main()
