"""Figures of notebook 07 (instruction fine-tuning): the Alpaca prompt of one entry, and a toy
batch as custom_collate_fn pads, shifts and masks it (its real output, computed here)."""

import torch
from common import COLORS, arrow, box, canvas, label

from previous_chapters import custom_collate_fn

PAD = 50256
TOY_BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]  # the toy batch of section 7.2

# entry 50 of instruction-data.json, as section 7.1 prints it
ENTRY = {"instruction": "Identify the correct spelling of the following word.",
         "input": "Ocassion", "output": "The correct spelling is 'Occasion.'"}


def draw_alpaca_prompt():
    """The Alpaca prompt of entry 50: the part format_input writes (the prompt) and the part the
    model learns to produce after it (the response and one end-of-text token)."""
    fig, ax = canvas(9.6, 5.0)
    x, w = 0.3, 5.9
    parts = [  # (y, height, text, kind)
        (4.05, 0.6, "Below is an instruction that describes a task. Write a response\n"
                    "that appropriately completes the request.", "text"),
        (3.2, 0.6, f"### Instruction:\n{ENTRY['instruction']}", "token"),
        (2.35, 0.6, f"### Input:\n{ENTRY['input']}", "token"),
        (1.5, 0.6, f"### Response:\n{ENTRY['output']}", "embed"),
        (0.75, 0.45, "<|endoftext|>  (50256, appended by custom_collate_fn)", "embed"),
    ]
    for y, h, text, kind in parts:
        box(ax, x, y, w, h, text, kind=kind, fontsize=9.5, mono=True)
    label(ax, x + w / 2, 4.8, "entry 50 of instruction-data.json as one training text",
          fontsize=11, weight="bold")
    # braces on the right: what each part is
    bx = x + w + 0.2
    for top, bottom, text, color in [
        (4.65, 2.35, "format_input(entry): the prompt.\nGiven to the model when it answers.\n"
                     "'### Input:' is left out when\nthe input is empty.", COLORS["token"][1]),
        (2.1, 0.75, "What the model learns to produce\nafter the prompt: the answer,\n"
                    "then end-of-text, so it stops.", COLORS["embed"][1]),
    ]:
        ax.plot([bx, bx + 0.12, bx + 0.12, bx], [top, top, bottom, bottom], color=color, lw=1.5)
        label(ax, bx + 0.25, (top + bottom) / 2, text, fontsize=9.5, ha="left", color=color)
    label(ax, x, 0.35, "In training every token of the text is a target (Exercise 7.2 masks the "
          "prompt's targets with -100 too).", fontsize=9, ha="left", color="#555555")
    return fig


def draw_collate_batch():
    """The toy batch through custom_collate_fn: padded rows, inputs = padded[:, :-1],
    targets = padded[:, 1:] with all but the first end-of-text target set to -100, and where
    allowed_max_length=3 cuts."""
    inputs, targets = custom_collate_fn(TOY_BATCH)
    longest = max(len(item) for item in TOY_BATCH) + 1
    padded = [item + [PAD] * (longest - len(item)) for item in TOY_BATCH]
    assert torch.equal(inputs, torch.tensor(padded)[:, :-1])

    cw, ch, x0 = 0.78, 0.36, 2.6  # cell width and height, first column's x
    fig, ax = canvas(10.4, 6.6)

    def cell(col, y, value, kind):
        text = str(value)
        box(ax, x0 + col * cw + 0.03, y, cw - 0.06, ch - 0.05, text, kind=kind, fontsize=9,
            mono=True)

    def kind_of(value, kept_end):
        if value == -100:
            return "loss"
        if value == PAD:
            return "embed" if kept_end else "frozen"
        return "token"

    blocks = [  # (title, rows, first column, top y)
        (f"padded: each item + 50256s\nto the longest + 1 = {longest}", padded, 0, 5.7),
        ("inputs = padded[:, :-1]\n(B, T) = (3, 5)", inputs.tolist(), 0, 4.05),
        ("targets = padded[:, 1:],\nthen -100 after the first\nend-of-text  (3, 5)",
         targets.tolist(), 1, 2.4),
    ]
    for title, rows, first, top in blocks:
        label(ax, 0.15, top - 1.5 * ch + ch / 2, title, fontsize=9.5, ha="left")
        for r, row in enumerate(rows):
            seen_pad = False
            for c, value in enumerate(row):
                kept = title.startswith("targets") and value == PAD and not seen_pad
                seen_pad |= value == PAD
                cell(first + c, top - (r + 1) * ch, value, kind_of(value, kept))
    for c in range(longest):
        label(ax, x0 + c * cw + cw / 2, 5.85, f"{c}", fontsize=8, color="#777777")
    label(ax, x0 - 0.1, 5.85, "position in padded row", fontsize=8, color="#777777", ha="right")
    # the shift: targets start one column to the right of the inputs
    ax.annotate("", xy=(x0 + 1.5 * cw, 2.43), xytext=(x0 + 0.5 * cw, 2.92),
                arrowprops=dict(arrowstyle="-|>", color="#333333", lw=1.2))
    label(ax, x0 + 1.0 * cw + 0.05, 2.7, "shift by one", fontsize=8.5, ha="left")
    # allowed_max_length=3: the first three columns of inputs and of targets
    red = COLORS["loss"][1]
    for first, top in [(0, 4.05), (1, 2.4)]:
        xc = x0 + (first + 3) * cw
        ax.plot([xc, xc], [top - 3 * ch - 0.08, top + 0.08], color=red, lw=1.5, ls="--")
        label(ax, x0 + 5 * cw + 0.2, 4.05 - 1.5 * ch, "allowed_max_length=3 keeps\nthe columns "
          "left of the\ndashed lines", fontsize=8.5, ha="left", color=red)
    # legend
        lx, ly = 0.15, 0.7
    for i, (kind, text) in enumerate([
            ("token", "a token id of the item"),
            ("frozen", "50256: end-of-text / padding"),
            ("embed", "50256: the first end-of-text\ntarget, kept (learn to stop)"),
            ("loss", "-100: ignored by\ncross-entropy")]):
        box(ax, lx + i * 2.6, ly, 0.45, 0.3, kind=kind)
        label(ax, lx + i * 2.6 + 0.55, ly + 0.15, text, fontsize=8.5, ha="left")
    label(ax, 0.15, 0.25, "custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]): the numbers "
          "are its output.", fontsize=9, ha="left", color="#555555")
    return fig


def draw_pipeline():
    """The stages of notebook 07, with the names and numbers the notebook uses."""
    fig, ax = canvas(10.0, 3.6)
    w, h = 2.15, 0.85
    top = [  # (text, kind, section)
        ("instruction-data.json\n1,100 entries", "text", "7.1"),
        ("split in file order\n935 / 55 / 110\n(train / val / test)", "text", "7.1"),
        ("format_input + response\nInstructionDataset\n(token ids)", "token", "7.2"),
        ("custom_collate_fn\npad 50256, shift,\n-100; batches (8, T)", "loss", "7.2-7.3"),
    ]
    bottom = [
        ("GPT-2 medium\n355M, OpenAI's weights\nconfig_from_hparams", "layer", "7.4"),
        ("train_model_simple\n2 epochs, AdamW\nlr 5e-5, wd 0.1", "layer", "7.5"),
        ("generate answers\nto the 110 test\nprompts (greedy)", "embed", "7.6"),
        ("evaluate: ROUGE-L,\nLlama 3 8B judge\n(Ollama), 0-100", "norm", "7.7"),
    ]
    xs = [0.2 + i * (w + 0.35) for i in range(4)]
    for row, y, label_y in [(top, 2.35, 2.35 + h + 0.13), (bottom, 0.45, 0.3)]:
        for i, (text, kind, section) in enumerate(row):
            box(ax, xs[i], y, w, h, text, kind=kind, fontsize=9)
            label(ax, xs[i] + w / 2, label_y, f"section {section}", fontsize=8, color="#777777")
            if i:
                arrow(ax, (xs[i - 1] + w, y + h / 2), (xs[i], y + h / 2))
    # the batches feed the training loop
    arrow(ax, (xs[3] + w / 2, 2.35), (xs[1] + w / 2, 0.45 + h), text="batches",
          offset=(0.1, 0.12))
    return fig


FIGURES = {
    "07_pipeline.png": draw_pipeline,
    "07_alpaca_prompt.png": draw_alpaca_prompt,
    "07_collate_batch.png": draw_collate_batch,
}
