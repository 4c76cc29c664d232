"""Figures of notebook 03: the transformer block, and the GPT-2 stack with its tensor shapes.

The parameter counts printed in the stack are counted from previous_chapters.GPTModel (built on
the meta device: shapes only, no memory), so the picture and the notebook's table agree.
"""

import torch
from common import arrow, box, canvas, label
from matplotlib.patches import Circle

from previous_chapters import GPT_CONFIG_124M, GPTModel


def transformer_block():
    """TransformerBlock.forward: two pre-norm sub-layers, each with dropout and a shortcut."""
    fig, ax = canvas(6.6, 8.3)
    cx, w, h = 3.2, 2.6, 0.5  # centre line of the main path, box size
    x0 = cx - w / 2

    def sub_layer(top, norm, middle, middle_text, drop, tag):
        """Boxes from y = top downwards; returns the y of the (+) and draws the shortcut."""
        ys = [top - 0.75 * i for i in range(3)]
        box(ax, x0, ys[0] - h, w, h, norm, kind="norm", mono=True, fontsize=9.5)
        box(ax, x0, ys[1] - h, w, h, middle, kind="layer", mono=True, fontsize=9.5)
        box(ax, x0, ys[2] - h, w, h, drop, kind="plain", mono=True, fontsize=9.5)
        for a, b in zip(ys[:-1], ys[1:]):
            arrow(ax, (cx, a - h), (cx, b))
        label(ax, x0 + w + 0.15, ys[1] - h / 2, middle_text, fontsize=8.5, ha="left",
              color="#555555")
        plus_y = ys[2] - h - 0.45
        arrow(ax, (cx, ys[2] - h), (cx, plus_y + 0.17))
        ax.add_patch(Circle((cx, plus_y), 0.17, facecolor="white", edgecolor="#333333",
                            linewidth=1.2))
        label(ax, cx, plus_y, "+", fontsize=13)
        # the shortcut: from above the norm, round the left side, into the (+)
        sx = x0 - 0.45
        start_y = top + 0.2
        ax.plot([cx, sx, sx], [start_y, start_y, plus_y], color="#2f855a", linewidth=1.6)
        arrow(ax, (sx, plus_y), (cx - 0.17, plus_y), color="#2f855a")
        label(ax, sx - 0.08, (start_y + plus_y) / 2, f"shortcut\n({tag})", fontsize=8.5,
              ha="right", color="#2f855a")
        return plus_y

    label(ax, cx, 8.05, "x  (B, T, C)", mono=True, fontsize=10)
    arrow(ax, (cx, 7.88), (cx, 7.45))
    y1 = sub_layer(7.45, "norm1: LayerNorm", "att: MultiHeadAttention",
                   "causal, n_heads = 12\ntokens exchange\ninformation", "drop_shortcut: Dropout",
                   "x")
    label(ax, cx + 0.3, y1 - 0.32, "(B, T, C)", mono=True, fontsize=9, ha="left")
    arrow(ax, (cx, y1 - 0.17), (cx, y1 - 0.65))
    y2 = sub_layer(y1 - 0.65, "norm2: LayerNorm", "ff: FeedForward",
                   "Linear C -> 4C, GELU,\nLinear 4C -> C;\neach token on its own",
                   "drop_shortcut: Dropout", "x after\nthe first +")
    arrow(ax, (cx, y2 - 0.17), (cx, y2 - 0.6))
    label(ax, cx, y2 - 0.78, "output  (B, T, C)", mono=True, fontsize=10)
    label(ax, 3.3, 0.22, "in GPT-2 small: C = emb_dim = 768; every arrow carries (B, T, C)",
          fontsize=8.5, color="#555555")
    return fig


def _counts():
    with torch.device("meta"):  # shapes only
        model = GPTModel(GPT_CONFIG_124M)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    return {"tok_emb": count(model.tok_emb), "pos_emb": count(model.pos_emb),
            "trf_blocks": count(model.trf_blocks), "final_norm": count(model.final_norm),
            "out_head": count(model.out_head)}


def gpt2_stack():
    """GPTModel.forward for GPT_CONFIG_124M: each module, the shape it outputs, its parameters."""
    cfg, n = GPT_CONFIG_124M, _counts()
    C, V = cfg["emb_dim"], cfg["vocab_size"]
    fig, ax = canvas(8.4, 7.6)
    cx, w, h = 2.0, 3.4, 0.55
    x0 = cx - w / 2 + 0.1
    cx = x0 + w / 2
    shape_x, param_x = 4.0, 8.2  # the two columns on the right (shape left-aligned, count right)

    label(ax, shape_x, 7.35, "output shape", fontsize=9, ha="left", color="#555555")
    label(ax, param_x, 7.35, "parameters", fontsize=9, ha="right", color="#555555")
    box(ax, x0, 6.55, w, h, "in_idx: token ids", kind="token", mono=True)
    label(ax, shape_x, 6.55 + h / 2, "(B, T)", mono=True, fontsize=9.5, ha="left")

    # the two embeddings side by side, then their sum
    half = w / 2 - 0.08
    emb_y = 5.35
    box(ax, x0, emb_y, half, h, f"tok_emb\n{V} x {C}", kind="layer", mono=True, fontsize=8.5)
    box(ax, x0 + w - half, emb_y, half, h, f"pos_emb\n{cfg['context_length']} x {C}",
        kind="layer", mono=True, fontsize=8.5)
    arrow(ax, (x0 + half / 2, 6.55), (x0 + half / 2, emb_y + h))
    label(ax, x0 + w - half / 2, 6.28, "positions 0..T-1", fontsize=8, color="#555555")
    arrow(ax, (x0 + w - half / 2, 6.15), (x0 + w - half / 2, emb_y + h))
    label(ax, shape_x, emb_y + h / 2 + 0.13, f"tok_emb: (B, T, {C})", mono=True, fontsize=9.5,
          ha="left")
    label(ax, shape_x, emb_y + h / 2 - 0.13, f"pos_emb: (T, {C})", mono=True, fontsize=9.5,
          ha="left")
    label(ax, param_x, emb_y + h / 2 + 0.13, f"{n['tok_emb']:,}", fontsize=9.5, ha="right",
          mono=True)
    label(ax, param_x, emb_y + h / 2 - 0.13, f"{n['pos_emb']:,}", fontsize=9.5, ha="right",
          mono=True)

    rows = [  # (y, text, kind, shape, parameters)
        (4.25, "+, drop_emb: Dropout", "plain", f"(B, T, {C})", 0),
        (3.15, f"trf_blocks:\n{cfg['n_layers']} x TransformerBlock", "layer", f"(B, T, {C})",
         n["trf_blocks"]),
        (2.05, "final_norm: LayerNorm", "norm", f"(B, T, {C})", n["final_norm"]),
        (0.95, f"out_head: Linear {C} -> {V}", "layer", f"(B, T, {V}): logits",
         n["out_head"]),
    ]
    arrow(ax, (x0 + half / 2, emb_y), (cx - 0.2, 4.25 + h))
    arrow(ax, (x0 + w - half / 2, emb_y), (cx + 0.2, 4.25 + h))
    prev = None
    for y, text, kind, shape, params in rows:
        box(ax, x0, y, w, h, text, kind=kind, mono=True, fontsize=9)
        label(ax, shape_x, y + h / 2, shape, mono=True, fontsize=9.5, ha="left")
        label(ax, param_x, y + h / 2, f"{params:,}", fontsize=9.5, ha="right", mono=True)
        if prev is not None:
            arrow(ax, (cx, prev), (cx, y + h))
        prev = y
    total = sum(n.values())
    label(ax, 4.2, 0.5, f"total {total:,} parameters; "
          f"{total - n['out_head']:,} with out_head tied to tok_emb", fontsize=9)
    label(ax, 4.2, 0.2, "B batch, T tokens (T <= context_length = "
          f"{cfg['context_length']}); the logits score the next token at every position",
          fontsize=8.5, color="#555555")
    return fig


FIGURES = {
    "03_transformer_block.png": transformer_block,
    "03_gpt2_stack.png": gpt2_stack,
}
