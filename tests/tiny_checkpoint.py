"""Write GPT-2 checkpoints in OpenAI's exact file layout, with TensorFlow itself, for the tests.

The seven files of OpenAI's release: checkpoint, encoder.json, hparams.json,
model.ckpt.{data-00000-of-00001,index,meta}, vocab.bpe; variables named like
`model/h0/attn/c_attn/w` with OpenAI's shapes ([1, n_embd, 3*n_embd] for Conv1D weights).
`write_hf_checkpoint` writes the same tensors in Hugging Face's layout (config.json and
model.safetensors with GPT2Model's names, as save_pretrained writes them).
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

TINY_HPARAMS = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 64, "n_head": 4, "n_layer": 2}


def random_gpt2_tensors(hparams, seed=123):
    """{variable name: float32 array} of a randomly initialised GPT-2 in OpenAI's layout."""
    rng = np.random.default_rng(seed)
    c, v, n_ctx = hparams["n_embd"], hparams["n_vocab"], hparams["n_ctx"]

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    t = {"model/wte": normal(v, c), "model/wpe": normal(n_ctx, c, std=0.01),
         "model/ln_f/g": np.ones(c, np.float32), "model/ln_f/b": np.zeros(c, np.float32)}
    for i in range(hparams["n_layer"]):
        p = f"model/h{i}/"
        t[p + "ln_1/g"], t[p + "ln_1/b"] = np.ones(c, np.float32), normal(c)
        t[p + "ln_2/g"], t[p + "ln_2/b"] = np.ones(c, np.float32), normal(c)
        t[p + "attn/c_attn/w"], t[p + "attn/c_attn/b"] = normal(1, c, 3 * c), normal(3 * c)
        t[p + "attn/c_proj/w"], t[p + "attn/c_proj/b"] = normal(1, c, c), normal(c)
        t[p + "mlp/c_fc/w"], t[p + "mlp/c_fc/b"] = normal(1, c, 4 * c), normal(4 * c)
        t[p + "mlp/c_proj/w"], t[p + "mlp/c_proj/b"] = normal(1, 4 * c, c), normal(c)
    return t


def tokenizer_files_from_tiktoken_cache():
    """Paths of GPT-2's encoder.json and vocab.bpe in tiktoken's (primed) cache."""
    from course_data import TIKTOKEN_GPT2_FILES, get_gpt2_tokenizer, tiktoken_cache_dir

    get_gpt2_tokenizer()  # makes sure the cache holds them
    return {name: tiktoken_cache_dir() / hashlib.sha1(url.encode()).hexdigest()
            for name, (url, _) in TIKTOKEN_GPT2_FILES.items()}


def write_openai_checkpoint(folder, hparams, tensors):
    """Write `tensors` with tf.compat.v1.train.Saver plus hparams and tokenizer files."""
    import tensorflow as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        for name, array in tensors.items():
            tf.compat.v1.Variable(array, name=name)
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(folder / "model.ckpt"))
    (folder / "hparams.json").write_text(json.dumps(hparams, indent=2), encoding="utf-8")
    for name, src in tokenizer_files_from_tiktoken_cache().items():
        shutil.copyfile(src, folder / name)
    return folder


def write_openai_checkpoint_raw(folder, hparams, tensors):
    """As write_openai_checkpoint, for large models: TensorFlow's SaveV2 op writes the index and
    data shard directly (a graph of 124M constants would be slow to build); model.ckpt.meta, the
    graph, which no reader uses, is left empty."""
    import tensorflow as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=[tensors[n] for n in names])
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n'
                                       'all_model_checkpoint_paths: "model.ckpt"\n')
    (folder / "model.ckpt.meta").write_bytes(b"")
    (folder / "hparams.json").write_text(json.dumps(hparams), encoding="utf-8")
    for name, src in tokenizer_files_from_tiktoken_cache().items():
        shutil.copyfile(src, folder / name)
    return folder


def write_tiny_checkpoint(models_dir, size_name="tiny-test", hparams=None, seed=123):
    """A small random GPT-2 in OpenAI's layout at models_dir/size_name; returns that folder."""
    hparams = dict(hparams or TINY_HPARAMS)
    return write_openai_checkpoint(Path(models_dir) / size_name, hparams,
                                   random_gpt2_tensors(hparams, seed))


def write_hf_checkpoint(folder, hparams, tensors):
    """`tensors` (OpenAI's names) as a Hugging Face GPT-2 folder: config.json and
    model.safetensors with GPT2Model's names (Conv1D weights (in, out), no lm_head: it is tied)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = {"wte.weight": tensors["model/wte"], "wpe.weight": tensors["model/wpe"],
          "ln_f.weight": tensors["model/ln_f/g"], "ln_f.bias": tensors["model/ln_f/b"]}
    for i in range(hparams["n_layer"]):
        for sub in ["attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"]:
            hf[f"h.{i}.{sub.replace('/', '.')}.weight"] = tensors[f"model/h{i}/{sub}/w"][0]
            hf[f"h.{i}.{sub.replace('/', '.')}.bias"] = tensors[f"model/h{i}/{sub}/b"]
        for ln in ["ln_1", "ln_2"]:
            hf[f"h.{i}.{ln}.weight"] = tensors[f"model/h{i}/{ln}/g"]
            hf[f"h.{i}.{ln}.bias"] = tensors[f"model/h{i}/{ln}/b"]
    save_file({k: np.ascontiguousarray(v) for k, v in hf.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "vocab_size": hparams["n_vocab"], "n_positions": hparams["n_ctx"],
         "n_embd": hparams["n_embd"], "n_head": hparams["n_head"], "n_layer": hparams["n_layer"],
         "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}), encoding="utf-8")
    return folder
