"""Export a GPTModel to the Hugging Face format (issue 18): a folder that transformers'
GPT2LMHeadModel.from_pretrained and pipeline("text-generation") load offline, that
previous_chapters.gpt_from_pretrained reads back, and that llama.cpp's convert_hf_to_gguf.py turns
into a GGUF file for llama.cpp and Ollama (notebook 07, section 7.9).

    export_to_hf(model, folder)   config.json, model.safetensors, GPT-2's tokenizer files
    hf_config(model, tie)         the config.json of GPT2LMHeadModel for a GPTModel
    hf_state_dict(model, tie)     {Hugging Face name: tensor}, in GPT2LMHeadModel's layout

The names are notebook 05's table previous_chapters.HF_GPT2_NAMES read backwards: the three query,
key and value projections of a block become one fused `c_attn`, and the weights of the attention
and feed-forward layers are stored as Conv1D keeps them, (in, out), the transpose of nn.Linear's.
GPT-2 ties its output head to the token embedding: the file holds the matrix once. A model whose
head differs (trained from scratch as in notebook 04, or with a LoRA on out_head merged in) needs
tie=False: then the file also holds `lm_head.weight` and config.json says
"tie_word_embeddings": false.
"""

import json
import os
import shutil
from pathlib import Path

import torch

from input_checks import check_int, first_existing, shape_of
from previous_chapters import HF_GPT2_NAMES

__all__ = ["GPT2_VOCAB_SIZE", "hf_state_dict", "hf_config", "export_to_hf"]

GPT2_VOCAB_SIZE = 50257  # the tokens of GPT-2's tokenizer files (encoder.json / vocab.json)
EOT_ID = 50256  # <|endoftext|>: GPT-2's beginning, end and unknown token alike

# The tokenizer's settings for transformers' GPT2Tokenizer / GPT2TokenizerFast, as GPT-2's own.
# clean_up_tokenization_spaces False: decoding gives back the text exactly, as tiktoken's does
# (True would turn " ." into "." and "do n't" into "don't").
TOKENIZER_CONFIG = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                    "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "clean_up_tokenization_spaces": False}


CFG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate")


def _check_options(tie=True, dtype=None, **flags):
    """tie (and any other flag) a bool, dtype None or a floating-point torch dtype."""
    for name, value in {"tie": tie, **flags}.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {shape_of(value)}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be None (keep the model's) or a floating-point torch dtype "
                        f"such as torch.float16, not {shape_of(dtype)}")


def _check_gpt_model(model):
    """A GPTModel (its parts and its cfg, with the course's keys), not something else."""
    parts = ("tok_emb", "pos_emb", "trf_blocks", "final_norm", "out_head")
    if (not isinstance(model, torch.nn.Module) or not all(hasattr(model, p) for p in parts)
            or not hasattr(model, "cfg")):
        hint = (" Pass the LoadedModel's .model." if hasattr(model, "model")
                and isinstance(model.model, torch.nn.Module) else "")
        raise TypeError(f"export_to_hf exports a GPTModel (previous_chapters.py), not a "
                        f"{type(model).__name__}, which lacks some of {', '.join(parts)} or its "
                        f"cfg.{hint}")
    cfg = model.cfg
    missing = [k for k in CFG_KEYS if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ValueError(f"model.cfg lacks {missing}: export_to_hf needs the course's config "
                         f"dict ({', '.join(CFG_KEYS)}), not {shape_of(cfg)}.")
    for key in CFG_KEYS[:-1]:
        check_int(cfg[key], f"model.cfg[{key!r}]", minimum=1)
    if model.tok_emb.weight.is_meta:
        raise ValueError("the model's weights are on the meta device (built without memory): "
                         "load its weights first, e.g. with load_weights_into_gpt.")


def _refuse_what_gpt2_cannot_hold(model):
    """Raise a clear error for a model that GPT2LMHeadModel's format cannot express."""
    _check_gpt_model(model)
    if any(n.endswith(".packed") for n, _ in model.named_buffers()):
        raise ValueError("the model has 4-bit layers (qlora.LinearNF4), which hold only an "
                         "approximation of the weights. Load the base model in full precision, "
                         "put the adapter on it with lora.load_lora_adapter, fold it in with "
                         "lora.merge_lora(model), then export.")
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    if any(".lora." in n for n in names):
        raise ValueError("the model still has LoRA adapters beside its layers (LinearWithLoRA); "
                         "fold them in first with lora.merge_lora(model), then export.")
    vocab = model.tok_emb.weight.shape[0]
    head_out = getattr(model.out_head, "out_features", None)
    if head_out != vocab or getattr(model.out_head, "bias", None) is not None:
        raise ValueError(
            f"model.out_head maps to {head_out} outputs, not to the {vocab} tokens of its "
            "vocabulary: a classification head (notebook 06), which GPT-2's language-model "
            "format (GPT2LMHeadModel) cannot hold. Save the classifier with "
            "torch.save(model.state_dict(), path) and load it into a GPTModel given the same "
            "add_classification_head; or, to share the language model underneath, export the "
            "pretrained GPTModel you started from (its head tied to tok_emb).")


def _expected_shapes(cfg):
    """{Hugging Face name: shape} of GPT2LMHeadModel for a course config (without lm_head)."""
    c, v, t = cfg["emb_dim"], cfg["vocab_size"], cfg["context_length"]
    shapes = {"wte.weight": (v, c), "wpe.weight": (t, c), "ln_f.weight": (c,), "ln_f.bias": (c,)}
    per_block = {"ln_1.weight": (c,), "ln_1.bias": (c,), "attn.c_attn.weight": (c, 3 * c),
                 "attn.c_attn.bias": (3 * c,), "attn.c_proj.weight": (c, c),
                 "attn.c_proj.bias": (c,), "ln_2.weight": (c,), "ln_2.bias": (c,),
                 "mlp.c_fc.weight": (c, 4 * c), "mlp.c_fc.bias": (4 * c,),
                 "mlp.c_proj.weight": (4 * c, c), "mlp.c_proj.bias": (c,)}
    for i in range(cfg["n_layers"]):
        shapes.update({f"h.{i}.{k}": s for k, s in per_block.items()})
    return shapes


def _heads_are_tied(model):
    head, emb = model.out_head.weight, model.tok_emb.weight
    return head is emb or (head.shape == emb.shape and torch.equal(head.detach(), emb.detach()))


@torch.no_grad()
def hf_state_dict(model, tie=True, dtype=None):
    """{name: tensor} of GPT2LMHeadModel ("transformer.h.0.attn.c_attn.weight", ...) holding
    `model`'s weights, as new CPU tensors (in `dtype` if given). Shapes are checked against the
    model's cfg, so a model that does not fit its config is refused by name."""
    _check_options(tie, dtype)
    _refuse_what_gpt2_cannot_hold(model)
    if tie and not _heads_are_tied(model):
        raise ValueError(
            "model.out_head.weight differs from model.tok_emb.weight, but GPT-2's format ties "
            "them (one matrix for both). That is expected of a model trained from scratch "
            "(notebook 04) or one whose head had a LoRA merged in. Export it with tie=False: "
            "the file then holds the head as lm_head.weight and config.json says "
            "tie_word_embeddings: false (transformers and gpt_from_pretrained read that).")
    ours = dict(model.named_parameters(remove_duplicate=False))
    cfg = model.cfg
    out, used = {}, set()
    for hf_pattern, our_patterns in HF_GPT2_NAMES.items():
        for i in range(cfg["n_layers"]) if "{i}" in hf_pattern else [None]:
            hf_name = hf_pattern.format(i=i)
            names = [p.format(i=i) for p in our_patterns]
            parts = []
            for name in names:
                if name in ours:
                    parts.append(ours[name])
                elif name.endswith(".bias") and ".att.W_" in name:  # qkv_bias=False: zeros
                    weight = ours[name.removesuffix(".bias") + ".weight"]
                    parts.append(weight.new_zeros(weight.shape[0]))
                else:
                    raise ValueError(f"the model has no parameter {name}, which GPT-2's "
                                     f"{hf_name} needs; is it a GPTModel?")
                used.add(name)
            tensor = torch.cat(parts, dim=0)  # three (C, ...) parts -> one (3C, ...): c_attn
            conv1d = hf_name.endswith(".weight") and (".attn." in hf_name or ".mlp." in hf_name)
            out[hf_name] = tensor.T if conv1d else tensor  # Conv1D keeps (in, out)
    expected = _expected_shapes(cfg)
    assert set(out) == set(expected), set(out) ^ set(expected)  # HF_GPT2_NAMES is complete
    for name, shape in expected.items():
        if tuple(out[name].shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(out[name].shape)} but the model's cfg "
                f"(emb_dim {cfg['emb_dim']}, vocab_size {cfg['vocab_size']}, context_length "
                f"{cfg['context_length']}) makes GPT-2 expect {shape}. Was a layer of the model "
                "replaced after it was built? Build the model with the config of its weights.")
    leftover = sorted(set(ours) - used - {"out_head.weight"})
    if leftover:
        raise ValueError(f"the model has parameters GPT-2's format has no place for: {leftover}")
    if not tie:
        out["lm_head.weight"] = model.out_head.weight
    result = {}
    for name, tensor in out.items():
        full = name if name == "lm_head.weight" else f"transformer.{name}"
        # a copy of its own for every tensor: safetensors refuses tensors that share memory
        result[full] = tensor.detach().to("cpu", dtype or tensor.dtype, copy=True).contiguous()
    return result


def hf_config(model, tie=True, dtype=None):
    """The config.json of GPT2LMHeadModel for `model` (a GPTModel)."""
    _check_options(tie, dtype)
    _check_gpt_model(model)
    cfg = model.cfg
    dtype = dtype or model.tok_emb.weight.dtype
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg["vocab_size"], "n_positions": cfg["context_length"],
        "n_ctx": cfg["context_length"],  # the older name, which llama.cpp's converter reads
        "n_embd": cfg["emb_dim"], "n_layer": cfg["n_layers"], "n_head": cfg["n_heads"],
        "n_inner": None,  # 4 * n_embd, as our FeedForward
        "activation_function": "gelu_new",  # the tanh approximation, our GELU
        "layer_norm_epsilon": 1e-5,  # our LayerNorm's eps
        "resid_pdrop": cfg["drop_rate"], "embd_pdrop": cfg["drop_rate"],
        "attn_pdrop": cfg["drop_rate"], "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "bos_token_id": EOT_ID, "eos_token_id": EOT_ID,
        "tie_word_embeddings": bool(tie),
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _is_an_export(folder):
    """True if `folder` is empty or holds an earlier export (so it may be replaced)."""
    if not any(folder.iterdir()):
        return True
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "gpt2" and (folder / "model.safetensors").is_file()


def _check_folder(path, who):
    """`path` as a Path (a str or os.PathLike), whose closest existing ancestor is a folder."""
    if not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and not path.strip()):
        raise TypeError(f"{who} writes to a path: a str or pathlib.Path naming it, not "
                        f"{shape_of(path)}")
    path = Path(path)
    parent = first_existing(path.parent)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{parent} is a file, so {path} cannot be created in it; choose "
                         "a path under a folder.")
    return path


def export_to_hf(model, folder, tie=True, dtype=None, tokenizer=True):
    """Write `model` (a GPTModel with GPT-2's shapes) to `folder` in the Hugging Face format:
    config.json, model.safetensors and, with tokenizer=True, GPT-2's tokenizer (vocab.json,
    merges.txt from course_data's checked encoder.json and vocab.bpe, tokenizer_config.json).
    tie=False keeps a head that differs from the token embedding; dtype (e.g. torch.float16)
    converts the weights. Everything is written to a temporary folder beside `folder`, which then
    takes its place: an export is complete or absent, never half written. An existing folder is
    replaced only if it is empty or an earlier export. Returns the folder's Path."""
    from safetensors.torch import save_file

    _check_options(tie, dtype, tokenizer=tokenizer)
    folder = _check_folder(folder, "export_to_hf")
    tensors = hf_state_dict(model, tie=tie, dtype=dtype)  # every check before any write
    config = hf_config(model, tie=tie, dtype=dtype)
    vocab = model.cfg["vocab_size"]
    if tokenizer and vocab < GPT2_VOCAB_SIZE:
        raise ValueError(f"the model has {vocab} token embeddings, fewer than the "
                         f"{GPT2_VOCAB_SIZE} tokens of GPT-2's tokenizer, so the tokenizer "
                         "would produce ids the model cannot embed. Export with tokenizer=False "
                         "and ship the tokenizer that model was trained with.")
    if folder.is_file():
        raise FileExistsError(f"{folder} is a file, not a folder: export_to_hf writes a folder "
                              "(config.json, model.safetensors, ...). Name a folder that does not "
                              "exist yet, or delete the file.")
    if folder.exists() and not (folder.is_dir() and _is_an_export(folder)):
        raise FileExistsError(f"{folder} exists and is not an earlier export (config.json and "
                              "model.safetensors of a GPT-2); choose another folder, or delete it.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted export
    staging.mkdir()
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n",
                                             encoding="utf-8")
        (staging / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID},
            indent=2) + "\n", encoding="utf-8")
        if tokenizer:
            import course_data

            # vocab.json is encoder.json under the name transformers looks for, merges.txt is
            # vocab.bpe: both fetched and checked against their pinned sha256 by course_data
            shutil.copyfile(course_data.fetch_data("encoder.json"), staging / "vocab.json")
            shutil.copyfile(course_data.fetch_data("vocab.bpe"), staging / "merges.txt")
            tok_config = {**TOKENIZER_CONFIG, "model_max_length": model.cfg["context_length"]}
            (staging / "tokenizer_config.json").write_text(
                json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        if not folder.exists():
            os.replace(staging, folder)
        else:  # the earlier export steps aside whole, and comes back if the new one cannot
            old = folder.with_name(f".{folder.name}.replaced-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            try:
                os.replace(staging, folder)
            except BaseException:
                os.replace(old, folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left if something failed
    return folder
