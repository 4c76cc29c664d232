"""Generation and training speed of our GPT-2 124M against Hugging Face's, each in a fresh process.

Protocol (issue 8): the same random 124M weights in every contender (written once to a temporary
file, loaded by each child), fp32, torch.set_num_threads(2).
- Generation: batch 1, greedy, an 8-token prompt, 200 and 1,000 new tokens (context length 1024):
  ours naive (`generate_text_simple`, the lectures' loop), ours with the KV cache (`generate`),
  and transformers' GPT2LMHeadModel.generate(use_cache=True, do_sample=False); tokens per second
  (new tokens / wall time of the call, after a short warm-up) and the ratio to Hugging Face.
- Training: one step (forward, cross-entropy, backward, AdamW) at batch 4 x 256 tokens, with
  dropout 0.1 (GPT_CONFIG_124M, notebook 04's pretraining) and 0.0 (the fine-tuning notebooks).
  Ours take the notebooks' step: calc_loss_batch (fused_cross_entropy) and AdamW(fused=True),
  with the head tied to the token embedding (as GPT-2) and untied (the lectures' GPTModel); one
  more row gives our tied model the plain step (F.cross_entropy, AdamW's default implementation)
  to show what the step itself gains. Hugging Face's GPT-2 takes the plain step (the issue's
  protocol) and, for reference, AdamW(fused=True). Tokens per second (median of the timed steps
  after warm-up) and peak resident memory of the whole child process (ru_maxrss).
- The matrix products alone: at batch 1 every new token multiplies one vector by every weight
  matrix (~500 MB read), which sets the pace of generation. The benchmark times exactly that,
  one token through F.linear with every weight matrix of the model and nothing else, and reports
  each contender's share of that rate; and the same products with the matrices stored (in, out),
  as Hugging Face's Conv1D stores them.

Each round runs Hugging Face's and our contenders one right after the other (the naive loop and
the reference rows in the first round only); the tables give the median over --rounds rounds.

Run: .venv/bin/python benchmarks/bench_generation_training.py [--rounds 3] [--steps 5]
     [--no-naive-1000]
Targets (issue 8): cached generation >= 1.3x Hugging Face at 200 and at 1,000 new tokens;
training >= 1.2x Hugging Face's tokens/s with peak memory <= 0.7x Hugging Face's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # benchmarks/common.py
from common import cpu_name

ROOT = Path(__file__).resolve().parent.parent
CFG = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12,
       "n_layers": 12, "drop_rate": 0.1, "qkv_bias": True}  # GPT-2 124M (biases like GPT-2)
PROMPT_TOKENS, TRAIN_BATCH, TRAIN_TOKENS, THREADS = 8, 4, 256, 2
DROP_RATES = (0.1, 0.0)  # pretraining (notebook 04) and fine-tuning (notebooks 05-07)


def write_weights(path: Path) -> None:
    """Random 124M weights of our GPTModel (head tied, as GPT-2), saved as a state dict.

    Drawn as GPT-2 initialises them (weights N(0, 0.02), biases 0, norms 1 and 0), so the loss
    starts near ln(50257) = 10.8: with the larger default initialisation the tied head's logits
    are in the hundreds, the softmax saturates, and denormal numbers slow the backward pass.
    """
    import torch

    from previous_chapters import GPTModel

    torch.manual_seed(123)
    model = GPTModel(CFG)
    model.out_head.weight = model.tok_emb.weight
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                p.zero_()
    torch.save(model.state_dict(), path)


def copy_gpt_into_hf(sd, hf) -> None:
    """Copy our GPTModel state dict `sd` into a transformers GPT2LMHeadModel. HF's Conv1D keeps
    weights as (in, out), nn.Linear as (out, in); c_attn is query, key, value side by side."""
    import torch

    hf_sd = hf.state_dict()
    with torch.no_grad():
        hf_sd["transformer.wte.weight"].copy_(sd["tok_emb.weight"])
        hf_sd["transformer.wpe.weight"].copy_(sd["pos_emb.weight"])
        for i in range(CFG["n_layers"]):
            ours, theirs = f"trf_blocks.{i}.", f"transformer.h.{i}."
            qkv = [ours + f"att.{name}" for name in ("W_query", "W_key", "W_value")]
            hf_sd[theirs + "attn.c_attn.weight"].copy_(
                torch.cat([sd[n + ".weight"] for n in qkv]).T)  # (3C, C) -> (C, 3C)
            hf_sd[theirs + "attn.c_attn.bias"].copy_(torch.cat([sd[n + ".bias"] for n in qkv]))
            for o, t in [("att.out_proj", "attn.c_proj"), ("ff.layers.0", "mlp.c_fc"),
                         ("ff.layers.2", "mlp.c_proj")]:
                hf_sd[theirs + t + ".weight"].copy_(sd[ours + o + ".weight"].T)
                hf_sd[theirs + t + ".bias"].copy_(sd[ours + o + ".bias"])
            for o, t in [("norm1", "ln_1"), ("norm2", "ln_2")]:
                hf_sd[theirs + t + ".weight"].copy_(sd[ours + o + ".scale"])
                hf_sd[theirs + t + ".bias"].copy_(sd[ours + o + ".shift"])
        hf_sd["transformer.ln_f.weight"].copy_(sd["final_norm.scale"])
        hf_sd["transformer.ln_f.bias"].copy_(sd["final_norm.shift"])
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied


def build(kind: str, weights: Path, drop_rate: float):
    """The contender's model with the shared weights (the mapped file is released after)."""
    import torch

    sd = torch.load(weights, mmap=True, weights_only=True)
    if kind == "hf":
        import transformers

        config = transformers.GPT2Config(
            vocab_size=CFG["vocab_size"], n_positions=CFG["context_length"],
            n_embd=CFG["emb_dim"], n_layer=CFG["n_layers"], n_head=CFG["n_heads"],
            resid_pdrop=drop_rate, embd_pdrop=drop_rate, attn_pdrop=drop_rate,
            layer_norm_epsilon=1e-5, activation_function="gelu_new")
        model = transformers.GPT2LMHeadModel(config)
        copy_gpt_into_hf(sd, model)
    else:
        from previous_chapters import GPTModel

        model = GPTModel({**CFG, "drop_rate": drop_rate})
        if kind != "untied":
            model.out_head.weight = model.tok_emb.weight
        model.load_state_dict(sd)  # untied: the head starts as a copy of the embedding
    del sd
    return model


def time_generation(model, kind: str, new_tokens: int) -> dict:
    """Greedy generation of `new_tokens` after a seeded 8-token prompt at batch 1, timed after a
    4-token warm-up: kind "naive" is generate_text_simple, "hf" Hugging Face's generate, any
    other kind the course's generate with the KV cache."""
    import torch

    from previous_chapters import generate, generate_text_simple

    idx = torch.randint(0, CFG["vocab_size"], (1, PROMPT_TOKENS),
                        generator=torch.Generator().manual_seed(0))
    ctx = CFG["context_length"]

    def run(n):
        if kind == "naive":
            return generate_text_simple(model, idx, n, ctx)
        if kind != "hf":
            return generate(model, idx, n, ctx)
        with torch.no_grad():
            return model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, use_cache=True,
                                  pad_token_id=50256)

    run(4)  # warm-up
    start = time.perf_counter()
    out = run(new_tokens)
    seconds = time.perf_counter() - start
    assert out.shape == (1, PROMPT_TOKENS + new_tokens), out.shape
    return {"seconds": seconds, "tokens_per_s": new_tokens / seconds,
            "ids": out[0, PROMPT_TOKENS:].tolist()}


def child_generate(kind: str, weights: Path, new_tokens: int) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    model = build("hf" if kind == "hf" else "tied", weights, drop_rate=0.0).eval()
    return time_generation(model, kind, new_tokens)


def child_train(kind: str, weights: Path, steps: int) -> dict:
    """kind: "<model>-<step>@<dropout>": model hf, tied or untied; step "plain" (F.cross_entropy
    and AdamW's default implementation), "fusedadam" (F.cross_entropy, AdamW(fused=True)) or
    "course" (the notebooks' calc_loss_batch and AdamW(fused=True))."""
    import torch

    from previous_chapters import calc_loss_batch

    torch.set_num_threads(THREADS)
    kind, drop_rate = kind.split("@")  # e.g. "tied-course@0.1"
    model_kind, step_kind = kind.split("-")
    model = build(model_kind, weights, drop_rate=float(drop_rate)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1,
                                  fused=step_kind != "plain")
    data = torch.randint(0, CFG["vocab_size"], (TRAIN_BATCH, TRAIN_TOKENS + 1),
                         generator=torch.Generator().manual_seed(1))
    inputs, targets = data[:, :-1], data[:, 1:]
    hf = model_kind == "hf"

    def loss_of_batch():
        if step_kind == "course":
            return calc_loss_batch(inputs, targets, model, "cpu")
        logits = model(inputs).logits if hf else model(inputs)  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    torch.manual_seed(0)
    times, losses = [], []
    for _ in range(2 + steps):  # 2 warm-up steps
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_of_batch()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
        del loss
    step = statistics.median(times[2:])
    return {"step_s": step, "tokens_per_s": TRAIN_BATCH * TRAIN_TOKENS / step,
            "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "first_loss": losses[0]}


def child_products(kind: str, weights: Path, repeats: int) -> dict:
    """Tokens per second if a new token cost nothing but its matrix products: one token's
    F.linear through each weight matrix of the model (the head included), nothing else. Also
    the same products with every matrix stored transposed, (in, out), as Hugging Face's Conv1D
    keeps its weights (the head as well, which Hugging Face keeps as (out, in))."""
    import torch

    torch.set_num_threads(THREADS)
    model = build("tied", weights, drop_rate=0.0).eval()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {n: torch.randn(1, n) for n in {m.in_features for m in linears}}
    transposed = [(m.weight.T.contiguous(), m.bias) for m in linears]  # (in, out) copies

    def per_token(one_token):
        for _ in range(5):
            one_token()
        start = time.perf_counter()
        for _ in range(repeats):
            one_token()
        return (time.perf_counter() - start) / repeats

    with torch.inference_mode():
        seconds = per_token(lambda: [torch.nn.functional.linear(inputs[m.in_features], m.weight,
                                                                m.bias) for m in linears])
        seconds_in_out = per_token(lambda: [
            torch.addmm(b, inputs[w.shape[0]], w) if b is not None else inputs[w.shape[0]] @ w
            for w, b in transposed])
    nbytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    return {"tokens_per_s": 1 / seconds, "gb_per_s": nbytes / seconds / 1e9, "mb": nbytes / 1e6,
            "tokens_per_s_in_out": 1 / seconds_in_out}


def run_child(*args) -> dict:
    return common.run_child(__file__, args)


GEN_LABELS = {"hf": "Hugging Face generate(use_cache=True)",
              "naive": "ours naive (generate_text_simple)",
              "cached": "ours KV cache (generate)"}
TRAIN_LABELS = {"hf-plain": "Hugging Face GPT2LMHeadModel, plain step",
                "hf-fusedadam": "Hugging Face, AdamW(fused=True)",
                "tied-plain": "ours tied, plain step",
                "tied-course": "ours tied (GPT-2), notebooks' step",
                "untied-course": "ours untied (lectures), notebooks' step"}
MAIN_TRAIN = ("hf-plain", "tied-course", "untied-course")  # every round; the others once


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of Hugging Face and ours, one after the other (medians)")
    parser.add_argument("--no-naive-1000", action="store_true",
                        help="skip the naive loop at 1,000 new tokens (quadratic: many minutes)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        what, kind, weights, n = args.child
        if what == "write":
            write_weights(Path(weights))
            print("{}")
            return
        fn = {"generate": child_generate, "train": child_train, "products": child_products}[what]
        print(json.dumps(fn(kind, Path(weights), int(n))))
        return
    from importlib.metadata import version

    print(f"torch {version('torch')}, transformers {version('transformers')}, "
          f"{THREADS} threads, fp32; {cpu_name()}, "
          f"{os.cpu_count()} CPUs; {args.rounds} rounds, medians\n")
    gen, products_runs, train = {}, [], {}
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        weights = Path(tmp) / "gpt124m.pt"
        # Written by a child too: a child inherits its parent's peak-memory figure (ru_maxrss),
        # so this process must stay small for the children's figures to be theirs.
        run_child("write", "-", weights, 0)
        # A shared machine's speed drifts over minutes: each round runs Hugging Face and ours
        # one right after the other, and the tables give the median of the rounds.
        for rnd in range(1, args.rounds + 1):
            products_runs.append(run_child("products", "-", weights, 200))
            for n in (200, 1000):
                kinds = ["hf", "cached"]
                if rnd == 1 and not (n == 1000 and args.no_naive_1000):
                    kinds.append("naive")  # once: it is slow, and far from the others
                for kind in kinds:
                    r = run_child("generate", kind, weights, n)
                    gen.setdefault((kind, n), []).append(r)
                    print(f"round {rnd}: {GEN_LABELS[kind]}, {n} new tokens: "
                          f"{r['tokens_per_s']:.1f} tokens/s", flush=True)
            for drop in DROP_RATES:
                kinds = MAIN_TRAIN if rnd > 1 else tuple(TRAIN_LABELS)
                for kind in kinds:
                    r = run_child("train", f"{kind}@{drop}", weights, args.steps)
                    train.setdefault((kind, drop), []).append(r)
                    print(f"round {rnd}: {TRAIN_LABELS[kind]}, dropout {drop}: "
                          f"{r['tokens_per_s']:.0f} tokens/s, peak {r['peak_bytes'] / 1e6:,.0f} MB",
                          flush=True)

    products = median_of(products_runs, "tokens_per_s")
    print(f"\nThe matrix products alone: one token through every weight matrix "
          f"({products_runs[0]['mb']:.0f} MB) and nothing else: {products:.1f} tokens/s "
          f"({median_of(products_runs, 'gb_per_s'):.1f} GB/s) with nn.Linear's (out, in) weights, "
          f"{median_of(products_runs, 'tokens_per_s_in_out'):.1f} tokens/s with the same weights "
          f"stored (in, out)\n")
    print(f"Generation: batch 1, greedy, {PROMPT_TOKENS}-token prompt")
    print(f"{'contender':44} {'new tokens':>10} {'tokens/s':>9} {'x HF':>6} {'share':>7} "
          f"{'same ids as HF':>14}")
    speed = {key: median_of(runs, "tokens_per_s") for key, runs in gen.items()}
    for n in (200, 1000):
        for kind in ("hf", "naive", "cached"):
            if (kind, n) not in gen:
                print(f"{GEN_LABELS[kind]:44} {n:10d} {'skipped (--no-naive-1000)':>31}")
                continue
            ids = {tuple(r["ids"]) for r in gen[kind, n] + gen["hf", n]}
            same = "-" if kind == "hf" else ("yes" if len(ids) == 1 else "no")
            print(f"{GEN_LABELS[kind]:44} {n:10d} {speed[kind, n]:9.1f} "
                  f"{speed[kind, n] / speed['hf', n]:6.2f} {speed[kind, n] / products:7.0%} "
                  f"{same:>14}")

    train_tps = {key: median_of(runs, "tokens_per_s") for key, runs in train.items()}
    train_peak = {key: median_of(runs, "peak_bytes") for key, runs in train.items()}
    for drop in DROP_RATES:
        print(f"\nTraining step: batch {TRAIN_BATCH} x {TRAIN_TOKENS} tokens, AdamW, dropout "
              f"{drop}; per run the median of {args.steps} steps after 2 warm-up steps")
        print(f"{'contender':44} {'runs':>4} {'tokens/s':>9} {'x HF':>6} {'peak MB':>8} "
              f"{'x HF':>6} {'1st loss':>8}")
        hf_tps, hf_peak = train_tps["hf-plain", drop], train_peak["hf-plain", drop]
        for kind, label in TRAIN_LABELS.items():
            runs, tps, peak = train[kind, drop], train_tps[kind, drop], train_peak[kind, drop]
            print(f"{label:44} {len(runs):4d} {tps:9.1f} {tps / hf_tps:6.2f} {peak / 1e6:8.0f} "
                  f"{peak / hf_peak:6.2f} {runs[0]['first_loss']:8.3f}")

    print()
    for n in (200, 1000):
        ratio = speed["cached", n] / speed["hf", n]
        print(f"cached generation at {n} new tokens: {ratio:.2f}x HF (target >= 1.3x): "
              f"{'met' if ratio >= 1.3 else 'NOT met'}; 1.3x HF is "
              f"{1.3 * speed['hf', n] / products:.0%} of the products' rate, ours reaches "
              f"{speed['cached', n] / products:.0%}")
    for drop in DROP_RATES:
        for kind in ("tied-course", "untied-course"):
            tps = train_tps[kind, drop] / train_tps["hf-plain", drop]
            memory = train_peak[kind, drop] / train_peak["hf-plain", drop]
            print(f"training (dropout {drop}), ours {kind.split('-')[0]}: {tps:.2f}x HF tokens/s "
                  f"(target >= 1.2x), peak memory {memory:.2f}x HF (target <= 0.7x): "
                  f"{'met' if tps >= 1.2 and memory <= 0.7 else 'NOT met'}")
    print("Shared machine: single runs move by 5-15%; the rounds' spread is in the lines above.")


if __name__ == "__main__":
    main()
