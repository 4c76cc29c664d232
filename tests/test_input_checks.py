"""The mistakes a learner can make with the course's helpers (previous_chapters.py), one row each:
the call, the exception it must raise and words its message must hold (what is wrong, the
offending value or line, what to do). input_checks.py holds the checks; tests/test_fuzz_helpers.py
sweeps random inputs through the same helpers.
"""

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import previous_chapters as pc
from tests.fuzzing import table_tests

TINY = {"vocab_size": 300, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}


class Ctx:
    """What the rows need: a tiny GPTModel, a tokenizer, a scratch folder."""

    def __init__(self, tmp_path, tokenizer):
        torch.manual_seed(123)
        self.model = pc.GPTModel(TINY).eval()
        self.tokenizer = tokenizer
        self.tmp = tmp_path

    def file(self, name, data):
        path = self.tmp / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path

    def saved_model(self, name="model.pth"):
        path = self.tmp / name
        torch.save(self.model.state_dict(), path)
        return path

    def bpe_files(self, merges="#version: 0.2\nĠ t\n"):
        encoder = {c: i for i, c in enumerate(pc.bytes_to_unicode().values())}
        encoder["Ġt"] = 256
        encoder["<|endoftext|>"] = 257
        return (self.file("encoder.json", json.dumps(encoder)),
                self.file("vocab.bpe", merges))

    def hf_folder(self, config=None, weights=b"not safetensors"):
        folder = self.tmp / "hf"
        folder.mkdir(exist_ok=True)
        config = config if config is not None else json.dumps(
            {"model_type": "gpt2", "vocab_size": 300, "n_positions": 8, "n_embd": 8,
             "n_head": 2, "n_layer": 2})
        (folder / "config.json").write_text(config)
        (folder / "model.safetensors").write_bytes(weights)
        return folder

    def loader(self, batches):
        return list(batches)


def ids(*values):
    return torch.tensor([list(values)])


def gpt2_params(complete=True):
    """The arrays load_weights_into_gpt reads, for TINY; the second block empty unless
    complete."""
    c = 8
    block = {"attn": {"c_attn": {"w": np.zeros((c, 3 * c)), "b": np.zeros(3 * c)},
                      "c_proj": {"w": np.zeros((c, c)), "b": np.zeros(c)}},
             "mlp": {"c_fc": {"w": np.zeros((c, 4 * c)), "b": np.zeros(4 * c)},
                     "c_proj": {"w": np.zeros((4 * c, c)), "b": np.zeros(c)}},
             "ln_1": {"g": np.ones(c), "b": np.zeros(c)},
             "ln_2": {"g": np.ones(c), "b": np.zeros(c)}}
    return {"wte": np.zeros((300, c)), "wpe": np.zeros((8, c)), "g": np.ones(c), "b": np.zeros(c),
            "blocks": [block, copy.deepcopy(block) if complete else {}]}


SPAM_OK = "ham\tsee you at 6\nspam\tWIN a prize now\nham\tok\n"

# (id, call(ctx), exception type, words the message must contain)
CASES = [
    # ----- 01: tokenizer and data loader
    ("bpe-encode-bytes", lambda c: pc.BytePairTokenizer().encode(b"hi"), TypeError,
     ["must be a str", "decode"]),
    ("bpe-encode-ids", lambda c: pc.BytePairTokenizer().encode([1, 2]), TypeError,
     ["token ids"]),
    ("bpe-encode-unknown-special", lambda c: pc.BytePairTokenizer().encode(
        "a<|x|>", allowed_special={"<|x|>"}), ValueError, ["<|x|>", "special tokens"]),
    ("bpe-decode-unknown-id", lambda c: pc.BytePairTokenizer().decode([65, 999]), ValueError,
     ["999", "vocabulary of 256"]),
    ("bpe-decode-0d-tensor", lambda c: pc.BytePairTokenizer().decode(torch.tensor(5)), TypeError,
     ["decode takes a list of token ids", "shape ()"]),
    ("bpe-train-negative", lambda c: pc.BytePairTokenizer().train("aaa", -1), ValueError,
     ["num_merges", "at least 0"]),
    ("bpe-train-not-text", lambda c: pc.BytePairTokenizer().train(123, 5), TypeError,
     ["training text", "str"]),
    ("gpt2-bpe-missing-file", lambda c: pc.load_gpt2_bpe(c.tmp / "no.json", c.tmp / "no.bpe"),
     FileNotFoundError, ["no.json", "download_gpt2_files"]),
    ("gpt2-bpe-broken-json", lambda c: pc.load_gpt2_bpe(
        c.file("broken.json", '{"a": 1'), c.bpe_files()[1]), ValueError,
     ["damaged", "download"]),
    ("gpt2-bpe-not-an-encoder", lambda c: pc.load_gpt2_bpe(
        c.file("list.json", "[1, 2]"), c.bpe_files()[1]), ValueError,
     ["not GPT-2's encoder.json"]),
    ("gpt2-bpe-bad-merge-line", lambda c: pc.load_gpt2_bpe(
        *c.bpe_files("#version: 0.2\nĠ t\nĠt\n")), ValueError,
     ["vocab.bpe, line 3", "'Ġt'", "same download"]),
    ("dataset-text-is-ids", lambda c: pc.GPTDatasetV1([1, 2, 3], c.tokenizer, 4, 1), TypeError,
     ["token ids", "str"]),
    ("dataset-stride-0", lambda c: pc.GPTDatasetV1("a b c d e f g", c.tokenizer, 2, 0),
     ValueError, ["stride must be at least 1, not 0"]),
    ("dataset-max-length-float", lambda c: pc.GPTDatasetV1("a b c", c.tokenizer, 2.0, 1),
     TypeError, ["max_length must be a whole number", "2.0"]),
    ("dataloader-batch-size-0", lambda c: pc.create_dataloader_v1("a b c d e", batch_size=0),
     ValueError, ["batch_size must be at least 1, not 0"]),
    # ----- 02/03: modules
    ("mha-2d-input", lambda c: pc.MultiHeadAttention(8, 8, 8, 0.0, 2)(torch.randn(4, 8)),
     ValueError, ["MultiHeadAttention", "(batch, tokens, 8)", "(4, 8)"]),
    ("mha-wrong-width", lambda c: pc.MultiHeadAttention(8, 8, 8, 0.0, 2)(torch.randn(1, 4, 6)),
     ValueError, ["input size is 8", "(1, 4, 6)"]),
    ("mha-token-ids", lambda c: pc.MultiHeadAttention(8, 8, 8, 0.0, 2)(ids(1, 2)), TypeError,
     ["float activations", "torch.int64", "GPTModel"]),
    ("mha-dropout-1.5", lambda c: pc.MultiHeadAttention(8, 8, 8, 1.5, 2), ValueError,
     ["dropout", "between 0 and 1", "1.5"]),
    ("mha-heads-0", lambda c: pc.MultiHeadAttention(8, 8, 8, 0.0, 0), ValueError,
     ["num_heads must be at least 1"]),
    ("layernorm-width", lambda c: pc.LayerNorm(8)(torch.randn(2, 5)), ValueError,
     ["LayerNorm", "(..., 8)", "(2, 5)"]),
    ("layernorm-float64", lambda c: pc.LayerNorm(8)(torch.randn(2, 8, dtype=torch.float64)),
     TypeError, ["torch.float32 weights", "input is torch.float64", "x.to(torch.float32)"]),
    ("gelu-ints", lambda c: pc.GELU()(torch.arange(3)), TypeError, ["GELU", "float"]),
    ("feedforward-width", lambda c: pc.FeedForward(TINY)(torch.randn(1, 2, 3)), ValueError,
     ["FeedForward", "input size is 8"]),
    ("block-2d", lambda c: pc.TransformerBlock(TINY)(torch.randn(2, 8)), ValueError,
     ["TransformerBlock", "(batch, tokens, 8)"]),
    ("gptmodel-config-missing-key", lambda c: pc.GPTModel(
        {k: v for k, v in TINY.items() if k != "n_heads"}), ValueError, ["lacks", "n_heads"]),
    ("gptmodel-config-not-dict", lambda c: pc.GPTModel("124M"), TypeError,
     ["config dict", "GPT_CONFIG_124M", "'124M'"]),
    ("gptmodel-drop-rate", lambda c: pc.GPTModel({**TINY, "drop_rate": 1.5}), ValueError,
     ["'drop_rate' must be between 0 and 1, not 1.5"]),
    ("gptmodel-config-float", lambda c: pc.GPTModel({**TINY, "emb_dim": 8.0}), TypeError,
     ["'emb_dim' must be a whole number"]),
    ("forward-1d-ids", lambda c: c.model(torch.tensor([1, 2])), ValueError,
     ["(batch, tokens)", "(2,)", "unsqueeze(0)"]),
    ("forward-id-beyond-vocab", lambda c: c.model(ids(1, 300)), ValueError,
     ["token id 300", "position 1", "vocabulary of 300", "another tokenizer"]),
    ("forward-negative-id", lambda c: c.model(ids(-100, 2)), ValueError,
     ["token id -100", "-100"]),
    ("forward-float-ids", lambda c: c.model(torch.tensor([[1.0, 2.0]])), TypeError,
     ["integers", "torch.float32", ".long()"]),
    ("forward-int16-ids", lambda c: c.model(torch.tensor([[1, 2]], dtype=torch.int16)),
     TypeError, ["torch.int16", ".long()"]),
    ("forward-list", lambda c: c.model([[1, 2]]), TypeError, ["torch tensor", "torch.tensor"]),
    ("forward-3d", lambda c: c.model(torch.zeros(1, 2, 3, dtype=torch.long)), ValueError,
     ["(batch, tokens)", "(1, 2, 3)"]),
    ("forward-too-long", lambda c: c.model(torch.zeros(1, 9, dtype=torch.long)), ValueError,
     ["9 tokens", "context length is 8", "crop"]),
    ("load-state-missing-key", lambda c: c.model.load_state_dict(
        {k: v for k, v in c.model.state_dict().items() if k != "final_norm.scale"}),
     ValueError, ["missing (1): final_norm.scale", "nothing was loaded"]),
    ("load-state-other-size", lambda c: c.model.load_state_dict(
        pc.GPTModel({**TINY, "emb_dim": 4}).state_dict()), ValueError,
     ["different shapes", "tok_emb.weight is (300, 4)", "same config"]),
    ("load-state-classifier-into-lm", lambda c: c.model.load_state_dict(
        pc.add_classification_head(pc.GPTModel(TINY)).state_dict()), ValueError,
     ["2 outputs", "add_classification_head"]),
    ("load-state-not-a-dict", lambda c: c.model.load_state_dict([1, 2]), TypeError,
     ["dict of tensors"]),
    ("load-state-not-tensors", lambda c: c.model.load_state_dict(
        {k: 0.5 for k in c.model.state_dict()}), ValueError,
     ["not tensors: tok_emb.weight: float 0.5"]),
    ("generate-simple-1d", lambda c: pc.generate_text_simple(c.model, torch.tensor([1]), 2, 8),
     ValueError, ["the prompt", "(batch, tokens)", "unsqueeze(0)"]),
    ("generate-simple-empty", lambda c: pc.generate_text_simple(
        c.model, torch.zeros(1, 0, dtype=torch.long), 2, 8), ValueError,
     ["no tokens", "text empty"]),
    ("generate-simple-negative", lambda c: pc.generate_text_simple(c.model, ids(1), -1, 8),
     ValueError, ["max_new_tokens must be at least 0, not -1"]),
    # ----- 04: text <-> ids, loss, generation, saving
    ("text-to-ids-not-text", lambda c: pc.text_to_token_ids(ids(1, 2), c.tokenizer), TypeError,
     ["token ids", "token_ids_to_text"]),
    ("ids-to-text-list", lambda c: pc.token_ids_to_text([1, 2], c.tokenizer), TypeError,
     ["tensor of integer token ids", "tokenizer.decode"]),
    ("ids-to-text-floats", lambda c: pc.token_ids_to_text(torch.tensor([1.0]), c.tokenizer),
     TypeError, ["integer token ids", "torch.float32"]),
    ("ids-to-text-beyond-vocab", lambda c: pc.token_ids_to_text(ids(5, 60000), c.tokenizer),
     ValueError, ["token id 60000", "0 to 50,256", "another tokenizer"]),
    ("ids-to-text-batch", lambda c: pc.token_ids_to_text(torch.zeros(2, 3, dtype=torch.long),
                                                         c.tokenizer), ValueError,
     ["one sequence", "row by row"]),
    ("cross-entropy-float-targets", lambda c: pc.fused_cross_entropy(
        torch.randn(3, 5), torch.tensor([1.0, 2.0, 0.0])), TypeError,
     ["targets", "integer token ids", "torch.float32"]),
    ("cross-entropy-target-beyond", lambda c: pc.fused_cross_entropy(
        torch.randn(2, 5), torch.tensor([1, 7])), ValueError, ["target 7", "0..4"]),
    ("loss-batch-shapes", lambda c: pc.calc_loss_batch(ids(1, 2), ids(1), c.model, "cpu"),
     ValueError, ["inputs and targets", "(1, 2)", "(1, 1)"]),
    ("loss-loader-not-a-loader", lambda c: pc.calc_loss_loader(5, c.model, "cpu"), TypeError,
     ["DataLoader (or a list of (inputs, targets) batches)", "int 5"]),
    ("loss-loader-not-pairs", lambda c: pc.calc_loss_loader([ids(1, 2)], c.model, "cpu"),
     TypeError, ["DataLoader (or a list of (inputs, targets) batches)"]),
    ("loss-loader-num-batches-0", lambda c: pc.calc_loss_loader(
        [(ids(1, 2), ids(2, 3))], c.model, "cpu", num_batches=0), ValueError,
     ["num_batches", "at least 1, not 0"]),
    ("train-eval-freq-0", lambda c: pc.train_model_simple(
        c.model, [(ids(1), ids(2))], [(ids(1), ids(2))], None, "cpu", 1, 0, 1, "a",
        c.tokenizer), ValueError, ["eval_freq must be at least 1, not 0"]),
    ("plot-lengths", lambda c: pc.plot_losses([1, 2], [10, 20], [3.0], [3.0, 2.0]), ValueError,
     ["different lengths", "'train_losses': 1"]),
    ("plot-not-numbers", lambda c: pc.plot_values([1], [8], ["high"], [0.5]), TypeError,
     ["train_values must be a sequence of numbers", "['high']"]),
    ("cached-attention-layer", lambda c: pc.cached_attention(
        c.model.trf_blocks[0].att, torch.randn(1, 1, 8), pc.KVCache(c.model, 1, 8), 2),
     ValueError, ["layer must be at most 1, not 2"]),
    ("kv-cache-capacity-0", lambda c: pc.KVCache(c.model, 1, 0), ValueError,
     ["capacity", "at least 1"]),
    ("cached-forward-batch-mismatch", lambda c: pc.gpt_forward_cached(
        c.model, torch.zeros(3, 1, dtype=torch.long), pc.KVCache(c.model, 1, 8)), ValueError,
     ["holds 1 sequences", "3 rows", "batch_size=3"]),
    ("generate-1d-prompt", lambda c: pc.generate(c.model, torch.tensor([1, 2]), 3, 8),
     ValueError, ["the prompt", "unsqueeze(0)"]),
    ("generate-prompt-beyond-vocab", lambda c: pc.generate(c.model, ids(1, 50256), 3, 8),
     ValueError, ["token id 50256", "vocabulary of 300"]),
    ("generate-empty-prompt", lambda c: pc.generate(
        c.model, torch.zeros(1, 0, dtype=torch.long), 3, 8), ValueError,
     ["at least one token", "prompt text empty"]),
    ("generate-top-k-0", lambda c: pc.generate(c.model, ids(1), 3, 8, top_k=0), ValueError,
     ["top_k", "at least 1, not 0"]),
    ("generate-top-k-float", lambda c: pc.generate(c.model, ids(1), 3, 8, top_k=2.5), TypeError,
     ["top_k", "whole number", "2.5"]),
    ("generate-temperature-nan", lambda c: pc.generate(c.model, ids(1), 3, 8,
                                                       temperature=math.nan), ValueError,
     ["temperature", "nan"]),
    ("generate-temperature-text", lambda c: pc.generate(c.model, ids(1), 3, 8,
                                                        temperature="hot"), TypeError,
     ["temperature must be a number", "'hot'"]),
    ("generate-context-beyond-model", lambda c: pc.generate(c.model, ids(1), 3, 9), ValueError,
     ["context_size must be at most 8, not 9"]),
    ("generate-diverged-weights", lambda c: pc.generate(
        nan_model(), ids(1), 3, 8, temperature=1.0), ValueError,
     ["not finite", "diverged", "learning rate"]),
    ("save-into-a-folder", lambda c: pc.save_to_file({}, c.tmp), ValueError,
     ["is a folder", "model.pth"]),
    ("save-missing-folder", lambda c: pc.save_to_file({}, c.tmp / "no" / "m.pth"),
     FileNotFoundError, ["does not exist", "mkdir"]),
    ("load-missing-file", lambda c: pc.load_from_file(c.tmp / "gone.pth"), FileNotFoundError,
     ["gone.pth does not exist", "out_dir"]),
    ("load-truncated-file", lambda c: pc.load_from_file(c.file(
        "cut.pth", c.saved_model().read_bytes()[:2000])), ValueError,
     ["cut.pth could not be loaded", "failed finding central directory)", "cut short",
      "Nothing was loaded"]),
    ("load-not-a-torch-file", lambda c: pc.load_from_file(c.file("x.pth", "hello")), ValueError,
     ["x.pth could not be loaded", "not a file that torch.save wrote"]),
    ("load-bad-device", lambda c: pc.load_from_file(c.saved_model(), device="gpu0"), ValueError,
     ["'gpu0' is not a device", "cpu, cuda or mps"]),
    ("load-model-state-wrong-size", lambda c: pc.load_model_state(
        pc.GPTModel({**TINY, "n_layers": 1}), c.saved_model()), ValueError,
     ["model.pth does not fit", "unexpected (16): trf_blocks.1"]),
    # ----- 05: pretrained weights
    ("hparams-missing-key", lambda c: pc.config_from_hparams({"n_vocab": 5}), ValueError,
     ["hparams.json", "n_embd", "download_and_load_gpt2"]),
    ("hparams-text-value", lambda c: pc.config_from_hparams(
        {"n_vocab": 5, "n_ctx": 4, "n_embd": "768", "n_head": 1, "n_layer": 1}), TypeError,
     ["'n_embd' must be a whole number", "'768'"]),
    ("params-missing-array", lambda c: pc.load_weights_into_gpt(
        pc.GPTModel(TINY), {k: v for k, v in gpt2_params().items() if k != "wte"}), ValueError,
     ["params['wte']", "download_and_load_gpt2"]),
    ("params-0d-array", lambda c: pc.load_weights_into_gpt(
        pc.GPTModel(TINY), {**gpt2_params(), "wte": torch.tensor(0.5)}), ValueError,
     ["params['wte'] is missing or not an array (of at least one dimension)"]),
    ("params-block-incomplete", lambda c: pc.load_weights_into_gpt(
        pc.GPTModel(TINY), gpt2_params(complete=False)), ValueError,
     ["params['blocks'][1]['attn']"]),
    ("params-other-context", lambda c: pc.load_weights_into_gpt(
        pc.GPTModel({**TINY, "context_length": 4}), gpt2_params()), ValueError,
     ["pos_emb.weight (wpe): the model has shape (4, 8) but the checkpoint gives (8, 8)",
      "Does the model config match"]),
    ("params-c-attn-shape", lambda c: pc.load_weights_into_gpt(pc.GPTModel(TINY), {
        **gpt2_params(), "blocks": [{**gpt2_params()["blocks"][0], "attn": {
            **gpt2_params()["blocks"][0]["attn"], "c_attn": {"w": np.zeros((1, 0)),
                                                            "b": np.zeros(24)}}}] * 2}),
     ValueError, ["trf_blocks[0].att.W_query, W_key, W_value (c_attn/w): the model has shape "
                  "(24, 8) but the checkpoint gives (0, 1)"]),
    ("hf-not-a-name", lambda c: pc.gpt_from_pretrained(124), TypeError,
     ["GPT-2 name", "int 124"]),
    ("hf-broken-config", lambda c: pc.gpt_from_pretrained(c.hf_folder(config="{")), ValueError,
     ["config.json is not a readable JSON file"]),
    ("hf-config-missing-key", lambda c: pc.gpt_from_pretrained(c.hf_folder(
        config='{"model_type": "gpt2"}')), ValueError, ["no 'vocab_size'", "complete GPT-2"]),
    ("hf-config-disagrees", lambda c: pc.gpt_from_pretrained(exported_with_config(
        c, n_positions=16)), ValueError,
     ["config.json and the weights disagree", "[16, 8]", "same model"]),
    ("hf-damaged-weights", lambda c: pc.gpt_from_pretrained(c.hf_folder()), ValueError,
     ["model.safetensors is not a readable safetensors file"]),
    # ----- 06: spam data, classifier
    ("spam-missing-file", lambda c: pc.read_sms_spam(c.tmp / "SMSSpamCollection"),
     FileNotFoundError, ["does not exist", "fetch_data('SMSSpamCollection')"]),
    ("spam-line-without-tab", lambda c: pc.read_sms_spam(c.file(
        "s.tsv", "ham\tok\nspam WIN now\n")), ValueError,
     ["line 2 has 0 tabs", "'spam WIN now'"]),
    ("spam-two-tabs", lambda c: pc.read_sms_spam(c.file("s.tsv", "ham\tok\tthen\n")),
     ValueError, ["line 1 has 2 tabs"]),
    ("spam-carriage-return", lambda c: pc.read_sms_spam(c.file("s.tsv", "ham\tok\rthen\n")),
     ValueError, ["line 1 holds a carriage return"]),
    ("spam-bad-label", lambda c: pc.read_sms_spam(c.file("s.tsv", SPAM_OK + "Spam\tyes\n")),
     ValueError, ["line 4 has the label 'Spam'", "ham or spam"]),
    ("spam-header", lambda c: pc.read_sms_spam(c.file("s.tsv", "label\ttext\n" + SPAM_OK)),
     ValueError, ["line 1", "'label'", "header"]),
    ("spam-latin-1", lambda c: pc.read_sms_spam(c.file(
        "s.tsv", SPAM_OK.encode() + "ham\tcafé\n".encode("latin-1"))), ValueError,
     ["line 4", "0xe9", "UTF-8"]),
    ("balance-not-a-dataframe", lambda c: pc.create_balanced_dataset([1, 2]), ValueError,
     ["DataFrame with a Label column"]),
    ("balance-no-spam", lambda c: pc.create_balanced_dataset(
        pd.DataFrame({"Label": ["ham"], "Text": ["x"]})), ValueError, ["no spam messages"]),
    ("split-nan-fraction", lambda c: pc.random_split(
        pd.DataFrame({"a": [1]}), math.nan, 0.1), ValueError, ["train_frac", "nan"]),
    ("split-fractions-over-1", lambda c: pc.random_split(
        pd.DataFrame({"a": [1]}), 0.8, 0.3), ValueError, ["sum to at most 1"]),
    ("spam-dataset-missing-csv", lambda c: pc.SpamDataset(c.tmp / "train.csv", c.tokenizer),
     FileNotFoundError, ["train.csv does not exist", "to_csv"]),
    ("spam-dataset-empty-csv", lambda c: pc.SpamDataset(c.file("e.csv", ""), c.tokenizer),
     ValueError, ["e.csv is not a readable CSV file"]),
    ("spam-dataset-text-labels", lambda c: pc.SpamDataset(c.file(
        "t.csv", "Label,Text\nham,hi\n"), c.tokenizer), ValueError,
     ["must be integers", "'ham'", "map them"]),
    ("spam-dataset-negative-label", lambda c: pc.SpamDataset(c.file(
        "n.csv", "Label,Text\n-1,hi\n"), c.tokenizer), ValueError, ["class numbers", "-1"]),
    ("classification-head-1-class", lambda c: pc.add_classification_head(c.model, 1),
     ValueError, ["num_classes must be at least 2, not 1"]),
    ("classification-head-not-gpt", lambda c: pc.add_classification_head(torch.nn.Linear(2, 2)),
     TypeError, ["GPTModel", "Linear"]),
    ("classifier-label-beyond-head", lambda c: pc.calc_loss_batch_classifier(
        ids(1, 2), torch.tensor([5]), pc.add_classification_head(pc.GPTModel(TINY)), "cpu"),
     ValueError, ["[5]", "2 outputs", "num_classes"]),
    ("classifier-float-labels", lambda c: pc.calc_loss_batch_classifier(
        ids(1, 2), torch.tensor([1.0]), c.model, "cpu"), ValueError,
     ["labels must be a long tensor of shape (1,)", "torch.float32"]),
    ("classifier-train-empty", lambda c: pc.train_classifier_simple(
        c.model, [], [], None, "cpu", 1, 1, 1), ValueError, ["yields no batches"]),
    ("classify-ids", lambda c: pc.classify_review(ids(1), c.model, c.tokenizer, "cpu"),
     TypeError, ["needs a text (str)"]),
    # ----- 07: instruction data
    ("instructions-missing-file", lambda c: pc.load_instruction_data(c.tmp / "d.json"),
     FileNotFoundError, ["d.json does not exist", "fetch_data('instruction-data.json')"]),
    ("instructions-json-error", lambda c: pc.load_instruction_data(c.file(
        "d.json", '[{"instruction": "a", "input": "", "output": "b"}\n {"x": 1}]')), ValueError,
     ["d.json, line 2, column 2", "not valid JSON"]),
    ("instructions-number-field", lambda c: pc.load_instruction_data(c.file(
        "d.json", '[{"instruction": "a", "input": "", "output": 3}]')), ValueError,
     ["d.json", "entry 0", "'output' should be a str, not int"]),
    ("instructions-latin-1", lambda c: pc.load_instruction_data(c.file(
        "d.json", '["café"]'.encode("latin-1"))), ValueError, ["not UTF-8"]),
    ("format-input-no-instruction", lambda c: pc.format_input({"input": "x"}), ValueError,
     ["no 'instruction'", "needs 'instruction' and 'input'"]),
    ("format-input-not-dict", lambda c: pc.format_input("Translate"), TypeError,
     ["one entry, a dict"]),
    ("format-input-number", lambda c: pc.format_input({"instruction": 5, "input": ""}),
     TypeError, ["'instruction' must be a str, not int 5"]),
    ("split-instructions-dict", lambda c: pc.split_instruction_data({"a": 1}), TypeError,
     ["list of entries"]),
    ("collate-strings", lambda c: pc.custom_collate_fn([["a", "b"]]), TypeError,
     ["lists of token ids", "str 'a'"]),
    ("collate-negative-ids", lambda c: pc.custom_collate_fn([[1, -5]]), ValueError,
     ["ints from 0 up", "int -5"]),
    ("collate-max-length-0", lambda c: pc.custom_collate_fn([[1, 2]], allowed_max_length=0),
     ValueError, ["allowed_max_length must be at least 1, not 0"]),
    ("collate-tensor-batch", lambda c: pc.custom_collate_fn(torch.zeros(2, 3)), TypeError,
     ["list of token-id lists"]),
    ("extract-response-none", lambda c: pc.extract_response(None, "p"), TypeError,
     ["generated_text must be a str"]),
    ("rouge-ids", lambda c: pc.rouge_l_f1([1, 2], "a"), TypeError, ["candidate", "token ids"]),
    ("ollama-host-bad-port", lambda c: pc.ollama_base_url("localhost:abc"), ValueError,
     ["not a valid address", "http://localhost:11434"]),
    ("ollama-host-number", lambda c: pc.ollama_base_url(11434), TypeError, ["host must be a str"]),
    ("judge-prompt-no-answer", lambda c: pc.format_judge_prompt(
        {"instruction": "a", "input": "", "output": "b"}), ValueError,
     ["no 'model_response'", "add the model's answers"]),
    ("parse-score-none", lambda c: pc.parse_score(None), TypeError, ["judge's reply"]),
]


def exported_with_config(ctx, **changes):
    """A Hugging Face folder of ctx.model (hf_export) whose config.json is then changed."""
    from hf_export import export_to_hf

    folder = ctx.tmp / "exported"
    export_to_hf(ctx.model, folder, tie=False, tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def nan_model():
    model = pc.GPTModel(TINY).eval()
    with torch.no_grad():
        model.out_head.weight.fill_(math.nan)
    return model


@pytest.fixture
def ctx(tmp_path, tokenizer):
    return Ctx(tmp_path, tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    import course_data
    return course_data.get_gpt2_tokenizer()


test_a_mistake_gets_a_clear_message, test_every_case_has_its_own_id = table_tests(CASES)


# ----- what a failed load leaves behind, and what a failed save leaves behind ------------------

def test_a_failed_load_leaves_the_model_as_it_was(ctx):
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    other = pc.GPTModel({**TINY, "n_layers": 1})  # the embeddings and block 0 fit, block 1 not
    torch.nn.init.ones_(other.tok_emb.weight)
    torch.save(other.state_dict(), ctx.tmp / "other.pth")
    cut = ctx.file("cut.pth", (ctx.tmp / "other.pth").read_bytes()[:3000])
    for path in (cut, ctx.tmp / "other.pth"):
        with pytest.raises(ValueError, match=path.name):
            pc.load_model_state(ctx.model, path)
    with pytest.raises(ValueError, match="nothing was loaded"):
        ctx.model.load_state_dict(other.state_dict())  # GPTModel's own check, before copying
    assert all(torch.equal(v, before[k]) for k, v in ctx.model.state_dict().items())


def test_nn_module_would_have_half_loaded_the_model(ctx):
    """Why the check comes first: torch's own load_state_dict copies what fits, then raises."""
    other = pc.GPTModel({**TINY, "n_layers": 1})
    torch.nn.init.ones_(other.tok_emb.weight)
    with pytest.raises(RuntimeError):
        torch.nn.Module.load_state_dict(ctx.model, other.state_dict())
    assert torch.equal(ctx.model.tok_emb.weight, other.tok_emb.weight)  # changed, then failed


def test_a_failed_save_keeps_the_old_file_and_leaves_no_partial_one(ctx):
    path = ctx.saved_model("model.pth")
    good = path.read_bytes()

    class Unsaveable:
        def __reduce__(self):
            raise OSError("No space left on device")  # as a full disk would, midway

    with pytest.raises(OSError, match="No space left"):
        pc.save_to_file({"weights": ctx.model.state_dict(), "later": Unsaveable()}, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in ctx.tmp.iterdir()) == ["model.pth"]
    pc.save_to_file(ctx.model.state_dict(), path)  # and a save that succeeds replaces it
    assert pc.load_from_file(path).keys() == ctx.model.state_dict().keys()


# ----- nothing changes for correct input ----------------------------------------------------

def test_the_real_spam_file_reads_as_pandas_reads_it(course_file):
    """read_sms_spam checks every line, then reads as before: the same DataFrame as pandas'
    own read_csv with the settings of notebook 06 (the independent reading)."""
    import csv
    path = course_file("SMSSpamCollection")
    expected = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"], dtype=str,
                           quoting=csv.QUOTE_NONE, keep_default_na=False)
    assert pc.read_sms_spam(path).equals(expected)
    assert len(expected) == 5574


def test_blank_lines_and_windows_line_ends_are_read_as_pandas_reads_them(ctx):
    import csv
    path = ctx.file("s.tsv", "ham\tok\r\n\r\nspam\tWIN\r\n\n")
    expected = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"], dtype=str,
                           quoting=csv.QUOTE_NONE, keep_default_na=False)
    assert pc.read_sms_spam(path).equals(expected)
    assert list(expected["Text"]) == ["ok", "WIN"]


def test_the_real_instruction_file_loads_as_json_does(course_file):
    path = course_file("instruction-data.json")
    assert pc.load_instruction_data(path) == json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def course_file():
    import course_data
    return course_data.fetch_data


def test_the_ollama_hosts_of_before_give_the_same_urls():
    assert pc.ollama_base_url("http://localhost:11434/") == "http://localhost:11434"
    assert pc.ollama_base_url("127.0.0.1:11434") == "http://127.0.0.1:11434"
    assert pc.ollama_base_url("0.0.0.0") == "http://0.0.0.0:11434"
    assert pc.ollama_base_url("https://example.org") == "https://example.org"


def test_an_empty_text_gives_an_empty_batch_of_integer_ids(tokenizer):
    ids_ = pc.text_to_token_ids("", tokenizer)
    assert ids_.shape == (1, 0) and ids_.dtype == torch.long


def test_a_failed_weight_load_leaves_the_model_as_it_was():
    """The checkpoint's second block has the wrong width: nothing is copied, not even wpe."""
    good = gpt2_params()
    bad = {**good, "blocks": [good["blocks"][0], {**good["blocks"][0], "ln_2": {
        "g": np.ones(4), "b": np.zeros(8)}}]}
    gpt = pc.GPTModel(TINY)
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    with pytest.raises(ValueError, match=r"trf_blocks\[1\]\.norm2 \(ln_2\)\.scale"):
        pc.load_weights_into_gpt(gpt, bad)
    assert all(torch.equal(v, before[k]) for k, v in gpt.state_dict().items())
    assert gpt.out_head.weight is not gpt.tok_emb.weight  # not even tied yet
    pc.load_weights_into_gpt(gpt, good)  # the good one loads
    assert np.array_equal(gpt.pos_emb.weight.detach().numpy(), good["wpe"])
