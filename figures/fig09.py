"""Figures of notebook 09 (pretraining at scale): what DistributedDataParallel does in one step."""

from common import COLORS, arrow, box, canvas, label


def draw_ddp():
    """Two ranks, each with a copy of the model and its own rows of the global batch; the
    all-reduce averages their gradients, so that the same AdamW step keeps the copies equal."""
    fig, ax = canvas(9.0, 5.6)
    label(ax, 4.5, 5.3, "One training step of DistributedDataParallel, 2 ranks (world size 2)",
          fontsize=11.5, weight="bold")
    box(ax, 0.2, 4.35, 8.6, 0.55, "global batch: 2 x B rows of T tokens  (train.bin, the "
        "step's samples)", kind="token", fontsize=9.5)
    rows = ("0 .. B - 1", "B .. 2B - 1")
    for rank, x in enumerate((0.2, 5.1)):
        label(ax, x + 0.75, 4.02, f"rank {rank}  (GPU {rank}, or a CPU process)", fontsize=9.5,
              weight="bold", ha="left")
        box(ax, x, 3.2, 3.7, 0.55, f"its rows {rows[rank]}: (B, T)", kind="token", fontsize=9,
            mono=True)
        box(ax, x, 2.35, 3.7, 0.6, "model copy: forward, loss, backward", kind="layer",
            fontsize=9.5)
        box(ax, x, 1.5, 3.7, 0.55, f"its gradients g{rank}", kind="loss", fontsize=9.5,
            mono=True)
        box(ax, x, 0.2, 3.7, 0.55, "AdamW step with (g0 + g1) / 2", kind="layer", fontsize=9.5,
            mono=True)
        arrow(ax, (x + 0.5, 4.35), (x + 0.5, 3.75))
        arrow(ax, (x + 1.85, 3.2), (x + 1.85, 2.95))
        arrow(ax, (x + 1.85, 2.35), (x + 1.85, 2.05))
        arrow(ax, (x + 1.85, 1.5), (4.5, 1.25))
        arrow(ax, (4.5, 0.93), (x + 1.85, 0.75))
    box(ax, 3.3, 0.93, 2.4, 0.32, "all-reduce: average", kind="norm", fontsize=9)
    label(ax, 4.5, 1.75, "overlaps with\nthe backward", fontsize=8, color=COLORS["norm"][1])
    label(ax, 4.5, 2.65, "same weights\nat the start\n(rank 0's)", fontsize=8)
    return fig


FIGURES = {"09_ddp.png": draw_ddp}
