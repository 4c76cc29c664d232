"""The checks the course's helpers run on what they are given, so that a mistake a learner can
make (token ids without the batch dimension, an id from another tokenizer, a float where an id
belongs, a count of -1, a checkpoint that does not fit the model) stops at the helper's door with
a message that says what is wrong, shows the offending value and says what to do, instead of an
error from deep inside PyTorch.

Not part of the lectures: previous_chapters.py (and the notebooks that build it) call these in
one line at the top of a helper. Each check costs a few microseconds: shapes, dtypes and devices
only, except `check_token_ids`, which also looks at the ids' smallest and largest value (one pass
over the ids, on the CPU only unless asked: on a GPU that would wait for the device).

Every check raises TypeError (a value of the wrong kind), ValueError (the right kind, a wrong
value) or FileNotFoundError (a missing file); tests/test_input_checks.py lists the messages and
tests/test_fuzz_helpers.py sweeps random inputs through every helper.
"""

from __future__ import annotations

import operator

import torch

__all__ = ["check_int", "check_fraction", "check_text", "check_sampling", "check_token_ids",
           "check_features", "input_dtype", "check_loader", "check_state_dict_fits",
           "check_gpt2_params", "check_curves", "first_existing", "shape_of"]


def shape_of(value) -> str:
    """How to show a value in a message: a tensor's shape and dtype, else its type and repr."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def first_existing(path):
    """`path` itself or the closest of its parent folders that exists (None if none does): where
    a path to be created meets the file system, e.g. a file standing where a folder should."""
    from pathlib import Path

    return next((p for p in (Path(path), *Path(path).parents) if p.exists()), None)


def check_int(value, name, minimum=None, maximum=None) -> int:
    """`value` as an int (a Python, numpy or 0-d torch integer), between minimum and maximum."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{name} must be a whole number, not {shape_of(value)}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a whole number, not {shape_of(value)}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be at most {maximum}, not {number}")
    return number


def check_fraction(value, name) -> float:
    """`value` as a float between 0 and 1 (NaN is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number between 0 and 1, not {shape_of(value)}")
    if not 0.0 <= value <= 1.0:  # False for NaN too
        raise ValueError(f"{name} must be between 0 and 1, not {value}")
    return float(value)


def check_text(text, name="the text") -> str:
    """`text` if it is a str; TypeError otherwise (token ids and bytes are common mix-ups)."""
    if not isinstance(text, str):
        hint = ""
        if isinstance(text, (bytes, bytearray)):
            hint = " Decode it first: text.decode('utf-8')."
        elif isinstance(text, (list, tuple, torch.Tensor)):
            hint = " Are these token ids? Decode them to text first (token_ids_to_text)."
        raise TypeError(f"{name} must be a str, not {shape_of(text)}.{hint}")
    return text


def check_sampling(max_new_tokens, temperature, top_k) -> None:
    """generate's settings: max_new_tokens 0 or more, temperature 0 (greedy) or a positive
    finite number, top_k None or 1 or more."""
    check_int(max_new_tokens, "max_new_tokens", minimum=0)
    if top_k is not None:
        check_int(top_k, "top_k (or None)", minimum=1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, not {shape_of(temperature)}")
    if not 0 <= temperature < float("inf"):  # NaN fails too
        raise ValueError(f"temperature must be 0 (greedy) or positive, not {temperature}")


def check_token_ids(idx, vocab_size=None, context_length=None, device=None, scan=None,
                    what="the token ids") -> None:
    """Check a (batch, tokens) tensor of token ids: an integer tensor (int64 or int32) with two
    dimensions, at most `context_length` tokens, on `device`, every id in 0 .. vocab_size - 1.
    The ids are looked at on the CPU (scan=None) or always (scan=True); shapes always."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor of shape (batch, tokens), not "
                        f"{shape_of(idx)}. Make one with torch.tensor([ids]) (or "
                        "text_to_token_ids(text, tokenizer)).")
    if idx.dtype not in (torch.int64, torch.int32):
        hint = (" Are these embeddings or logits rather than ids?" if idx.is_floating_point()
                else "")
        raise TypeError(f"{what} must be integers (torch.long), the positions of the tokens in "
                        f"the vocabulary, not {idx.dtype}.{hint} Convert ids with .long().")
    if idx.dim() != 2:
        hint = (" Add the batch dimension: ids.unsqueeze(0), or torch.tensor([ids])."
                if idx.dim() == 1 else "")
        raise ValueError(f"{what} must have shape (batch, tokens), not {tuple(idx.shape)}.{hint}")
    if context_length is not None and idx.shape[1] > context_length:
        raise ValueError(
            f"The input has {idx.shape[1]} tokens but the model's context length is "
            f"{context_length}; crop it, e.g. idx[:, -context_length:]."
        )
    if device is not None and idx.device != device and device.type != "meta":
        raise ValueError(f"{what} are on {idx.device} but the model is on {device}; move them "
                         "with .to(device) (the model's device: next(model.parameters()).device).")
    if vocab_size is not None and idx.numel() and (scan or (scan is None
                                                            and idx.device.type == "cpu")):
        low, high = torch.aminmax(idx)
        if low < 0 or high >= vocab_size:
            row, col = ((idx < 0) | (idx >= vocab_size)).nonzero()[0].tolist()
            raise ValueError(
                f"token id {idx[row, col].item()} (row {row}, position {col}) is outside the "
                f"model's vocabulary of {vocab_size:,} ids (0 to {vocab_size - 1:,}). Were the "
                "ids made by another tokenizer, or shifted by a pad/ignore value such as -100?")


def check_features(x, size, who, dims=None, dtype=None) -> None:
    """Check an activation tensor: floating point, `size` values in its last dimension (unless
    None), `dims` dimensions and the `dtype` of the weights it meets (if given; autocast mixes
    dtypes on purpose, so not under autocast); `who` names the module for the message."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} takes a float tensor, not {shape_of(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{who} takes float activations, not {x.dtype} values. Token ids go into "
                        "GPTModel (or an nn.Embedding) first; or convert with .float().")
    if (dims is not None and x.dim() != dims) or (size is not None and (
            x.dim() == 0 or x.shape[-1] != size)):
        wanted = "(batch, tokens, {})" if dims == 3 else "(..., {})"
        raise ValueError(f"{who} takes tensors of shape {wanted.format(size)}, not "
                         f"{tuple(x.shape)}: its input size is {size}.")
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{who} has {dtype} weights but the input is {x.dtype}; convert it with "
                        f"x.to({dtype}) (or the module with .to(x.dtype)).")


def input_dtype(layer):
    """The dtype a layer's input must have: a plain nn.Linear's weight dtype; None for others
    (a quantized layer converts its input itself)."""
    return layer.weight.dtype if type(layer) is torch.nn.Linear else None


def check_loader(data_loader, name="the data loader") -> None:
    """A DataLoader, or a list of (inputs, targets) pairs, as the training helpers iterate it."""
    from torch.utils.data import DataLoader

    if isinstance(data_loader, DataLoader):
        return
    if not isinstance(data_loader, (list, tuple)) or not all(
            isinstance(batch, (list, tuple)) and len(batch) == 2 for batch in data_loader):
        raise TypeError(f"{name} must be a DataLoader (or a list of (inputs, targets) batches), "
                        f"not {shape_of(data_loader)}")


def check_state_dict_fits(model, state_dict, source="the state dict") -> None:
    """Check, before anything is copied, that `state_dict` holds a tensor of the right shape for
    every entry of `model.state_dict()` and nothing else; ValueError listing what differs.
    (nn.Module.load_state_dict copies what fits and only then raises, leaving the model half
    loaded.)"""
    if not isinstance(state_dict, dict):
        raise TypeError(f"{source} must be a dict of tensors (a model's state_dict()), not "
                        f"{shape_of(state_dict)}")
    ours = model.state_dict()
    missing = [k for k in ours if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ours]
    wrong = [f"{k}: {shape_of(v)}" for k, v in state_dict.items()
             if k in ours and not isinstance(v, torch.Tensor)]
    shapes = [f"{k} is {tuple(v.shape)} in {source}, {tuple(ours[k].shape)} in the model"
              for k, v in state_dict.items()
              if k in ours and isinstance(v, torch.Tensor) and v.shape != ours[k].shape]
    problems = [(f"missing ({len(missing)})", missing), (f"unexpected ({len(unexpected)})",
                                                         unexpected),
                ("not tensors", wrong), ("different shapes", shapes)]
    problems = [(title, items) for title, items in problems if items]
    if not problems:
        return
    listed = "; ".join(f"{title}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                       for title, items in problems)
    hint = " Is the model built with the same config (GPT-2 size) as the one saved?"
    head = "out_head.weight"
    if head in ours and isinstance(state_dict.get(head), torch.Tensor) and (
            state_dict[head].shape[0] != ours[head].shape[0]):
        hint = (f" The saved output layer has {state_dict[head].shape[0]} outputs, the model's "
                f"{ours[head].shape[0]}: a classifier needs add_classification_head(model, "
                "num_classes) before loading, a language model does not.")
    raise ValueError(f"{source} does not fit this {type(model).__name__} ({listed}); nothing "
                     f"was loaded.{hint}")


def check_gpt2_params(params, gpt=None) -> None:
    """Check, before anything is copied, that `params` (gpt_download3's nested dict) holds every
    array load_weights_into_gpt reads and, given the model `gpt`, that each has the shape the
    model needs; the messages are load_weights_into_gpt's own (its assign_), so that a mismatch
    reads the same whichever array it is found in."""
    import numpy as np

    def lookup(entry):
        value = params
        for key in entry:
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and isinstance(key, int) and key < len(value):
                value = value[key]
            else:
                return None
        return value

    if not isinstance(params, dict) or not isinstance(params.get("blocks"), list):
        raise ValueError(f"load_weights_into_gpt takes the params dict that "
                         f"download_and_load_gpt2 returns (with a list params['blocks']), not "
                         f"{shape_of(params)}")
    # (where in params, the name load_weights_into_gpt gives it, the model's shape for it,
    #  whether the checkpoint stores it transposed: TensorFlow's Conv1D keeps (in, out))
    entries = []
    if gpt is not None:
        entries += [(("wpe",), "pos_emb.weight (wpe)", tuple(gpt.pos_emb.weight.shape), False),
                    (("wte",), "tok_emb.weight (wte)", tuple(gpt.tok_emb.weight.shape), False)]
    else:
        entries += [(("wpe",), "wpe", None, False), (("wte",), "wte", None, False)]

    def qkv(b, part):  # W_query, W_key, W_value stacked, as c_attn holds them
        rows, *rest = getattr(b.att.W_query, part).shape
        return torch.empty(3 * rows, *rest, device="meta")

    for i in range(len(params["blocks"])):
        block = gpt.trf_blocks[i] if gpt is not None and i < len(gpt.trf_blocks) else None
        if block is not None and block.att.W_query.bias is None:
            block = None  # no qkv biases: load_weights_into_gpt says so itself
        parts = [(("attn", "c_attn", "w"), "att.W_query, W_key, W_value (c_attn/w)",
                  lambda b: qkv(b, "weight"), True),
                 (("attn", "c_attn", "b"), "att.W_query, W_key, W_value (c_attn/b)",
                  lambda b: qkv(b, "bias"), False),
                 (("attn", "c_proj", "w"), "att.out_proj (attn/c_proj).weight",
                  lambda b: b.att.out_proj.weight, True),
                 (("attn", "c_proj", "b"), "att.out_proj (attn/c_proj).bias",
                  lambda b: b.att.out_proj.bias, False),
                 (("mlp", "c_fc", "w"), "ff.layers[0] (mlp/c_fc).weight",
                  lambda b: b.ff.layers[0].weight, True),
                 (("mlp", "c_fc", "b"), "ff.layers[0] (mlp/c_fc).bias",
                  lambda b: b.ff.layers[0].bias, False),
                 (("mlp", "c_proj", "w"), "ff.layers[2] (mlp/c_proj).weight",
                  lambda b: b.ff.layers[2].weight, True),
                 (("mlp", "c_proj", "b"), "ff.layers[2] (mlp/c_proj).bias",
                  lambda b: b.ff.layers[2].bias, False),
                 (("ln_1", "g"), "norm1 (ln_1).scale", lambda b: b.norm1.scale, False),
                 (("ln_1", "b"), "norm1 (ln_1).shift", lambda b: b.norm1.shift, False),
                 (("ln_2", "g"), "norm2 (ln_2).scale", lambda b: b.norm2.scale, False),
                 (("ln_2", "b"), "norm2 (ln_2).shift", lambda b: b.norm2.shift, False)]
        entries += [(("blocks", i, *keys), f"trf_blocks[{i}].{label}",
                     None if block is None else tuple(get(block).shape), transposed)
                    for keys, label, get, transposed in parts]
    final = getattr(gpt, "final_norm", None)
    entries += [(("g",), "final_norm.scale (ln_f/g)", final and tuple(final.scale.shape), False),
                (("b",), "final_norm.shift (ln_f/b)", final and tuple(final.shift.shape), False)]
    for entry, name, ours, transposed in entries:
        array = lookup(entry)
        if not isinstance(array, (np.ndarray, torch.Tensor)) or array.ndim == 0:
            where = "".join(f"[{k!r}]" for k in entry)
            raise ValueError(f"params{where} is missing or not an array (of at least one "
                             "dimension): load_weights_into_gpt takes the params dict that "
                             "download_and_load_gpt2 returns.")
        given = tuple(array.shape)[::-1] if transposed else tuple(array.shape)
        if ours is not None and given != ours:
            raise ValueError(f"{name}: the model has shape {ours} but the "
                             f"checkpoint gives {given}. Does the model config match the "
                             "weights?")


def check_curves(**curves) -> None:
    """Check the sequences a loss plot draws: one-dimensional sequences of numbers (lists, numpy
    arrays, tensors), all of one length."""
    import numpy as np

    lengths = {}
    for name, values in curves.items():
        try:
            array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor)
                               else values)
        except (TypeError, ValueError, RuntimeError):
            array = np.asarray(None)
        if array.ndim != 1 or array.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a sequence of numbers (as the training loop returns "
                            f"it), not {shape_of(values)}")
        lengths[name] = len(array)
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the curves to plot have different lengths ({lengths}): pass the "
                         "values of one training run, one per evaluation")
