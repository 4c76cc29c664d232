"""Drawing helpers shared by the figure modules (figNN.py): one style for every diagram.

Coordinates are in "units" of a canvas whose size is given in inches, so that a box of width 1.5
is 1.5 inches wide in the saved picture. Colours name what a thing is, the same in every figure.
"""

import matplotlib

matplotlib.use("Agg")  # files only, no window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# One colour per kind of thing, in every figure (fill, edge).
COLORS = {
    "text": ("#f2f2f2", "#555555"),      # raw text, strings
    "token": ("#dbe9f6", "#2b6cb0"),     # tokens and token ids
    "embed": ("#e3f4e1", "#2f855a"),     # vectors: embeddings, hidden states
    "layer": ("#fdebd3", "#c05621"),     # modules with weights (Linear, attention, blocks)
    "norm": ("#efe3f7", "#6b46c1"),      # normalisation, activation
    "loss": ("#fde2e2", "#c53030"),      # targets, losses, masks
    "frozen": ("#e2e8f0", "#4a5568"),    # frozen weights
    "plain": ("#ffffff", "#333333"),     # anything else
}
FONT = "DejaVu Sans"  # ships with matplotlib, so every machine draws the same glyphs
plt.rcParams.update({"font.family": FONT, "font.size": 10, "svg.hashsalt": "course",
                     "figure.dpi": 100})


def canvas(width, height):
    """A blank figure `width` x `height` inches whose axes run 0..width, 0..height (no ticks)."""
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def box(ax, x, y, w, h, text="", kind="plain", fontsize=10, mono=False, **kw):
    """A rounded box with its lower-left corner at (x, y) and `text` centred in it."""
    face, edge = COLORS[kind]
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor=kw.pop("facecolor", face),
                                edgecolor=kw.pop("edgecolor", edge), linewidth=1.2))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize,
                family="DejaVu Sans Mono" if mono else FONT, **kw)


def arrow(ax, start, end, text=None, color="#333333", fontsize=9, offset=(0.08, 0), **kw):
    """An arrow from `start` to `end` (x, y), with an optional label beside its middle."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=color,
                                 linewidth=1.2, shrinkA=0, shrinkB=0, **kw))
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, text, fontsize=fontsize, ha="left", va="center", color=color)


def label(ax, x, y, text, fontsize=10, mono=False, **kw):
    """Plain text at (x, y), centred unless ha/va say otherwise."""
    kw.setdefault("ha", "center")
    kw.setdefault("va", "center")
    ax.text(x, y, text, fontsize=fontsize, family="DejaVu Sans Mono" if mono else FONT, **kw)
