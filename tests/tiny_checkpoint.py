"""Write GPT-2 checkpoints in OpenAI's exact file layout, with TensorFlow itself, for the tests.

The seven files of OpenAI's release: checkpoint, encoder.json, hparams.json,
model.ckpt.{data-00000-of-00001,index,meta}, vocab.bpe; variables named like
`model/h0/attn/c_attn/w` with OpenAI's shapes ([1, n_embd, 3*n_embd] for Conv1D weights).
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


def write_tiny_checkpoint(models_dir, size_name="tiny-test", hparams=None, seed=123):
    """A small random GPT-2 in OpenAI's layout at models_dir/size_name; returns that folder."""
    hparams = dict(hparams or TINY_HPARAMS)
    return write_openai_checkpoint(Path(models_dir) / size_name, hparams,
                                   random_gpt2_tensors(hparams, seed))
