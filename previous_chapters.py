"""The code the course's notebooks build, collected so that later notebooks can import it.

Each section below is headed by the notebook that builds (and explains) it, in notebook order;
`__all__` doubles as the table of contents. Only the final version of each piece lives here: the
step-by-step versions stay in the notebooks. Importing this module has no side effects.

Shape names used in comments: B batch, T tokens, C embedding dim, H heads, D head dim, V vocab.
"""

from __future__ import annotations

import json
import numbers
import sys
from collections import Counter
from pathlib import Path

import regex  # GPT-2's split pattern needs \p{L}; the package comes with tiktoken
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

# the checks at the top of the helpers (not part of the lectures): input_checks.py
from input_checks import (
    check_curves,
    check_features,
    check_fraction,
    check_gpt2_params,
    check_int,
    check_loader,
    check_sampling,
    check_state_dict_fits,
    check_text,
    check_token_ids,
    input_dtype,
    shape_of,
)

__all__ = [
    # 01_working_with_text.ipynb
    "GPT2_SPLIT_PATTERN", "BytePairTokenizer", "bytes_to_unicode", "load_gpt2_bpe",
    "GPTDatasetV1", "create_dataloader_v1",
    # 02_attention.ipynb
    "MultiHeadAttention", "CausalAttentionWithDropout",
    # 03_gpt_architecture.ipynb
    "GPT_CONFIG_124M", "LayerNorm", "GELU", "FeedForward", "TransformerBlock", "GPTModel",
    "generate_text_simple",
    # 04_pretraining.ipynb
    "text_to_token_ids", "token_ids_to_text", "FusedCrossEntropy", "fused_cross_entropy",
    "calc_loss_batch", "calc_loss_loader",
    "evaluate_model", "generate_and_print_sample", "train_model_simple", "plot_losses",
    "save_to_file", "load_from_file", "load_model_state",
    "KVCache", "cached_attention", "gpt_forward_cached", "generate_stream", "generate",
    # 05_pretrained_weights.ipynb
    "config_from_hparams", "assign_", "load_weights_into_gpt", "HF_GPT2_MODELS", "HF_GPT2_NAMES",
    "gpt_from_pretrained",
    # 06_classification_finetuning.ipynb
    "read_sms_spam", "create_balanced_dataset", "random_split", "SpamDataset",
    "add_classification_head", "calc_accuracy_loader", "calc_loss_batch_classifier",
    "calc_loss_loader_classifier", "evaluate_model_classifier", "train_classifier_simple",
    "plot_values", "classifier_logits", "classify_review",
    # 07_instruction_finetuning.ipynb
    "validate_instruction_data", "load_instruction_data", "format_input",
    "split_instruction_data", "InstructionDataset",
    "custom_collate_fn", "extract_response", "rouge_l_f1", "ollama_base_url", "check_if_running",
    "query_model", "parse_score", "format_judge_prompt", "generate_model_scores",
]


# ===== 01_working_with_text.ipynb =====

# GPT-2's pre-tokenisation pattern: text is cut into chunks (a contraction, a word or a number
# with the space before it, a run of punctuation, whitespace) and merges never cross a chunk.
# \p{L} (any letter) and \p{N} (any digit) need the `regex` package, not the built-in `re`.
GPT2_SPLIT_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                      r"""|\s+(?!\S)|\s+""")


class BytePairTokenizer:
    """Byte-level byte pair encoding: learn merges from a text, encode text to ids, decode back.

    Ids 0-255 are single bytes, so any text can be encoded; each merge adds one id for a pair of
    ids. Encoding cuts the text into chunks (GPT2_SPLIT_PATTERN) and, inside each chunk, keeps
    merging the adjacent pair whose merge was learned first. `load_gpt2_bpe` fills it with GPT-2's
    50,000 merges; tests/test_bpe.py checks that it then gives tiktoken's ids.
    """

    def __init__(self, split_pattern: str = GPT2_SPLIT_PATTERN):
        self.split = regex.compile(split_pattern)
        self.byte_ids = list(range(256))  # id of each byte value (GPT-2 numbers them otherwise)
        self.vocab = {i: bytes([i]) for i in range(256)}  # id -> the bytes it stands for
        self.merges = {}   # (id, id) -> new id; a smaller new id means an earlier merge
        self.special = {}  # special token -> id, e.g. {"<|endoftext|>": 50256}
        self.cache = {}    # chunk -> ids: a word that recurs is merged once, not every time

    @staticmethod
    def merge_pair(ids: tuple, pair: tuple, new_id: int) -> tuple:
        """`ids` with each occurrence of `pair` (read left to right) replaced by `new_id`."""
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return tuple(out)

    def train(self, text: str, num_merges: int) -> list:
        """Learn `num_merges` more merges from `text`, each of the most frequent adjacent pair.

        Returns [(pair, new id, count), ...] in the order learned (ties: the pair seen first).
        """
        check_text(text, "the training text")
        check_int(num_merges, "num_merges", minimum=0)
        # each distinct chunk once, as ids (its bytes, merged as learned so far), with its count
        words = Counter(self.encode_chunk(chunk) for chunk in self.split.findall(text))
        history = []
        for _ in range(num_merges):
            pairs = Counter()
            for word, n in words.items():
                for pair in zip(word, word[1:]):
                    pairs[pair] += n  # a pair in a word that occurs n times counts n times
            if not pairs:
                break  # every chunk is already a single token
            pair = max(pairs, key=pairs.get)  # the most frequent; on a tie, the first seen
            new_id = len(self.vocab)
            self.merges[pair] = new_id
            self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]
            words = Counter({self.merge_pair(w, pair, new_id): n for w, n in words.items()})
            history.append((pair, new_id, pairs[pair]))
        self.cache.clear()  # cached encodings used the old merges
        return history

    def encode_chunk(self, chunk: str) -> tuple:
        """The ids of one chunk: its bytes, then the learned merges, earliest learned first."""
        if chunk not in self.cache:
            ids = tuple(self.byte_ids[b] for b in chunk.encode("utf-8"))
            while len(ids) > 1:
                # the adjacent pair that was merged first in training (smallest new id)
                pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, float("inf")))
                if pair not in self.merges:
                    break  # training never merged any of the pairs left
                ids = self.merge_pair(ids, pair, self.merges[pair])
            self.cache[chunk] = ids
        return self.cache[chunk]

    def encode(self, text: str, allowed_special=frozenset()) -> list:
        """Token ids of `text`; the special tokens named in `allowed_special` become their id."""
        check_text(text)
        unknown = set(allowed_special) - set(self.special)
        if unknown:
            raise ValueError(f"allowed_special names {sorted(unknown)}, which this tokenizer does "
                             f"not have; its special tokens are {sorted(self.special)}.")
        parts = [text]
        if allowed_special:  # split around them: "a<|endoftext|>b" -> ["a", "<|endoftext|>", "b"]
            alternatives = "|".join(regex.escape(s) for s in sorted(allowed_special))
            parts = regex.split(f"({alternatives})", text)
        ids = []
        for i, part in enumerate(parts):
            if i % 2:  # odd positions hold the special tokens that split matched
                ids.append(self.special[part])
            else:
                for chunk in self.split.findall(part):
                    ids.extend(self.encode_chunk(chunk))
        return ids

    def decode(self, ids) -> str:
        """The text of `ids`: their bytes joined and read as UTF-8 (a split character -> U+FFFD)."""
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__") or getattr(
                ids, "ndim", 1) != 1:  # ndim: a tensor or array of ids must be flat
            raise TypeError(f"decode takes a list of token ids, not {shape_of(ids)}")
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        unknown = [i for i in ids if isinstance(i, bool) or not isinstance(i, numbers.Integral)
                   or i not in self.vocab]
        if unknown:
            raise ValueError(f"token id {unknown[0]!r} is not in this tokenizer's vocabulary of "
                             f"{len(self.vocab):,} ids; decode takes a list of ints it produced.")
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def bytes_to_unicode() -> dict:
    """GPT-2's map from each of the 256 byte values to a printable character (its files use it).

    The 188 printable bytes stand for themselves ("A" -> "A"); the other 68 (control bytes,
    space, ...) get chr(256), chr(257), ... in byte order, so a space (byte 32) becomes "Ġ".
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # "!".."~", ...
    mapping, n_other = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + n_other)
            n_other += 1
    return mapping


def load_gpt2_bpe(encoder_json, vocab_bpe) -> BytePairTokenizer:
    """A BytePairTokenizer with GPT-2's vocabulary (encoder.json) and 50,000 merges (vocab.bpe).

    Both files write each token as text through bytes_to_unicode; line k of vocab.bpe after the
    "#version" line is merge k, "Ġ t" = the pair (" ", "t"). <|endoftext|> is a special token.
    """
    for path in (encoder_json, vocab_bpe):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist. GPT-2's encoder.json and vocab.bpe "
                                    "come with its weights (download_gpt2_files, notebook 05).")
    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))  # token text -> id
        lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{encoder_json} or {vocab_bpe} is damaged ({e}); download "
                         "it again.") from None
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    if not isinstance(encoder, dict) or "<|endoftext|>" not in encoder or not all(
            isinstance(k, str) and len(k) and isinstance(v, int) and not isinstance(v, bool)
            and (k == "<|endoftext|>" or set(k) <= char_to_byte.keys())
            for k, v in encoder.items()) or not char_to_byte.keys() <= encoder.keys():
        raise ValueError(f"{encoder_json} is not GPT-2's encoder.json (a JSON object mapping "
                         "each token's text to its id, <|endoftext|> included); download it "
                         "again.")

    tok = BytePairTokenizer()
    tok.special = {"<|endoftext|>": encoder["<|endoftext|>"]}
    tok.vocab = {i: (bytes(char_to_byte[c] for c in text) if text not in tok.special
                     else text.encode("utf-8")) for text, i in encoder.items()}
    tok.byte_ids = [encoder[c] for c in bytes_to_unicode().values()]  # in byte order 0..255
    tok.merges, last_id = {}, -1
    for number, line in enumerate(lines[1:], start=2):  # lines[0] is "#version: 0.2"
        if not line:
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(part in encoder for part in pair) or "".join(
                pair) not in encoder:
            raise ValueError(f"{vocab_bpe}, line {number}: {line[:40]!r} is not a merge of two "
                             f"tokens of {Path(encoder_json).name} ('first second'); are the two "
                             "files from the same download?")
        first, second = pair
        new_id = encoder[first + second]
        if new_id <= last_id:  # encode_chunk takes a smaller id for an earlier merge
            raise ValueError(f"merge {line!r} has id {new_id}, not more than the one before")
        tok.merges[(encoder[first], encoder[second])] = last_id = new_id
    return tok


class GPTDatasetV1(Dataset):
    """Next-token pairs from one text: window i is tokens [i*stride, i*stride + max_length),
    its target the same window shifted right by one token."""

    def __init__(self, txt, tokenizer, max_length, stride):
        check_text(txt)
        check_int(max_length, "max_length", minimum=1)
        check_int(stride, "stride", minimum=1)
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        if len(token_ids) <= max_length:
            raise ValueError(
                f"The text has {len(token_ids)} tokens, too few for one input/target window of "
                f"max_length={max_length} (that needs at least {max_length + 1} tokens). "
                "Use a longer text or a smaller max_length (context length)."
            )
        self.input_ids = []
        self.target_ids = []
        for i in range(0, len(token_ids) - max_length, stride):
            input_chunk = token_ids[i:i + max_length]
            target_chunk = token_ids[i + 1:i + max_length + 1]
            self.input_ids.append(torch.tensor(input_chunk))
            self.target_ids.append(torch.tensor(target_chunk))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128, shuffle=True,
                         drop_last=True, num_workers=0):
    """A DataLoader of (input, target) batches of shape (B, max_length) from `txt`, GPT-2 BPE."""
    from course_data import get_gpt2_tokenizer  # tiktoken's "gpt2", offline with a mirror too

    check_int(batch_size, "batch_size", minimum=1)
    tokenizer = get_gpt2_tokenizer()
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"The text gives {len(dataset)} window(s) of {max_length} tokens, fewer than one batch "
            f"of {batch_size}, and drop_last=True would leave no batch at all. Use a longer "
            "text, a smaller batch_size or max_length, or drop_last=False."
        )
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers)


# ===== 02_attention.ipynb =====

class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention, (B, T, C) in/out: one Q/K/V projection split into H
    heads, attention by PyTorch's fused scaled_dot_product_attention, or by
    CausalAttentionWithDropout when training with dropout on a CPU.
    Equals lecture 18's MultiHeadAttention (notebook 02, section 2.6) given the same weights:
    tests/test_attention.py::test_previous_chapters_equals_the_lecture_module_in_eval_mode."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        for name, value in [("d_in", d_in), ("d_out", d_out), ("num_heads", num_heads)]:
            check_int(value, name, minimum=1)
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        check_fraction(dropout, "dropout (a probability)")
        self.d_in = d_in
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length  # the fused kernel builds the causal mask itself
        self.dropout_p = dropout  # dropout on the attention weights, in training mode only
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads' outputs

    def forward(self, x):
        check_features(x, self.d_in, "MultiHeadAttention", dims=3,
                       dtype=input_dtype(self.W_query))
        b, num_tokens, d_in = x.shape
        # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)

        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p > 0.0 and x.device.type == "cpu" and torch.is_grad_enabled():
            # no fused kernel takes dropout on a CPU; ours keeps less for the backward pass
            context_vec = CausalAttentionWithDropout.apply(queries, keys, values, dropout_p)
        else:
            # softmax(Q K^T / sqrt(D) + causal mask), dropout, @ V: all in one fused call
            context_vec = torch.nn.functional.scaled_dot_product_attention(
                queries, keys, values, dropout_p=dropout_p, is_causal=True)  # (B, H, T, D)
        # (B, H, T, D) -> (B, T, H, D) -> (B, T, C)
        context_vec = context_vec.transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


class CausalAttentionWithDropout(torch.autograd.Function):
    """softmax(Q K^T / sqrt(D) + causal mask), dropout with probability p, @ V, for (B, H, T, D)
    queries, keys and values: scaled_dot_product_attention(..., is_causal=True) in training.
    For the backward pass it keeps only Q, K, V and the dropout mask (1 byte per weight) and
    computes the attention weights again, instead of keeping them twice (before and after the
    dropout), as PyTorch's CPU fallback does.
    Equals lectures 16-18's explicit masked softmax and nn.Dropout with the same seed (notebook 02,
    section 2.8): test_training_with_dropout_on_cpu_equals_the_lecture_module_with_the_same_seed."""

    @staticmethod
    def attention_weights(queries, keys):
        """softmax(Q K^T + causal mask), (B, H, T, T), for queries already divided by sqrt(D)."""
        num_tokens = queries.shape[-2]
        future = torch.ones(num_tokens, num_tokens, dtype=torch.bool,
                            device=queries.device).triu(diagonal=1)
        scores = queries @ keys.transpose(-2, -1)  # (B, H, T, T)
        return torch.softmax(scores.masked_fill_(future, -torch.inf), dim=-1)

    @staticmethod
    def forward(ctx, queries, keys, values, dropout_p):
        # dividing Q by sqrt(D) divides Q K^T, on a tensor T / D times smaller; contiguous
        # copies, so that the matrix products need none of their own
        queries = (queries / queries.shape[-1] ** 0.5).contiguous()
        keys, values = keys.contiguous(), values.contiguous()
        weights = CausalAttentionWithDropout.attention_weights(queries, keys)
        # the mask nn.Dropout would draw: keep each weight with probability 1 - p
        keep = torch.empty_like(weights, dtype=torch.bool).bernoulli_(1 - dropout_p)
        dropped = ~keep
        ctx.scale = 1 / (1 - dropout_p) if dropout_p < 1 else 0.0  # keeps the expected value
        ctx.save_for_backward(queries, keys, values, dropped)
        # (P with the dropped weights zeroed) @ V, scaled up: the scale goes on the smaller side
        return (weights.masked_fill_(dropped, 0.0) @ values).mul_(ctx.scale)  # (B, H, T, D)

    @staticmethod
    def backward(ctx, grad_output):
        queries, keys, values, dropped = ctx.saved_tensors  # queries divided by sqrt(D)
        grad_output = grad_output.contiguous() * ctx.scale  # the scale, again on the small side
        weights = CausalAttentionWithDropout.attention_weights(queries, keys)  # P, again
        grad_values = weights.masked_fill(dropped, 0.0).transpose(-2, -1) @ grad_output
        grad_weights = (grad_output @ values.transpose(-2, -1)).masked_fill_(dropped, 0.0)
        # through the softmax, row by row: dS = P * dP - P * sum(P * dP)
        grad_scores = weights * grad_weights
        grad_scores -= weights.mul_(grad_scores.sum(-1, keepdim=True))
        grad_queries = (grad_scores @ keys).div_(queries.shape[-1] ** 0.5)
        grad_keys = grad_scores.transpose(-2, -1) @ queries
        return grad_queries, grad_keys, grad_values, None


# ===== 03_gpt_architecture.ipynb =====

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # longest input the positional embedding covers
    "emb_dim": 768,          # embedding dimension C
    "n_heads": 12,           # attention heads H
    "n_layers": 12,          # transformer blocks
    "drop_rate": 0.1,        # dropout rate
    "qkv_bias": False,       # bias in the query/key/value projections (GPT-2 itself: True)
}


class LayerNorm(nn.Module):
    """Normalise each row to mean 0, variance 1 (biased), then scale and shift; eps as GPT-2.
    PyTorch's fused layer_norm, equal to the lectures' explicit LayerNorm (notebook 03, 3.2):
    tests/test_gpt_model.py::test_fused_layernorm_equals_the_lectures_layernorm."""

    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        check_features(x, self.scale.shape[0], "LayerNorm", dtype=self.scale.dtype)
        # (x - mean) / sqrt(var + eps) * scale + shift in one call, which keeps only its input
        # and each row's mean and 1 / std for the backward pass, not every intermediate tensor
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GELU, the tanh approximation that GPT-2 was trained with, by PyTorch's fused kernel;
    equal to the lectures' explicit GELU (notebook 03, 3.3):
    tests/test_gpt_model.py::test_fused_gelu_equals_the_lectures_gelu."""

    def forward(self, x):
        check_features(x, None, "GELU")
        # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) in one call, keeping only its input
        return torch.nn.functional.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Position-wise MLP: C -> 4C -> C with GELU, (B, T, C) in/out."""

    def __init__(self, cfg):
        super().__init__()
        self.emb_dim = cfg["emb_dim"]
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):
        check_features(x, self.emb_dim, "FeedForward", dtype=input_dtype(self.layers[0]))
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(norm(x)), then x + ff(norm(x)), each with dropout."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            num_heads=cfg["n_heads"], dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])
        self.emb_dim = cfg["emb_dim"]

    def forward(self, x):
        check_features(x, self.emb_dim, "TransformerBlock", dims=3)
        shortcut = x
        x = self.norm1(x)
        x = self.att(x)  # (B, T, C)
        x = self.drop_shortcut(x)
        x = x + shortcut

        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x)
        return x + shortcut


class GPTModel(nn.Module):
    """GPT-2: token + position embeddings, n_layers transformer blocks, final norm, output head;
    token ids (B, T) -> logits (B, T, V)."""

    CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers",
                   "drop_rate", "qkv_bias")

    def __init__(self, cfg):
        super().__init__()
        if not isinstance(cfg, dict):
            raise TypeError(f"GPTModel takes a config dict such as GPT_CONFIG_124M, not "
                            f"{shape_of(cfg)}")
        missing = [k for k in self.CONFIG_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"the model config lacks {missing}; it needs "
                             f"{list(self.CONFIG_KEYS)} (see GPT_CONFIG_124M)")
        for key in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            check_int(cfg[key], f"the config's {key!r}", minimum=1)
        check_fraction(cfg["drop_rate"], "the config's 'drop_rate'")
        if cfg["emb_dim"] % cfg["n_heads"]:
            raise ValueError(f"emb_dim {cfg['emb_dim']} is not divisible by "
                             f"n_heads {cfg['n_heads']}")
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        # (B, T) integer ids, T <= context length, ids in the vocabulary, on the model's device
        check_token_ids(in_idx, self.cfg["vocab_size"], self.cfg["context_length"],
                        self.pos_emb.weight.device)
        batch_size, seq_len = in_idx.shape
        tok_embeds = self.tok_emb(in_idx)  # (B, T, C)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))  # (T, C)
        x = self.drop_emb(tok_embeds + pos_embeds)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)  # (B, T, V)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """nn.Module's load_state_dict, which also takes a state dict saved by the lectures' code.
        Their attention keeps its causal mask as a buffer, `trf_blocks.N.att.mask`; ours builds
        the mask inside the attention kernel, so those entries (and only those) are checked and
        left out. Any other unexpected or missing key is still an error that names it, raised
        (with strict=True) before anything is copied, so the model is left as it was."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"load_state_dict takes a dict of tensors (a state_dict()), not "
                            f"{shape_of(state_dict)}")
        masks = {f"trf_blocks.{i}.att.mask" for i in range(len(self.trf_blocks))}
        for key in masks & set(state_dict):
            mask = state_dict[key]
            n = mask.shape[-1] if isinstance(mask, torch.Tensor) and mask.dim() else 0
            causal = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)  # True above diagonal
            if n == 0 or mask.shape != (n, n) or not torch.equal(mask.detach().cpu().bool(),
                                                                  causal):
                raise ValueError(f"{key} is not the lectures' causal mask (ones above the "
                                 "diagonal); this state dict is not from a GPTModel.")
        state_dict = {k: v for k, v in state_dict.items() if k not in masks}
        if strict:  # nn.Module's own check comes after it has copied what fits: check first
            check_state_dict_fits(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding: append the most likely next token `max_new_tokens` times; idx (B, T)."""
    check_token_ids(idx, what="the prompt")
    if idx.shape[1] == 0:
        raise ValueError("the prompt has no tokens; is its text empty?")
    check_int(max_new_tokens, "max_new_tokens", minimum=0)
    check_int(context_size, "context_size", minimum=1)
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # crop to the context the model supports
        with torch.no_grad():
            logits = model(idx_cond)
        logits = logits[:, -1, :]  # (B, T, V) -> (B, V): only the last position predicts
        idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


# ===== 04_pretraining.ipynb =====

def text_to_token_ids(text, tokenizer):
    """Text -> a (1, T) tensor of token ids."""
    check_text(text)
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded, dtype=torch.long).unsqueeze(0)  # add the batch dimension


def token_ids_to_text(token_ids, tokenizer):
    """A (1, T) or (T,) tensor of token ids -> text."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.dtype not in (torch.int64,
                                                                          torch.int32):
        raise TypeError(f"token_ids_to_text takes a tensor of integer token ids, not "
                        f"{shape_of(token_ids)}; for a list, use tokenizer.decode(ids).")
    if token_ids.dim() == 2 and token_ids.shape[0] == 1:
        token_ids = token_ids[0]  # remove the batch dimension: (1, T) -> (T,)
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids_to_text decodes one sequence, of shape (1, T) or (T,), not "
                         f"{tuple(token_ids.shape)}; decode a batch row by row.")
    n_vocab = getattr(tokenizer, "n_vocab", None) or len(getattr(tokenizer, "vocab", ()))
    bad = token_ids[(token_ids < 0) | (token_ids >= n_vocab)] if n_vocab else token_ids[:0]
    if len(bad):
        raise ValueError(f"token id {bad[0].item()} is not in the tokenizer's vocabulary "
                         f"(0 to {n_vocab - 1:,}); were the ids made by another tokenizer?")
    return tokenizer.decode(token_ids.tolist())


class FusedCrossEntropy(torch.autograd.Function):
    """torch.nn.functional.cross_entropy's mean loss over the targets that are not ignore_index,
    with its gradient with respect to the logits, (softmax - one-hot) / count, computed in the
    forward pass: that one (N, V) tensor is all the backward pass needs."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        keep = targets != ignore_index                  # (N,) the targets that count
        safe_targets = torch.where(keep, targets, 0).unsqueeze(1)  # (N, 1), any valid index
        row_max, argmax = logits.max(dim=-1, keepdim=True)         # (N, 1) each
        probs = torch.softmax(logits, dim=-1)           # (N, V), becomes the gradient below
        # log of the sum of exp(logits), stably: the most likely token's probability is at
        # least 1 / V, so its log never underflows, and log p = logit - log_sum_exp
        log_sum_exp = row_max - probs.gather(1, argmax).log()      # (N, 1)
        count = keep.sum()
        losses = (log_sum_exp - logits.gather(1, safe_targets)).squeeze(1)  # -log p(target)
        loss = (losses * keep).sum() / count            # NaN if every target is ignored
        probs.scatter_add_(1, safe_targets, torch.full_like(row_max, -1.0))  # minus one-hot
        weight = keep / count.clamp(min=1)              # (N,): 1 / count, 0 for ignored rows
        ctx.save_for_backward(probs.mul_(weight.unsqueeze(1)))  # the gradient, in place
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if grad_output.item() == 1.0:  # the usual loss.backward(): no copy needed
            return grad, None, None
        return grad * grad_output, None, None


def fused_cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy of logits (N, V) and targets (N,) as F.cross_entropy (targets equal to
    ignore_index do not count); when a gradient is needed, FusedCrossEntropy computes it."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor (N, V), not {shape_of(logits)}")
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be a tensor of integer token ids (N,), not "
                        f"{shape_of(targets)}")
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"fused_cross_entropy takes logits (N, V) and targets (N,), not "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}; flatten them first.")
    valid = (targets == ignore_index) | ((targets >= 0) & (targets < logits.shape[1]))
    if targets.device.type != "meta" and not bool(valid.all()):  # meta tensors have no values
        bad = targets[~valid][0].item()
        raise ValueError(f"target {bad} is not a token id in 0..{logits.shape[1] - 1} (nor "
                         f"ignore_index {ignore_index}); do the targets match the vocabulary?")
    if not (torch.is_grad_enabled() and logits.requires_grad):  # evaluation: no gradient
        return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index)
    return FusedCrossEntropy.apply(logits, targets, ignore_index)


def calc_loss_batch(input_batch, target_batch, model, device):
    """Mean cross-entropy of one (B, T) batch's next-token predictions (targets of -100, as
    notebook 07's padding, do not count), by fused_cross_entropy (section 4.8).

    Equals the lecture's version with F.cross_entropy (section 4.3): same loss, same gradient,
    same training curve (tests/test_pretraining.py, test_fused_cross_entropy_equals_torch_loss_
    and_gradient and test_training_with_the_fused_loss_and_fused_adamw_follows_the_plain_curve).
    """
    if not (isinstance(input_batch, torch.Tensor) and isinstance(target_batch, torch.Tensor)
            and input_batch.shape == target_batch.shape):
        raise ValueError(f"the inputs and targets of a batch must be tensors of one shape (B, T), "
                         f"not {shape_of(input_batch)} and {shape_of(target_batch)}")
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (B, T, V)
    return fused_cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Average loss over the first `num_batches` batches of a loader (all of them by default)."""
    check_loader(data_loader)
    if len(data_loader) == 0:
        raise ValueError("The data loader yields no batches, so there is no loss to average. "
                         "Is the text shorter than one batch of context-length windows?")
    if num_batches is not None:
        check_int(num_batches, "num_batches (or None for all)", minimum=1)
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Training and validation loss over `eval_iter` batches each, in eval mode, no gradients."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, device, start_context, max_new_tokens=50):
    """Print a greedy continuation of `start_context` (on one line)."""
    check_text(start_context, "start_context")
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        token_ids = generate_text_simple(model, encoded, max_new_tokens, context_size)
    print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "))
    model.train()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer):
    """Pretraining loop; returns (train_losses, val_losses, tokens_seen) at each evaluation.

    Evaluates every `eval_freq` steps on `eval_iter` batches, prints a sample after each epoch,
    and shows a progress bar over the steps.
    """
    from tqdm import tqdm  # text bar on stdout: reads the same live and in a saved notebook

    check_loader(train_loader, "train_loader")
    check_loader(val_loader, "val_loader")
    check_int(num_epochs, "num_epochs", minimum=0)
    check_int(eval_freq, "eval_freq", minimum=1)
    check_int(eval_iter, "eval_iter", minimum=1)
    check_text(start_context, "start_context")
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    with tqdm(total=num_epochs * len(train_loader), desc="training", unit="step",
              file=sys.stdout, mininterval=1.0) as bar:
        for epoch in range(num_epochs):
            model.train()
            for input_batch, target_batch in train_loader:
                optimizer.zero_grad()
                loss = calc_loss_batch(input_batch, target_batch, model, device)
                loss.backward()
                optimizer.step()
                tokens_seen += input_batch.numel()
                global_step += 1
                bar.update(1)
                if global_step % eval_freq == 0:
                    train_loss, val_loss = evaluate_model(
                        model, train_loader, val_loader, device, eval_iter)
                    train_losses.append(train_loss)
                    val_losses.append(val_loss)
                    track_tokens_seen.append(tokens_seen)
                    bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
                    bar.write(f"Ep {epoch + 1} (Step {global_step:06d}): "
                              f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
            with tqdm.external_write_mode(file=sys.stdout):  # a line of its own, not in the bar
                generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses):
    """Training and validation loss against epochs, with tokens seen on a second x-axis."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    check_curves(epochs_seen=epochs_seen, tokens_seen=tokens_seen, train_losses=train_losses,
                 val_losses=val_losses)

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()  # a second x-axis sharing the same y-axis
    ax2.plot(tokens_seen, train_losses, alpha=0)  # invisible: only aligns the ticks
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    return fig


def save_to_file(obj, path):
    """torch.save(obj, path), written whole or not at all: first to path + ".tmp", flushed to
    the disk, then renamed over `path`, so a crash or a full disk midway leaves the old file (if
    any) as it was. Returns the path."""
    import os

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; save to a file in it, e.g. {path / 'model.pth'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist; create it first "
                                "with Path(folder).mkdir(parents=True, exist_ok=True)")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on the disk before the name points at them
    except BaseException:  # a full disk, an interrupt: no half file left behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # atomic: the old file or the new one, never half of one
    return path


def load_from_file(path, device=None):
    """torch.load(path, map_location=device, weights_only=True), or an error that names the
    file: FileNotFoundError if it is missing, ValueError if it is cut short or not a file that
    torch.save wrote (weights_only: tensors and plain values only, never code). device=None
    puts each tensor on the device it was saved from, as torch.load does."""
    try:
        device = None if device is None else torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{device!r} is not a device; name one such as cpu, cuda or mps, or "
                         "pass a torch.device") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file). Did the cell that "
                                "saves it run, with the same out_dir?")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # zip errors, unpickling errors, ...: all mean "not usable"
        reason = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]  # 1st sentence
        raise ValueError(f"{path} could not be loaded ({type(e).__name__}: {reason}). Is it "
                         "cut short (by a crash, a full disk, an interrupted copy) or not a file "
                         "that torch.save wrote? Nothing was loaded: save or download it "
                         "again.") from None


def load_model_state(model, path, device=None):
    """Fill `model` with the state_dict saved at `path` (by save_to_file or torch.save), read
    onto `device` (None: the model's). The file is read and checked against the model first: if
    it is damaged or does not fit, the error names it and the model is left as it was."""
    if device is None:
        device = next(model.parameters()).device
    state = load_from_file(path, device)
    check_state_dict_fits(model, state, str(path))
    model.load_state_dict(state)
    return model


class KVCache:
    """Every block's keys and values of the tokens seen so far, pre-allocated as
    (B, H, capacity, D) tensors; `length` tokens are filled, the next token's position."""

    def __init__(self, model, batch_size, capacity):
        check_int(batch_size, "batch_size", minimum=1)
        check_int(capacity, "capacity (tokens)", minimum=1)
        cfg, weight = model.cfg, model.tok_emb.weight
        shape = (batch_size, cfg["n_heads"], capacity, cfg["emb_dim"] // cfg["n_heads"])
        self.keys = [weight.new_empty(shape) for _ in range(cfg["n_layers"])]
        self.values = [weight.new_empty(shape) for _ in range(cfg["n_layers"])]
        self.capacity = capacity
        self.length = 0

    def update(self, layer, keys, values):
        """Store the new tokens' (B, H, T, D) keys and values of block `layer`; return all
        keys and values so far, (B, H, length + T, D). `advance` then moves `length` on."""
        start, end = self.length, self.length + keys.shape[2]
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, num_tokens):
        """Count `num_tokens` more tokens as cached (after every block has stored them)."""
        self.length += num_tokens


def cached_attention(att, x, cache, layer):
    """MultiHeadAttention `att` for the new tokens x (B, T, C) only: their queries attend to
    the cached keys/values plus their own, causally; (B, T, C) out."""
    check_features(x, att.d_in, "cached_attention", dims=3, dtype=input_dtype(att.W_query))
    check_int(layer, "layer", minimum=0, maximum=len(cache.keys) - 1)
    b, num_tokens, _ = x.shape
    if b != cache.keys[layer].shape[0] or cache.length + num_tokens > cache.capacity:
        raise ValueError(f"x has {b} rows of {num_tokens} tokens but the cache holds "
                         f"{cache.keys[layer].shape[0]} sequences with room for "
                         f"{cache.capacity - cache.length} more tokens")
    # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
    queries, keys, values = (
        lin(x).view(b, num_tokens, att.num_heads, att.head_dim).transpose(1, 2)
        for lin in (att.W_query, att.W_key, att.W_value))
    keys, values = cache.update(layer, keys, values)  # (B, H, past + T, D)
    past = cache.length
    mask = None  # one new token sees every cached one: no mask
    if num_tokens > 1:  # new token j (at position past + j) sees keys 0 .. past + j
        mask = torch.ones(num_tokens, past + num_tokens, dtype=torch.bool,
                          device=x.device).tril(diagonal=past)
    context_vec = torch.nn.functional.scaled_dot_product_attention(
        queries, keys, values, attn_mask=mask,
        dropout_p=att.dropout_p if att.training else 0.0)  # (B, H, T, D)
    # (B, H, T, D) -> (B, T, H, D) -> (B, T, C)
    context_vec = context_vec.transpose(1, 2).reshape(b, num_tokens, att.d_out)
    return att.out_proj(context_vec)


def gpt_forward_cached(model, idx, cache):
    """GPTModel's forward for the new tokens idx (B, T) that follow the cache's: positions
    continue at cache.length; returns the last token's logits (B, V) and fills the cache."""
    check_token_ids(idx, model.cfg["vocab_size"], device=model.pos_emb.weight.device)
    if idx.shape[0] != cache.keys[0].shape[0]:
        raise ValueError(f"the cache holds {cache.keys[0].shape[0]} sequences but idx has "
                         f"{idx.shape[0]} rows; make a KVCache with batch_size={idx.shape[0]}")
    past, num_tokens = cache.length, idx.shape[1]
    if past + num_tokens > min(cache.capacity, model.cfg["context_length"]):
        raise ValueError(
            f"{past} cached + {num_tokens} new tokens exceed the cache's capacity "
            f"({cache.capacity}) or the model's context length ({model.cfg['context_length']}); "
            "start again with a new KVCache on the last tokens (generate does that).")
    positions = torch.arange(past, past + num_tokens, device=idx.device)  # continue counting
    x = model.drop_emb(model.tok_emb(idx) + model.pos_emb(positions))  # (B, T, C)
    for layer, block in enumerate(model.trf_blocks):
        # TransformerBlock.forward, spelled out because attention needs the cache as well
        x = x + block.drop_shortcut(cached_attention(block.att, block.norm1(x), cache, layer))
        x = x + block.drop_shortcut(block.ff(block.norm2(x)))
    cache.advance(num_tokens)
    return model.out_head(model.final_norm(x[:, -1, :]))  # only the last token predicts: (B, V)


def generate_stream(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None,
                    eos_id=None, use_cache=True):
    """`generate`, one token at a time: yields each new token as a (B, 1) tensor as soon as it
    is chosen (for a chat window that shows the answer while it is written).

    Same arguments, checks and tokens as `generate`, which is this generator collected; the
    checks run at the first next(). Each step runs under torch.inference_mode, the caller's code
    between two tokens does not.
    """
    check_token_ids(idx, model.cfg["vocab_size"], device=model.pos_emb.weight.device,
                    scan=True, what="the prompt")  # the prompt once, on every device
    if idx.shape[1] == 0:
        raise ValueError(f"generate needs a (batch, tokens) prompt with at least one token; "
                         f"got shape {tuple(idx.shape)}. Is the prompt text empty?")
    check_int(context_size, "context_size", minimum=1, maximum=model.cfg["context_length"])
    check_sampling(max_new_tokens, temperature, top_k)
    cache = KVCache(model, idx.shape[0], context_size) if use_cache else None
    for step in range(max_new_tokens):
        with torch.inference_mode():  # no_grad, and no version counting either: a little faster
            if not use_cache:
                logits = model(idx[:, -context_size:])[:, -1, :]  # (B, V)
            elif step == 0 or cache.length == context_size:  # first step, or the window is full
                cache.length = 0
                logits = gpt_forward_cached(model, idx[:, -context_size:], cache)
            else:
                logits = gpt_forward_cached(model, idx[:, -1:], cache)  # only the new token
            if top_k is not None:
                top_logits, top_pos = torch.topk(logits, min(top_k, logits.shape[-1]))
                logits = torch.full_like(logits, -torch.inf).scatter(-1, top_pos, top_logits)
            if temperature > 0.0:
                probs = torch.softmax(logits / temperature, dim=-1)
                try:
                    idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)
                except RuntimeError as e:  # probabilities that are NaN or inf
                    raise ValueError("the model's next-token scores are not finite numbers (NaN "
                                     "or inf): its weights have diverged, e.g. after training "
                                     "with too high a learning rate. Reload a good "
                                     "checkpoint.") from e
            else:
                idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
            if eos_id is not None and bool((idx_next == eos_id).all()):
                return
            idx = torch.cat((idx, idx_next), dim=1)
        yield idx_next


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             use_cache=True):
    """Decode with temperature scaling and top-k filtering; temperature 0 means greedy.

    idx (B, T) -> (B, T + n). Stops early when every sequence's next token is `eos_id`
    (which is not appended). The input is cropped to the last `context_size` tokens. With
    `use_cache` each step feeds only the new token through the model (a KVCache keeps the
    rest); once the window is full, each step recomputes the last `context_size` tokens, as
    use_cache=False always does. The rows of idx share one length: generate prompts of
    different lengths one at a time. The steps are `generate_stream`'s.

    With use_cache=False this is the lecture's generate (section 4.6); with the cache it gives
    the same tokens (tests/test_kv_cache.py, greedy and seeded sampling, tiny model and 124M).
    """
    new_tokens = list(generate_stream(model, idx, max_new_tokens, context_size, temperature,
                                      top_k, eos_id, use_cache))  # n tensors (B, 1)
    return torch.cat([idx, *new_tokens], dim=1)  # a normal tensor (outside inference mode)


# ===== 05_pretrained_weights.ipynb =====

def config_from_hparams(settings, drop_rate=0.0):
    """The course's model config for OpenAI's hparams.json `settings`; GPT-2 has qkv_bias=True."""
    keys = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
    if not isinstance(settings, dict) or not all(k in settings for k in keys):
        raise ValueError(f"settings must be GPT-2's hparams.json as a dict with {list(keys)}, not "
                         f"{shape_of(settings)}; download_and_load_gpt2 returns it.")
    for key in keys:
        check_int(settings[key], f"hparams {key!r}", minimum=1)
    check_fraction(drop_rate, "drop_rate")
    return {"vocab_size": settings["n_vocab"], "context_length": settings["n_ctx"],
            "emb_dim": settings["n_embd"], "n_heads": settings["n_head"],
            "n_layers": settings["n_layer"], "drop_rate": drop_rate, "qkv_bias": True}


def assign_(param, array, name):
    """Copy numpy `array` into tensor `param` in place; a shape mismatch names both shapes.
    A `param` on the meta device (a model built with no memory) takes the array's own memory
    instead (torch.utils.swap_tensors keeps the Parameter, and so weight tying): no copy."""
    value = torch.as_tensor(array)
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"{name}: the model has shape {tuple(param.shape)} but the checkpoint "
                         f"gives {tuple(value.shape)}. Does the model config match the weights?")
    if param.is_meta:  # a memory-mapped array stays mapped: its pages load when first read
        new = torch.nn.Parameter(value.to(param.dtype), requires_grad=param.requires_grad)
        torch.utils.swap_tensors(param, new)
        return
    with torch.no_grad():
        param.copy_(value)


def load_weights_into_gpt(gpt, params):
    """Copy OpenAI's GPT-2 weights (gpt_download3's params dict) into our GPTModel, in place.

    OpenAI's name              -> ours
    wte, wpe                   -> tok_emb, pos_emb
    h{i}/attn/c_attn (w, b)    -> trf_blocks[i].att.W_query | W_key | W_value (split in three, w.T)
    h{i}/attn/c_proj (w, b)    -> trf_blocks[i].att.out_proj (w.T)
    h{i}/mlp/c_fc, c_proj      -> trf_blocks[i].ff.layers[0], ff.layers[2] (w.T)
    h{i}/ln_1, ln_2 (g, b)     -> trf_blocks[i].norm1, norm2 (scale, shift)
    g, b (ln_f)                -> final_norm (scale, shift)
    (no head in the checkpoint)-> out_head shares tok_emb's weight, as in GPT-2
    TensorFlow's Conv1D keeps weights as (in, out); nn.Linear as (out, in): hence the .T.
    The lecture's mapping, with its `assign` and `np.split` as an in-place, shape-checked copy
    and `.chunk`; tests/test_load_weights.py::test_openai_route_gives_hugging_faces_logits.
    """
    check_gpt2_params(params)
    if len(params["blocks"]) != len(gpt.trf_blocks):
        raise ValueError(f"the checkpoint has {len(params['blocks'])} transformer blocks but the "
                         f"model has {len(gpt.trf_blocks)}; build the model with the matching "
                         "config (n_layers).")
    if gpt.trf_blocks[0].att.W_query.bias is None:
        raise ValueError("GPT-2 has biases in its query/key/value projections: build the model "
                         "with qkv_bias=True.")
    check_gpt2_params(params, gpt)  # every shape, before anything is copied
    # Weight tying first: the head's own initial weights are freed before anything is copied.
    gpt.out_head.weight = gpt.tok_emb.weight  # GPT-2 has no separate head
    assign_(gpt.pos_emb.weight, params["wpe"], "pos_emb.weight (wpe)")
    assign_(gpt.tok_emb.weight, params["wte"], "tok_emb.weight (wte)")
    for i, (block, p) in enumerate(zip(gpt.trf_blocks, params["blocks"])):
        att, name = block.att, f"trf_blocks[{i}]"
        q_w, k_w, v_w = torch.as_tensor(p["attn"]["c_attn"]["w"]).chunk(3, dim=-1)  # (C, 3C)
        q_b, k_b, v_b = torch.as_tensor(p["attn"]["c_attn"]["b"]).chunk(3, dim=-1)
        for lin, w, b, part in [(att.W_query, q_w, q_b, "W_query"), (att.W_key, k_w, k_b, "W_key"),
                                (att.W_value, v_w, v_b, "W_value")]:
            assign_(lin.weight, w.T, f"{name}.att.{part}.weight (c_attn/w)")
            assign_(lin.bias, b, f"{name}.att.{part}.bias (c_attn/b)")
        for lin, src, label in [(att.out_proj, p["attn"]["c_proj"], "att.out_proj (attn/c_proj)"),
                                (block.ff.layers[0], p["mlp"]["c_fc"], "ff.layers[0] (mlp/c_fc)"),
                                (block.ff.layers[2], p["mlp"]["c_proj"],
                                 "ff.layers[2] (mlp/c_proj)")]:
            assign_(lin.weight, torch.as_tensor(src["w"]).T, f"{name}.{label}.weight")
            assign_(lin.bias, src["b"], f"{name}.{label}.bias")
        for norm, src, label in [(block.norm1, p["ln_1"], "norm1 (ln_1)"),
                                 (block.norm2, p["ln_2"], "norm2 (ln_2)")]:
            assign_(norm.scale, src["g"], f"{name}.{label}.scale")
            assign_(norm.shift, src["b"], f"{name}.{label}.shift")
    assign_(gpt.final_norm.scale, params["g"], "final_norm.scale (ln_f/g)")
    assign_(gpt.final_norm.shift, params["b"], "final_norm.shift (ln_f/b)")
    return gpt


# The GPT-2 names on the Hugging Face hub, and the repositories that hold them.
HF_GPT2_MODELS = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
                  "gpt2-large": "openai-community/gpt2-large",
                  "gpt2-xl": "openai-community/gpt2-xl"}

# Hugging Face's GPT-2 parameter names -> ours. Two or three names: the tensor is split in equal
# parts along its last dimension (query, key, value). Conv1D weights (attn.*, mlp.*) are stored
# as (in, out) and get transposed. attn.bias / attn.masked_bias are causal-mask buffers, not
# parameters; lm_head.weight is the token embedding again (weight tying).
HF_GPT2_NAMES = {
    "wte.weight": ["tok_emb.weight"], "wpe.weight": ["pos_emb.weight"],
    "h.{i}.ln_1.weight": ["trf_blocks.{i}.norm1.scale"],
    "h.{i}.ln_1.bias": ["trf_blocks.{i}.norm1.shift"],
    "h.{i}.attn.c_attn.weight": ["trf_blocks.{i}.att.W_query.weight",
                                 "trf_blocks.{i}.att.W_key.weight",
                                 "trf_blocks.{i}.att.W_value.weight"],
    "h.{i}.attn.c_attn.bias": ["trf_blocks.{i}.att.W_query.bias", "trf_blocks.{i}.att.W_key.bias",
                               "trf_blocks.{i}.att.W_value.bias"],
    "h.{i}.attn.c_proj.weight": ["trf_blocks.{i}.att.out_proj.weight"],
    "h.{i}.attn.c_proj.bias": ["trf_blocks.{i}.att.out_proj.bias"],
    "h.{i}.ln_2.weight": ["trf_blocks.{i}.norm2.scale"],
    "h.{i}.ln_2.bias": ["trf_blocks.{i}.norm2.shift"],
    "h.{i}.mlp.c_fc.weight": ["trf_blocks.{i}.ff.layers.0.weight"],
    "h.{i}.mlp.c_fc.bias": ["trf_blocks.{i}.ff.layers.0.bias"],
    "h.{i}.mlp.c_proj.weight": ["trf_blocks.{i}.ff.layers.2.weight"],
    "h.{i}.mlp.c_proj.bias": ["trf_blocks.{i}.ff.layers.2.bias"],
    "ln_f.weight": ["final_norm.scale"], "ln_f.bias": ["final_norm.shift"],
}


def gpt_from_pretrained(name_or_path, model_class=None, mmap=False):
    """A GPTModel holding a Hugging Face GPT-2: a hub name (HF_GPT2_MODELS) or a local folder
    with config.json and model.safetensors. Needs huggingface_hub (hub) and safetensors.
    Fills the same model as load_weights_into_gpt (the lecture's route, for OpenAI's files):
    tests/test_load_weights.py::test_both_routes_fill_the_same_model. mmap=True builds the model
    on the meta device and keeps the weights memory-mapped from the file (assign_): no second
    copy in memory (tests/test_low_precision.py measures the peak)."""
    import contextlib
    import json
    import re
    import warnings
    from pathlib import Path

    from safetensors import safe_open

    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"gpt_from_pretrained takes a GPT-2 name ({', '.join(HF_GPT2_MODELS)}) "
                        f"or a folder, not {shape_of(name_or_path)}")
    hub_names = {**HF_GPT2_MODELS, **{repo: repo for repo in HF_GPT2_MODELS.values()}}
    on_hub = isinstance(name_or_path, str) and name_or_path in hub_names
    if on_hub:  # a known name always means the hub, even where a folder of that name exists
        repo = hub_names[name_or_path]
        if Path(name_or_path).exists():
            warnings.warn(f"{name_or_path!r} means the hub model {repo}; the local folder of that "
                          f"name is not used. To load the folder, pass './{name_or_path}'.",
                          stacklevel=2)

        def fetch(filename):
            from huggingface_hub import hf_hub_download

            try:
                return Path(hf_hub_download(repo, filename))
            except Exception as e:  # offline, no access, ...: say what to do
                raise OSError(f"Could not get {repo} from the Hugging Face hub "
                              f"({type(e).__name__}: {e}). Check the network, or download it "
                              "once and pass its folder.") from e

        config_path = fetch("config.json")
    else:
        folder = Path(name_or_path)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{name_or_path!r} is neither a GPT-2 name on the hub "
                                    f"({', '.join(HF_GPT2_MODELS)}) nor a folder holding a "
                                    "Hugging Face checkpoint (config.json, model.safetensors).")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path} is not a readable JSON file ({e}); save or download the "
                         "model again.") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{config_path} holds a {type(hf).__name__}, not a model config")
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{name_or_path!r} is a {hf.get('model_type')!r} model, not GPT-2.")
    for key in ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer"):
        if key not in hf:
            raise ValueError(f"{config_path} has no {key!r}; it is not a complete GPT-2 config.")
        check_int(hf[key], f"{config_path.name}'s {key!r}", minimum=1)
    c = hf["n_embd"]
    same = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "n_inner": 4 * c,
            "scale_attn_by_inverse_layer_idx": False}  # what our GPTModel computes
    other = {k: hf[k] for k, v in same.items() if hf.get(k, v) not in (v, None)}
    if other:
        raise ValueError(f"{name_or_path!r} differs from GPT-2 as our GPTModel builds it: {other}")
    if on_hub:
        weight_paths = [fetch("model.safetensors")]
    else:
        index = folder / "model.safetensors.index.json"
        try:
            shards = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
                      if index.is_file() else ["model.safetensors"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
                AttributeError) as e:
            raise ValueError(f"{index} is not a safetensors index (a JSON object with a "
                             f"weight_map): {type(e).__name__}: {e}") from None
        weight_paths = [folder / s for s in shards]
        if not all(p.is_file() for p in weight_paths):
            raise FileNotFoundError(f"{folder} has no model.safetensors; save the model with "
                                    "save_pretrained(folder) (safetensors is its default).")
    cfg = {"vocab_size": hf["vocab_size"], "context_length": hf["n_positions"], "emb_dim": c,
           "n_heads": hf["n_head"], "n_layers": hf["n_layer"], "drop_rate": 0.0, "qkv_bias": True}
    tied = hf.get("tie_word_embeddings", True)  # false: lm_head.weight is a matrix of its own
    shapes = {}  # the file's own shapes, read from its header, checked before building the model
    for path in weight_paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes.update({k.removeprefix("transformer."): f.get_slice(k).get_shape()
                               for k in f.keys()})
        except Exception as e:  # safetensors' own error type: a damaged or foreign file
            raise ValueError(f"{path} is not a readable safetensors file ({e}); save or "
                             "download the model again.") from None
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"h\.(\d+)\.", k))}
    expected = {"wte.weight": [cfg["vocab_size"], c], "wpe.weight": [cfg["context_length"], c]}
    found = {k: shapes.get(k) for k in expected}
    if found != expected or blocks != set(range(cfg["n_layers"])):
        raise ValueError(f"{config_path.name} and the weights disagree: the config gives "
                         f"{cfg['n_layers']} blocks and {expected}, the weights {len(blocks)} "
                         f"blocks and {found}. Are they from the same model?")
    with torch.device("meta") if mmap else contextlib.nullcontext():
        gpt = (model_class or GPTModel)(cfg)
    if tied:
        gpt.out_head.weight = gpt.tok_emb.weight  # weight tying, before anything is copied
    ours, filled, head = dict(gpt.named_parameters()), set(), None
    for path in weight_paths:
        with safe_open(str(path), framework="pt") as f:  # readable: its header was read above
            for key in f.keys():
                short = key.removeprefix("transformer.")
                if short.endswith((".attn.bias", ".attn.masked_bias")):
                    continue  # the causal mask, a buffer: ours is built by MultiHeadAttention
                if short == "lm_head.weight":
                    head = f.get_tensor(key)
                    continue
                m = re.fullmatch(r"h\.(\d+)\.(.+)", short)
                pattern = f"h.{{i}}.{m.group(2)}" if m else short
                if pattern not in HF_GPT2_NAMES:
                    raise ValueError(f"{key} in {Path(path).name} has no place in GPTModel.")
                targets = [t.format(i=m.group(1) if m else "") for t in HF_GPT2_NAMES[pattern]]
                tensor = f.get_tensor(key)
                for target, part in zip(targets, tensor.chunk(len(targets), dim=-1)):
                    if target not in ours or target in filled:
                        raise ValueError(f"{key} -> {target}: not a parameter of this model, "
                                         "or filled twice.")
                    conv1d = short.endswith(".weight") and (".attn." in short or ".mlp." in short)
                    assign_(ours[target], part.T if conv1d else part, f"{target} ({key})")
                    filled.add(target)
    if not tied and head is not None:
        assign_(ours["out_head.weight"], head, "out_head.weight (lm_head.weight)")
        filled.add("out_head.weight")
    if set(ours) != filled:
        unset = sorted(set(ours) - filled)
        raise ValueError(f"the checkpoint left these parameters unset: {unset}")
    if tied and head is not None and not torch.equal(head.to(gpt.tok_emb.weight.dtype),
                                            gpt.tok_emb.weight.detach()):
        raise ValueError("this checkpoint's lm_head differs from its token embedding; GPT-2 ties "
                         "them, and so does our GPTModel.")
    return gpt.eval()


# GPTModel was built in notebook 03, before there were weights to load. Notebook 05 adds the
# Hugging Face route to it here, so that GPTModel.from_pretrained("gpt2") works as in nanoGPT.
GPTModel.from_pretrained = classmethod(
    lambda cls, name_or_path, mmap=False: gpt_from_pretrained(name_or_path, cls, mmap))


# ===== 06_classification_finetuning.ipynb =====

def read_sms_spam(path):
    """The SMS Spam Collection as a DataFrame with columns Label, Text: one row per line.

    quoting=csv.QUOTE_NONE because a message may start with an unmatched `"`; keep_default_na
    off so that no message (say "NA") is read as a missing value. Every line is checked first:
    UTF-8, `ham` or `spam`, one tab, then the message; a line that is not raises ValueError
    with its number (a header line too: the file has none). Empty lines are skipped.
    """
    import csv
    import io

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file); "
                                "course_data.fetch_data('SMSSpamCollection') downloads it.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path.name}, line {line}: byte {raw[e.start]:#04x} is not UTF-8 "
                         "text; save the file as UTF-8 (or download it again).") from None
    problems, rows = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")  # Windows line ends
        label, tab, message = line.partition("\t")
        if not line:
            continue
        rows.append([label, message])
        if "\r" in line:
            problems.append(f"line {number} holds a carriage return (\\r) inside its message")
        elif not tab or "\t" in message:
            tabs = line.count("\t")
            problems.append(f"line {number} has {tabs} tabs, not one: {line[:40]!r}")
        elif label not in ("ham", "spam"):
            header = " (a header? the file has none: remove it)" if number == 1 else ""
            problems.append(f"line {number} has the label {label[:20]!r}, not ham or spam{header}")
    if problems:
        more = f" (and {len(problems) - 3} more lines)" if len(problems) > 3 else ""
        raise ValueError(f"{path.name} is not in the SMS Spam Collection's format, one "
                         f"'ham|spam<TAB>message' per line: {'; '.join(problems[:3])}{more}.")
    df = pd.read_csv(io.StringIO(text), sep="\t", header=None, names=["Label", "Text"],
                     dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
    if df.values.tolist() != rows:  # pandas read a line otherwise than `label<TAB>message`
        raise ValueError(f"{path.name}: pandas did not read it one row per line "
                         f"({len(df)} rows, {len(rows)} lines); check for unusual characters.")
    return df


def create_balanced_dataset(df, seed=123):
    """Keep every "spam" row and an equal number of "ham" rows, drawn at random (fixed seed)."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame) or "Label" not in df.columns:
        raise ValueError(f"create_balanced_dataset takes a DataFrame with a Label column "
                         f"(read_sms_spam's), not {shape_of(df)}")
    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"]
    if len(ham) < len(spam):
        raise ValueError(f"there are fewer ham ({len(ham)}) than spam ({len(spam)}) messages; "
                         "undersampling ham cannot balance them")
    if len(spam) == 0:
        raise ValueError("there are no spam messages (no row with the label 'spam') to balance")
    ham_subset = ham.sample(len(spam), random_state=seed)
    return pd.concat([ham_subset, spam], ignore_index=True)


def random_split(df, train_frac, validation_frac, seed=123):
    """Shuffle the rows (fixed seed) and cut them into train, validation and test (the rest)."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"random_split takes a DataFrame, not {shape_of(df)}")
    check_fraction(train_frac, "train_frac")
    check_fraction(validation_frac, "validation_frac")
    if train_frac + validation_frac > 1:
        raise ValueError(f"train_frac ({train_frac}) and validation_frac ({validation_frac}) "
                         "must be non-negative and sum to at most 1")
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    return df[:train_end], df[train_end:validation_end], df[validation_end:]


class SpamDataset(Dataset):
    """(token ids (T,), label) pairs from a CSV with columns Text and Label (0 ham, 1 spam).

    Every text is cut to `max_length` tokens, or (None) to the longest text's length, and padded
    to that length with `pad_token_id`; a length beyond `context_length` is an error.
    """

    def __init__(self, csv_file, tokenizer, max_length=None, pad_token_id=50256,
                 context_length=1024):
        from pathlib import Path

        import pandas as pd

        name = Path(csv_file).name  # for messages
        if not Path(csv_file).is_file():
            raise FileNotFoundError(f"{csv_file} does not exist; save the split first "
                                    "(train_df.to_csv(path, index=None), section 6.2).")
        try:
            self.data = pd.read_csv(csv_file, dtype={"Text": str}, keep_default_na=False)
        except (ValueError, UnicodeDecodeError) as e:  # pandas' parser errors are ValueErrors
            raise ValueError(f"{name} is not a readable CSV file ({type(e).__name__}: "
                             f"{str(e).strip()[:160]}); write it with DataFrame.to_csv.") from None
        missing = sorted({"Text", "Label"} - set(self.data.columns))
        if missing:
            raise ValueError(f"{name} lacks the column(s) {missing}; SpamDataset needs a "
                             "Text and a Label column")
        if len(self.data) == 0:
            raise ValueError(f"{name} holds no messages")
        if not pd.api.types.is_integer_dtype(self.data["Label"]):
            raise ValueError(f"the labels in {name} must be integers (0 = ham, 1 = spam), "
                             f"not {self.data['Label'].iloc[0]!r}: map them before saving")
        if (self.data["Label"] < 0).any():
            raise ValueError(f"the labels in {name} must be class numbers 0, 1, ..., not "
                             f"{self.data['Label'].min()}")
        if max_length is not None:
            check_int(max_length, "max_length")  # its range: below
        check_int(pad_token_id, "pad_token_id", minimum=0)
        # disallowed_special=(): a message that contains "<|endoftext|>" is ordinary text here
        self.encoded_texts = [tokenizer.encode(text, disallowed_special=())
                              for text in self.data["Text"]]
        longest = max(len(ids) for ids in self.encoded_texts)
        if max_length is None:
            if longest > context_length:
                raise ValueError(
                    f"the longest text in {name} has {longest} tokens, more than the model's "
                    f"context length of {context_length}: pass max_length={context_length} (or "
                    "less) to cut the texts")
            max_length = longest
        if not 1 <= max_length <= context_length:
            raise ValueError(f"max_length must be between 1 and the context length "
                             f"{context_length}, not {max_length} (are all texts empty?)")
        self.max_length = max_length
        padded = []
        for ids in self.encoded_texts:
            ids = ids[:max_length]  # cut
            padded.append(ids + [pad_token_id] * (max_length - len(ids)))  # pad
        self.encoded_texts = padded
        self.labels = self.data["Label"].tolist()

    def __getitem__(self, index):
        return torch.tensor(self.encoded_texts[index]), torch.tensor(self.labels[index])

    def __len__(self):
        return len(self.data)


def add_classification_head(model, num_classes=2, num_trainable_blocks=1):
    """Freeze `model`, replace out_head by a new nn.Linear(C, num_classes) and make the last
    `num_trainable_blocks` transformer blocks and final_norm trainable again; in place."""
    if not isinstance(model, GPTModel):
        raise TypeError(f"add_classification_head takes a GPTModel, not {shape_of(model)}")
    check_int(num_classes, "num_classes", minimum=2)
    check_int(num_trainable_blocks, "num_trainable_blocks", minimum=0)
    if not 0 <= num_trainable_blocks <= len(model.trf_blocks):
        raise ValueError(f"num_trainable_blocks must be between 0 and the model's "
                         f"{len(model.trf_blocks)} blocks, not {num_trainable_blocks}")
    for param in model.parameters():
        param.requires_grad = False
    # a new layer is trainable; it also ends out_head's weight sharing with tok_emb
    model.out_head = nn.Linear(model.out_head.in_features, num_classes)
    trainable = [model.final_norm]
    if num_trainable_blocks:
        trainable += list(model.trf_blocks[-num_trainable_blocks:])
    for module in trainable:
        for param in module.parameters():
            param.requires_grad = True
    return model


def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    """Share of examples whose last-token class is the label, over the first `num_batches`."""
    check_loader(data_loader)
    if len(data_loader) == 0:
        return float("nan")
    if num_batches is not None:
        check_int(num_batches, "num_batches (or None for all)", minimum=1)
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
        with torch.no_grad():
            logits = model(input_batch)[:, -1, :]  # (B, T, 2) -> (B, 2): the last token only
        predicted = torch.argmax(logits, dim=-1)  # (B,)
        correct += (predicted == target_batch).sum().item()
        total += predicted.shape[0]
    model.train(was_training)
    return correct / total


def calc_loss_batch_classifier(input_batch, target_batch, model, device):
    """Cross-entropy of the last token's class logits for a (B, T) batch and its (B,) labels."""
    check_token_ids(input_batch, what="the inputs")
    if not isinstance(target_batch, torch.Tensor) or target_batch.dtype != torch.long or (
            target_batch.shape != input_batch.shape[:1]):
        raise ValueError(f"the labels must be a long tensor of shape ({len(input_batch)},), one "
                         f"class number per input row, not {shape_of(target_batch)}")
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)[:, -1, :]  # (B, T, 2) -> (B, 2)
    if not bool(((target_batch >= 0) & (target_batch < logits.shape[-1])).all()):
        raise ValueError(f"the labels {target_batch.tolist()} are not all classes of this "
                         f"model's {logits.shape[-1]} outputs (0 to {logits.shape[-1] - 1}); did "
                         "add_classification_head get the right num_classes?")
    return torch.nn.functional.cross_entropy(logits, target_batch)


def calc_loss_loader_classifier(data_loader, model, device, num_batches=None):
    """Average classification loss over the first `num_batches` batches (all by default)."""
    check_loader(data_loader)
    if len(data_loader) == 0:
        return float("nan")
    if num_batches is not None:
        check_int(num_batches, "num_batches (or None for all)", minimum=1)
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch_classifier(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def evaluate_model_classifier(model, train_loader, val_loader, device, eval_iter):
    """Training and validation classification loss over `eval_iter` batches each, no gradients."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader_classifier(train_loader, model, device, eval_iter)
        val_loss = calc_loss_loader_classifier(val_loader, model, device, eval_iter)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                            eval_freq, eval_iter):
    """Fine-tuning loop; returns (train_losses, val_losses, train_accs, val_accs, examples_seen).

    Losses every `eval_freq` steps on `eval_iter` batches; accuracies after each epoch on
    `eval_iter` batches; a progress bar over the steps.
    """
    from tqdm import tqdm  # text bar on stdout: reads the same live and in a saved notebook

    check_loader(train_loader, "train_loader")
    check_loader(val_loader, "val_loader")
    check_int(num_epochs, "num_epochs", minimum=0)
    check_int(eval_freq, "eval_freq", minimum=1)
    check_int(eval_iter, "eval_iter", minimum=1)
    if len(train_loader) == 0:
        raise ValueError("the training loader yields no batches: is the training set smaller "
                         "than one batch (with drop_last=True)?")
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1
    with tqdm(total=num_epochs * len(train_loader), desc="fine-tuning", unit="step",
              file=sys.stdout, mininterval=1.0) as bar:
        for epoch in range(num_epochs):
            model.train()
            for input_batch, target_batch in train_loader:
                optimizer.zero_grad()
                loss = calc_loss_batch_classifier(input_batch, target_batch, model, device)
                loss.backward()
                optimizer.step()
                examples_seen += input_batch.shape[0]
                global_step += 1
                bar.update(1)
                if global_step % eval_freq == 0:
                    train_loss, val_loss = evaluate_model_classifier(
                        model, train_loader, val_loader, device, eval_iter)
                    train_losses.append(train_loss)
                    val_losses.append(val_loss)
                    bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            train_acc = calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter)
            val_acc = calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter)
            train_accs.append(train_acc)
            val_accs.append(val_acc)
            bar.write(f"Epoch {epoch + 1}: train loss {train_losses[-1]:.3f}, "
                      f"val loss {val_losses[-1]:.3f}; accuracy train {train_acc:.1%}, "
                      f"val {val_acc:.1%}")
    return train_losses, val_losses, train_accs, val_accs, examples_seen


def plot_values(epochs_seen, examples_seen, train_values, val_values, label="loss"):
    """Training and validation `label` against epochs, examples seen on a second x-axis."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    check_curves(epochs_seen=epochs_seen, examples_seen=examples_seen, train_values=train_values,
                 val_values=val_values)
    check_text(label, "label")

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, label=f"Training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()  # a second x-axis sharing the same y-axis
    ax2.plot(examples_seen, train_values, alpha=0)  # invisible: only aligns the ticks
    ax2.set_xlabel("Examples seen")
    fig.tight_layout()
    return fig


def classifier_logits(text, model, tokenizer, device, max_length=None, pad_token_id=50256):
    """The classifier's logits (num_classes,) for one text, read at its last token; the text is
    cut to `max_length` (at most the context length) and padded to it like the training data."""
    if not isinstance(text, str):
        raise TypeError(f"the classifier needs a text (str), not {type(text).__name__}")
    context_length = model.pos_emb.weight.shape[0]
    if max_length is not None:
        check_int(max_length, "max_length", minimum=1)
    length = context_length if max_length is None else min(max_length, context_length)
    input_ids = tokenizer.encode(text, disallowed_special=())[:length]
    if not input_ids:
        raise ValueError("the text is empty: there is nothing to classify")
    if max_length is not None:
        input_ids += [pad_token_id] * (length - len(input_ids))
    input_tensor = torch.tensor(input_ids, device=device).unsqueeze(0)  # (T,) -> (1, T)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_tensor)[:, -1, :]  # (1, T, 2) -> (1, 2)
    model.train(was_training)
    return logits[0]  # (1, 2) -> (2,)


def classify_review(text, model, tokenizer, device, max_length=None, pad_token_id=50256):
    """Classify one text as "spam" or "not spam" by its last token's output (classifier_logits:
    cut to `max_length`, at most the context length, and padded like the training data)."""
    logits = classifier_logits(text, model, tokenizer, device, max_length, pad_token_id)
    return "spam" if torch.argmax(logits).item() == 1 else "not spam"


# ===== 07_instruction_finetuning.ipynb =====

def validate_instruction_data(data):
    """Check that `data` is a list of {instruction, input, output} string entries; return it.

    Raises ValueError naming the index of each malformed entry ("entry 17: ...").
    """
    if not isinstance(data, list):
        raise ValueError(f"the instruction data must be a list of entries, "
                         f"not a {type(data).__name__}")
    problems = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            problems.append(f"entry {i}: should be a dict, not {type(entry).__name__}")
            continue
        for key in ("instruction", "input", "output"):
            if key not in entry:
                problems.append(f"entry {i}: the key {key!r} is missing")
            elif not isinstance(entry[key], str):
                problems.append(f"entry {i}: {key!r} should be a str, not "
                                f"{type(entry[key]).__name__}")
        if isinstance(entry.get("instruction"), str) and not entry["instruction"].strip():
            problems.append(f"entry {i}: 'instruction' is empty")
    if problems:
        more = f" (and {len(problems) - 5} more problems)" if len(problems) > 5 else ""
        raise ValueError("; ".join(problems[:5]) + more + ". Every entry needs the keys "
                         "'instruction', 'input' (may be empty) and 'output', all strings.")
    return data


def load_instruction_data(path):
    """The entries of an instruction data file, a JSON list of {instruction, input, output},
    checked by validate_instruction_data; an error names the file (and a JSON error its line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file); "
                                "course_data.fetch_data('instruction-data.json') downloads it.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path.name} is not UTF-8 text; save it as UTF-8.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name}, line {e.lineno}, column {e.colno}: not valid JSON "
                         f"({e.msg}).") from None
    try:
        return validate_instruction_data(data)
    except ValueError as e:
        raise ValueError(f"{path.name}: {e}") from None


def format_input(entry):
    """The Alpaca-style prompt of one entry (with an '### Input:' section only if input is set)."""
    if not isinstance(entry, dict):
        raise TypeError(f"format_input takes one entry, a dict with 'instruction' and 'input', "
                        f"not {shape_of(entry)}")
    for key in ("instruction", "input"):
        if key not in entry:
            raise ValueError(f"the entry has no {key!r} (its keys: {sorted(entry)[:5]}); every "
                             "entry needs 'instruction' and 'input' ('' when there is none).")
        check_text(entry[key], f"the entry's {key!r}")
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


def split_instruction_data(data, train_frac=0.85, test_frac=0.10):
    """(train, val, test) slices of `data` in file order: 85% / 5% / 10% by default."""
    if not isinstance(data, list):
        raise TypeError(f"split_instruction_data takes the list of entries, not {shape_of(data)}")
    check_fraction(train_frac, "train_frac")
    check_fraction(test_frac, "test_frac")
    if train_frac + test_frac > 1:
        raise ValueError(f"train_frac ({train_frac}) and test_frac ({test_frac}) sum to more "
                         "than 1")
    train_end = int(len(data) * train_frac)
    test_end = train_end + int(len(data) * test_frac)
    train_data, test_data, val_data = data[:train_end], data[train_end:test_end], data[test_end:]
    return train_data, val_data, test_data


class InstructionDataset(Dataset):
    """The entries tokenised once, each as format_input(entry) + the response section."""

    def __init__(self, data, tokenizer):
        self.data = validate_instruction_data(data)
        self.encoded_texts = []
        for entry in data:
            full_text = format_input(entry) + f"\n\n### Response:\n{entry['output']}"
            self.encoded_texts.append(tokenizer.encode(full_text))

    def __getitem__(self, index):
        return self.encoded_texts[index]

    def __len__(self):
        return len(self.data)


def custom_collate_fn(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None,
                      device="cpu"):
    """Lists of token ids -> (inputs, targets), each (B, T), padded with `pad_token_id`.

    Every sequence gets one end-of-text token; targets are inputs shifted by one, and every
    target after that first end-of-text token becomes `ignore_index`. Optional truncation.
    Equals the lecture's version (section 7.2) when no text holds an inner 50256; tested by
    tests/test_instruction.py::test_matches_the_lecture_rule_on_random_batches.
    """
    if not isinstance(batch, (list, tuple)) or not all(isinstance(item, (list, tuple))
                                                       for item in batch):
        raise TypeError(f"custom_collate_fn takes a list of token-id lists (what "
                        f"InstructionDataset gives), not {shape_of(batch)}")
    if len(batch) == 0 or any(len(item) == 0 for item in batch):
        raise ValueError("custom_collate_fn needs a non-empty batch of non-empty token lists")
    bad = next((i for item in batch for i in item
                if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < 2**63), None)
    if bad is not None:
        kind = TypeError if not isinstance(bad, int) or isinstance(bad, bool) else ValueError
        raise kind(f"custom_collate_fn takes lists of token ids, ints from 0 up; one is "
                   f"{shape_of(bad)}")
    if allowed_max_length is not None:
        check_int(allowed_max_length, "allowed_max_length", minimum=1)
    batch_max_length = max(len(item) + 1 for item in batch)  # room for one end-of-text token
    inputs_lst, targets_lst = [], []
    for item in batch:
        item = list(item)
        padded = item + [pad_token_id] * (batch_max_length - len(item))
        inputs = torch.tensor(padded[:-1])
        targets = torch.tensor(padded[1:])  # the next token at each position
        # the sequence ends at its first appended end-of-text token, or at its own if it has one
        end = len(item) - 1 if item[-1] == pad_token_id else len(item)
        targets[end:] = ignore_index  # targets[end - 1] is that end-of-text token: kept
        if allowed_max_length is not None:
            inputs, targets = inputs[:allowed_max_length], targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    inputs_tensor = torch.stack(inputs_lst).to(device)  # (B, T)
    targets_tensor = torch.stack(targets_lst).to(device)  # (B, T)
    return inputs_tensor, targets_tensor


def extract_response(generated_text, prompt):
    """The model's answer in `generated_text`: what follows `prompt` and the '### Response:' tag."""
    check_text(generated_text, "generated_text")
    check_text(prompt, "prompt")
    if generated_text.startswith(prompt):
        generated_text = generated_text[len(prompt):]
    return generated_text.split("### Response:", 1)[-1].strip()


def rouge_l_f1(candidate, reference):
    """ROUGE-L F1 of two texts: their longest common subsequence of lower-cased words."""
    import re

    check_text(candidate, "candidate")
    check_text(reference, "reference")
    cand = re.findall(r"[a-z0-9]+", candidate.lower())
    ref = re.findall(r"[a-z0-9]+", reference.lower())
    if not cand or not ref:
        return 0.0
    prev = [0] * (len(ref) + 1)  # LCS lengths of cand[:i] with every prefix of ref
    for word in cand:
        row = [0]
        for j, ref_word in enumerate(ref):
            row.append(prev[j] + 1 if word == ref_word else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def ollama_base_url(host):
    """Ollama's base URL from a host written as OLLAMA_HOST allows: "http://localhost:11434",
    "127.0.0.1:11434", "0.0.0.0" (no scheme means http, and then no port means 11434)."""
    from urllib.parse import urlsplit

    check_text(host, "host")
    host = host.strip().rstrip("/")
    scheme_given = "://" in host
    if not scheme_given:
        host = f"http://{host}"
    try:
        port = urlsplit(host).port
    except ValueError:  # "localhost:abc", a port beyond 65535
        raise ValueError(f"{host!r} is not a valid address; write it as "
                         "http://localhost:11434") from None
    if not scheme_given and port is None:
        host += ":11434"  # Ollama's default port
    return host


def check_if_running(host="http://localhost:11434", timeout=2.0):
    """True if an Ollama server answers at `host` (GET /api/version within `timeout` seconds)."""
    import requests

    try:
        r = requests.get(f"{ollama_base_url(host)}/api/version", timeout=timeout)
        return r.ok and "version" in r.json()  # Ollama answers {"version": "0.x.y"}
    except (requests.RequestException, ValueError, TypeError):  # down, or not Ollama
        return False


def query_model(prompt, model="llama3", host="http://localhost:11434", timeout=120.0):
    """Send `prompt` to Ollama's chat endpoint and return the reply it streams back.

    POST /api/chat answers with JSON lines: {"message": {"content": "..."}, "done": false} ...
    {"done": true}. Raises RuntimeError saying what to do if that fails or is not what comes.
    """
    import json

    import requests

    url = f"{ollama_base_url(host)}/api/chat"
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},  # the same scores each run
        "stream": True,
    }
    try:
        with requests.post(url, json=payload, stream=True, timeout=timeout) as r:
            if r.status_code != 200:
                raise RuntimeError(
                    f"{url} answered HTTP {r.status_code}: {r.text[:200]!r}. If the model is "
                    f"missing, fetch it with `ollama pull {model}`.")
            reply = []
            for line in r.iter_lines():
                if not line.strip():
                    continue
                try:
                    chunk = json.loads(line)
                except json.JSONDecodeError:
                    chunk = None
                if not isinstance(chunk, dict):
                    raise RuntimeError(
                        f"{url} answered {line[:80]!r}, which is not one of the JSON lines "
                        "Ollama's chat endpoint streams. Is the server at that address Ollama?")
                if "error" in chunk:
                    raise RuntimeError(f"Ollama reported an error: {chunk['error']}")
                message = chunk.get("message") or {}
                reply.append(message.get("content", "") if isinstance(message, dict) else "")
                if chunk.get("done"):
                    return "".join(reply)
    except requests.RequestException as e:
        raise RuntimeError(
            f"Could not talk to Ollama at {host} ({type(e).__name__}: {e}). Start it with "
            f"`ollama serve` (and fetch the model once with `ollama pull {model}`).") from e
    raise RuntimeError(f"{url} ended its answer without the final line that says done: true")


def parse_score(text):
    """The 0-100 score in a judge's reply ("85", "Score: 85.", "85/100"); None if the reply
    holds no single clear number in that range (e.g. "I cannot tell", "between 60 and 70")."""
    import re

    check_text(text, "the judge's reply")
    out_of_100 = re.search(r"(\d+(?:\.\d+)?)\s*(?:/|out of)\s*100\b", text)
    numbers = {out_of_100.group(1)} if out_of_100 else set(re.findall(r"\d+(?:\.\d+)?", text))
    if len(numbers) != 1:
        return None
    value = float(numbers.pop())
    return round(value) if 0 <= value <= 100 else None


def format_judge_prompt(entry, json_key="model_response"):
    """The question put to the judge: instruction, reference answer, the answer to score."""
    for key in ("output", json_key):
        if not isinstance(entry, dict) or key not in entry:
            raise ValueError(f"the entry has no {key!r}: scoring needs the reference 'output' "
                             f"and the answer under json_key={json_key!r} (add the model's "
                             "answers to the entries first)")
        check_text(entry[key], f"the entry's {key!r}")
    return (
        f"Here is an instruction, possibly with an input:\n\n{format_input(entry)}\n\n"
        f"A correct answer is:\n{entry['output']}\n\n"
        f"Score the following answer from 0 (wrong or useless) to 100 (as good as the "
        f"correct answer):\n{entry[json_key]}\n\nReply with the integer score only."
    )


def generate_model_scores(json_data, json_key="model_response", model="llama3",
                          host="http://localhost:11434"):
    """The judge's score (0-100, or None where its reply held no clear score) of each entry's
    `json_key` answer, compared with the entry's reference output."""
    from tqdm import tqdm  # text bar on stdout: reads the same live and in a saved notebook

    scores = []
    for entry in tqdm(json_data, desc="Scoring entries", file=sys.stdout, mininterval=1.0):
        reply = query_model(format_judge_prompt(entry, json_key), model=model, host=host)
        scores.append(parse_score(reply))
    return scores
