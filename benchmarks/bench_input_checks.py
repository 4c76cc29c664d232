"""What the input checks (input_checks.py, issue 19) cost in generation: the same GPT-2 124M with
the checks on and with every check of previous_chapters.py replaced by a no-op.

Protocol: GPT-2 124M (GPT_CONFIG_124M, qkv_bias, dropout 0), random weights (seed 123), fp32,
torch.set_num_threads(2), batch 1, an 8-token prompt, greedy:
- `generate` with the KV cache, 200 new tokens (the checks: the prompt's once, then per token
  the cached forward's ids and each block's LayerNorm / feed-forward / attention input);
- `generate_text_simple`, the lectures' loop without a cache, 50 new tokens (every step checks
  and scans the whole window of ids in GPTModel.forward).
Each measurement runs in a fresh process after a warm-up; the two variants alternate, --rounds
times each. The table gives the median tokens/s and the range (min-max) of each variant: the
checks cost nothing measurable when the medians differ by less than the ranges.
Also: the cost of one call of each check (timeit, 200,000 calls); a cached token makes about 75
feature checks (six per block at 12 blocks) and one token-id check.

Run: .venv/bin/python benchmarks/bench_input_checks.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import cpu_flags, cpu_name, run_child  # noqa: E402

CASES = {"generate, KV cache, 200 tokens": ("cached", 200),
         "generate_text_simple, 50 tokens": ("naive", 50)}


def child(variant: str, kind: str, new_tokens: int) -> dict:
    torch.set_num_threads(2)
    import previous_chapters as pc

    if variant == "unchecked":  # every check the helpers call becomes a no-op
        for name in ("check_features", "check_token_ids", "check_int", "check_fraction",
                     "check_text", "check_loader"):
            setattr(pc, name, lambda *args, **kwargs: None)
        pc.input_dtype = lambda layer: None  # the argument check_features would be given
    torch.manual_seed(123)
    model = pc.GPTModel({**pc.GPT_CONFIG_124M, "drop_rate": 0.0, "qkv_bias": True}).eval()
    prompt = torch.randint(0, 50257, (1, 8))

    def run(n):
        if kind == "cached":
            return pc.generate(model, prompt, n, 1024)
        with torch.no_grad():
            return pc.generate_text_simple(model, prompt, n, 1024)

    run(5)  # warm-up
    start = time.perf_counter()
    out = run(new_tokens)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": (out.shape[1] - prompt.shape[1]) / seconds}


def per_call_costs() -> dict:
    from input_checks import check_features, check_int, check_token_ids

    x, ids, device = torch.randn(1, 1, 768), torch.tensor([[5]]), torch.device("cpu")
    window = torch.randint(0, 50257, (1, 1024))
    calls = {
        "check_features (a LayerNorm's input)":
            lambda: check_features(x, 768, "LayerNorm", dtype=torch.float32),
        "check_token_ids, 1 id (the cached forward)":
            lambda: check_token_ids(ids, 50257, 1024, device),
        "check_token_ids, 1,024 ids (a full window)":
            lambda: check_token_ids(window, 50257, 1024, device),
        "check_int": lambda: check_int(200, "max_new_tokens", minimum=0),
    }
    n = 200_000
    return {name: timeit.timeit(call, number=n) / n * 1e6 for name, call in calls.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import json
        variant, kind, n = args.child
        print(json.dumps(child(variant, kind, int(n))))
        return

    print(f"CPU: {cpu_name()} ({cpu_flags()}); torch {torch.__version__}, 2 threads; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    torch.set_num_threads(2)
    print("\nOne call of each check (microseconds):")
    for name, us in per_call_costs().items():
        print(f"  {name:45s} {us:6.2f}")

    print(f"\nGeneration, tokens/s over {args.rounds} rounds per variant (median, min-max):")
    print("| case | checks on | checks off | on / off |\n|---|---:|---:|---:|")
    for case, (kind, n) in CASES.items():
        runs = {"checked": [], "unchecked": []}
        for _ in range(args.rounds):
            for variant in runs:
                runs[variant].append(run_child(__file__, [variant, kind, n])["tokens_per_s"])
        cells = [f"{statistics.median(r):.1f} ({min(r):.1f}-{max(r):.1f})" for r in runs.values()]
        ratio = statistics.median(runs["checked"]) / statistics.median(runs["unchecked"])
        print(f"| {case} | {cells[0]} | {cells[1]} | {ratio:.3f} |")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
