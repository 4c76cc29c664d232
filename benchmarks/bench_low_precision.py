"""Generation speed of GPT-2 124M with int8 and bf16 weights (low_precision.py) against fp32 and
Hugging Face, each contender in a fresh process (benchmarks/common.py's run_child).

Protocol (issue 17): the same random 124M weights in every contender (bench_generation_training's
write_weights, GPT-2's initialisation, head tied), batch 1, greedy, an 8-token prompt, 200 and
1,000 new tokens, torch.set_num_threads(2); tokens per second = new tokens / wall time of the
call after a short warm-up, and the ratio to Hugging Face's fp32 generate(use_cache=True).
Contenders: ours fp32 with the KV cache (`generate`), quantize_int8 (our absmax weights in
PyTorch's dynamic quantized linear: fbgemm on x86), to_bf16, and quantize_int8(kernel=
"reference") at 200 tokens (it dequantizes every weight on every call: shown for scale).
"same as fp32": how many of the new greedy tokens equal our fp32 model's before the first
difference (random weights make near-ties common: tests/test_low_precision.py states the
accuracy on a trained model).

The kernels alone: one token (batch 1) through every weight matrix of the model, nothing else:
F.linear in fp32 and bf16, torch.ops.aten._weight_int8pack_mm (int8 weights, fp32 activations),
and the dynamic quantized linear with our int8 weights.

Run: .venv/bin/python benchmarks/bench_low_precision.py [--rounds 3] [--tokens 200 1000]
     [--threads 2]
Targets (issue 17): the fastest 8-bit or bf16 route >= 2x Hugging Face's fp32 tokens/s at 200
new tokens and >= 1.6x at 1,000. The loading peak is in bench_checkpoint_loading.py (rows d).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # benchmarks/common.py
from bench_generation_training import (
    PROMPT_TOKENS,
    THREADS,
    build,
    time_generation,
    write_weights,
)
from common import cpu_flags, cpu_name

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"hf": "Hugging Face fp32 generate(use_cache=True)",
          "fp32": "ours fp32, KV cache (generate)",
          "int8": "ours int8, dynamic kernel (quantize_int8)",
          "bf16": "ours bf16 (to_bf16)",
          "int8-ref": "ours int8, reference kernel (dequantize)"}


def model_of(kind: str, weights: Path):
    from low_precision import quantize_int8, to_bf16

    model = build("hf" if kind == "hf" else "tied", weights, drop_rate=0.0).eval()
    if kind == "int8":
        quantize_int8(model)
    elif kind == "int8-ref":
        quantize_int8(model, kernel="reference")
    elif kind == "bf16":
        to_bf16(model)
    return model


def threads() -> int:
    """The threads each child uses: the protocol's 2, or --threads (passed in the environment)."""
    return int(os.environ.get("BENCH_THREADS", THREADS))


def child_generate(kind: str, weights: Path, new_tokens: int) -> dict:
    import torch

    torch.set_num_threads(threads())
    return time_generation(model_of(kind, weights), kind, new_tokens)


def child_kernels(_kind: str, weights: Path, repeats: int) -> dict:
    """Tokens per second if a token cost only its products with every weight matrix."""
    import warnings

    import torch
    import torch.nn.functional as F

    from low_precision import absmax_quantize, quantize_int8

    torch.set_num_threads(threads())
    model = build("tied", weights, drop_rate=0.0).eval()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {n: torch.randn(1, n) for n in {m.in_features for m in linears}}
    xb = {n: v.bfloat16() for n, v in x.items()}
    bf16 = [(m.weight.bfloat16(), m.in_features) for m in linears]
    int8 = [(*absmax_quantize(m.weight), m.in_features) for m in linears]
    fast = [(m, m.in_features) for m in quantize_int8(model).modules()
            if type(m).__name__ == "Int8Linear"]

    def rate(one_token):
        for _ in range(3):
            one_token()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            one_token()
            times.append(time.perf_counter() - start)
        return 1 / statistics.median(times)

    out = {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["F.linear fp32"] = rate(lambda: [F.linear(x[m.in_features], m.weight)
                                             for m in linears])
        out["F.linear bf16"] = rate(lambda: [F.linear(xb[n], w) for w, n in bf16])
        out["_weight_int8pack_mm (int8 weights, fp32 input)"] = rate(
            lambda: [torch.ops.aten._weight_int8pack_mm(x[n], q, s) for q, s, n in int8])
        out["dynamic quantized linear (our int8 weights)"] = rate(
            lambda: [m(x[n]) for m, n in fast])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all contenders (medians)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[200, 1000],
                        help="numbers of new tokens to time (the issue's protocol: 200 1000)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads per contender (the issue's protocol: 2; on a busy "
                             "machine 1 thread is steadier)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        what, kind, weights, n = args.child
        if what == "write":
            write_weights(Path(weights))
            print("{}")
            return
        fn = {"generate": child_generate, "kernels": child_kernels}[what]
        print(json.dumps(fn(kind, Path(weights), int(n))))
        return
    from importlib.metadata import version

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    os.environ["BENCH_THREADS"] = str(args.threads)  # the children inherit it
    print(f"torch {version('torch')}, transformers {version('transformers')}, {args.threads} "
          f"thread(s); "
          f"{cpu_name()} ({cpu_flags()}), {os.cpu_count()} CPUs; load average {load:.2f} at the "
          f"start; {args.rounds} round(s), medians\n")
    gen, kernels = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-lowp-") as tmp:
        weights = Path(tmp) / "gpt124m.pt"
        common.run_child(__file__, ["write", "-", weights, 0])
        for rnd in range(1, args.rounds + 1):
            kernels.append(common.run_child(__file__, ["kernels", "-", weights, 20]))
            for n in args.tokens:
                kinds = ["hf", "fp32", "int8", "bf16"] + (["int8-ref"] if n <= 200 else [])
                for kind in kinds:
                    r = common.run_child(__file__, ["generate", kind, weights, n])
                    gen.setdefault((kind, n), []).append(r)
                    print(f"round {rnd}: {LABELS[kind]}, {n} new tokens: "
                          f"{r['tokens_per_s']:.1f} tokens/s", flush=True)

    print("\nThe kernels alone: one token through every weight matrix of 124M (head included)")
    for name in kernels[0]:
        print(f"  {name:50} {statistics.median(k[name] for k in kernels):7.1f} tokens/s")
    print(f"\nGeneration: batch 1, greedy, {PROMPT_TOKENS}-token prompt")
    print(f"{'contender':44} {'new tokens':>10} {'tokens/s':>9} {'x HF':>6} {'same as fp32':>12}")
    speed = {key: statistics.median(r["tokens_per_s"] for r in runs) for key, runs in gen.items()}
    for n in args.tokens:
        fp32_ids = gen["fp32", n][0]["ids"]
        for kind in LABELS:
            if (kind, n) not in gen:
                continue
            ids = gen[kind, n][0]["ids"]
            same = next((i for i, (a, b) in enumerate(zip(ids, fp32_ids)) if a != b), n)
            print(f"{LABELS[kind]:44} {n:10d} {speed[kind, n]:9.1f} "
                  f"{speed[kind, n] / speed['hf', n]:6.2f} {same:12d}")
    print()
    for n, target in ((200, 2.0), (1000, 1.6)):
        if n not in args.tokens:
            continue
        best = max(("int8", "bf16"), key=lambda k: speed[k, n])
        ratio = speed[best, n] / speed["hf", n]
        print(f"fastest 8-bit/bf16 route at {n} new tokens: {LABELS[best]}, {ratio:.2f}x HF fp32 "
              f"(target >= {target}x): {'met' if ratio >= target else 'NOT met'}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} at the end; on a shared machine the figures move by 5-15% "
          "or more: compare them within one run.")


if __name__ == "__main__":
    main()
