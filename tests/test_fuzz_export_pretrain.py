"""The mistakes a learner can make with the export, pretraining and chat modules (hf_export.py,
gguf_export.py, pretraining_data.py, pretraining_checkpoints.py, pretraining.py, chat_app.py),
one row each in CASES: the call, the exception it must raise and words its message must hold
(what is wrong, the offending value or file, what to do). Then a fuzzed sweep (hypothesis, as
tests/test_fuzz_helpers.py): random arguments, damaged files, models of the wrong kind. Every call
either succeeds, and then agrees with an independent reading (tiktoken's tokens, numpy's view of
the token file, transformers' model, torch's loss), or raises TypeError, ValueError,
FileNotFoundError (FileExistsError for an export folder that holds something else) from a `raise`
statement of the course's own code.

`pytest tests/test_fuzz_export_pretrain.py --hypothesis-show-statistics` prints how many examples
each sweep ran; HYPOTHESIS_PROFILE=nightly runs many more, FUZZ_SEED=N repeats a run.
"""

import argparse
import json
import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import event
from hypothesis import strategies as st

import chat_app
import gguf_export
import hf_export
import pretraining
import pretraining_checkpoints as pc_ckpt
import pretraining_data
import previous_chapters as pc
from chat_app import LoadedModel, LoadError
from pretraining_checkpoints import CheckpointError
from tests import fuzzing
from tests.fuzzing import failed, fuzz, table_tests
from tests.test_fuzz_helpers import ANY, COUNTS, SCALARS, tensors

OURS = {"hf_export.py", "gguf_export.py", "pretraining_data.py", "pretraining_checkpoints.py",
        "pretraining.py", "chat_app.py", "input_checks.py", "previous_chapters.py"}
TINY = {"vocab_size": 300, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}
TINY_GPT2 = {**TINY, "vocab_size": 50257, "n_layers": 1}  # GPT-2's tokenizer fits it
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def outcome(call, allowed=fuzzing.ALLOWED, label=None):
    """fuzzing.outcome; with a label, --hypothesis-show-statistics counts how often the call
    succeeded and which error refused it (a sweep whose calls all fail tests little)."""
    result = fuzzing.outcome(call, OURS, allowed=allowed)
    if label:
        event(f"{label}: {type(result).__name__ if failed(result) else 'ok'}")
        if failed(result):
            event(f"{label}: {str(result)[:50]}")
    return result


def tiny_model(cfg=TINY, seed=123, tied=True):
    torch.manual_seed(seed)
    model = pc.GPTModel(cfg).eval()
    if tied:
        model.out_head.weight = model.tok_emb.weight  # as GPT-2: exportable with tie=True
    return model


def lora_model():
    from lora import replace_linear_with_lora

    model = tiny_model()
    replace_linear_with_lora(model, rank=2, alpha=4)
    return model


def classifier(cfg=TINY):
    return pc.add_classification_head(tiny_model(cfg, tied=False), 2)


def meta_model():
    with torch.device("meta"):
        return pc.GPTModel(TINY)


def no_cfg_key_model():
    model = tiny_model()
    model.cfg = {k: v for k, v in model.cfg.items() if k != "n_layers"}
    return model


def damage(raw, how, where, data):
    """raw bytes cut, with one byte flipped, replaced by `data`, or with `data` inserted."""
    at = int(where * len(raw))
    if how == "cut":
        return raw[:at]
    if how == "flip":
        return raw[:at] + bytes([raw[at % len(raw)] ^ 0x55]) + raw[at + 1:] if raw else raw
    if how == "random":
        return data
    return raw[:at] + data + raw[at:]


DAMAGE = dict(how=st.sampled_from(["cut", "flip", "random", "insert"]), where=st.floats(0, 1),
              data=st.binary(max_size=40))
CORPUS = {"a.txt": "Every effort moves you forward, one step at a time.\n" * 4,
          "sub/b.txt": "I HAD always thought Jack Gisburn rather a cheap genius. " * 3}


def write_corpus(folder, texts=CORPUS):
    for name, text in texts.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return folder


def parse(argv=()):
    return pretraining.build_parser().parse_args(["--data-dir", "d", "--out-dir", "o", *argv])


def checkpoint_state(step=3):
    model = tiny_model(tied=False)
    optimizer = torch.optim.AdamW(model.parameters())
    return {"step": step, "samples_seen": 12, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "config": model.cfg, "tied": False,
            "rng": [pc_ckpt.rng_state()], "elapsed_s": 1.5, "train_tokens": 100, "args": {}}


class Ctx:
    """What the rows need: a tiny GPTModel, GPT-2's tokenizer, a scratch folder, a prepared
    corpus."""

    def __init__(self, tmp_path, tokenizer, prepared):
        self.model = tiny_model()
        self.tokenizer = tokenizer
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        shutil.copytree(prepared, self.data)

    def file(self, name, data):
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path

    def meta(self, **changes):
        meta = json.loads((self.data / "meta.json").read_text())
        (self.data / "meta.json").write_text(json.dumps({**meta, **changes}))
        return self.data

    def checkpoint(self, name="step_00000003.pt", **changes):
        state = {**checkpoint_state(), "format": pc_ckpt.FORMAT, **changes}
        path = self.tmp / "ckpt" / name
        path.parent.mkdir(exist_ok=True)
        torch.save({k: v for k, v in state.items() if v is not None}, path)
        return path

    def state_dict_file(self, name, model):
        path = self.tmp / name
        torch.save(model.state_dict(), path)
        return path


# (id, call(ctx), exception type, words the message must contain)
CASES = [
    # ----- hf_export.py / gguf_export.py
    ("hf-folder-is-a-file", lambda c: hf_export.export_to_hf(
        c.model, c.file("out", "x"), tokenizer=False), FileExistsError,
     ["out is a file, not a folder", "delete the file"]),
    ("hf-folder-holds-other-things", lambda c: hf_export.export_to_hf(
        c.model, c.file("notes/a.txt", "x").parent, tokenizer=False), FileExistsError,
     ["not an earlier export", "choose another folder"]),
    ("hf-folder-under-a-file", lambda c: hf_export.export_to_hf(
        c.model, c.file("f", "x") / "out", tokenizer=False), ValueError,
     ["f is a file", "cannot be created"]),
    ("hf-folder-not-a-path", lambda c: hf_export.export_to_hf(c.model, 5, tokenizer=False),
     TypeError, ["a str or pathlib.Path", "int 5"]),
    ("hf-classifier", lambda c: hf_export.export_to_hf(classifier(), c.tmp / "o",
                                                       tokenizer=False), ValueError,
     ["2 outputs", "classification head", "torch.save"]),
    ("hf-lora-unmerged", lambda c: hf_export.hf_state_dict(lora_model()), ValueError,
     ["LoRA adapters", "lora.merge_lora(model)"]),
    ("hf-loaded-model", lambda c: hf_export.export_to_hf(LoadedModel(c.model, "x"), c.tmp / "o"),
     TypeError, ["exports a GPTModel", "LoadedModel", ".model"]),
    ("hf-state-dict-of-a-dict", lambda c: hf_export.hf_state_dict(c.model.state_dict()),
     TypeError, ["exports a GPTModel", "OrderedDict"]),
    ("hf-untied-head-tie-true", lambda c: hf_export.hf_state_dict(tiny_model(tied=False)),
     ValueError, ["differs from model.tok_emb.weight", "tie=False"]),
    ("hf-tie-a-string", lambda c: hf_export.export_to_hf(c.model, c.tmp / "o", tie="no"),
     TypeError, ["tie must be True or False", "str 'no'"]),
    ("hf-tokenizer-none", lambda c: hf_export.export_to_hf(c.model, c.tmp / "o",
                                                           tokenizer=None),
     TypeError, ["tokenizer must be True or False", "NoneType"]),
    ("hf-dtype-int8", lambda c: hf_export.hf_state_dict(c.model, dtype=torch.int8), TypeError,
     ["floating-point torch dtype", "torch.float16", "torch.int8"]),
    ("hf-dtype-a-string", lambda c: hf_export.hf_config(c.model, dtype="float16"), TypeError,
     ["floating-point torch dtype", "str 'float16'"]),
    ("hf-config-not-a-model", lambda c: hf_export.hf_config("gpt2"), TypeError,
     ["exports a GPTModel", "str"]),
    ("hf-cfg-lacks-a-key", lambda c: hf_export.hf_state_dict(no_cfg_key_model()), ValueError,
     ["model.cfg lacks ['n_layers']"]),
    ("hf-meta-device", lambda c: hf_export.hf_state_dict(meta_model()), ValueError,
     ["meta device", "load its weights first"]),
    ("hf-tokenizer-small-vocab", lambda c: hf_export.export_to_hf(c.model, c.tmp / "o"),
     ValueError, ["300 token embeddings", "fewer than the 50257", "tokenizer=False"]),
    ("gguf-path-is-a-folder", lambda c: gguf_export.export_to_gguf(c.model, c.tmp), ValueError,
     ["is a folder", "model.gguf"]),
    ("gguf-path-under-a-file", lambda c: gguf_export.export_to_gguf(
        c.model, c.file("f", "x") / "m.gguf"), ValueError, ["f is a file", "cannot be created"]),
    ("gguf-float16-a-string", lambda c: gguf_export.export_to_gguf(
        c.model, c.tmp / "m.gguf", float16="yes"), TypeError,
     ["float16 must be True or False", "str 'yes'"]),
    ("gguf-vocab-not-gpt2s", lambda c: gguf_export.export_to_gguf(c.model, c.tmp / "m.gguf"),
     ValueError, ["300 token embeddings", "50257 tokens"]),
    ("gguf-classifier", lambda c: gguf_export.export_to_gguf(classifier(), c.tmp / "m.gguf"),
     ValueError, ["classification head"]),
    # ----- pretraining_data.py
    ("prepare-val-fraction-a-string", lambda c: pretraining_data.prepare_corpus(
        write_corpus(c.tmp / "in"), c.tmp / "out", val_fraction="0.1"), TypeError,
     ["val_fraction must be a number", "str '0.1'"]),
    ("prepare-val-fraction-1", lambda c: pretraining_data.prepare_corpus(
        write_corpus(c.tmp / "in"), c.tmp / "out", val_fraction=1), ValueError,
     ["between 0 and 1 (exclusive), not 1"]),
    ("prepare-tokenizer-a-name", lambda c: pretraining_data.prepare_corpus(
        write_corpus(c.tmp / "in"), c.tmp / "out", tokenizer="gpt2"), TypeError,
     ["tiktoken Encoding", "get_gpt2_tokenizer", "str 'gpt2'"]),
    ("prepare-folder-missing", lambda c: pretraining_data.prepare_corpus(c.tmp / "no", c.tmp),
     FileNotFoundError, ["no is not a folder", ".txt files"]),
    ("prepare-folder-not-a-path", lambda c: pretraining_data.prepare_corpus(None, c.tmp),
     TypeError, ["folder must be a path", "NoneType"]),
    ("prepare-no-txt-files", lambda c: pretraining_data.prepare_corpus(
        c.file("in/a.md", "x").parent, c.tmp / "out"), ValueError, ["holds no .txt files"]),
    ("prepare-out-dir-is-a-file", lambda c: pretraining_data.prepare_corpus(
        write_corpus(c.tmp / "in"), c.file("out", "x")), ValueError,
     ["out is a file, not a folder", "choose a folder"]),
    ("prepare-not-utf8", lambda c: pretraining_data.prepare_corpus(
        write_corpus(c.tmp / "in", {"b.txt": b"ab\xe9c d"}), c.tmp / "out"), ValueError,
     ["b.txt is not UTF-8 text", "byte 0xe9 at offset 2", "iconv"]),
    ("prepare-empty-text", lambda c: pretraining_data.prepare_corpus(
        write_corpus(c.tmp / "in", {"e.txt": ""}), c.tmp / "out"), ValueError,
     ["0 tokens are too few", "add text"]),
    ("read-meta-damaged", lambda c: pretraining_data.read_meta(
        c.file("data/meta.json", '{"vocab_size": 50257,').parent), ValueError,
     ["meta.json is not readable JSON", "line 1", "prepare_data.py"]),
    ("read-meta-lies-about-tokens", lambda c: pretraining_data.read_meta(
        c.meta(train_tokens=10**6)), ValueError,
     ["says train.bin holds 1000000 tokens", "another run, or cut short"]),
    ("read-meta-bin-cut-short", lambda c: pretraining_data.read_meta(
        c.file("data/val.bin", (c.data / "val.bin").read_bytes()[:-3]).parent), ValueError,
     ["val.bin holds", ".5 tokens", "prepare_data.py"]),
    ("read-meta-a-list", lambda c: pretraining_data.read_meta(
        c.file("data/meta.json", "[1, 2]").parent), ValueError,
     ["holds list [1, 2]", "JSON object"]),
    ("read-meta-vocab-a-string", lambda c: pretraining_data.read_meta(
        c.meta(vocab_size="50257")), ValueError, ["vocab_size must be a whole number"]),
    ("read-meta-no-vocab", lambda c: pretraining_data.read_meta(
        c.file("data/meta.json", "{}").parent), ValueError, ["lacks 'vocab_size'"]),
    ("read-meta-eot-outside", lambda c: pretraining_data.read_meta(c.meta(eot_token=50257)),
     ValueError, ["eot_token 50257 is not an id of its vocabulary of 50257"]),
    ("read-meta-other-dtype", lambda c: pretraining_data.read_meta(c.meta(dtype="<u4")),
     ValueError, ["'<u4'", "little-endian uint16"]),
    ("read-meta-folder-missing", lambda c: pretraining_data.read_meta(c.tmp / "nowhere"),
     FileNotFoundError, ["nowhere is not a folder", "prepare_data.py"]),
    ("windows-odd-bytes", lambda c: pretraining_data.TokenWindows(
        c.file("r.bin", b"\x01\x02\x03"), 4), ValueError, ["odd number of bytes", "r.bin"]),
    ("windows-context-0", lambda c: pretraining_data.TokenWindows(c.data / "train.bin", 0),
     ValueError, ["context_length must be at least 1, not 0"]),
    ("windows-context-a-float", lambda c: pretraining_data.TokenWindows(
        c.data / "train.bin", 4.0), TypeError, ["context_length must be a whole number", "4.0"]),
    ("windows-too-few-tokens", lambda c: pretraining_data.TokenWindows(
        c.file("s.bin", b"\x01\x00\x02\x00"), 4), ValueError,
     ["holds 2 tokens", "context_length + 1 = 5", "--context-length"]),
    ("windows-path-is-a-folder", lambda c: pretraining_data.TokenWindows(c.data, 4), ValueError,
     ["is a folder", "train.bin"]),
    ("windows-missing", lambda c: pretraining_data.TokenWindows(c.tmp / "no.bin", 4),
     FileNotFoundError, ["no.bin does not exist", "prepare_data.py"]),
    ("windows-seed-negative", lambda c: pretraining_data.TokenWindows(
        c.data / "train.bin", 4, seed=-1), ValueError, ["seed must be at least 0, not -1"]),
    ("windows-shuffle-a-string", lambda c: pretraining_data.TokenWindows(
        c.data / "train.bin", 4, shuffle="no"), TypeError, ["shuffle must be True or False"]),
    ("windows-batch-size-0", lambda c: pretraining_data.TokenWindows(
        c.data / "train.bin", 4).batch(0, 0), ValueError,
     ["batch_size must be at least 1, not 0"]),
    ("windows-sample-negative", lambda c: pretraining_data.TokenWindows(
        c.data / "train.bin", 4).batch(-2, 1), ValueError,
     ["first_sample must be at least 0, not -2"]),
    ("windows-sample-a-float", lambda c: pretraining_data.TokenWindows(
        c.data / "train.bin", 4).window_start(1.5), TypeError,
     ["sample must be a whole number", "1.5"]),
    # ----- pretraining_checkpoints.py
    ("ckpt-cut-short", lambda c: pc_ckpt.load_checkpoint(c.file(
        "ckpt/step_00000001.pt", c.checkpoint().read_bytes()[:2000])), CheckpointError,
     ["step_00000001.pt is not a readable checkpoint", "cut short"]),
    ("ckpt-random-bytes", lambda c: pc_ckpt.load_checkpoint(c.file("r.pt", b"\x00" * 50)),
     CheckpointError, ["r.pt is not a readable checkpoint"]),
    ("ckpt-another-programs", lambda c: pc_ckpt.load_checkpoint(c.checkpoint(format="x/1")),
     CheckpointError, ["not a checkpoint of scripts/pretrain.py", "'x/1'"]),
    ("ckpt-a-state-dict", lambda c: pc_ckpt.load_checkpoint(
        c.state_dict_file("m.pt", c.model)), CheckpointError,
     ["m.pt is not a checkpoint of scripts/pretrain.py", "format None"]),
    ("ckpt-missing-entry", lambda c: pc_ckpt.load_checkpoint(c.checkpoint(optimizer=None)),
     CheckpointError, ["lacks ['optimizer']", "incomplete"]),
    ("ckpt-entry-of-wrong-kind", lambda c: pc_ckpt.load_checkpoint(c.checkpoint(step="3")),
     CheckpointError, ["wrong kind", "step is str '3'"]),
    ("ckpt-missing-file", lambda c: pc_ckpt.load_checkpoint(c.tmp / "step_00000009.pt"),
     FileNotFoundError, ["step_00000009.pt does not exist", "latest_checkpoint"]),
    ("ckpt-a-folder", lambda c: pc_ckpt.load_checkpoint(c.tmp), FileNotFoundError,
     ["is a folder", "latest_checkpoint"]),
    ("ckpt-latest-all-damaged", lambda c: pc_ckpt.latest_checkpoint(c.file(
        "ckpt/step_00000002.pt", b"cut").parent, log=lambda *a: None), CheckpointError,
     ["no checkpoint in", "step_00000002.pt", "without --resume"]),
    ("ckpt-latest-log-not-callable", lambda c: pc_ckpt.latest_checkpoint(c.tmp, log="print"),
     TypeError, ["log must be a function", "str 'print'"]),
    ("ckpt-list-a-file", lambda c: pc_ckpt.list_checkpoints(c.file("ckpt.txt", "x")),
     ValueError, ["ckpt.txt is a file, not a folder"]),
    ("ckpt-save-no-step", lambda c: pc_ckpt.save_checkpoint({"model": {}}, c.tmp), TypeError,
     ["state must be a dict with the checkpoint's entries", "samples_seen"]),
    ("ckpt-save-step-negative", lambda c: pc_ckpt.save_checkpoint({"step": -1}, c.tmp),
     ValueError, ["state['step'] must be at least 0, not -1"]),
    ("ckpt-save-keep-negative", lambda c: pc_ckpt.save_checkpoint(
        checkpoint_state(), c.tmp, keep=-1), ValueError, ["keep must be at least 0, not -1"]),
    ("ckpt-save-into-a-file", lambda c: pc_ckpt.save_checkpoint(
        checkpoint_state(), c.file("ckpt", "x")), ValueError, ["ckpt is a file, not a folder"]),
    ("rng-state-not-a-dict", lambda c: pc_ckpt.set_rng_state([1, 2]), ValueError,
     ["what rng_state() returns", "list [1, 2]"]),
    ("rng-state-damaged", lambda c: pc_ckpt.set_rng_state(
        {**pc_ckpt.rng_state(), "torch": torch.zeros(7, dtype=torch.uint8)}), ValueError,
     ["not rng_state()'s", "nothing was restored"]),
    # ----- pretraining.py
    ("lr-min-above-max", lambda c: pretraining.lr_at(0, 1e-4, 1e-3, 10, 100), ValueError,
     ["min_lr 0.001 is above the peak max_lr 0.0001"]),
    ("lr-step-negative", lambda c: pretraining.lr_at(-1, 1e-3, 1e-4, 10, 100), ValueError,
     ["step must be at least 0, not -1"]),
    ("lr-warmup-beyond-max-steps", lambda c: pretraining.lr_at(0, 1e-3, 1e-4, 200, 100),
     ValueError, ["warmup_steps must be at most 100, not 200"]),
    ("lr-max-steps-0", lambda c: pretraining.lr_at(0, 1e-3, 1e-4, 0, 0), ValueError,
     ["max_steps must be at least 1, not 0"]),
    ("lr-a-string", lambda c: pretraining.lr_at(0, "6e-4", 1e-4, 10, 100), TypeError,
     ["max_lr must be a number", "str '6e-4'"]),
    ("lr-nan", lambda c: pretraining.lr_at(0, math.nan, 0.0, 10, 100), ValueError,
     ["max_lr must be a finite number", "nan"]),
    ("param-groups-of-a-list", lambda c: pretraining.param_groups(
        list(c.model.parameters()), 0.1), TypeError, ["takes the model (an nn.Module)", "list"]),
    ("param-groups-decay-negative", lambda c: pretraining.param_groups(c.model, -0.1),
     ValueError, ["weight_decay must be a finite number of at least 0.0, not -0.1"]),
    ("device-unknown", lambda c: pretraining.pick_device("gpu"), ValueError,
     ["one of auto, cpu, cuda, mps", "str 'gpu'"]),
    ("device-local-rank-negative", lambda c: pretraining.pick_device("cpu", -1), ValueError,
     ["local_rank (LOCAL_RANK) must be at least 0"]),
    ("batch-loss-shapes-differ", lambda c: pretraining.batch_loss(
        c.model, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)),
     ValueError, ["one shape (B, T)", "(2, 4)", "(2, 3)"]),
    ("batch-loss-bf16-a-string", lambda c: pretraining.batch_loss(
        c.model, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long),
        bf16="yes"), TypeError, ["bf16 must be True or False"]),
    ("batch-loss-float-inputs", lambda c: pretraining.batch_loss(
        c.model, torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.long)), TypeError,
     ["must be integers (torch.long)", "torch.float32"]),
    ("batch-loss-target-outside-vocab", lambda c: pretraining.batch_loss(
        c.model, torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 300)), ValueError,
     ["target 300 is not a token id in 0..299"]),
    ("train-context-0", lambda c: pretraining.train(parse(["--context-length", "0"])),
     ValueError, ["--context-length must be at least 1, not 0"]),
    ("train-dropout-1.5", lambda c: pretraining.train(parse(["--dropout", "1.5"])), ValueError,
     ["--dropout must be in 0..1", "1.5"]),
    ("train-lr-nan", lambda c: pretraining.train(parse(["--lr", "nan"])), ValueError,
     ["--lr must be a finite number", "nan"]),
    ("train-min-lr-above-lr", lambda c: pretraining.train(parse(["--min-lr", "1"])), ValueError,
     ["--min-lr 1.0 is above the peak --lr"]),
    ("train-seed-negative", lambda c: pretraining.train(parse(["--seed", "-5"])), ValueError,
     ["--seed must be at least 0, not -5"]),
    ("train-device-unknown", lambda c: pretraining.train(parse(["--device", "tpu"])),
     ValueError, ["--device must be one of auto, cpu, cuda, mps", "'tpu'"]),
    ("train-a-dict", lambda c: pretraining.train({"data_dir": "d"}), TypeError,
     ["build_parser().parse_args", "lacks"]),
    ("train-batch-size-a-string", lambda c: pretraining.train(
        argparse.Namespace(**{**vars(parse()), "batch_size": "8"})), TypeError,
     ["--batch-size must be a whole number", "str '8'"]),
    ("train-data-missing", lambda c: pretraining.train(parse(
        ["--data-dir", str(c.tmp / "none")])), FileNotFoundError,
     ["train.bin does not exist", "prepare_data.py"]),
    ("main-argv-a-string", lambda c: pretraining.main("--data-dir d --out-dir o"), TypeError,
     ["a list of str", "['--data-dir', 'data']"]),
    ("train-meta-lies", lambda c: pretraining.train(parse(
        ["--data-dir", str(c.meta(val_tokens=3)), "--context-length", "4"])), ValueError,
     ["says val.bin holds 3 tokens", "prepare_data.py"]),
    ("build-model-random-unknown-size", lambda c: pretraining.build_model(
        parse(["--model", "7B"])), ValueError, ["--model '7B'", "124M"]),
    # ----- chat_app.py
    ("chat-prompt-ids", lambda c: chat_app.chat_prompt([1, 2]), TypeError,
     ["the message must be a str", "token ids"]),
    ("answer-of-a-loaded-model", lambda c: chat_app.stream_answer(
        LoadedModel(c.model, "x"), c.tokenizer, "hi"), TypeError,
     ["stream_answer takes a GPTModel", "LoadedModel", ".model"]),
    ("answer-temperature-minus-1", lambda c: chat_app.stream_answer(
        c.model, c.tokenizer, "hi", temperature=-1), ValueError,
     ["temperature must be 0 (greedy) or positive, not -1"]),
    ("answer-temperature-a-string", lambda c: chat_app.stream_answer(
        c.model, c.tokenizer, "hi", temperature="0.7"), TypeError,
     ["temperature must be a number", "str '0.7'"]),
    ("answer-empty-message", lambda c: chat_app.stream_answer(c.model, c.tokenizer, "  "),
     ValueError, ["the message is empty", "type an instruction"]),
    ("answer-message-bytes", lambda c: chat_app.stream_answer(c.model, c.tokenizer, b"hi"),
     TypeError, ["the message must be a str", "decode"]),
    ("answer-max-tokens-a-float", lambda c: chat_app.stream_answer(
        c.model, c.tokenizer, "hi", max_new_tokens=2.5), TypeError,
     ["max_new_tokens must be a whole number", "2.5"]),
    ("answer-top-k-0", lambda c: chat_app.stream_answer(c.model, c.tokenizer, "hi", top_k=0),
     ValueError, ["top_k (or None) must be at least 1, not 0"]),
    ("answer-with-a-classifier", lambda c: chat_app.stream_answer(
        classifier(), c.tokenizer, "hi"), ValueError,
     ["takes a language model", "2 outputs", "spam_probabilities"]),
    ("answer-tokenizer-a-string", lambda c: chat_app.stream_answer(c.model, "gpt2", "hi"),
     TypeError, ["GPT-2's tokenizer", "str 'gpt2'"]),
    ("answer-prompt-outside-vocab", lambda c: chat_app.stream_answer(
        c.model, c.tokenizer, "Hello there"), ValueError,
     ["outside the model's vocabulary of 300", "another tokenizer"]),
    ("spam-of-a-language-model", lambda c: chat_app.spam_probabilities(
        c.model, c.tokenizer, "WIN now"), ValueError,
     ["spam classifier (2 outputs)", "has 300", "stream_answer"]),
    ("spam-text-ids", lambda c: chat_app.spam_probabilities(classifier(), c.tokenizer, [1]),
     TypeError, ["the text to classify must be a str", "token ids"]),
    ("spam-max-length-0", lambda c: chat_app.spam_probabilities(
        classifier(), c.tokenizer, "hi", max_length=0), ValueError,
     ["max_length must be at least 1, not 0"]),
    ("spam-empty-text", lambda c: chat_app.spam_probabilities(classifier(), c.tokenizer, ""),
     ValueError, ["the text is empty"]),
    ("load-chat-spec-a-number", lambda c: chat_app.load_chat_model(124), TypeError,
     ["spec must be a path or name", "int 124"]),
    ("load-chat-size-a-number", lambda c: chat_app.load_chat_model(
        c.state_dict_file("m.pth", c.model), size=124), TypeError,
     ["size must be a path or name", "or None", "int 124"]),
    ("load-chat-random-bytes", lambda c: chat_app.load_chat_model(
        c.file("gpt2-124M-sft.pth", b"\x00garbage")), LoadError,
     ["gpt2-124M-sft.pth could not be loaded", "torch.save"]),
    ("load-chat-a-classifier", lambda c: chat_app.load_chat_model(
        c.state_dict_file("gpt2-x-sft.pth", classifier()), size="124M"), LoadError,
     ["is a classifier", "spam tab"]),
    ("load-spam-a-language-model", lambda c: chat_app.load_spam_model(
        c.state_dict_file("lm.pth", c.model)), LoadError,
     ["300 outputs, not the spam classifier's 2", "chat tab"]),
    ("load-spam-missing", lambda c: chat_app.load_spam_model(c.tmp / "none.pth"), LoadError,
     ["No spam classifier checkpoint", "none.pth", "notebook 06"]),
    ("load-spam-path-none", lambda c: chat_app.load_spam_model(None), TypeError,
     ["path must be a path or name", "NoneType"]),
    ("model-config-damaged-hparams", lambda c: chat_app.model_config(
        "mine", c.file("models/mine/hparams.json", '{"n_vocab": 5').parent.parent), LoadError,
     ["hparams.json is not GPT-2's hparams.json", "download the model again"]),
    ("model-config-hparams-lacking", lambda c: chat_app.model_config(
        "mine", c.file("models/mine/hparams.json", '{"n_vocab": 5}').parent.parent), LoadError,
     ["not GPT-2's hparams.json", "n_ctx"]),
    ("model-config-size-none", lambda c: chat_app.model_config(None, c.tmp), TypeError,
     ["size must be a GPT-2 size such as '124M'", "NoneType"]),
]


@pytest.fixture(scope="module")
def tokenizer():
    import course_data
    return course_data.get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer):
    """A corpus prepared by prepare_corpus: train.bin, val.bin, meta.json."""
    folder = tmp_path_factory.mktemp("prepared")
    pretraining_data.prepare_corpus(write_corpus(folder / "in"), folder / "out",
                                    tokenizer=tokenizer, progress=False)
    return folder / "out"


@pytest.fixture
def ctx(tmp_path, tokenizer, prepared):
    return Ctx(tmp_path, tokenizer, prepared)


test_a_mistake_gets_a_clear_message, test_every_case_has_its_own_id = table_tests(CASES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the mistake is asking for a missing GPU")
def test_asking_for_a_gpu_that_is_not_there():
    with pytest.raises(ValueError, match="no CUDA GPU here; use --device auto or cpu"):
        pretraining.pick_device("cuda")


def test_a_refused_rng_state_changes_no_generator():
    """set_rng_state checks every library's part before it restores any."""
    before = pc_ckpt.rng_state()
    state = pc_ckpt.rng_state()
    torch.manual_seed(99)
    np.random.seed(99)
    state["torch"] = torch.zeros(7, dtype=torch.uint8)  # damaged; python's and numpy's fine
    after_seed = pc_ckpt.rng_state()
    with pytest.raises(ValueError, match="nothing was restored"):
        pc_ckpt.set_rng_state(state)
    now = pc_ckpt.rng_state()
    assert now["python"] == after_seed["python"]
    assert torch.equal(now["numpy"][1], after_seed["numpy"][1])
    pc_ckpt.set_rng_state(before)


def test_stream_answer_checks_at_the_call_not_at_the_first_token(ctx):
    """A generator would run its checks only when the page asks for the first token."""
    with pytest.raises(ValueError, match="temperature"):
        chat_app.stream_answer(ctx.model, ctx.tokenizer, "hi", temperature=-1)  # no next()


# ----- fuzzed sweeps ------------------------------------------------------------------------

@st.composite
def calls(draw, good, bad):
    """The arguments of one call: each drawn from `good` (valid values), except, in about half
    of the examples, one argument drawn from `bad` (its mistakes). A sweep of independently bad
    arguments would almost never get past the first check; this one reaches every check alone,
    and the success path (compared with an independent reading) in half of the examples."""
    spoiled = draw(st.sampled_from([None] * len(bad) + sorted(bad)))
    args = {k: draw(bad[k] if k == spoiled else v) for k, v in good.items()}
    event(f"bad argument: {spoiled}")
    return args


MODELS = {"lm": lambda: tiny_model(), "lm-gpt2-vocab": lambda: tiny_model(TINY_GPT2),
          "untied": lambda: tiny_model(tied=False), "classifier": classifier,
          "lora": lora_model, "meta": meta_model, "cfg-lacks-key": no_cfg_key_model,
          "loaded": lambda: LoadedModel(tiny_model(), "x"),
          "state-dict": lambda: tiny_model().state_dict(), "none": lambda: None}
BAD_MODELS = st.sampled_from(["classifier", "lora", "meta", "cfg-lacks-key", "loaded",
                              "state-dict", "none"])
# values of the wrong kind (no bools, no str paths: explicit, since a filter on a union of
# strategies gives up on the branches it empties)
FLAGS = st.one_of(st.none(), st.integers(-2, 2), st.floats(), st.text(max_size=5),
                  st.binary(max_size=5))
NOT_PATHS = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=5),
                      st.booleans())
NOT_TEXTS = st.one_of(st.none(), st.integers(), st.binary(max_size=5), tensors(),
                      st.lists(st.integers(0, 300), max_size=4))
COUNTER = iter(range(10**9))


def export_target(tmp, where, i):
    """A path of the kind `where` names, fresh for example number i."""
    base = tmp / f"e{i}"
    base.mkdir()
    if where == "empty-dir":
        (base / "out").mkdir()
    elif where in ("file", "under-a-file"):
        (base / "out").write_text("x")
    elif where == "other-dir":
        (base / "out").mkdir()
        (base / "out" / "notes.txt").write_text("x")
    elif where == "export":
        hf_export.export_to_hf(tiny_model(), base / "out", tokenizer=False)
    return base / "out" / "m" if where == "under-a-file" else base / "out"


WHERE_KINDS = ("new", "empty-dir", "export", "file", "under-a-file", "other-dir")
EXPORT_WHERE = st.sampled_from(WHERE_KINDS[:3])
BAD_WHERE = st.one_of(st.sampled_from(WHERE_KINDS[3:]), NOT_PATHS)


@fuzz(args=calls(
    good=dict(name=st.sampled_from(["lm", "lm-gpt2-vocab", "untied"]), where=EXPORT_WHERE,
              tie=st.booleans(), dtype=st.sampled_from([None, torch.float16, torch.bfloat16,
                                                        torch.float32]),
              tokenizer=st.booleans()),
    bad=dict(name=BAD_MODELS, where=BAD_WHERE, tie=FLAGS,
             dtype=st.one_of(st.sampled_from([torch.int8, torch.bool, "float16"]), SCALARS),
             tokenizer=FLAGS)))
def test_fuzz_export_to_hf(tmp_path, args):
    model, where = MODELS[args["name"]](), args["where"]
    tie, dtype = args["tie"], args["dtype"]
    target = export_target(tmp_path, where, next(COUNTER)) if where in WHERE_KINDS else where
    allowed = (*fuzzing.ALLOWED, FileExistsError)
    config = outcome(lambda: hf_export.hf_config(model, tie, dtype), label="hf_config")
    result = outcome(lambda: hf_export.export_to_hf(model, target, tie, dtype,
                                                    args["tokenizer"]), allowed, "export_to_hf")
    if failed(result):
        return
    from transformers import GPT2LMHeadModel

    assert not failed(config)
    # the independent reader, in float32; our model with its weights rounded as exported
    theirs = GPT2LMHeadModel.from_pretrained(result, torch_dtype=torch.float32).eval()
    ours = model.to(dtype).float() if dtype is not None else model
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


@fuzz(args=calls(
    good=dict(name=st.just("lm-gpt2-vocab"), where=st.sampled_from(["new", "file"]),
              tie=st.just(True), float16=st.booleans()),
    bad=dict(name=st.one_of(BAD_MODELS, st.just("lm")),
             where=st.one_of(st.sampled_from(["empty-dir", "under-a-file"]), NOT_PATHS),
             tie=st.one_of(st.just(False), FLAGS), float16=FLAGS)))
def test_fuzz_export_to_gguf(tmp_path, monkeypatch, args):
    # GPT-2's 50,257 tokens and 50,000 merges take most of an export's second (the gguf
    # package packs them one by one): here a few, which the reader below does not look at
    # (tests/test_gguf_export.py writes the real ones and has transformers read them back)
    tokens, merges = gguf_export._gpt2_tokenizer()
    monkeypatch.setattr(gguf_export, "_gpt2_tokenizer", lambda: (tokens[:300], merges[:10]))
    model, where = MODELS[args["name"]](), args["where"]
    target = where
    if where in ("new", "file", "empty-dir", "under-a-file"):
        target = export_target(tmp_path, where, next(COUNTER))
        target = target.with_suffix(".gguf") if where in ("new", "file") else target
        if where == "file":
            target.write_text("an older file, replaced")
    result = outcome(lambda: gguf_export.export_to_gguf(model, target, args["tie"],
                                                        args["float16"]),
                     label="export_to_gguf")
    if not failed(result):
        import gguf

        reader = gguf.GGUFReader(str(result))  # the gguf package's own reader
        token_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
        theirs = torch.from_numpy(np.array(token_embd.data)).float().reshape(50257, 8)
        atol = 1e-3 if args["float16"] else 0.0
        torch.testing.assert_close(theirs, model.tok_emb.weight.detach(), atol=atol, rtol=atol)


NAMES = st.sampled_from(["a.txt", "b.txt", "s/c.txt", "d.md"])


@fuzz(args=calls(
    good=dict(files=st.fixed_dictionaries(
        {"a.txt": st.text(min_size=60, max_size=200)},
        optional={k: st.text(max_size=200) for k in ("b.txt", "s/c.txt", "d.md")}),
              val_fraction=st.floats(0.2, 0.8), tokenizer=st.none(), out=st.just("new")),
    bad=dict(files=st.dictionaries(NAMES, st.one_of(st.binary(max_size=60),
                                                    st.text(max_size=3)), max_size=3),
             val_fraction=st.one_of(st.floats(-0.5, 1.5), SCALARS),
             tokenizer=st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
             out=st.sampled_from(["file", "under-a-file"]))))
def test_fuzz_prepare_corpus(tmp_path, args):
    i, files = next(COUNTER), args["files"]
    folder = write_corpus(tmp_path / f"in{i}", files)
    folder.mkdir(exist_ok=True)
    out_dir = tmp_path / f"out{i}"
    if args["out"] != "new":
        out_dir.write_text("x")
        out_dir = out_dir / "sub" if args["out"] == "under-a-file" else out_dir
    meta = outcome(lambda: pretraining_data.prepare_corpus(
        folder, out_dir, args["val_fraction"], args["tokenizer"], progress=False),
        label="prepare_corpus")
    if failed(meta):
        return
    import course_data

    tok = course_data.get_gpt2_tokenizer()
    texts = [files[k].decode("utf-8") if isinstance(files[k], bytes) else files[k]
             for k in sorted(files, key=lambda k: folder / k) if k.endswith(".txt")]
    expected = []  # tiktoken on each whole text, <|endoftext|> between them
    for n, text in enumerate(texts):
        expected += ([tok.eot_token] if n else []) + tok.encode_ordinary(text)
    ids = np.concatenate([np.fromfile(out_dir / f"{s}.bin", dtype="<u2") for s in ("train",
                                                                               "val")])
    assert ids.tolist() == expected
    assert pretraining_data.read_meta(out_dir) == meta


@fuzz(args=calls(
    good=dict(which=st.just("none"), context_length=st.integers(1, 12),
              seed=st.integers(0, 2**32 - 1), shuffle=st.booleans(),
              first=st.integers(0, 10**6), batch_size=st.integers(1, 4)),
    bad=dict(which=st.sampled_from(["meta.json", "train.bin", "val.bin"]),
             context_length=st.one_of(st.integers(-2, 0), st.integers(10**4, 10**5), COUNTS),
             seed=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), COUNTS),
             shuffle=FLAGS, first=st.one_of(st.integers(max_value=-1), st.integers(2**62 + 1),
                                            COUNTS),
             batch_size=st.one_of(st.integers(-2, 0), COUNTS))),
      how=DAMAGE["how"], where=DAMAGE["where"], data=DAMAGE["data"])
def test_fuzz_prepared_files_damaged(tmp_path, prepared, args, how, where, data):
    folder = tmp_path / f"d{next(COUNTER)}"
    shutil.copytree(prepared, folder)
    which = args["which"]
    if which != "none":
        (folder / which).write_bytes(damage((folder / which).read_bytes(), how, where, data))
    outcome(lambda: pretraining_data.read_meta(folder), label="read_meta")
    windows = outcome(lambda: pretraining_data.TokenWindows(
        folder / "train.bin", args["context_length"], args["seed"], args["shuffle"]),
        label="TokenWindows")
    if failed(windows):
        return
    first, batch_size, context_length = args["first"], args["batch_size"], args["context_length"]
    batch = outcome(lambda: windows.batch(first, batch_size), label="batch")
    if failed(batch):
        return
    x, y = batch
    ids = np.fromfile(folder / "train.bin", dtype="<u2")  # numpy's own reading of the file
    assert x.shape == y.shape == (batch_size, context_length)
    starts = {windows.window_start(first + row) for row in range(batch_size)}
    assert all(0 <= s <= len(ids) - context_length - 1 and s % context_length == 0
               for s in starts)
    for row in range(batch_size):
        start = windows.window_start(first + row)
        window = torch.from_numpy(ids[start:start + context_length + 1].astype(np.int64))
        assert torch.equal(x[row], window[:-1]) and torch.equal(y[row], window[1:])


@fuzz(**DAMAGE, name=st.sampled_from(["step_00000003.pt", "step_00000004.pt"]))
def test_fuzz_checkpoint_damaged(tmp_path, how, where, data, name):
    folder = tmp_path / f"c{next(COUNTER)}"
    good = pc_ckpt.save_checkpoint(checkpoint_state(3), folder)
    path = folder / name
    path.write_bytes(damage(good.read_bytes(), how, where, data))
    allowed = (*fuzzing.ALLOWED, CheckpointError)
    loaded = outcome(lambda: pc_ckpt.load_checkpoint(path), allowed, "load_checkpoint")
    found = outcome(lambda: pc_ckpt.latest_checkpoint(folder, log=lambda *a: None), allowed)
    if failed(loaded) and name == "step_00000004.pt":
        assert found[0] == good  # the damaged newer file is passed over for the good one
    if not failed(loaded):
        assert set(pc_ckpt.REQUIRED) <= set(loaded)


@fuzz(args=calls(
    good=dict(state=st.integers(0, 10**8 - 1), keep=st.integers(0, 3), folder=st.just("new"),
              rng=st.just("good")),
    bad=dict(state=st.one_of(ANY, st.dictionaries(st.sampled_from(["step", "model"]),
                                                  SCALARS, max_size=2)),
             keep=st.one_of(st.integers(max_value=-1), COUNTS),
             folder=st.sampled_from(["file", "none"]), rng=ANY)))
def test_fuzz_save_checkpoint_and_rng(tmp_path, args):
    i, folder = next(COUNTER), args["folder"]
    target = {"new": tmp_path / f"n{i}", "file": tmp_path / f"f{i}", "none": None}[folder]
    if folder == "file":
        target.write_text("x")
    state = args["state"]
    state = checkpoint_state(state) if isinstance(state, int) else state
    saved = outcome(lambda: pc_ckpt.save_checkpoint(state, target, args["keep"]),
                    label="save_checkpoint")
    if not failed(saved):
        assert saved.name == f"step_{state['step']:08d}.pt"
        assert torch.load(saved, weights_only=True)["step"] == state["step"]
        if set(pc_ckpt.REQUIRED[1:]) <= set(state):  # a complete one (partial ones save too)
            assert pc_ckpt.load_checkpoint(saved)["step"] == state["step"]
    before = pc_ckpt.rng_state()
    rng = args["rng"]
    result = outcome(lambda: pc_ckpt.set_rng_state(before if rng == "good" else rng),
                     label="set_rng_state")
    if failed(result):  # nothing restored, nothing changed
        assert torch.equal(torch.get_rng_state(), before["torch"])


NUMBERS = st.one_of(st.floats(max_value=-1e-9), st.sampled_from([math.nan, math.inf, -math.inf]),
                    st.none(), st.text(max_size=5), st.booleans(), tensors())


@fuzz(args=calls(
    good=dict(step=st.integers(0, 150), max_lr=st.floats(1e-4, 1e-2), min_lr=st.floats(0, 1e-4),
              warmup=st.integers(0, 20), max_steps=st.integers(20, 120),
              initial_lr=st.floats(0, 1e-3), decay=st.floats(0, 0.5), model=st.just("model")),
    bad=dict(step=st.one_of(st.integers(max_value=-1), COUNTS), max_lr=NUMBERS, min_lr=NUMBERS,
             warmup=st.one_of(st.integers(121, 200), st.integers(max_value=-1), COUNTS),
             max_steps=st.one_of(st.integers(-2, 0), COUNTS), initial_lr=NUMBERS,
             decay=NUMBERS, model=st.sampled_from(["list", "none"]))))
def test_fuzz_lr_at_and_param_groups(args):
    a = args
    lr = outcome(lambda: pretraining.lr_at(a["step"], a["max_lr"], a["min_lr"], a["warmup"],
                                           a["max_steps"], a["initial_lr"]), label="lr_at")
    if not failed(lr):
        tol = 1e-12
        assert min(a["min_lr"], a["initial_lr"]) - tol <= lr <= max(a["max_lr"],
                                                                     a["initial_lr"]) + tol
        if a["step"] >= a["max_steps"] > a["warmup"]:
            assert lr == pytest.approx(a["min_lr"])  # the floor, after the schedule
    net = {"model": tiny_model(), "list": [torch.zeros(2)], "none": None}[a["model"]]
    groups = outcome(lambda: pretraining.param_groups(net, a["decay"]), label="param_groups")
    if not failed(groups):
        assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


@st.composite
def token_ids(draw, vocab=300):
    """A (B, T) int64 tensor of ids of a TINY model (T at most its context length)."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 8)))
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(
        draw(st.integers(0, 2**31))))


BAD_IDS = st.one_of(tensors(sides=(0, 1, 2, 9), max_dims=3, low=-3, high=310), ANY)


@fuzz(args=calls(good=dict(inputs=token_ids(), targets=st.just("shifted"), bf16=st.booleans()),
                 bad=dict(inputs=BAD_IDS, targets=BAD_IDS, bf16=FLAGS)))
def test_fuzz_batch_loss(args):
    model, inputs, targets, bf16 = tiny_model(), args["inputs"], args["targets"], args["bf16"]
    if isinstance(targets, str):
        targets = inputs.roll(-1) if isinstance(inputs, torch.Tensor) else inputs  # (flat)
    loss = outcome(lambda: pretraining.batch_loss(model, inputs, targets, bf16),
                   label="batch_loss")
    if not failed(loss) and inputs.numel():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs)  # torch's own loss, independently of fused_cross_entropy
        expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                                     targets.flatten().long())
        torch.testing.assert_close(loss, expected, equal_nan=True)


INT_OPTIONS = ["context_length", "batch_size", "accum", "max_steps", "eval_batches", "log_every",
               "eval_every", "ckpt_every", "keep", "sample_tokens", "emb_dim", "n_layers",
               "n_heads", "threads", "stop_after", "seed", "warmup_steps"]
OTHER_OPTIONS = ["lr", "min_lr", "initial_lr", "weight_decay", "grad_clip", "dropout", "device",
                 "model", "init", "resume", "bf16", "sample_prompt", "out_dir", "models_dir"]


@fuzz(args=calls(
    good=dict(option=st.sampled_from(INT_OPTIONS), value=st.integers(1, 9),
              device=st.sampled_from(["auto", "cpu"]), local_rank=st.integers(0, 2)),
    bad=dict(option=st.sampled_from(OTHER_OPTIONS),
             value=st.one_of(st.integers(-3, 0), COUNTS, NUMBERS, ANY),
             device=st.one_of(st.sampled_from(["gpu", "", "cuda", "mps", "CPU"]), ANY),
             local_rank=st.one_of(st.integers(max_value=-1), COUNTS))))
def test_fuzz_train_options(tmp_path, args):
    """Whatever the options, train stops before any work: at a check, or at the data folder,
    which does not exist (FileNotFoundError from TokenWindows)."""
    options = {**vars(parse()), "data_dir": str(tmp_path / "none"),
               "out_dir": str(tmp_path / "out"), args["option"]: args["value"]}
    if args["option"] == "warmup_steps":
        options["max_steps"] = max(options["max_steps"], 9)
    threads = torch.get_num_threads()
    try:
        result = outcome(lambda: pretraining.train(argparse.Namespace(**options)), label="train")
    finally:
        torch.set_num_threads(threads)  # --threads, if a valid one was drawn
    assert failed(result)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    picked = outcome(lambda: pretraining.pick_device(args["device"], args["local_rank"]),
                     label="pick_device")
    if not failed(picked):
        assert picked.type in ("cpu", "cuda", "mps")


@fuzz(args=calls(
    good=dict(name=st.just("lm-gpt2-vocab"), message=st.text(min_size=1, max_size=30).filter(
        str.strip), max_new_tokens=st.integers(0, 4),
              temperature=st.one_of(st.just(0.0), st.floats(0.1, 2)),
              top_k=st.one_of(st.none(), st.integers(1, 50)), seed=st.integers(0, 2**64 - 1)),
    bad=dict(name=st.one_of(BAD_MODELS, st.just("lm")),
             message=st.one_of(st.text(alphabet=" \t\n", max_size=3), NOT_TEXTS),
             max_new_tokens=st.one_of(st.integers(max_value=-1), st.floats(), st.none(),
                                      st.text(max_size=3), st.booleans()),
             temperature=st.one_of(st.floats(max_value=-1e-9), NUMBERS),
             top_k=st.one_of(st.integers(max_value=0), FLAGS),
             seed=st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1),
                            FLAGS))))
def test_fuzz_stream_answer(tokenizer, args):
    a = args
    model = MODELS[a["name"]]()
    stream = outcome(lambda: chat_app.stream_answer(model, tokenizer, a["message"],
                                                    a["max_new_tokens"], a["temperature"],
                                                    a["top_k"], a["seed"]),
                     label="stream_answer")
    if failed(stream):
        return
    texts = outcome(lambda: list(stream))  # nothing left to refuse once it started
    assert not failed(texts), texts
    prompt = torch.tensor([tokenizer.encode(chat_app.chat_prompt(a["message"]))])
    torch.manual_seed(a["seed"])
    out = pc.generate(model, prompt, a["max_new_tokens"], model.cfg["context_length"],
                      a["temperature"], a["top_k"], eos_id=50256)
    assert (texts[-1] if texts else "") == tokenizer.decode(out[0, prompt.shape[1]:].tolist())


@fuzz(args=calls(
    good=dict(name=st.just("classifier-gpt2-vocab"),
              text=st.text(min_size=1, max_size=40).filter(lambda t: t.strip()),
              max_length=st.integers(1, 12)),
    bad=dict(name=st.sampled_from(["lm-gpt2-vocab", "loaded", "state-dict", "none", "meta"]),
             text=st.one_of(st.just(""), NOT_TEXTS),
             max_length=st.one_of(st.integers(max_value=0), FLAGS))))
def test_fuzz_spam_probabilities(tokenizer, args):
    name, text, max_length = args["name"], args["text"], args["max_length"]
    model = classifier(TINY_GPT2) if name == "classifier-gpt2-vocab" else MODELS[name]()
    probs = outcome(lambda: chat_app.spam_probabilities(model, tokenizer, text, max_length),
                    label="spam_probabilities")
    if failed(probs):
        return
    length = min(max_length, 8)  # the context length
    ids = tokenizer.encode(text, disallowed_special=())[:length]
    ids = torch.tensor([ids + [50256] * (length - len(ids))])  # padded as notebook 06 trains
    with torch.no_grad():
        expected = torch.softmax(model(ids)[0, -1], dim=-1)
    assert list(probs) == ["not spam", "spam"]
    torch.testing.assert_close(torch.tensor(list(probs.values())), expected)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """The tiny GPT-2 (OpenAI's layout, written by conftest.py) as notebook 07's fine-tuned
    state_dict and as notebook 06's classifier: {kind: the file}."""
    import os

    from gpt_download3 import download_and_load_gpt2

    settings, params = download_and_load_gpt2("tiny-test", os.environ["COURSE_MODELS_DIR"])
    saved = {}
    for kind in ("lm", "classifier"):
        model = pc.load_weights_into_gpt(pc.GPTModel(pc.config_from_hparams(settings)), params)
        if kind == "classifier":
            model = pc.add_classification_head(model, 2)
        saved[kind] = tmp_path_factory.mktemp("saved") / "m.pth"
        torch.save(model.state_dict(), saved[kind])
    return saved


@fuzz(args=calls(
    good=dict(damaged=st.just(False), spec=st.just("file"), size=st.just(None)),
    bad=dict(damaged=st.just(True),
             spec=st.one_of(st.sampled_from(["124M", "tiny-test", "", "  ", "nowhere/x.pth"]),
                            ANY),
             size=st.one_of(st.sampled_from(["tiny-test", "124M", "nope"]), ANY))),
      kind=st.sampled_from(["lm", "classifier"]), **DAMAGE)
def test_fuzz_load_models(tmp_path, saved_models, args, kind, how, where, data):
    import os

    models_dir = os.environ["COURSE_MODELS_DIR"]
    folder = tmp_path / f"m{next(COUNTER)}"
    folder.mkdir()
    path = folder / "gpt2-tiny-test-sft.pth"  # notebook 07's name: the size comes from it
    raw = saved_models[kind].read_bytes()
    damaged, spec, size = args["damaged"], args["spec"], args["size"]
    path.write_bytes(damage(raw, how, where, data) if damaged else raw)
    spec = path if spec == "file" else spec
    allowed = (*fuzzing.ALLOWED, LoadError)
    chat = outcome(lambda: chat_app.load_chat_model(spec, models_dir, size), allowed,
                   "load_chat_model")
    spam_size = "tiny-test" if size is None else size
    spam = outcome(lambda: chat_app.load_spam_model(spec, models_dir, spam_size),
                   allowed, "load_spam_model")
    for loaded, want in ((chat, "lm"), (spam, "classifier")):
        if not failed(loaded):
            assert isinstance(loaded.model, pc.GPTModel)
            if spec == path and not damaged:
                assert kind == want  # each tab takes only its kind of model
