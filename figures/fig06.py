"""Figures of notebook 06 (classification fine-tuning, lectures 33-36), with the notebook's numbers.

The parameter counts come from GPT-2 small's structure (our GPTModel built on PyTorch's meta
device: shapes, no weights) after `add_classification_head`; the token ids from GPT-2's tokenizer
and the first training batch of the balanced, split SMS Spam Collection, made as the notebook
makes it.
"""

import csv
import tempfile
from pathlib import Path

import torch
from common import COLORS, arrow, box, canvas, label
from torch.utils.data import DataLoader

import course_data
from previous_chapters import (
    GPT_CONFIG_124M,
    GPTModel,
    SpamDataset,
    add_classification_head,
    create_balanced_dataset,
    random_split,
    read_sms_spam,
)

PAD = 50256  # <|endoftext|>, the padding token


def count(module):
    return sum(p.numel() for p in module.parameters())


def draw_head_swap():
    """GPT-2 small after add_classification_head: what is frozen, what trains, the new head."""
    with torch.device("meta"):  # shapes only: no memory, no weights needed
        model = GPTModel({**GPT_CONFIG_124M, "qkv_bias": True, "drop_rate": 0.0})
    old_out = model.out_head.out_features
    add_classification_head(model, num_classes=2, num_trainable_blocks=1)
    n_layers = len(model.trf_blocks)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = count(model)
    emb = count(model.tok_emb) + count(model.pos_emb)
    block = count(model.trf_blocks[-1])

    fig, ax = canvas(8.6, 6.9)
    x, w, h = 0.4, 3.9, 0.62
    rows = [  # (y, text, kind)
        (0.35, "token ids  (B, T)", "token"),
        (1.25, f"tok_emb + pos_emb\n{emb:,} parameters", "frozen"),
        (2.15, f"trf_blocks[0] ... trf_blocks[{n_layers - 2}]\n"
               f"{n_layers - 1} blocks x {block:,}", "frozen"),
        (3.05, f"trf_blocks[{n_layers - 1}]  (the last block)\n{block:,}", "layer"),
        (3.95, f"final_norm\n{count(model.final_norm):,}", "layer"),
    ]
    for y, text, kind in rows:
        box(ax, x, y, w, h, text, kind=kind, fontsize=9.5)
    for (y0, _, _), (y1, _, _) in zip(rows, rows[1:]):
        arrow(ax, (x + w / 2, y0 + h), (x + w / 2, y1))
    # the two heads: the pretrained one is dropped, the new one trains
    y_head = 4.95
    arrow(ax, (x + w / 2, 3.95 + h), (x + w / 2, y_head))
    box(ax, x, y_head, w, h, f"out_head = nn.Linear(768, 2)\n{count(model.out_head):,} (new)",
        kind="layer", fontsize=9.5)
    arrow(ax, (x + w / 2, y_head + h), (x + w / 2, y_head + h + 0.3))
    label(ax, x + w / 2, y_head + h + 0.45, "logits  (B, T, 2)", mono=True, fontsize=9.5)

    xo = 5.0
    box(ax, xo, y_head, 3.2, h, f"nn.Linear(768, {old_out}, bias=False)\npretrained out_head",
        kind="frozen", fontsize=9, facecolor="#f7f7f7", edgecolor="#aaaaaa", color="#888888")
    ax.plot([xo + 0.1, xo + 3.1], [y_head + 0.05, y_head + h - 0.05], color=COLORS["loss"][1],
            linewidth=2)
    ax.plot([xo + 0.1, xo + 3.1], [y_head + h - 0.05, y_head + 0.05], color=COLORS["loss"][1],
            linewidth=2)
    label(ax, xo + 1.6, y_head + h + 0.45, f"was: logits (B, T, {old_out})", mono=True,
          fontsize=9, color="#888888")
    arrow(ax, (xo - 0.05, y_head + h / 2), (x + w + 0.08, y_head + h / 2),
          color=COLORS["loss"][1], text=None)
    label(ax, (x + w + xo) / 2, y_head + h / 2 + 0.22, "replaced", fontsize=8.5,
          color=COLORS["loss"][1])

    # legend and the count
    box(ax, 5.0, 3.2, 0.35, 0.3, kind="layer")
    label(ax, 5.5, 3.35, "trains (requires_grad=True)", fontsize=9, ha="left")
    box(ax, 5.0, 2.7, 0.35, 0.3, kind="frozen")
    label(ax, 5.5, 2.85, "frozen (requires_grad=False)", fontsize=9, ha="left")
    label(ax, 5.0, 1.95, f"GPT-2 small (124M):\n{trainable:,} of {total:,}\nparameters train "
          f"({trainable / total:.1%})", fontsize=9.5, ha="left", va="top")
    label(ax, 4.3, 6.62, "add_classification_head(model, num_classes=2, num_trainable_blocks=1)",
          mono=True, fontsize=9.5, weight="bold")
    return fig


def draw_last_token():
    """Causal attention: which tokens each position sees; only the last position's 2 logits
    are used, and with padding at the end it still sees the whole message."""
    tokenizer = course_data.get_gpt2_tokenizer()
    text = "Are you free tonight"
    ids = tokenizer.encode(text)
    n_pad = 3
    ids = ids + [PAD] * n_pad
    pieces = [tokenizer.decode([i]) if i != PAD else "<|endoftext|>" for i in ids]
    T = len(ids)

    cell = 0.5
    x0, y_top = 2.6, 4.75  # upper-left corner of the mask grid
    fig, ax = canvas(x0 + T * cell + 3.9, 6.1)
    for s in range(T):  # column headings: the tokens seen
        is_pad = ids[s] == PAD
        label(ax, x0 + (s + 0.5) * cell, y_top + 0.12, pieces[s].replace(" ", "\u2423"),
              fontsize=8.5, mono=True, rotation=60, ha="left", va="bottom",
              color="#888888" if is_pad else "black")
    for t in range(T):  # one row per position t
        y = y_top - (t + 1) * cell
        is_pad = ids[t] == PAD
        label(ax, x0 - 0.1, y + cell / 2, f"{ids[t]}", fontsize=8.5, mono=True, ha="right",
              color="#888888" if is_pad else "black")
        for s in range(T):
            sees = s <= t
            kind = ("frozen" if ids[s] == PAD else "token") if sees else "plain"
            box(ax, x0 + s * cell + 0.03, y + 0.03, cell - 0.06, cell - 0.06,
                "1" if sees else "0", kind=kind, fontsize=8, mono=True,
                color="black" if sees else "#bbbbbb")
        last = t == T - 1
        xl = x0 + T * cell + 0.35
        box(ax, xl, y + 0.06, 1.0, cell - 0.12, "2 logits", kind="loss" if last else "plain",
            fontsize=8.5, color="black" if last else "#aaaaaa",
            edgecolor=None if last else "#cccccc")
        arrow(ax, (x0 + T * cell + 0.05, y + cell / 2), (xl - 0.02, y + cell / 2),
              color="#333333" if last else "#cccccc")
    label(ax, x0 - 0.1, y_top + 0.12, "token id", fontsize=8.5, ha="right", va="bottom")
    xl = x0 + T * cell + 0.35
    y_last = y_top - T * cell
    arrow(ax, (xl + 1.02, y_last + cell / 2), (xl + 1.45, y_last + cell / 2))
    label(ax, xl + 1.5, y_last + cell / 2 + 0.25, "logits[:, -1, :]  (B, 2)", mono=True,
          fontsize=8.5, ha="left")
    label(ax, xl + 1.5, y_last + cell / 2 - 0.2, "argmax: 0 not spam, 1 spam", fontsize=8.5,
          ha="left")
    label(ax, xl + 0.5, y_top + 0.2, "outputs\n(B, T, 2)", fontsize=8.5, va="bottom", mono=True)
    label(ax, xl + 1.5, y_top - 1.0, "not used by the loss\nnor by the accuracy", fontsize=8.5,
          ha="left", color="#888888")
    label(ax, 0.15, 0.95, f'"{text}": {T - n_pad} tokens, then {n_pad} padding tokens ({PAD}) '
          "at the end.", fontsize=9, ha="left")
    label(ax, 0.15, 0.45, "Row t: the tokens position t attends to (causal mask). Only the last "
          "row sees every token of the message,\neven though its own token is padding.", fontsize=9,
          ha="left")
    return fig


def first_training_batch():
    """The notebook's first training batch (default settings): (8, max_length) ids, labels."""
    tokenizer = course_data.get_gpt2_tokenizer()
    df = read_sms_spam(course_data.fetch_data("SMSSpamCollection"))
    balanced = create_balanced_dataset(df, seed=123)
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    train_df, _, _ = random_split(balanced, 0.7, 0.1, seed=123)  # used_df at data_fraction 1.0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spam_train.csv"
        train_df.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
        dataset = SpamDataset(path, tokenizer)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(123))
    return next(iter(loader))


def draw_batch():
    """The first training batch: 8 messages of real token ids, padded with 50256 to 120."""
    inputs, labels = first_training_batch()  # (B, T), (B,)
    B, T = inputs.shape
    head, tail = 9, 3  # columns shown at the start and at the end of each row
    cw, rh = 0.62, 0.36
    x0, y0 = 0.45, 0.55
    fig, ax = canvas(x0 + (head + tail + 1) * cw + 1.9, y0 + B * rh + 1.15)
    cols = list(range(head)) + [None] + list(range(T - tail, T))
    for b in range(B):
        y = y0 + (B - 1 - b) * rh
        label(ax, x0 - 0.1, y + rh / 2, str(b), fontsize=8.5, ha="right")
        n_real = int((inputs[b] != PAD).sum())
        for k, t in enumerate(cols):
            x = x0 + k * cw
            if t is None:
                label(ax, x + cw / 2, y + rh / 2, "...", fontsize=9)
                continue
            v = int(inputs[b, t])
            box(ax, x + 0.02, y + 0.03, cw - 0.04, rh - 0.06, str(v),
                kind="frozen" if v == PAD else "token", fontsize=7.5, mono=True,
                color="#666666" if v == PAD else "black")
        xl = x0 + len(cols) * cw + 0.15
        box(ax, xl, y + 0.03, 0.35, rh - 0.06, str(int(labels[b])), kind="loss", fontsize=8.5,
            mono=True)
        label(ax, xl + 0.45, y + rh / 2, f"{n_real} real", fontsize=8, ha="left",
              color="#555555")
    top = y0 + B * rh
    label(ax, x0, top + 0.2, "token positions 0 ... 8", fontsize=8.5, ha="left")
    label(ax, x0 + (head + 1) * cw, top + 0.2, f"... {T - tail} ... {T - 1}", fontsize=8.5,
          ha="left")
    label(ax, x0 + len(cols) * cw + 0.33, top + 0.2, "label", fontsize=8.5)
    label(ax, x0 - 0.35, top + 0.7, f"input_batch (B, T) = ({B}, {T}),  target_batch (B,) = "
          f"({B},);  grey: padding {PAD}", fontsize=9.5, ha="left", weight="bold")
    label(ax, x0 - 0.35, 0.22, "first training batch at default settings (shuffled with the "
          "seeded generator); 0 = ham, 1 = spam", fontsize=8.5, ha="left", color="#555555")
    return fig


FIGURES = {
    "06_classification_head.png": draw_head_swap,
    "06_last_token.png": draw_last_token,
    "06_batch.png": draw_batch,
}
