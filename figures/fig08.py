"""Figures of notebook 08 (LoRA and QLoRA): a LoRA beside a frozen layer, the NF4 levels and
block-wise absmax scaling, and merge_lora."""

import torch
from common import COLORS, arrow, box, canvas, label
from matplotlib.patches import Circle

from qlora import NF4_LEVELS


def draw_lora():
    """x -> x W + (alpha / r) x A B: W (in x out) frozen; A (in x r) and B (r x out) train."""
    d_in, d_out, r = 768, 768, 16
    fig, ax = canvas(8.4, 5.0)
    label(ax, 4.2, 4.7, "LinearWithLoRA:  x  ->  x W + (alpha / r) x A B", mono=True,
          fontsize=11, weight="bold")
    # input
    box(ax, 3.1, 0.25, 2.2, 0.5, "x  (B, T, in)", kind="embed", mono=True, fontsize=9.5)
    # frozen W: a big square
    box(ax, 0.5, 1.35, 2.6, 2.3, f"W\n(in x out)\n{d_in} x {d_out}\nfrozen\n"
        f"{d_in * d_out:,} numbers", kind="frozen", fontsize=9.5)
    # A and B: thin matrices
    box(ax, 4.5, 1.3, 0.55, 2.3, "A", kind="layer", fontsize=11)
    label(ax, 4.4, 2.45, f"in x r\n{d_in} x {r}", fontsize=8.5, ha="right")
    box(ax, 5.5, 3.05, 2.3, 0.5, "B", kind="layer", fontsize=11)
    label(ax, 6.65, 2.8, f"r x out: {r} x {d_out}\nstarts at 0", fontsize=8.5, va="top")
    label(ax, 6.65, 1.85, f"A and B train:\n{d_in * r + r * d_out:,} numbers\n"
          f"({(d_in * r + r * d_out) / (d_in * d_out):.1%} of W)", fontsize=9,
          color=COLORS["layer"][1])
    # arrows from x
    arrow(ax, (3.6, 0.75), (1.8, 1.35))
    arrow(ax, (4.8, 0.75), (4.77, 1.3))
    arrow(ax, (5.05, 3.3), (5.5, 3.3), text=None)
    label(ax, 5.27, 3.62, "(B,T,r)", fontsize=8, mono=True)
    # sum
    ax.add_patch(Circle((4.2, 4.15), 0.2, facecolor="white", edgecolor="#333333", linewidth=1.2))
    label(ax, 4.2, 4.15, "+", fontsize=13)
    arrow(ax, (1.8, 3.65), (4.0, 4.12))
    label(ax, 2.55, 4.08, "x W", fontsize=9, mono=True)
    arrow(ax, (6.65, 3.55), (4.4, 4.12))
    label(ax, 6.3, 4.12, "x A B  x  alpha / r", fontsize=9, mono=True)
    return fig


def draw_nf4():
    """The 16 NF4 levels on the normal density; block-wise absmax scaling, blocks of 64."""
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8.4, 5.6),
                                      gridspec_kw={"height_ratios": [1.25, 1]})
    levels = NF4_LEVELS.tolist()
    # the levels are N(0, 1)'s quantiles divided by the outermost one, Q(0.9677083) = 1.848
    scale = torch.special.ndtri(torch.tensor(0.9677083, dtype=torch.float64)).item()
    xs = torch.linspace(-1.05, 1.05, 400)
    density = torch.exp(-0.5 * (xs * scale) ** 2)
    top.fill_between(xs.numpy(), density.numpy(), color=COLORS["embed"][0])
    top.plot(xs.numpy(), density.numpy(), color=COLORS["embed"][1], linewidth=1.2)
    for i, v in enumerate(levels):
        top.axvline(v, color=COLORS["token"][1], linewidth=1, ymax=0.86)
        top.text(v, 1.08, str(i), ha="center", fontsize=7.5, color=COLORS["token"][1])
    top.set_ylim(0, 1.2)
    top.set_xlim(-1.1, 1.1)
    top.set_yticks([])
    top.set_title("NF4: 16 levels at quantiles of the normal distribution, scaled into [-1, 1]"
                  " (index 7 = 0)", fontsize=10)
    top.set_xlabel("normalized weight  w / absmax of its block", fontsize=9)
    for side in ("top", "right", "left"):
        top.spines[side].set_visible(False)

    # one block of 64 random weights: original and quantized
    g = torch.Generator().manual_seed(123)
    block = torch.randn(64, generator=g) * 0.02
    absmax = block.abs().max()
    normalized = block / absmax
    mids = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
    idx = torch.bucketize(normalized, mids)
    deq = NF4_LEVELS[idx] * absmax
    pos = torch.arange(64)
    bottom.vlines(pos.numpy(), 0, block.numpy(), color="#999999", linewidth=1)
    bottom.scatter(pos.numpy(), block.numpy(), s=14, color="#555555", label="weight (float32)",
                   zorder=3)
    bottom.scatter(pos.numpy(), deq.numpy(), s=22, marker="_", color=COLORS["loss"][1],
                   linewidths=2, label="level x absmax (dequantized)", zorder=4)
    for v in levels:
        bottom.axhline(v * absmax.item(), color=COLORS["token"][1], linewidth=0.4, alpha=0.5)
    bottom.set_xlim(-1, 64)
    bottom.set_xlabel("position in the block (block_size = 64)", fontsize=9)
    bottom.set_ylabel("weight", fontsize=9)
    bottom.legend(fontsize=8, loc="lower left", ncol=2, framealpha=0.9)
    bottom.set_title(f"one block: absmax = {absmax.item():.4f}; stored: 64 indices x 4 bits = "
                     "32 bytes + one float32 absmax = 4 bytes", fontsize=9.5)
    fig.tight_layout()
    return fig


def draw_merge():
    """merge_lora: W + (alpha / r) (A B)^T becomes one nn.Linear."""
    fig, ax = canvas(8.4, 2.6)
    box(ax, 0.3, 0.7, 1.6, 1.3, "W\n(out x in)\nfrozen", kind="frozen", fontsize=9.5)
    label(ax, 2.15, 1.35, "+", fontsize=16)
    label(ax, 2.85, 1.35, "alpha / r  x", fontsize=9.5, mono=True)
    box(ax, 3.55, 0.7, 0.4, 1.3, "A", kind="layer", fontsize=10)
    box(ax, 4.05, 1.6, 1.3, 0.4, "B", kind="layer", fontsize=10)
    label(ax, 4.2, 0.45, "(A B)^T: (out x in)", fontsize=8.5, mono=True)
    label(ax, 5.75, 1.35, "=", fontsize=16)
    box(ax, 6.2, 0.7, 1.9, 1.3, "nn.Linear\nweight\n(out x in)", kind="plain", fontsize=9.5)
    label(ax, 4.2, 2.35, "merge_lora(model): every LinearWithLoRA -> one plain nn.Linear",
          mono=True, fontsize=9.5, weight="bold")
    label(ax, 7.15, 0.45, "same output, original size", fontsize=8.5)
    return fig


FIGURES = {"08_lora.png": draw_lora, "08_nf4.png": draw_nf4, "08_merge.png": draw_merge}
