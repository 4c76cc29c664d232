"""Figures of notebook 02 (attention): the attention weights of the toy sentence, the causal mask,
and the split of (B, T, C) into heads. Numbers are computed here exactly as the notebook does."""

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from common import COLORS, arrow, box, canvas, label

WORDS = ["Your", "journey", "starts", "with", "one", "step"]
# the notebook's toy embeddings (section 2.2), one 3-d vector per token
INPUTS = torch.tensor([
    [0.40, 0.20, 0.85],  # Your
    [0.55, 0.85, 0.60],  # journey
    [0.60, 0.80, 0.65],  # starts
    [0.25, 0.60, 0.30],  # with
    [0.80, 0.25, 0.10],  # one
    [0.10, 0.75, 0.45],  # step
])


def heat_map(ax, values, title, fmt="{:.2f}", cmap="Blues", vmin=0.0, vmax=None, shown=None):
    """A (T, T) matrix with query tokens as rows and key tokens as columns, each cell annotated
    (cells where `shown` is False are left blank)."""
    data = np.ma.masked_invalid(values)
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(6), WORDS, rotation=45, ha="right")
    ax.set_yticks(range(6), WORDS)
    ax.set_xlabel("key: the token attended to")
    ax.set_ylabel("query: the token being updated")
    ax.set_title(title, fontsize=10)
    top = np.nanmax(values[np.isfinite(values)])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            hidden = shown is not None and not shown[i, j]
            text = "-inf" if np.isneginf(v) else ("0" if hidden else fmt.format(v))
            dark = np.isfinite(v) and v > 0.6 * top
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else ("#c53030" if np.isneginf(v) else
                                                 "#999999" if hidden else "black"))
    return image


def draw_attention_weights():
    """softmax(X X^T) of the toy sentence: the simplified attention of lecture 14."""
    scores = INPUTS @ INPUTS.T  # (T, T)
    weights = torch.softmax(scores, dim=-1).numpy()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    image = heat_map(ax, weights, "attn_weights = torch.softmax(inputs @ inputs.T, dim=-1)\n"
                     "(no trainable weights; every row sums to 1)", fmt="{:.3f}", vmax=0.25)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    fig.tight_layout()
    return fig


def causal_numbers():
    """The notebook's causal-attention numbers of section 2.4 (SelfAttention_v2, seed 789)."""
    torch.manual_seed(789)
    W_query, W_key = nn.Linear(3, 2, bias=False), nn.Linear(3, 2, bias=False)
    nn.Linear(3, 2, bias=False)  # W_value: drawn too, so that the random stream matches
    with torch.no_grad():
        queries, keys = W_query(INPUTS), W_key(INPUTS)
        attn_scores = queries @ keys.T  # (T, T)
        mask = torch.triu(torch.ones(6, 6), diagonal=1)
        masked = attn_scores.masked_fill(mask.bool(), -torch.inf)
        weights = torch.softmax(masked / keys.shape[-1] ** 0.5, dim=-1)
    return attn_scores.numpy(), masked.numpy(), weights.numpy()


def draw_causal_mask():
    """Scores, then -inf above the diagonal, then softmax along each row."""
    scores, masked, weights = causal_numbers()
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 6.0))
    lo, hi = scores.min(), scores.max()
    heat_map(axes[0], scores, "1. attn_scores = queries @ keys.T\n(every token sees every token)",
             fmt="{:.3f}", cmap="Greens", vmin=lo, vmax=hi)
    heat_map(axes[1], masked, "2. attn_scores.masked_fill_(mask.bool(), -torch.inf)\n"
             "(mask: 1 above the diagonal = future tokens)", fmt="{:.3f}", cmap="Greens",
             vmin=lo, vmax=hi)
    heat_map(axes[2], weights, "3. torch.softmax(attn_scores / keys.shape[-1]**0.5, dim=-1)\n"
             "(exp(-inf) = 0; each row sums to 1)", fmt="{:.2f}", vmax=1.0,
             shown=np.tril(np.ones((6, 6), dtype=bool)))
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.suptitle("Causal attention on the toy sentence (SelfAttention_v2's untrained weights, "
                 "d_out = 2)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def grid(ax, x, y, rows, colors, cell=0.42, fontsize=9):
    """A small table of numbers, lower-left corner at (x, y), one colour per cell."""
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            face, edge = COLORS[colors[i][j]]
            ax.add_patch(plt.Rectangle((x + j * cell, y + (len(rows) - 1 - i) * cell), cell, cell,
                                       facecolor=face, edgecolor=edge, linewidth=1.0))
            ax.text(x + (j + 0.5) * cell, y + (len(rows) - 0.5 - i) * cell, f"{value:g}",
                    ha="center", va="center", fontsize=fontsize)


def draw_split_heads():
    """(B, T, C) -> (B, T, H, D) -> (B, H, T, D) -> attention per head -> back to (B, T, C),
    on the notebook's toy tensor: B=1, T=3 tokens, C=4 split into H=2 heads of D=2."""
    qs = np.arange(12.0).reshape(3, 4)  # (T, C) of the one sequence
    head_kind = ["token", "layer"]  # head 0 blue, head 1 orange
    fig, ax = canvas(13.6, 5.4)
    c = 0.42
    # 1. (B, T, C)
    label(ax, 1.35, 5.0, "(B, T, C) = (1, 3, 4)", fontsize=11, mono=True)
    label(ax, 1.35, 4.62, "queries = self.W_query(x)", fontsize=9, mono=True)
    grid(ax, 0.5, 3.0, qs, [[head_kind[j // 2] for j in range(4)] for _ in range(3)])
    for t in range(3):
        label(ax, 0.22, 3.0 + (2.5 - t) * c, f"t={t}", fontsize=8)
    label(ax, 0.5 + c, 2.72, "head 0", fontsize=8, color=COLORS["token"][1])
    label(ax, 0.5 + 3 * c, 2.72, "head 1", fontsize=8, color=COLORS["layer"][1])
    arrow(ax, (2.4, 3.6), (3.5, 3.6))
    label(ax, 2.95, 3.95, ".view(b, T, H, D)", fontsize=9, mono=True)
    # 2. (B, T, H, D): each token's row cut into H pieces of D numbers
    label(ax, 4.8, 5.0, "(B, T, H, D) = (1, 3, 2, 2)", fontsize=11, mono=True)
    for t in range(3):
        y = 3.95 - t * 1.0
        label(ax, 3.8, y + c / 2, f"t={t}", fontsize=8)
        for h in range(2):
            grid(ax, 4.1 + h * 1.05, y, [qs[t, 2 * h:2 * h + 2]], [[head_kind[h]] * 2])
            label(ax, 4.1 + h * 1.05 + c, y + c + 0.17, f"h={h}", fontsize=7)
    arrow(ax, (6.3, 3.6), (7.4, 3.6))
    label(ax, 6.85, 3.95, ".transpose(1, 2)", fontsize=9, mono=True)
    # 3. (B, H, T, D): heads become a batch dimension
    label(ax, 8.65, 5.0, "(B, H, T, D) = (1, 2, 3, 2)", fontsize=11, mono=True)
    for h in range(2):
        x = 7.75 + h * 1.25
        grid(ax, x, 3.0, qs[:, 2 * h:2 * h + 2], [[head_kind[h]] * 2] * 3)
        label(ax, x + c, 4.45, f"head {h}", fontsize=9, color=COLORS[head_kind[h]][1])
    label(ax, 8.65, 2.65, "each head: its own (T, D) queries, keys, values", fontsize=8)
    arrow(ax, (10.25, 3.6), (11.2, 3.6))
    # 4. attention in every head at once
    box(ax, 11.25, 2.95, 2.2, 1.35, "attention per head\n(B, H, T, T) weights\n@ values\n"
        "-> (B, H, T, D)", kind="layer", fontsize=9)
    # back: the way home, along the bottom
    label(ax, 6.8, 1.55, "and back, after attention:", fontsize=10, ha="center")
    steps = ["(B, H, T, D)", ".transpose(1, 2)", "(B, T, H, D)", ".contiguous().view(b, T, d_out)",
             "(B, T, C)", "self.out_proj", "(B, T, C)"]
    x = 0.3
    for k, text in enumerate(steps):
        w = 0.27 + 0.1 * len(text) if k % 2 == 0 else 0.1 * len(text)
        if k % 2 == 0:
            box(ax, x, 0.45, w, 0.55, text, kind="embed", fontsize=9, mono=True)
        else:
            arrow(ax, (x, 0.72), (x + w, 0.72))
            label(ax, x + w / 2, 1.12, text, fontsize=8.5, mono=True)
        x += w + 0.15
    return fig


FIGURES = {
    "02_attention_weights.png": draw_attention_weights,
    "02_causal_mask.png": draw_causal_mask,
    "02_split_heads.png": draw_split_heads,
}
