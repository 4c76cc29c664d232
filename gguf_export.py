"""Write a GPTModel as a GGUF file (issue 18, optional): the single-file format that llama.cpp and
Ollama run, written with the `gguf` package (pip install gguf) instead of cloning llama.cpp for its
convert_hf_to_gguf.py. transformers reads the file back (GPT2LMHeadModel.from_pretrained(folder,
gguf_file=...)), which is how tests/test_gguf_export.py checks it.

    export_to_gguf(model, path)   the weights, GPT-2's hyperparameters and its tokenizer

The tensors are hf_export.hf_state_dict's, renamed the way llama.cpp's converter renames GPT-2's
(transformer.h.0.attn.c_attn -> blk.0.attn_qkv, ...) and stored as nn.Linear keeps weights,
(out, in): the converter transposes the Conv1D weights back. A tied head is stored once, as
token_embd (llama.cpp then uses it as the output layer too); tie=False adds output.weight.
"""

import json
import os

import numpy as np

from hf_export import EOT_ID, GPT2_VOCAB_SIZE, _check_folder, _check_options, hf_state_dict

__all__ = ["GGUF_NAMES", "export_to_gguf"]

# GPT2LMHeadModel's names -> GGUF's, as llama.cpp's GPT-2 converter maps them
GGUF_NAMES = {
    "transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
    "transformer.h.{i}.ln_1.{p}": "blk.{i}.attn_norm.{p}",
    "transformer.h.{i}.attn.c_attn.{p}": "blk.{i}.attn_qkv.{p}",
    "transformer.h.{i}.attn.c_proj.{p}": "blk.{i}.attn_output.{p}",
    "transformer.h.{i}.ln_2.{p}": "blk.{i}.ffn_norm.{p}",
    "transformer.h.{i}.mlp.c_fc.{p}": "blk.{i}.ffn_up.{p}",
    "transformer.h.{i}.mlp.c_proj.{p}": "blk.{i}.ffn_down.{p}",
}


def _gguf_name(hf_name):
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, i, *rest = hf_name.split(".")  # transformer.h.{i}.<layer...>.{p}
    layer, p = ".".join(rest[:-1]), rest[-1]
    return GGUF_NAMES[f"transformer.h.{{i}}.{layer}.{{p}}"].format(i=i, p=p)


def _gpt2_tokenizer():
    """GPT-2's tokens in id order and its merges, from course_data's checked files."""
    import course_data

    vocab = json.loads(course_data.fetch_data("encoder.json").read_text(encoding="utf-8"))
    tokens = sorted(vocab, key=vocab.get)
    lines = course_data.fetch_data("vocab.bpe").read_text(encoding="utf-8").splitlines()
    return tokens, [line for line in lines[1:] if line]  # after the "#version" line


def export_to_gguf(model, path, tie=True, float16=False):
    """Write `model` (a GPTModel with GPT-2's shapes and vocabulary) to the GGUF file `path`:
    float32 weights, or float16 matrices with float16=True (norms and biases stay float32, as
    llama.cpp's converter keeps them). Written to a temporary file that replaces `path` only
    when complete. The same refusals as hf_export.export_to_hf. Returns the path."""
    import gguf

    _check_options(tie, float16=float16)
    path = _check_folder(path, "export_to_gguf")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; export_to_gguf writes one file: name it, e.g. "
                         f"{path / 'model.gguf'}")
    tensors = hf_state_dict(model, tie=tie)  # checks the model first
    cfg = model.cfg
    if cfg["vocab_size"] != GPT2_VOCAB_SIZE:
        raise ValueError(f"the model has {cfg['vocab_size']} token embeddings, GPT-2's tokenizer "
                         f"{GPT2_VOCAB_SIZE} tokens; a GGUF file holds both, and they must agree.")
    tokens, merges = _gpt2_tokenizer()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="gpt2")
    try:
        writer.add_name(path.stem)
        writer.add_block_count(cfg["n_layers"])
        writer.add_context_length(cfg["context_length"])
        writer.add_embedding_length(cfg["emb_dim"])
        writer.add_feed_forward_length(4 * cfg["emb_dim"])
        writer.add_head_count(cfg["n_heads"])
        writer.add_layer_norm_eps(1e-5)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if float16
                             else gguf.LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("gpt2")  # byte-level BPE
        writer.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenizing split pattern
        writer.add_token_list(tokens)
        writer.add_token_types([gguf.TokenType.CONTROL if i == EOT_ID else gguf.TokenType.NORMAL
                                for i in range(len(tokens))])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(EOT_ID)
        writer.add_eos_token_id(EOT_ID)
        for hf_name, tensor in tensors.items():
            conv1d = hf_name.endswith(".weight") and (".attn." in hf_name or ".mlp." in hf_name)
            array = (tensor.T if conv1d else tensor).float().numpy()  # (out, in), as nn.Linear
            if float16 and array.ndim == 2:
                array = array.astype(np.float16)
            writer.add_tensor(_gguf_name(hf_name), np.ascontiguousarray(array))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return path
