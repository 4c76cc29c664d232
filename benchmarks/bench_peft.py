"""One training step of full, last-block, LoRA and QLoRA fine-tuning, each in a fresh process.

Protocol (issue 15): fp32, torch.set_num_threads(2), batch 8 x 120 tokens, AdamW (the notebooks'
default implementation, lr 5e-5, weight decay 0.1) over the trainable parameters only.
- GPT-2 124M with notebook 06's 2-class head (previous_chapters.add_classification_head), the
  loss of the last token's class logits (calc_loss_batch_classifier): (a) every parameter
  trained, (b) notebook 06's last block + final_norm + head, (c) LoRA rank 16, alpha 16 on every
  nn.Linear (lora.replace_linear_with_lora), (d) QLoRA: qlora.quantize_model_nf4 (blocks of 64,
  the head kept in fp32), then LoRA rank 16 on every nn.Linear and LinearNF4.
- GPT-2 medium (355M) as a language model (head tied to the token embedding, as
  load_weights_into_gpt leaves it), notebook 07's loss (calc_loss_batch) on instruction-like
  batches: 8 rows of 120 token ids, each row's text 60-120 tokens long (random), then padded with
  <|endoftext|> (50256), its targets -100 after the first padding token, as notebook 07's collate
  function does: (a), (c), (d).
- --checkpoint adds (a) and (c) again with activation checkpointing (torch.utils.checkpoint,
  non-reentrant) around every transformer block; --mmap-threshold adds (a) and (c) again with
  glibc's MALLOC_MMAP_THRESHOLD_=131072 in the child's environment (every block over 128 KB is
  mapped on its own and given back to the system when freed, instead of glibc's dynamic
  threshold, which keeps freed activations in its heap): the allocator's share of the peak.

Random weights of GPT-2's shapes (drawn as GPT-2 initialises them: N(0, 0.02), biases 0), not the
real ones: the time and memory of a step do not depend on the values (only the losses do).

Per contender, in its own child process: seconds per step (median of --steps steps after one
warm-up step), the peak resident memory of the training steps (VmHWM, reset by
/proc/self/clear_refs after the model is built, so that building the fp32 model that QLoRA
quantizes does not count) and of the whole process (building included), trainable parameters,
AdamW's state bytes, and what the peak is made of: PyTorch itself, the model, gradients and
AdamW's state, and the tensors the forward pass keeps for the backward pass (counted once each by
torch.autograd.graph.saved_tensors_hooks in the warm-up step, parameters excluded).

Run: .venv/bin/python benchmarks/bench_peft.py [--sizes 124M 355M] [--steps 3] [--checkpoint]
Targets (issue 15): beat the issue's reference (124M: full 3.60 s / 3,469 MB, LoRA 2.83 s /
2,615 MB; 355M: full 15.5 s / 8,477 MB, LoRA 9.4 s / 7,021 MB) in time and peak memory, with
LoRA's peak at most 0.6x full fine-tuning's at 355M.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import common  # benchmarks/common.py
from common import cpu_flags, cpu_name

ROOT = Path(__file__).resolve().parent.parent
BASE = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True}
SIZES = {"124M": {**BASE, "emb_dim": 768, "n_heads": 12, "n_layers": 12},
         "355M": {**BASE, "emb_dim": 1024, "n_heads": 16, "n_layers": 24}}
TASK = {"124M": "classifier", "355M": "lm"}  # notebook 06's model, notebook 07's default
METHODS = {"124M": ("full", "lastblock", "lora", "qlora"), "355M": ("full", "lora", "qlora")}
LABELS = {"full": "(a) full fine-tuning", "lastblock": "(b) last block + final_norm + head",
          "lora": "(c) LoRA r=16", "qlora": "(d) QLoRA r=16 (NF4 base)"}
BATCH, TOKENS, THREADS, RANK, ALPHA = 8, 120, 2, 16, 16
EXTRA = {"": "", "ckpt": " +checkpoint", "mmap": " +mmap threshold 128K"}
REFERENCE = {("124M", "full"): (3.60, 3469), ("124M", "lora"): (2.83, 2615),
             ("355M", "full"): (15.5, 8477), ("355M", "lora"): (9.4, 7021)}


def vm_kb(field: str) -> int:
    """A VmRSS / VmHWM figure of this process, in kB (Linux)."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def build(size: str, method: str, checkpoint: bool):
    """The contender's model, its trainable parameters and a summary of what was quantized."""
    import ctypes

    import torch

    import lora
    import qlora
    from previous_chapters import GPTModel, add_classification_head

    cfg = SIZES[size]
    torch.manual_seed(123)
    model = GPTModel(cfg)
    with torch.no_grad():  # GPT-2's initialisation: the tied head's logits stay small
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                p.zero_()
    if TASK[size] == "classifier":
        add_classification_head(model, num_classes=2)  # (b) as it is; the others re-freeze
    else:
        model.out_head.weight = model.tok_emb.weight  # tied, as load_weights_into_gpt leaves it
    summary = {}
    if method == "full":
        model.requires_grad_(True)
    elif method == "lora":
        lora.replace_linear_with_lora(model, RANK, ALPHA)
    elif method == "qlora":
        summary = qlora.quantize_model_nf4(model)
        lora.replace_linear_with_lora(model, RANK, ALPHA,
                                      layer_types=(torch.nn.Linear, qlora.LinearNF4))
    if checkpoint:
        from torch.utils.checkpoint import checkpoint as ckpt

        class Checkpointed(torch.nn.Module):
            """A block whose activations are computed again in the backward pass, not kept."""

            def __init__(self, block):
                super().__init__()
                self.block = block

            def forward(self, x):
                return ckpt(self.block, x, use_reentrant=False)

        for i, block in enumerate(model.trf_blocks):
            model.trf_blocks[i] = Checkpointed(block)
    try:  # give the building's freed memory (QLoRA's fp32 layers) back to the system
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return model.train(), [p for p in model.parameters() if p.requires_grad], summary


def batch(size: str):
    """(inputs, targets): random ids; the classifier's targets are (B,) labels, the language
    model's are the inputs shifted by one, -100 after each row's first padding token."""
    import torch

    g = torch.Generator().manual_seed(1)
    if TASK[size] == "classifier":
        inputs = torch.randint(0, 50256, (BATCH, TOKENS), generator=g)
        return inputs, torch.randint(0, 2, (BATCH,), generator=g)
    ids = torch.full((BATCH, TOKENS + 1), 50256)
    targets = torch.full((BATCH, TOKENS), -100)
    for row in range(BATCH):
        n = int(torch.randint(TOKENS // 2, TOKENS + 1, (1,), generator=g))  # text tokens
        ids[row, :n] = torch.randint(0, 50256, (n,), generator=g)
        targets[row, :n] = ids[row, 1:n + 1]  # the first padding token is a target, as in 07
    return ids[:, :TOKENS], targets


def child(size: str, method: str, steps: int, checkpoint: bool) -> dict:
    import torch

    from previous_chapters import calc_loss_batch, calc_loss_batch_classifier

    torch.set_num_threads(THREADS)
    rss_torch = vm_kb("VmRSS") * 1024
    model, trainable, summary = build(size, method, checkpoint)
    build_peak = vm_kb("VmHWM") * 1024
    rss_model = vm_kb("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the steps' peak from here
    optimizer = torch.optim.AdamW(trainable, lr=5e-5, weight_decay=0.1)
    loss_fn = calc_loss_batch_classifier if TASK[size] == "classifier" else calc_loss_batch
    inputs, targets = batch(size)
    param_ptrs = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(t):  # every tensor the forward pass keeps for backward, once per storage
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    times, losses = [], []
    for i in range(1 + steps):  # one warm-up step, with the saved-tensor count
        start = time.perf_counter()
        optimizer.zero_grad()
        if i == 0:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = loss_fn(inputs, targets, model, "cpu")
            rss_forward = vm_kb("VmRSS") * 1024
        else:
            loss = loss_fn(inputs, targets, model, "cpu")
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
        del loss
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                for t in s.values() if isinstance(t, torch.Tensor))
    grads = sum(p.numel() * p.element_size() for p in trainable)
    import qlora

    return {"step_s": statistics.median(times[1:]), "times": times[1:],
            "peak": vm_kb("VmHWM") * 1024, "build_peak": build_peak,
            "rss_torch": rss_torch, "model_bytes": qlora.model_bytes(model),
            "rss_model": rss_model, "rss_forward": rss_forward,
            "trainable": sum(p.numel() for p in trainable), "state": state, "grads": grads,
            "saved": sum(saved.values()), "first_loss": losses[0],
            "linear_fp32": summary.get("linear_bytes_fp32"),
            "linear_nf4": summary.get("linear_bytes_nf4")}


MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_child(size, method, steps, checkpoint, mmap=False) -> dict:
    env = {**os.environ, **MMAP_ENV} if mmap else None
    return common.run_child(__file__, [size, method, steps, int(checkpoint)], env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--checkpoint", action="store_true",
                        help="also run (a) and (c) with activation checkpointing")
    parser.add_argument("--mmap-threshold", action="store_true",
                        help="also run (a) and (c) with MALLOC_MMAP_THRESHOLD_=131072")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        size, method, steps, checkpoint = args.child
        print(json.dumps(child(size, method, int(steps), bool(int(checkpoint)))))
        return
    from importlib.metadata import version

    print(f"torch {version('torch')}, {THREADS} threads, fp32; {cpu_name()} ({cpu_flags()}), "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start; "
          f"batch {BATCH} x {TOKENS} tokens; median of {args.steps} steps after 1 warm-up; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    results = {}
    for size in args.sizes:
        variants = [(m, "") for m in METHODS[size]]
        variants += [(m, "ckpt") for m in ("full", "lora") if args.checkpoint]
        variants += [(m, "mmap") for m in ("full", "lora") if args.mmap_threshold]
        for method, extra in variants:
            r = run_child(size, method, args.steps, extra == "ckpt", extra == "mmap")
            r["load"] = os.getloadavg()[0]
            results[size, method, extra] = r
            steps = ", ".join(f"{t:.2f}" for t in r["times"])
            print(f"{size} {LABELS[method]}{EXTRA[extra]}: "
                  f"{r['step_s']:.2f} s/step (steps {steps}), "
                  f"peak {r['peak'] / 1e6:,.0f} MB, load {r['load']:.2f}", flush=True)

    mb = 1e6
    for size in args.sizes:
        task = ("the 2-class classifier (notebook 06)" if TASK[size] == "classifier"
                else "a language model, tied head, instruction-like batches (notebook 07)")
        print(f"\nGPT-2 {size}, {task}")
        print(f"{'contender':42} {'s/step':>6} {'x full':>6} {'peak MB':>8} {'x full':>6} "
              f"{'process':>8} {'trainable':>12} {'AdamW MB':>8} {'model MB':>8} "
              f"{'saved MB':>8} {'1st loss':>8}")
        full = results[size, "full", ""]
        for (s, method, extra), r in results.items():
            if s != size:
                continue
            label = LABELS[method] + EXTRA[extra]
            print(f"{label:42} {r['step_s']:6.2f} {r['step_s'] / full['step_s']:6.2f} "
                  f"{r['peak'] / mb:8,.0f} {r['peak'] / full['peak']:6.2f} "
                  f"{max(r['build_peak'], r['peak']) / mb:8,.0f} "
                  f"{r['trainable']:12,d} {r['state'] / mb:8.1f} {r['model_bytes'] / mb:8,.0f} "
                  f"{r['saved'] / mb:8,.0f} {r['first_loss']:8.3f}")
        q = results.get((size, "qlora", ""))
        if q and q["linear_fp32"]:
            print(f"QLoRA base: the quantized linear layers' stored bytes (packed + scales) "
                  f"{q['linear_nf4'] / mb:,.0f} MB = {q['linear_nf4'] / q['linear_fp32']:.3f}x "
                  f"their fp32 {q['linear_fp32'] / mb:,.0f} MB (target <= 0.15x); embeddings, "
                  f"norms, biases and the head in fp32; whole model with LoRA "
                  f"{q['model_bytes'] / mb:,.0f} MB against {full['model_bytes'] / mb:,.0f} MB")
        print("Where the peak goes (MB): PyTorch itself | model | + grads and AdamW state "
              "(after step 1, not in RSS until then) | saved for backward | rest (short-lived "
              "tensors, allocator)")
        for (s, method, extra), r in results.items():
            if s != size:
                continue
            label = LABELS[method] + EXTRA[extra]
            rest = r["peak"] - r["rss_model"] - r["grads"] - r["state"] - r["saved"]
            model_mb = (r["rss_model"] - r["rss_torch"]) / mb
            print(f"  {label:42} {r['rss_torch'] / mb:6,.0f} | {model_mb:6,.0f} "
                  f"| {(r['grads'] + r['state']) / mb:6,.0f} | {r['saved'] / mb:6,.0f} "
                  f"| {rest / mb:6,.0f}")
    print()
    for (size, method), (ref_s, ref_mb) in REFERENCE.items():
        r = results.get((size, method, ""))
        if r:
            time_ok, memory_ok = r["step_s"] < ref_s, r["peak"] / mb < ref_mb
            print(f"{size} {LABELS[method]}: {r['step_s']:.2f} s, {r['peak'] / mb:,.0f} MB "
                  f"against the reference's {ref_s} s, {ref_mb:,} MB: "
                  f"time {'beaten' if time_ok else 'NOT beaten'}, "
                  f"memory {'beaten' if memory_ok else 'NOT beaten'}")
    if ("355M", "lora", "") in results:
        ratio = results["355M", "lora", ""]["peak"] / results["355M", "full", ""]["peak"]
        print(f"355M LoRA peak {ratio:.2f}x full fine-tuning's (target <= 0.6x): "
              f"{'met' if ratio <= 0.6 else 'NOT met'}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (2 cores, shared with other jobs)")


if __name__ == "__main__":
    main()
