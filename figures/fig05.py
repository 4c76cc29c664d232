"""Figures of notebook 05 (pretrained weights): OpenAI's seven files and what reads each, the map
from OpenAI's checkpoint names to our GPTModel's, and the (in, out) vs (out, in) transpose.

Sizes are those of the 124M release (gpt_download3.PUBLISHED_SIZES) and shapes those its
hparams imply (gpt_download3.GPT2_HPARAMS), so the pictures match the notebook's numbers.
"""

from common import arrow, box, canvas, label

from gpt_download3 import CHECKPOINT_FILES, GPT2_HPARAMS, PUBLISHED_SIZES

HP = GPT2_HPARAMS["124M"]
V, T, C = HP["n_vocab"], HP["n_ctx"], HP["n_embd"]


def human(n):
    """77 -> '77 B', 456,318 -> '456 KB', 497,759,232 -> '498 MB' (decimal units)."""
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n} B"


def release_files():
    """The seven files of the 124M folder, their sizes, and where each one goes."""
    sizes = PUBLISHED_SIZES["124M"]
    what = {
        "hparams.json": "n_vocab, n_ctx, n_embd, n_head, n_layer",
        "model.ckpt.index": "per tensor: name, dtype, shape, offset, CRC",
        "model.ckpt.data-00000-of-00001": "the weights: raw float32 bytes",
        "encoder.json": "BPE vocabulary: 50,257 tokens -> ids",
        "vocab.bpe": "the 50,000 BPE merge rules",
        "checkpoint": "names the prefix model.ckpt",
        "model.ckpt.meta": "TensorFlow's graph",
    }
    order = ["hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001",
             "encoder.json", "vocab.bpe", "checkpoint", "model.ckpt.meta"]
    assert sorted(order) == sorted(CHECKPOINT_FILES)
    fig, ax = canvas(10.2, 5.6)
    label(ax, 5.1, 5.3, "models/124M/: the seven files of OpenAI's release "
          f"({sum(sizes.values()) / 1e6:.0f} MB)", fontsize=12, weight="bold")
    rows = {}
    y = 4.55
    for name in order:
        kind = "frozen" if name in ("checkpoint", "model.ckpt.meta") else (
            "layer" if name.startswith("model.ckpt") else "text")
        box(ax, 0.2, y, 3.3, 0.5, name, kind=kind, fontsize=9, mono=True)
        label(ax, 3.6, y + 0.25, human(sizes[name]), fontsize=9, ha="left")
        label(ax, 4.45, y + 0.25, what[name], fontsize=8.5, ha="left", color="#444444")
        rows[name] = y + 0.25
        y -= 0.65
    # where each goes
    box(ax, 8.05, rows["hparams.json"] - 0.3, 1.95, 0.6, "settings\n(a dict)", kind="embed",
        fontsize=9)
    mid = (rows["model.ckpt.index"] + rows["model.ckpt.data-00000-of-00001"]) / 2
    box(ax, 8.05, mid - 0.4, 1.95, 0.8, "params\nnested dicts of\nnumpy arrays", kind="embed",
        fontsize=9)
    tok = (rows["encoder.json"] + rows["vocab.bpe"]) / 2
    box(ax, 8.05, tok - 0.4, 1.95, 0.8, "tiktoken's cache\n(the tokenizer,\noffline)",
        kind="token", fontsize=9)
    x0 = 7.55
    arrow(ax, (x0, rows["hparams.json"]), (8.05, rows["hparams.json"]))
    for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        arrow(ax, (x0, rows[name]), (8.05, mid))
    label(ax, 9.025, mid - 0.6, "read by tf.train (the lecture)\nor by numpy (section 5.5)",
          fontsize=8, color="#2f855a")
    for name in ("encoder.json", "vocab.bpe"):
        arrow(ax, (x0, rows[name]), (8.05, tok))
    for name in ("checkpoint", "model.ckpt.meta"):
        label(ax, 8.1, rows[name], "downloaded, not read", fontsize=9, ha="left",
              color="#4a5568", style="italic")
    label(ax, 5.1, 0.2, "read by download_and_load_gpt2(model_size, models_dir); "
          "sizes as OpenAI's storage serves the 124M files", fontsize=8.5, color="#555555")
    return fig


def name_mapping():
    """OpenAI's checkpoint names (124M shapes) -> our GPTModel's parameters."""
    fig, ax = canvas(11.2, 8.4)
    label(ax, 2.35, 8.1, "OpenAI's checkpoint (params)", fontsize=11, weight="bold")
    label(ax, 8.2, 8.1, "our GPTModel", fontsize=11, weight="bold")
    rows = [  # (OpenAI's name, its shape, [our names with shapes], what happens, kind)
        ("wte", (V, C), [f"tok_emb.weight {(V, C)}"], "", "embed"),
        ("wpe", (T, C), [f"pos_emb.weight {(T, C)}"], "", "embed"),
        ("h{i}/attn/c_attn/w", (C, 3 * C),
         [f"att.W_query.weight {(C, C)}", f"att.W_key.weight {(C, C)}",
          f"att.W_value.weight {(C, C)}"], "split in 3, each .T", "layer"),
        ("h{i}/attn/c_proj/w", (C, C), [f"att.out_proj.weight {(C, C)}"], ".T", "layer"),
        ("h{i}/mlp/c_fc/w", (C, 4 * C), [f"ff.layers[0].weight {(4 * C, C)}"], ".T", "layer"),
        ("h{i}/mlp/c_proj/w", (4 * C, C), [f"ff.layers[2].weight {(C, 4 * C)}"], ".T",
         "layer"),
        ("h{i}/ln_1, ln_2: g, b", (C,), ["norm1, norm2: scale, shift (768,)"], "", "norm"),
        ("ln_f: g, b", (C,), ["final_norm: scale, shift (768,)"], "", "norm"),
    ]
    y = 7.38
    tok_emb_y = None
    for name, shape, ours, how, kind in rows:
        h = 0.42 * len(ours) + 0.08 * (len(ours) - 1)
        box(ax, 0.2, y - h + 0.42, 4.3, h, f"{name}  {shape}", kind=kind, fontsize=9, mono=True)
        top = y + 0.42
        for k, our in enumerate(ours):
            yy = top - 0.42 - k * 0.5
            box(ax, 6.0, yy, 4.4, 0.42, our, kind=kind, fontsize=9, mono=True)
            arrow(ax, (4.5, y - h / 2 + 0.42), (6.0, yy + 0.21))
            if our.startswith("tok_emb"):
                tok_emb_y = yy
        if how:
            ly = top + 0.12 if len(ours) > 1 else y - h / 2 + 0.62
            label(ax, 5.25, ly, how, fontsize=9, color="#c05621", weight="bold")
        y -= h + 0.28
    # the tied head
    box(ax, 6.0, y + 0.05, 4.4, 0.42, f"out_head.weight {(V, C)}", kind="loss", fontsize=9,
        mono=True)
    label(ax, 2.35, y + 0.26, "(none: GPT-2 has no separate head)", fontsize=9,
          color="#555555", style="italic")
    arrow(ax, (10.4, y + 0.26), (10.4, tok_emb_y + 0.21), color="#c53030",
          connectionstyle="arc3,rad=0.12", linestyle="--")
    label(ax, 8.2, y - 0.2, "tied: the same tensor as tok_emb.weight", fontsize=9,
          color="#c53030")
    label(ax, 5.5, 0.2, "Shapes of the 124M model (V=50257, T=1024, C=768); h{i} -> trf_blocks[i]. "
          "Every bias is copied as it is (c_attn's split in 3).", fontsize=8.5, color="#555555")
    return fig


def transpose():
    """Conv1D's (in, out) weight against nn.Linear's (out, in): the same numbers, transposed."""
    fig, ax = canvas(9.4, 4.0)
    # OpenAI: w (in, out) = (768, 3072), drawn tall-narrow vs wide
    label(ax, 2.2, 3.7, "OpenAI's Conv1D: mlp/c_fc/w", fontsize=10.5, weight="bold")
    box(ax, 0.5, 1.3, 3.4, 1.6, "w\n(in, out) = (768, 3072)", kind="layer", fontsize=10,
        mono=True)
    label(ax, 2.2, 0.95, "y = x @ w + b", fontsize=10, mono=True)
    label(ax, 7.2, 3.7, "our nn.Linear: ff.layers[0].weight", fontsize=10.5, weight="bold")
    box(ax, 6.35, 0.75, 1.7, 2.7, "W\n(out, in)\n= (3072, 768)", kind="layer", fontsize=10,
        mono=True)
    label(ax, 7.2, 0.45, "y = x @ W.T + b", fontsize=10, mono=True)
    arrow(ax, (4.1, 2.1), (6.2, 2.1), text="W = w.T", offset=(-0.55, 0.22), color="#c05621")
    label(ax, 4.7, 0.1, "x: (B, T, 768) -> y: (B, T, 3072), the same y in both; "
          "load_weights_into_gpt copies w.T into W (.T is a view, not a copy)", fontsize=8.5,
          color="#555555")
    return fig


def parameters_by_size():
    """Where the parameters of each released size live: embeddings, attention, feed-forward."""
    import matplotlib.pyplot as plt

    from gpt_download3 import count_gpt2_params

    parts = {"token embedding wte (V x C)": "#2f855a", "position embedding wpe (T x C)": "#9ae6b4",
             "attention: c_attn + c_proj": "#c05621", "feed-forward: c_fc + c_proj": "#f6ad55",
             "LayerNorms": "#6b46c1"}
    sizes = list(GPT2_HPARAMS)
    fig, ax = plt.subplots(figsize=(10.4, 3.4))
    for row, size in enumerate(sizes):
        hp = GPT2_HPARAMS[size]
        v, t, c, n = hp["n_vocab"], hp["n_ctx"], hp["n_embd"], hp["n_layer"]
        counts = [v * c, t * c, n * (4 * c * c + 4 * c), n * (8 * c * c + 5 * c),
                  n * 4 * c + 2 * c]
        assert sum(counts) == count_gpt2_params(hp)
        left = 0
        for (name, color), k in zip(parts.items(), counts):
            ax.barh(row, k / 1e6, left=left / 1e6, color=color, label=name if row == 0 else None)
            left += k
        ax.text(left / 1e6 + 15, row, f"{left / 1e6:,.1f}M  (wte: {counts[0] / left:.0%})",
                va="center", fontsize=9)
    ax.set_yticks(range(len(sizes)), [f"GPT-2 {s}" for s in sizes])
    ax.invert_yaxis()
    ax.set_xlim(0, 2000)
    ax.set_xlabel("parameters (millions), from hparams.json; the tied head adds none")
    ax.set_title("Where GPT-2's parameters are, by released size")
    ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


FIGURES = {
    "05_release_files.png": release_files,
    "05_name_mapping.png": name_mapping,
    "05_transpose.png": transpose,
    "05_parameters_by_size.png": parameters_by_size,
}
