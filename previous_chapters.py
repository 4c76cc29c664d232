"""The code the course's notebooks build, collected so that later notebooks can import it.

Each section below is headed by the notebook that builds (and explains) it, in notebook order;
`__all__` doubles as the table of contents. Only the final version of each piece lives here: the
step-by-step versions stay in the notebooks. Importing this module has no side effects.

Shape names used in comments: B batch, T tokens, C embedding dim, H heads, D head dim, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    # 01_working_with_text.ipynb
    "GPTDatasetV1", "create_dataloader_v1",
    # 02_attention.ipynb
    "MultiHeadAttention",
    # 03_gpt_architecture.ipynb
    "GPT_CONFIG_124M", "LayerNorm", "GELU", "FeedForward", "TransformerBlock", "GPTModel",
    "generate_text_simple",
    # 04_pretraining.ipynb
    "text_to_token_ids", "token_ids_to_text", "calc_loss_batch", "calc_loss_loader",
    "evaluate_model", "generate_and_print_sample", "train_model_simple", "plot_losses", "generate",
    # 05_pretrained_weights.ipynb
    "assign_", "load_weights_into_gpt",
    # 06_classification_finetuning.ipynb
    # 07_instruction_finetuning.ipynb
]


# ===== 01_working_with_text.ipynb =====

class GPTDatasetV1(Dataset):
    """Next-token pairs from one text: window i is tokens [i*stride, i*stride + max_length),
    its target the same window shifted right by one token."""

    def __init__(self, txt, tokenizer, max_length, stride):
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
    import tiktoken

    tokenizer = tiktoken.get_encoding("gpt2")
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
    """Causal multi-head self-attention: one Q/K/V projection split into heads, (B, T, C) in/out."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads' outputs
        self.dropout = nn.Dropout(dropout)
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1),
            persistent=False,
        )

    def forward(self, x):
        b, num_tokens, d_in = x.shape
        keys = self.W_key(x)  # (B, T, C)
        queries = self.W_query(x)
        values = self.W_value(x)
        # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
        keys = keys.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = values.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)

        attn_scores = queries @ keys.transpose(2, 3)  # (B, H, T, T)
        mask_bool = self.mask.bool()[:num_tokens, :num_tokens]
        attn_scores.masked_fill_(mask_bool, -torch.inf)
        attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)

        context_vec = (attn_weights @ values).transpose(1, 2)  # (B, H, T, D) -> (B, T, H, D)
        context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)  # -> (B, T, C)
        return self.out_proj(context_vec)


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
    """Normalise each row to mean 0, variance 1 (biased), then scale and shift; eps as GPT-2."""

    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift


class GELU(nn.Module):
    """GELU, the tanh approximation that GPT-2 was trained with."""

    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(
            torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))
        ))


class FeedForward(nn.Module):
    """Position-wise MLP: C -> 4C -> C with GELU, (B, T, C) in/out."""

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):
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

    def forward(self, x):
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
    """GPT-2: token + position embeddings, n_layers blocks, final norm, head; (B, T) -> (B, T, V)."""

    CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers",
                   "drop_rate", "qkv_bias")

    def __init__(self, cfg):
        super().__init__()
        missing = [k for k in self.CONFIG_KEYS if k not in cfg]
        if missing:
            raise KeyError(f"the model config lacks {missing}; it needs {list(self.CONFIG_KEYS)}")
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
        batch_size, seq_len = in_idx.shape
        if seq_len > self.cfg["context_length"]:
            raise ValueError(
                f"The input has {seq_len} tokens but the model's context length is "
                f"{self.cfg['context_length']}; crop it, e.g. idx[:, -context_length:]."
            )
        tok_embeds = self.tok_emb(in_idx)  # (B, T, C)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))  # (T, C)
        x = self.drop_emb(tok_embeds + pos_embeds)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)  # (B, T, V)


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding: append the most likely next token `max_new_tokens` times; idx (B, T)."""
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
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)  # add the batch dimension


def token_ids_to_text(token_ids, tokenizer):
    """A (1, T) or (T,) tensor of token ids -> text."""
    flat = token_ids.squeeze(0)  # remove the batch dimension
    return tokenizer.decode(flat.tolist())


def calc_loss_batch(input_batch, target_batch, model, device):
    """Mean cross-entropy of one (B, T) batch's next-token predictions."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Average loss over the first `num_batches` batches of a loader (all of them by default)."""
    if len(data_loader) == 0:
        return float("nan")
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
    from tqdm.auto import tqdm

    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    with tqdm(total=num_epochs * len(train_loader), desc="training", unit="step") as bar:
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
            generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses):
    """Training and validation loss against epochs, with tokens seen on a second x-axis."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):
    """Decode with temperature scaling and top-k filtering; temperature 0 means greedy.

    idx (B, T) -> (B, T + n). Stops early when every sequence's next token is `eos_id`
    (which is not appended). The prompt is cropped to the last `context_size` tokens.
    """
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"generate needs a (batch, tokens) prompt with at least one token; "
                         f"got shape {tuple(idx.shape)}. Is the prompt text empty?")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None), not {top_k}")
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)[:, -1, :]  # (B, V)
        if top_k is not None:
            top_logits, top_pos = torch.topk(logits, min(top_k, logits.shape[-1]))
            logits = torch.full_like(logits, -torch.inf).scatter(-1, top_pos, top_logits)
        if temperature > 0.0:
            probs = torch.softmax(logits / temperature, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        if eos_id is not None and bool((idx_next == eos_id).all()):
            break
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


# ===== 05_pretrained_weights.ipynb =====

def assign_(param, array, name):
    """Copy numpy `array` into tensor `param` in place; a shape mismatch names both shapes."""
    value = torch.as_tensor(array)
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"{name}: the model has shape {tuple(param.shape)} but the checkpoint "
                         f"gives {tuple(value.shape)}. Does the model config match the weights?")
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
    """
    if len(params["blocks"]) != len(gpt.trf_blocks):
        raise ValueError(f"the checkpoint has {len(params['blocks'])} transformer blocks but the "
                         f"model has {len(gpt.trf_blocks)}; build the model with the matching "
                         "config (n_layers).")
    if gpt.trf_blocks[0].att.W_query.bias is None:
        raise ValueError("GPT-2 has biases in its query/key/value projections: build the model "
                         "with qkv_bias=True.")
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
    gpt.out_head.weight = gpt.tok_emb.weight  # weight tying: GPT-2 has no separate head
    return gpt


# ===== 06_classification_finetuning.ipynb =====


# ===== 07_instruction_finetuning.ipynb =====
