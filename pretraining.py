"""Pretraining GPT-2 beyond one short story: the loop of scripts/pretrain.py, on one process or
many (torchrun, DistributedDataParallel), resumable.

It trains the course's GPTModel (notebook 03) with notebook 04's loss (fused_cross_entropy, as
calc_loss_batch) and the refinements of the book's training-loop appendix: a linear learning-rate
warm-up, cosine decay to a floor, gradient clipping; plus gradient accumulation, AdamW with
weight decay on matrices only, evaluation on a fixed validation sample, a text sample, a CSV log,
a loss plot, and checkpoints (pretraining_checkpoints.py) from which `--resume` continues
exactly. Data: train.bin / val.bin of pretraining_data.py.

Distributed: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; each rank then reads its own rows of
every global batch, DDP averages the gradients (all-reduce), and only rank 0 prints, samples and
writes files. Without torchrun the same code runs as one process (world size 1).

Batch vocabulary: B rows per rank and micro-step, T tokens per row, `accum` micro-steps per
optimizer step, `world` ranks: one step sees accum x world x B rows.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from input_checks import check_int, shape_of
from pretraining_checkpoints import latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from pretraining_data import TokenWindows, read_meta
from previous_chapters import GPTModel, fused_cross_entropy

__all__ = ["lr_at", "param_groups", "pick_device", "build_model", "batch_loss", "build_parser",
           "train", "main"]

DEVICES = ("auto", "cpu", "cuda", "mps")


def _number(value, name, minimum=0.0):
    """`value` as a finite float of at least `minimum` (a learning rate, a weight decay...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {shape_of(value)}")
    if not minimum <= value < math.inf:  # NaN fails too
        raise ValueError(f"{name} must be a finite number of at least {minimum}, not {value}")
    return float(value)


LOG_FIELDS = ["step", "tokens_seen", "lr", "train_loss", "grad_norm", "val_loss", "tokens_per_s",
              "elapsed_s"]


def lr_at(step, max_lr, min_lr, warmup_steps, max_steps, initial_lr=0.0):
    """The learning rate of step `step` (0-based): linear from initial_lr to max_lr over
    warmup_steps, then a half cosine from max_lr down to min_lr at max_steps (the book's
    appendix D: lr = min + (max - min) * 0.5 * (1 + cos(pi * progress)))."""
    check_int(step, "step", minimum=0)
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    check_int(warmup_steps, "warmup_steps", minimum=0, maximum=max_steps)
    for value, name in ((max_lr, "max_lr"), (min_lr, "min_lr"), (initial_lr, "initial_lr")):
        _number(value, name)
    if min_lr > max_lr:
        raise ValueError(f"min_lr {min_lr} is above the peak max_lr {max_lr}; the cosine decays "
                         "from max_lr down to min_lr.")
    if step < warmup_steps:
        return initial_lr + (max_lr - initial_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model, weight_decay):
    """AdamW groups: weight decay on the matrices (>= 2-D: linear weights, embeddings), none on
    biases and LayerNorm scales/shifts. A tied weight appears once."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"param_groups takes the model (an nn.Module), not {shape_of(model)}")
    _number(weight_decay, "weight_decay")
    params = [p for p in model.parameters() if p.requires_grad]  # shared tensors once
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def pick_device(name="auto", local_rank=0):
    """cuda (this rank's GPU) -> mps -> cpu, or the device named."""
    if not isinstance(name, str) or name not in DEVICES:
        raise ValueError(f"the device must be one of {', '.join(DEVICES)}, not {shape_of(name)}")
    local_rank = check_int(local_rank, "local_rank (LOCAL_RANK)", minimum=0)
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA GPU here; use --device auto or cpu.")
    if name == "cuda" and local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank}, but this machine has "
                         f"{torch.cuda.device_count()} GPU(s); start fewer processes per node.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS (Apple GPU) is not available here; use --device auto "
                         "or cpu.")
    if name == "auto":
        name = ("cuda" if torch.cuda.is_available() else
                "mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def build_model(args, log=print):
    """A GPTModel from random weights (--init random, the config of --model with the overrides)
    or from GPT-2's weights: OpenAI's files by gpt_download3 (--init openai, --model a size or a
    folder under --models-dir), or Hugging Face's (--init hf:NAME_OR_FOLDER)."""
    from gpt_download3 import GPT2_HPARAMS, download_and_load_gpt2
    from previous_chapters import config_from_hparams, gpt_from_pretrained, load_weights_into_gpt

    _check_args(args)
    if not callable(log):
        raise TypeError(f"log must be a function such as print, not {shape_of(log)}")
    if args.init == "random":
        if args.model not in GPT2_HPARAMS:
            raise ValueError(f"--model {args.model!r}: random weights need one of GPT-2's sizes "
                             f"({', '.join(GPT2_HPARAMS)}) to take the shape from.")
        cfg = config_from_hparams(GPT2_HPARAMS[args.model], drop_rate=args.dropout)
        # no query/key/value biases from scratch, as notebook 03's GPT_CONFIG_124M: the key bias
        # cannot learn (adding b to every key adds q.b to every score of a row: the softmax is
        # unchanged, the gradient zero), and AdamW would turn that zero's rounding noise into steps
        cfg.update(context_length=args.context_length, qkv_bias=False)
        for key in ("emb_dim", "n_layers", "n_heads"):
            if getattr(args, key) is not None:
                cfg[key] = getattr(args, key)
        return GPTModel(cfg)
    if args.init == "openai":
        settings, params = download_and_load_gpt2(args.model, args.models_dir)
        model = GPTModel(config_from_hparams(settings, drop_rate=args.dropout))
        load_weights_into_gpt(model, params)
    elif args.init.startswith("hf:"):
        model = gpt_from_pretrained(args.init[3:])
        for m in model.modules():  # gpt_from_pretrained builds with dropout 0
            if isinstance(m, torch.nn.Dropout):
                m.p = args.dropout
    else:
        raise ValueError(f"--init {args.init!r}: use random, openai or hf:NAME_OR_FOLDER")
    if args.context_length > model.cfg["context_length"]:
        raise ValueError(f"--context-length {args.context_length} exceeds the pretrained model's "
                         f"{model.cfg['context_length']} positions.")
    log(f"Initialised from {args.init} ({args.model if args.init == 'openai' else ''})")
    return model.train()


def batch_loss(model, input_batch, target_batch, bf16=False):
    """calc_loss_batch's mean next-token cross-entropy (notebook 04), with the forward pass
    under bf16 autocast if asked; the loss itself is taken in fp32 (.float() is a no-op in fp32)."""
    if not isinstance(bf16, bool):
        raise TypeError(f"bf16 must be True or False, not {shape_of(bf16)}")
    if not (isinstance(input_batch, torch.Tensor) and isinstance(target_batch, torch.Tensor)
            and input_batch.shape == target_batch.shape):
        raise ValueError(f"the inputs and targets of a batch must be tensors of one shape (B, T), "
                         f"not {shape_of(input_batch)} and {shape_of(target_batch)}")
    device = input_batch.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_batch)  # (B, T, V)
    return fused_cross_entropy(logits.flatten(0, 1).float(), target_batch.flatten())


@torch.no_grad()
def evaluate(model, val_data, batches, batch_size, rank, world, device, bf16):
    """Mean batch loss over the fixed validation sample: the first `batches` batches of val.bin's
    windows in file order (the last one shorter if val.bin ends), as calc_loss_loader on
    notebook 04's validation loader; the ranks share the batches and all-reduce."""
    model.eval()
    total = torch.zeros(2, device=device)  # (sum of batch losses, number of batches)
    n = min(batches, math.ceil(len(val_data) / batch_size))
    for i in range(rank, n, world):
        first = i * batch_size
        size = min(batch_size, len(val_data) - first)
        x, y = (t.to(device) for t in val_data.batch(first, size))
        total += torch.stack([batch_loss(model, x, y, bf16), torch.ones((), device=device)])
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item()


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data-dir", required=True, help="folder with train.bin, val.bin (prepare_data.py)")
    a("--out-dir", required=True, help="log.csv, loss.png and checkpoints/ go here")
    a("--model", default="124M", help="GPT-2 size giving the shape (or, with --init openai, a "
                                      "folder name under --models-dir)")
    a("--init", default="random", help="random | openai (gpt_download3) | hf:NAME_OR_FOLDER")
    a("--models-dir", default=os.environ.get("COURSE_MODELS_DIR", "models"))
    a("--emb-dim", type=int, help="override the size's emb_dim (random init)")
    a("--n-layers", type=int, help="override n_layers (random init)")
    a("--n-heads", type=int, help="override n_heads (random init)")
    a("--context-length", type=int, default=256, help="tokens per row T")
    a("--dropout", type=float, default=0.0)
    a("--batch-size", type=int, default=8, help="rows per rank and micro-step B")
    a("--accum", type=int, default=1, help="micro-steps per optimizer step")
    a("--max-steps", type=int, default=1000, help="optimizer steps; the schedule ends here")
    a("--lr", type=float, default=6e-4, help="peak learning rate")
    a("--initial-lr", type=float, default=6e-5, help="learning rate at step 0 (warm-up start)")
    a("--min-lr", type=float, default=6e-5, help="floor of the cosine decay")
    a("--warmup-steps", type=int, default=100)
    a("--weight-decay", type=float, default=0.1, help="on matrices only")
    a("--grad-clip", type=float, default=1.0, help="max global gradient norm; 0: no clipping")
    a("--eval-every", type=int, default=100,
      help="steps between evaluations and samples (and at the end); 0: never")
    a("--eval-batches", type=int, default=10, help="batches of the fixed validation sample")
    a("--sample-prompt", default="Every effort moves you")
    a("--sample-tokens", type=int, default=30, help="0: no text sample")
    a("--log-every", type=int, default=10, help="steps between printed lines")
    a("--ckpt-every", type=int, default=100,
      help="steps between checkpoints (and at the end); 0: never")
    a("--keep", type=int, default=3, help="checkpoints kept")
    a("--resume", action="store_true", help="continue from the newest good checkpoint")
    a("--stop-after", type=int, help="stop after this step, as if the job were killed there")
    a("--seed", type=int, default=123)
    a("--device", default="auto", help="auto (cuda -> mps -> cpu), cuda, mps or cpu")
    a("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    a("--threads", type=int, help="torch.set_num_threads (CPU)")
    return p


def _check_args(args):
    """Every option train() reads, checked before anything starts (a Namespace built by hand,
    or edited after build_parser().parse_args, gets the same checks as the command line)."""
    from pretraining_data import SEED_MAX

    dests = [a.dest for a in build_parser()._actions if a.dest != "help"]
    missing = [d for d in dests if not hasattr(args, d)]
    if missing:
        raise TypeError(f"train takes build_parser().parse_args([...])'s Namespace; "
                        f"{shape_of(args)} lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}")

    def flag(key):
        return f"--{key.replace('_', '-')}"

    for key in ("data_dir", "out_dir", "model", "init", "models_dir", "sample_prompt"):
        if not isinstance(getattr(args, key), (str, os.PathLike)):
            raise TypeError(f"{flag(key)} must be a str, not {shape_of(getattr(args, key))}")
    for key in ("resume", "bf16"):
        if not isinstance(getattr(args, key), bool):
            raise TypeError(f"{flag(key)} must be True or False, not "
                            f"{shape_of(getattr(args, key))}")
    # each whole-number option is stored back as a Python int (a numpy or 0-d torch integer
    # passes check_int, but torch.set_num_threads and friends take only int)
    for key in ("context_length", "batch_size", "accum", "max_steps", "eval_batches",
                "log_every"):
        setattr(args, key, check_int(getattr(args, key), flag(key), minimum=1))
    for key in ("eval_every", "ckpt_every", "keep", "sample_tokens"):
        setattr(args, key, check_int(getattr(args, key), flag(key) + " (0: never/all)",
                                     minimum=0))
    for key in ("emb_dim", "n_layers", "n_heads", "threads", "stop_after"):
        if getattr(args, key) is not None:
            setattr(args, key, check_int(getattr(args, key), flag(key), minimum=1))
    args.seed = check_int(args.seed, "--seed", minimum=0, maximum=SEED_MAX)
    args.warmup_steps = check_int(args.warmup_steps, "--warmup-steps", minimum=0)
    if not 0 <= args.warmup_steps <= args.max_steps:
        raise ValueError(f"--warmup-steps {args.warmup_steps} must be in 0..--max-steps")
    for key in ("lr", "min_lr", "initial_lr", "weight_decay", "grad_clip"):
        _number(getattr(args, key), flag(key))
    if isinstance(args.dropout, bool) or not isinstance(args.dropout, (int, float)):
        raise TypeError(f"--dropout must be a number, not {shape_of(args.dropout)}")
    if not 0.0 <= args.dropout < 1.0:
        raise ValueError(f"--dropout must be in 0..1 (1 excluded: every activation dropped), "
                         f"not {args.dropout}")
    if args.min_lr > args.lr:
        raise ValueError(f"--min-lr {args.min_lr} is above the peak --lr {args.lr}")
    if args.device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, not {args.device!r}")


def _setup_distributed(device_name):
    """(rank, world size, device); joins torchrun's process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "mps":
            raise RuntimeError("DDP does not run on MPS; use one process (python, not torchrun).")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _write_plot(rows, path: Path):
    """Training loss per step and validation loss at each evaluation, against tokens seen."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend needed

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot([r["tokens_seen"] for r in rows], [r["train_loss"] for r in rows],
            label="training loss (each step)")
    val = [r for r in rows if r["val_loss"] != ""]
    ax.plot([r["tokens_seen"] for r in val], [r["val_loss"] for r in val], "o-",
            label="validation loss (fixed sample)")
    ax.set_xlabel("Tokens seen")
    ax.set_ylabel("Loss")
    ax.set_title("Pretraining loss")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def _read_log(path: Path, up_to_step: int) -> list:
    """The rows of an earlier log.csv up to step `up_to_step` (rows after it are redone)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: (v if v == "" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r["step"], r["tokens_seen"] = int(r["step"]), int(r["tokens_seen"])
    return [r for r in rows if r["step"] <= up_to_step]


def _resume_state(ckpt_dir, rank, world, say):
    """Rank 0 picks the newest good checkpoint; every rank then loads that same file."""
    from pretraining_checkpoints import load_checkpoint

    choice, ckpt = [None], None
    if rank == 0:
        try:
            path, ckpt = latest_checkpoint(ckpt_dir, log=say)
            choice = [("path", str(path)) if path else None]
        except ValueError as e:
            choice = [("error", str(e))]
    if world > 1:
        dist.broadcast_object_list(choice)
    if choice[0] and choice[0][0] == "error":
        raise RuntimeError(choice[0][1])
    if choice[0] and rank != 0:
        ckpt = load_checkpoint(choice[0][1])
    if ckpt is None:
        say(f"--resume: no checkpoint in {ckpt_dir} yet; starting from step 0.")
    else:
        say(f"Resuming from {choice[0][1]} (step {ckpt['step']}).")
    return ckpt


def train(args):
    """Run the training that `args` (build_parser's) describe; returns (model, rows of the log)."""
    _check_args(args)
    rank, world, device = _setup_distributed(args.device)
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("--bf16: this GPU has no bf16 support; run without --bf16.")
    if args.bf16 and device.type == "cpu" and not _cpu_has_bf16():
        say("Note: this CPU has no bf16 instructions (avx512_bf16/amx_bf16); bf16 autocast "
            "will likely be slower than fp32 here.")
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    ckpt_dir, B, T = out_dir / "checkpoints", args.batch_size, args.context_length
    train_data = TokenWindows(data_dir / "train.bin", T, seed=args.seed)
    val_data = TokenWindows(data_dir / "val.bin", T, shuffle=False)
    vocab = read_meta(data_dir)["vocab_size"]  # (checks meta.json against the files, early)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = build_model(args, say)
    ckpt = _resume_state(ckpt_dir, rank, world, say) if args.resume else None
    if ckpt is not None:
        if ckpt["config"] != model.cfg:
            raise ValueError(f"the checkpoint's model config {ckpt['config']} differs from this "
                             f"run's {model.cfg}; resume with the same --model and overrides.")
        if ckpt["tied"]:
            model.out_head.weight = model.tok_emb.weight
        model.load_state_dict(ckpt["model"])
    if vocab > model.cfg["vocab_size"]:
        raise ValueError(f"{data_dir} was tokenized with {vocab} ids but the model has "
                         f"{model.cfg['vocab_size']}; prepare it with GPT-2's tokenizer.")
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")
    step, samples_seen, elapsed, rows = 0, 0, 0.0, []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        step, samples_seen, elapsed = ckpt["step"], ckpt["samples_seen"], ckpt["elapsed_s"]
        if len(ckpt["rng"]) == world:
            set_rng_state(ckpt["rng"][rank])
        else:
            say(f"The checkpoint has {len(ckpt['rng'])} ranks' random states, this run "
                f"{world}: dropout masks are drawn afresh (the data order is kept).")
            torch.manual_seed(args.seed + 1000 * step + rank)
        rows = _read_log(out_dir / "log.csv", step) if rank == 0 else []
        if ckpt["train_tokens"] != len(train_data.ids):
            say(f"Note: train.bin now holds {len(train_data.ids):,} tokens, the checkpoint's run "
                f"had {ckpt['train_tokens']:,}: the data order from here on differs.")
    else:
        torch.manual_seed(args.seed + rank)  # each rank its own dropout masks
    ddp = None
    if world > 1:
        # (GPTModel has no buffers, so DDP has none to broadcast before each forward pass)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    net = ddp or model
    tokenizer = None
    if rank == 0 and args.sample_tokens > 0:
        from course_data import get_gpt2_tokenizer

        tokenizer = get_gpt2_tokenizer()
    tokens_per_step = args.accum * world * B * T
    say(f"{sum(p.numel() for p in model.parameters()):,} parameters on {device} x {world} "
        f"rank(s); {tokens_per_step:,} tokens per step ({args.accum} x {world} x {B} x {T}); "
        f"train.bin {len(train_data.ids):,} tokens, {len(train_data):,} windows")
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(out_dir / "log.csv.tmp", "w", newline="")  # closed in `finally`
        writer = csv.DictWriter(log_file, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        log_file.flush()
        os.replace(out_dir / "log.csv.tmp", out_dir / "log.csv")
    start = time.perf_counter() - elapsed
    try:
        while step < args.max_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, args.lr, args.min_lr, args.warmup_steps, args.max_steps,
                       args.initial_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(args.accum):
                # this rank's B rows of the micro-step's world x B rows
                x, y = (t.to(device) for t in
                        train_data.batch(samples_seen + (micro * world + rank) * B, B))
                last = micro == args.accum - 1  # DDP all-reduces the gradients only then
                with contextlib.nullcontext() if ddp is None or last else ddp.no_sync():
                    loss = batch_loss(net, x, y, args.bf16)
                    (loss / args.accum).backward()
                loss_sum += loss.detach()
            max_norm = args.grad_clip if args.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, samples_seen = step + 1, samples_seen + args.accum * world * B
            train_loss = loss_sum / args.accum
            if world > 1:
                dist.all_reduce(train_loss)
                train_loss /= world
            train_loss = train_loss.item()  # waits for the device: the step's time is complete
            dt = time.perf_counter() - t0
            row = {"step": step, "tokens_seen": step * tokens_per_step, "lr": lr,
                   "train_loss": train_loss, "grad_norm": grad_norm.item(), "val_loss": "",
                   "tokens_per_s": tokens_per_step / dt, "elapsed_s": 0.0}
            if args.eval_every and (step % args.eval_every == 0 or step == args.max_steps):
                row["val_loss"] = evaluate(model, val_data, args.eval_batches, B, rank, world,
                                           device, args.bf16)
                say(f"step {step}: validation loss {row['val_loss']:.4f}")
                if tokenizer is not None:
                    from previous_chapters import generate_and_print_sample

                    generate_and_print_sample(model, tokenizer, device, args.sample_prompt,
                                              args.sample_tokens)  # greedy: no random numbers
            row["elapsed_s"] = time.perf_counter() - start
            if step % args.log_every == 0 or step == 1:
                say(f"step {step:>6}/{args.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                    f"grad norm {row['grad_norm']:.2f} | {row['tokens_per_s']:,.0f} tokens/s")
            if rank == 0:
                rows.append(row)
                writer.writerow(row)
                log_file.flush()
            if args.ckpt_every and (step % args.ckpt_every == 0 or step == args.max_steps):
                rngs = [rng_state()]
                if world > 1:
                    rngs = [None] * world
                    dist.all_gather_object(rngs, rng_state())
                if rank == 0:
                    path = save_checkpoint(
                        {"step": step, "samples_seen": samples_seen, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "config": model.cfg,
                         "tied": model.out_head.weight is model.tok_emb.weight, "rng": rngs,
                         "elapsed_s": row["elapsed_s"], "train_tokens": len(train_data.ids),
                         "args": {k: v for k, v in vars(args).items() if v is not None}},
                        ckpt_dir, keep=args.keep)
                    say(f"checkpoint {path}")
                    _write_plot(rows, out_dir / "loss.png")
            if args.stop_after is not None and step >= args.stop_after:
                say(f"Stopping after step {step} (--stop-after).")
                break
    finally:
        if rank == 0:
            log_file.close()
    if rank == 0 and rows:
        _write_plot(rows, out_dir / "loss.png")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return model, rows


def main(argv=None):
    """scripts/pretrain.py: parse the command line and train."""
    if argv is not None and (isinstance(argv, str) or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"main takes the command line as a list of str, e.g. ['--data-dir', "
                        f"'data'], not {shape_of(argv)}")
    return train(build_parser().parse_args(argv))
