"""LoRA from scratch (issue 15): low-rank adapters on a frozen GPTModel, their merge for
deployment, their parameter count, and a small adapter checkpoint.

A frozen layer computes x @ W.T + b; LoRA adds scaling * (x @ A @ B) with A (in, r) and B (r, out),
so only r * (in + out) numbers are trained instead of in * out. B starts at zero, so a freshly
wrapped model computes exactly what the original did.

    LoRALayer                  A, B and scaling = alpha / rank
    LinearWithLoRA             a frozen linear layer (nn.Linear, or qlora.py's LinearNF4) + LoRA
    replace_linear_with_lora   freeze a model and wrap every nn.Linear in it, in place
    merge_lora                 fold W + scaling * (A @ B).T back into plain nn.Linear layers
    lora_parameter_count       the number of LoRA parameters of a GPTModel config, by formula
    save_lora_adapter          write only A and B (and rank, alpha, layer names, shapes)
    load_lora_adapter          wrap a freshly loaded model's layers and fill them from a file
    read_lora_adapter          an adapter file's config and tensors, checked
    lora_layers                {name: LinearWithLoRA} of a model

Names, as the state_dict shows them after wrapping: the wrapper takes the layer's place, so
`trf_blocks.0.att.W_query` becomes a LinearWithLoRA whose frozen layer is
`trf_blocks.0.att.W_query.linear` and whose adapter is `trf_blocks.0.att.W_query.lora.A` / `.B`.

Every public helper checks what it is given first (a rank of 0, alpha as a string, LoRA applied
twice, an adapter that is damaged or of another rank or model size, an input of the wrong width
or dtype) and raises TypeError, ValueError or FileNotFoundError saying what to do; a refused call
changes nothing. tests/test_fuzz_bonus_modules.py lists the mistakes and sweeps random inputs.
"""

import json
import math
import numbers
import os
from pathlib import Path

import torch
import torch.nn as nn

from input_checks import check_features, check_int, shape_of
from qlora import check_config

__all__ = ["LoRALayer", "LinearWithLoRA", "replace_linear_with_lora", "merge_lora",
           "lora_parameter_count", "save_lora_adapter", "load_lora_adapter", "read_lora_adapter",
           "lora_layers"]


def _check_rank_alpha(rank, alpha) -> int:
    """rank as an int of at least 1; alpha a finite positive number (scaling = alpha / rank)."""
    rank = check_int(rank, "rank (the LoRA rank r)", minimum=1)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number (scaling = alpha / rank; e.g. alpha = rank or "
                        f"2 * rank), not {shape_of(alpha)}")
    if not _finite_positive(alpha):
        raise ValueError(f"alpha must be a finite positive number (scaling = alpha / rank), "
                         f"not {alpha}")
    if alpha / rank > torch.finfo(torch.float16).max:  # the narrowest float a LoRA is kept in
        raise ValueError(f"alpha / rank = {alpha / rank:.3g} is too large a scaling: it must fit "
                         "in float16 (at most 65504); alpha is usually rank or 2 * rank.")
    return rank


def _finite_positive(number) -> bool:
    try:
        return math.isfinite(number) and number > 0
    except OverflowError:  # an int too large for a float
        return False


def _check_model(model, who):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who} takes a model (an nn.Module such as GPTModel), not "
                        f"{shape_of(model)}")


class LoRALayer(nn.Module):
    """The low-rank update scaling * (x @ A @ B): (..., in_dim) -> (..., out_dim).
    A (in_dim, rank) starts as nn.Linear(in_dim, rank).weight.T would, B (rank, out_dim) at zero."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float, *, device=None,
                 dtype=None):
        super().__init__()
        in_dim = check_int(in_dim, "in_dim", minimum=1)
        out_dim = check_int(out_dim, "out_dim", minimum=1)
        rank = _check_rank_alpha(rank, alpha)
        # Drawn as nn.Linear(in_dim, rank) draws its (rank, in_dim) weight: kaiming_uniform_ with
        # a=sqrt(5) and fan_in = in_dim, i.e. uniform in +-1/sqrt(in_dim); then transposed. (On an
        # (in_dim, rank) tensor, kaiming's fan_in would be rank: a bound sqrt(in_dim / rank) wider.)
        weight = torch.empty(rank, in_dim, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.A = nn.Parameter(weight.T.contiguous())  # (rank, in_dim) -> (in_dim, rank)
        self.B = nn.Parameter(torch.zeros(rank, out_dim, device=device, dtype=dtype))
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank  # so that changing the rank needs no new learning rate

    def forward(self, x):
        check_features(x, self.A.shape[0], "LoRALayer", dtype=self.A.dtype)
        # (..., in) @ (in, r) -> (..., r), then @ (r, out) -> (..., out): never an (in, out) matrix
        return self.scaling * (x @ self.A @ self.B)

    def extra_repr(self):
        return (f"in_dim={self.A.shape[0]}, out_dim={self.B.shape[1]}, rank={self.rank}, "
                f"alpha={self.alpha}")


def _tensor_like(module):
    """(device, dtype) for a LoRA beside `module`: its weight's when that is a floating tensor
    (nn.Linear, in fp32 or bf16), else the default dtype (a 4-bit layer's LoRA stays in full
    precision), on the device of its first tensor."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.device, weight.dtype
    tensors = [*module.parameters(), *module.buffers()]
    return (tensors[0].device if tensors else None), torch.get_default_dtype()


class LinearWithLoRA(nn.Module):
    """linear(x) + lora(x): a frozen layer with in_features, out_features and a forward
    (nn.Linear, or qlora.py's 4-bit LinearNF4) plus a trainable LoRALayer beside it."""

    def __init__(self, linear: nn.Module, rank: int, alpha: float):
        super().__init__()
        if not isinstance(linear, nn.Module):
            raise TypeError(f"LinearWithLoRA wraps a layer (an nn.Linear), not {shape_of(linear)}")
        if isinstance(linear, LinearWithLoRA):
            raise TypeError("this layer already has a LoRA; wrap its .linear, or merge_lora first.")
        if not _linear_like(linear):
            raise TypeError(f"LinearWithLoRA wraps a layer with integer in_features and "
                            f"out_features (like nn.Linear); {type(linear).__name__} has none.")
        in_dim, out_dim = linear.in_features, linear.out_features
        self.linear = linear.requires_grad_(False)  # the original weights stay as they are
        device, dtype = _tensor_like(linear)
        self.lora = LoRALayer(in_dim, out_dim, rank, alpha, device=device, dtype=dtype)

    @property
    def in_features(self):
        return self.linear.in_features

    @property
    def out_features(self):
        return self.linear.out_features

    def forward(self, x):
        # linear(x) + lora(x), with the update added into the frozen layer's output in place by
        # one addmm_ (out += scaling * (x A) B): the plain sum makes three more tensors of the
        # output's size (x A B, its scaled copy, the sum), which at GPT-2 medium add about 1.5 GB
        # to a training step's peak memory (benchmarks/bench_peft.py). Equal to the plain sum:
        # tests/test_lora.py::test_fused_forward_equals_the_plain_sum.
        A, B = self.lora.A, self.lora.B
        check_features(x, A.shape[0], "LinearWithLoRA", dtype=A.dtype)
        x2d = x.reshape(-1, A.shape[0])  # (B, T, in) -> (B*T, in)
        out = self.linear(x2d)  # (B*T, out), a tensor of its own (not a view) to add into
        # (B*T, out) += scaling * ((B*T, in) @ (in, r)) @ (r, out); .to() only acts under autocast
        out.addmm_((x2d @ A).to(out.dtype), B.to(out.dtype), alpha=self.lora.scaling)
        return out.view(*x.shape[:-1], out.shape[-1])  # (B*T, out) -> (B, T, out)


def _linear_like(module):
    return isinstance(getattr(module, "in_features", None), int) and \
        isinstance(getattr(module, "out_features", None), int)


def _walk(module, prefix=""):
    """(name, parent, attribute, child) for every layer with in_features and out_features
    (nn.Linear, LinearNF4, LinearWithLoRA), without looking inside those layers."""
    for attr, child in module.named_children():
        name = f"{prefix}{attr}"
        if _linear_like(child):
            yield name, module, attr, child
        else:
            yield from _walk(child, name + ".")


def lora_layers(model: nn.Module) -> dict:
    """{name: LinearWithLoRA} of the model, by the names the wrapped layers had before."""
    _check_model(model, "lora_layers")
    return {name: m for name, _, _, m in _walk(model) if isinstance(m, LinearWithLoRA)}


def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float,
                             layer_types: tuple = (nn.Linear,)) -> nn.Module:
    """Freeze every parameter of `model`, then wrap every nn.Linear in a LinearWithLoRA: the
    attention projections, out_proj, the feed-forward layers and out_head (the classifier's too).
    In place; returns the model. Its logits are unchanged until training moves B off zero.
    `layer_types` names the layers to wrap: for QLoRA, (nn.Linear, qlora.LinearNF4).

    A tied out_head (GPT-2's head uses tok_emb.weight) is wrapped like the others and stays tied:
    the wrapper's frozen .linear.weight is still tok_emb's tensor, and the head's LoRA changes the
    head's output only, never the embedding (see merge_lora for what merging does to the tie).
    """
    _check_model(model, "replace_linear_with_lora")
    rank = _check_rank_alpha(rank, alpha)  # before anything is frozen or wrapped
    if isinstance(layer_types, type):
        layer_types = (layer_types,)
    if not (isinstance(layer_types, tuple) and layer_types and all(
            isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types)):
        raise TypeError(f"layer_types is a tuple of layer classes, e.g. (nn.Linear,) or "
                        f"(nn.Linear, qlora.LinearNF4), not {shape_of(layer_types)}")
    if lora_layers(model):
        raise ValueError("this model already has LoRA layers; load a fresh model (or merge_lora "
                         "first) before calling replace_linear_with_lora again.")
    targets = [(name, parent, attr, child) for name, parent, attr, child in _walk(model)
               if isinstance(child, layer_types)]
    if not targets:  # refused before anything is frozen
        names = " or ".join("nn.Linear" if t is nn.Linear else t.__name__ for t in layer_types)
        raise ValueError(f"{type(model).__name__} has no {names} layer to put a LoRA beside.")
    for name, _, _, child in targets:
        for size in ("in_features", "out_features"):
            check_int(getattr(child, size), f"{name}.{size}", minimum=1)
    model.requires_grad_(False)
    wrapped = {}  # a layer used in two places gets one wrapper
    for _, parent, attr, child in targets:
        if id(child) not in wrapped:
            wrapped[id(child)] = LinearWithLoRA(child, rank, alpha)
        setattr(parent, attr, wrapped[id(child)])  # nn.Sequential's "0" works the same
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LinearWithLoRA whose base is an nn.Linear by a plain nn.Linear holding
    W + scaling * (A @ B).T and the same bias; in place, returns the model. Other bases (a 4-bit
    LinearNF4) stay wrapped: merging into 4 bits would quantize the update away.

    The merged layers are frozen (requires_grad False), like the base they replace and the rest of
    the model: the merged model is for inference; model.requires_grad_(True) makes it trainable.
    A tied out_head cannot stay tied (tok_emb must keep W, the head now holds W + its update), so
    the merged head is a matrix of its own: the model then counts V * C more parameters than the
    tied original (as many as the original counted without sharing, which is what state_dict and
    named_parameters(remove_duplicate=False) show).
    """
    _check_model(model, "merge_lora")
    if not lora_layers(model):
        raise ValueError(f"this {type(model).__name__} has no LoRA layers to merge (merged "
                         "already, or never wrapped): merge_lora folds in what "
                         "replace_linear_with_lora or load_lora_adapter added.")
    for _, parent, attr, child in list(_walk(model)):
        if isinstance(child, LinearWithLoRA) and isinstance(child.linear, nn.Linear):
            base, lora = child.linear, child.lora
            # nn.Linear keeps its weight as (out, in); A @ B is (in, out): hence the .T
            delta = lora.scaling * (lora.A @ lora.B).T  # (in, r) @ (r, out) -> (out, in)
            merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                               device="meta")  # no random initialisation to throw away
            merged.weight = nn.Parameter(base.weight + delta.to(base.weight.dtype),
                                         requires_grad=False)
            if base.bias is not None:
                merged.bias = base.bias  # the same (frozen) tensor
            setattr(parent, attr, merged)
    return model


def lora_parameter_count(cfg: dict, rank: int, num_classes: int | None = None) -> int:
    """LoRA parameters r * (in + out) summed over GPTModel's nn.Linear layers, for a config with
    the course's keys: per block W_query, W_key, W_value, out_proj (C -> C) and the feed-forward
    C -> 4C -> C; then out_head C -> vocab_size, or C -> num_classes for the classifier."""
    check_config(cfg, ("vocab_size", "emb_dim", "n_layers"), "lora_parameter_count")
    rank = check_int(rank, "rank (the LoRA rank r)", minimum=1)
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes (or None for the language model head)",
                                minimum=1)
    c = cfg["emb_dim"]
    attention = 4 * rank * (c + c)  # W_query, W_key, W_value, out_proj
    feed_forward = rank * (c + 4 * c) + rank * (4 * c + c)  # ff.layers[0], ff.layers[2]
    head_out = cfg["vocab_size"] if num_classes is None else num_classes
    return cfg["n_layers"] * (attention + feed_forward) + rank * (c + head_out)


# ----- the adapter checkpoint ---------------------------------------------------------------------
# One safetensors file: the tensors `<layer>.lora.A` (in, r) and `<layer>.lora.B` (r, out) and, in
# the header's text metadata, a JSON config. Why safetensors rather than torch.save: an adapter is
# the kind of file people download from strangers, and reading safetensors runs no code (no
# pickle); the header (names, shapes, config) is checked before any tensor is read; and it is
# the format other tools (peft's adapter_model.safetensors) use, so the file is familiar.
# The config: rank, alpha, "layers" {wrapped layer: [in, out]} and "base_layers" {every linear
# layer of the model it was saved from: [in, out]}, by which a base of another depth, width or
# head is recognised even where the adapter's own layers would fit it.

ADAPTER_FORMAT = "course-lora-adapter"
ADAPTER_VERSION = "1"


def _linear_shapes(model):
    """{name: [in_features, out_features]} of every linear layer of the model, wrapped or not."""
    return {name: [m.in_features, m.out_features] for name, _, _, m in _walk(model)}


def save_lora_adapter(model: nn.Module, path, **extra) -> Path:
    """Write only the LoRA tensors A and B of `model` to one safetensors file, with the config:
    rank, alpha, the wrapped layers' names and (in, out) shapes, and the names and shapes of all
    the base model's linear layers (so that a model of another size or depth is recognised).
    `extra` (JSON values: epoch, accuracy, ...) is stored alongside. Returns the path."""
    from safetensors.torch import save_file

    _check_model(model, "save_lora_adapter")
    path = _adapter_path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; save to a file in it, e.g. "
                         f"{path / 'adapter.safetensors'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist; create it first "
                                "with Path(folder).mkdir(parents=True, exist_ok=True)")
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save: call replace_linear_with_lora "
                         "(and train) first.")
    ranks = {(m.lora.rank, m.lora.alpha) for m in layers.values()}
    if len(ranks) > 1:
        raise ValueError(f"an adapter file holds one rank and alpha for all layers; this model has "
                         f"several (rank, alpha): {sorted(ranks)}.")
    (rank, alpha), = ranks
    if any(m.lora.A.device.type == "meta" for m in layers.values()):
        raise ValueError("the model's LoRA layers are on the meta device (shapes, no values): "
                         "there is nothing to save; build the model with real weights and train.")
    config = {"rank": rank, "alpha": alpha,
              "layers": {name: [m.in_features, m.out_features] for name, m in layers.items()},
              "base_layers": _linear_shapes(model)}
    try:
        extra_json = json.dumps(extra)
    except (TypeError, ValueError) as e:  # ValueError: a value that contains itself
        raise TypeError(f"save_lora_adapter stores extra values as JSON: {e}. Pass numbers, "
                        "strings, lists or dicts.") from e
    tensors = {}
    for name, m in layers.items():
        tensors[f"{name}.lora.A"] = m.lora.A.detach().cpu().contiguous()  # (in, r)
        tensors[f"{name}.lora.B"] = m.lora.B.detach().cpu().contiguous()  # (r, out)
    # written whole or not at all: to path + ".tmp", then renamed over `path`
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": ADAPTER_FORMAT,
                                               "version": ADAPTER_VERSION,
                                               "config": json.dumps(config), "extra": extra_json})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _adapter_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes) or not str(path):
        raise TypeError(f"the adapter's path must be a str or a Path (e.g. "
                        f"'adapter.safetensors'), not {shape_of(path)}")
    if "\0" in str(path):
        raise ValueError(f"the adapter's path {str(path)!r} holds a NUL character, which no file "
                         "name can; pass the path of a file such as 'adapter.safetensors'.")
    return Path(path)


def read_lora_adapter(path):
    """(config, tensors) of an adapter file written by save_lora_adapter, after checking that it
    is one and that its tensors agree with its config; config["extra"] holds the extra values."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = _adapter_path(path)
    if not path.exists():
        raise FileNotFoundError(f"there is no adapter file {path}; pass the path "
                                "save_lora_adapter wrote to.")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an adapter file; pass the path "
                         "save_lora_adapter wrote to (e.g. its adapter.safetensors).")
    what = f"{path} is not a LoRA adapter written by save_lora_adapter"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{what}: it cannot be read as a safetensors file ({e}). "
                         "Pass the file save_lora_adapter wrote.") from e
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{what}: its header has no adapter config (a model checkpoint?). "
                         "Pass the file save_lora_adapter wrote.")
    if metadata.get("version") != ADAPTER_VERSION:
        raise ValueError(f"{path} is an adapter of format version {metadata.get('version')!r}; "
                         f"this lora.py reads version {ADAPTER_VERSION}.")
    try:
        config = json.loads(metadata["config"])
        config["extra"] = json.loads(metadata.get("extra", "{}"))
        rank, alpha, layers = config["rank"], config["alpha"], config["layers"]
        number = (int, float)
        ok = (type(rank) is int and rank > 0 and type(alpha) in number
              and _finite_positive(alpha) and isinstance(layers, dict) and layers
              and isinstance(config["base_layers"], dict)
              and all(isinstance(s, list) and len(s) == 2
                      and all(type(d) is int and d > 0 for d in s)
                      for s in [*layers.values(), *config["base_layers"].values()]))
    except (KeyError, TypeError, ValueError, RecursionError) as e:  # ValueError: bad JSON
        raise ValueError(f"{path}: the adapter's config is damaged ({e!r}).") from e
    if not ok:
        raise ValueError(f"{path}: the adapter's config is damaged (rank, alpha or layer shapes).")
    for name, shape in layers.items():
        if config["base_layers"].get(name) != shape:
            raise ValueError(f"{path}: the adapter's layer {name} {tuple(shape)} is not among its "
                             "base model's layers: the file is inconsistent; save it again.")
    tensors = load_file(str(path))
    expected = {f"{name}.lora.{ab}" for name in layers for ab in "AB"}
    if set(tensors) != expected:
        missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{path}: the adapter's tensors do not match its config: missing "
                         f"{missing}, not in the config {unknown}. Save the adapter again.")
    for name, (d_in, d_out) in layers.items():
        for ab, shape in (("A", (d_in, rank)), ("B", (rank, d_out))):
            got = tuple(tensors[f"{name}.lora.{ab}"].shape)
            if got != shape:
                raise ValueError(f"{path}: layer {name}: {ab} has shape {got}, but the config's "
                                 f"rank {rank} and layer shape ({d_in}, {d_out}) make it {shape}. "
                                 "The file is inconsistent; save the adapter again.")
    return config, tensors


def _some(names, shown=4):
    """'a, b, c, d and 8 more': a list of layer names short enough for a message."""
    rest = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + rest


def load_lora_adapter(model: nn.Module, path) -> nn.Module:
    """Put the adapter in `path` onto `model`: a freshly loaded base (its layers named in the file
    get wrapped, and every original parameter is frozen, as replace_linear_with_lora does), or a
    model already wrapped with the same layers and rank (A and B are overwritten). In place;
    returns the model. Everything is checked first: a refused adapter leaves the model untouched."""
    _check_model(model, "load_lora_adapter")
    if any(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()]):
        raise ValueError("the model is on the meta device (shapes, no values): the adapter would "
                         "be copied into nothing. Load the base model's weights first "
                         "(load_weights_into_gpt, or load_state_dict(..., assign=True)).")
    config, tensors = read_lora_adapter(path)
    rank, alpha, layers = config["rank"], config["alpha"], config["layers"]
    here = _linear_shapes(model)
    advice = "Load the base model the adapter was trained on (same size, same head)."
    if here != config["base_layers"]:
        lacking = sorted(set(config["base_layers"]) - set(here))
        more = sorted(set(here) - set(config["base_layers"]))
        reshaped = sorted(n for n in set(here) & set(config["base_layers"])
                          if here[n] != config["base_layers"][n])
        parts = [f"this model lacks the layers {_some(lacking)}" if lacking else "",
                 f"this model has layers the adapter's base did not: {_some(more)}" if more else "",
                 "; ".join(f"layer {n} is {tuple(here[n])} (in, out) here but "
                           f"{tuple(config['base_layers'][n])} in the adapter's base"
                           for n in reshaped[:3])]
        raise ValueError(f"{path} was trained on another model: "
                         f"{'; '.join(p for p in parts if p)}. {advice}")
    wrapped = lora_layers(model)
    if wrapped:  # an already wrapped model: the same layers, the same rank
        if set(wrapped) != set(layers):
            raise ValueError(f"the model already has LoRA layers, and not the adapter's: model "
                             f"only [{_some(sorted(set(wrapped) - set(layers)))}], adapter only "
                             f"[{_some(sorted(set(layers) - set(wrapped)))}]. Load the adapter "
                             "onto a fresh model without LoRA layers.")
        for name, m in wrapped.items():
            if m.lora.rank != rank:
                raise ValueError(f"layer {name} has a LoRA of rank {m.lora.rank}, the adapter "
                                 f"rank {rank} (A: {tuple(tensors[name + '.lora.A'].shape)}). "
                                 "Load the adapter onto a fresh model without LoRA layers.")
    # checked: nothing below can fail on the adapter's account
    if not wrapped:
        model.requires_grad_(False)
        modules = {name: (parent, attr, child) for name, parent, attr, child in _walk(model)}
        for name in layers:
            parent, attr, child = modules[name]
            setattr(parent, attr, LinearWithLoRA(child, rank, alpha))
        wrapped = lora_layers(model)
    with torch.no_grad():
        for name, m in wrapped.items():
            m.lora.alpha, m.lora.scaling = alpha, alpha / rank
            m.lora.A.copy_(tensors[f"{name}.lora.A"])
            m.lora.B.copy_(tensors[f"{name}.lora.B"])
    return model
