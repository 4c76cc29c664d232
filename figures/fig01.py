"""Figures of notebook 01 (working with text, lectures 7-12), drawn with the notebook's real data.

Token ids come from GPT-2's tokenizer (tiktoken, through course_data), the merges from our own
BytePairTokenizer trained on The Verdict, the embedding numbers from the notebook's seeded tables.
"""

import torch
from common import COLORS, arrow, box, canvas, label
from matplotlib.patches import Circle

import course_data
from previous_chapters import BytePairTokenizer

STORY_START = "I HAD always thought Jack"  # the story's first words (six GPT-2 tokens)


def story():
    return course_data.fetch_data("the-verdict.txt").read_text(encoding="utf-8")


def shown(piece: str) -> str:
    """A token as text, its spaces made visible."""
    return piece.replace(" ", "\u2423")


def draw_pipeline():
    """text -> tokens -> token ids -> token embeddings, for the story's first words."""
    tokenizer = course_data.get_gpt2_tokenizer()
    ids = tokenizer.encode(STORY_START)
    pieces = [tokenizer.decode([i]) for i in ids]
    torch.manual_seed(123)  # the same table as the notebook's token_embedding_layer
    table = torch.nn.Embedding(tokenizer.n_vocab, 256)
    vectors = table(torch.tensor(ids)).detach()  # (T, C) = (6, 256)

    n, w, gap = len(ids), 1.05, 0.2
    x0 = 2.6
    width = x0 + n * (w + gap) + 0.3
    fig, ax = canvas(width, 6.3)
    xs = [x0 + k * (w + gap) for k in range(n)]
    mid = lambda k: xs[k] + w / 2  # noqa: E731
    rows = [  # (y of the row, its name, the code that makes it)
        (5.55, "text", "raw_text"),
        (4.45, "tokens", "BPE (tiktoken)"),
        (3.35, "token ids", "tokenizer.encode(text)"),
        (1.95, "token embeddings",
         "token_embedding_layer(ids)\n(T, C) = (6, 256)\nrandom until trained"),
    ]
    for y, name, code in rows:
        label(ax, 0.15, y + 0.15, name, fontsize=11, ha="left", weight="bold")
        label(ax, 0.15, y - 0.17, code, fontsize=8.5, ha="left", va="top", mono=True,
              color="#555555")
    box(ax, xs[0], 5.4, xs[-1] + w - xs[0], 0.5, f'"{STORY_START}"', kind="text", fontsize=12,
        mono=True)
    for k in range(n):
        arrow(ax, (mid(k), 5.38), (mid(k), 4.78), color="#777777")
        box(ax, xs[k], 4.3, w, 0.46, shown(pieces[k]), kind="token", fontsize=11, mono=True)
        arrow(ax, (mid(k), 4.28), (mid(k), 3.68), color="#777777")
        box(ax, xs[k], 3.2, w, 0.46, str(ids[k]), kind="token", fontsize=11, mono=True)
        arrow(ax, (mid(k), 3.18), (mid(k), 2.55), color="#777777")
        # the vector: its first four numbers, then the rest
        for r in range(4):
            box(ax, xs[k] + 0.1, 2.1 - r * 0.34, w - 0.2, 0.32, f"{vectors[k, r]:+.2f}",
                kind="embed", fontsize=9, mono=True)
        label(ax, mid(k), 0.62, "\u22ee", fontsize=12)
        label(ax, mid(k), 0.3, "256 numbers", fontsize=8, color="#555555")
    return fig


def draw_sliding_window():
    """The first tokens of the story and the input/target windows over them, two strides."""
    tokenizer = course_data.get_gpt2_tokenizer()
    ids = tokenizer.encode(story())[:13]
    max_length, n_windows = 4, 3
    w, x0, row = 0.72, 2.1, 0.34
    fig, ax = canvas(x0 + len(ids) * w + 0.2, 7.0)
    xs = [x0 + k * w for k in range(len(ids))]

    label(ax, 0.1, 6.62, "the story", fontsize=11, ha="left", weight="bold")
    label(ax, 0.1, 6.33, "enc_text[:13]", fontsize=8.5, ha="left", mono=True, color="#555555")
    for k, i in enumerate(ids):
        label(ax, xs[k] + w / 2, 6.82, shown(tokenizer.decode([i])), fontsize=8, mono=True)
        box(ax, xs[k] + 0.03, 6.3, w - 0.06, 0.34, str(i), kind="token", fontsize=8.5, mono=True)
        label(ax, xs[k] + w / 2, 6.16, str(k), fontsize=7, color="#777777")

    top = 5.55
    for stride in (1, 4):
        label(ax, 0.1, top + 0.2, f"max_length={max_length}\nstride={stride}", fontsize=10,
              ha="left", va="top", mono=True, weight="bold")
        for win in range(n_windows):
            s = win * stride
            y = top - win * (2 * row + 0.16)
            for kind, name, start in (("token", "x", s), ("loss", "y", s + 1)):
                yy = y if name == "x" else y - row
                label(ax, x0 - 0.12, yy + row / 2 - 0.02, f"{name}{win}", fontsize=9,
                      ha="right", mono=True)
                for k in range(start, start + max_length):
                    box(ax, xs[k] + 0.03, yy + 0.02, w - 0.06, row - 0.04, str(ids[k]),
                        kind=kind, fontsize=8, mono=True)
        top -= n_windows * (2 * row + 0.16) + 0.35
    box(ax, x0, 0.12, 0.3, 0.22, kind="token")
    label(ax, x0 + 0.4, 0.23, "input x (what the model sees)", fontsize=9, ha="left")
    box(ax, x0 + 4.2, 0.12, 0.3, 0.22, kind="loss")
    label(ax, x0 + 4.6, 0.23, "target y = x shifted by one token", fontsize=9, ha="left")
    return fig


def draw_embeddings():
    """Token embeddings (B, T, C) plus positional embeddings (T, C), broadcast over the batch."""
    B, T, C = 8, 4, 256  # the notebook's batch: batch_size=8, context_length=4, emb_dim=256

    def stack(x, y, w, h, layers, text, kind, depth=0.07):
        """A tensor drawn as `layers` sheets, one per batch row (only a few drawn)."""
        for j in reversed(range(layers)):
            box(ax, x + j * depth, y + j * depth, w, h, kind=kind)
        label(ax, x + w / 2, y + h / 2, text, fontsize=9.5, mono=True)

    fig, ax = canvas(10.2, 4.6)
    # token branch (top)
    stack(0.15, 2.9, 2.05, 1.0, 4, f"inputs\n(B, T) = ({B}, {T})\n[40, 367, 2885, 1464]\n...",
          "token")
    arrow(ax, (2.42, 3.4), (2.75, 3.4))
    box(ax, 2.8, 3.0, 2.05, 0.8, f"token_embedding_layer\nnn.Embedding(50257, {C})",
        kind="layer", fontsize=8.5, mono=True)
    arrow(ax, (4.9, 3.4), (5.55, 3.4))
    stack(5.6, 2.85, 1.7, 1.1, 4, f"token_embeddings\n(B, T, C)\n({B}, {T}, {C})", "embed")
    # position branch (bottom)
    box(ax, 0.15, 0.75, 2.05, 0.8, "torch.arange(T)\n[0, 1, 2, 3]", kind="token", fontsize=9,
        mono=True)
    arrow(ax, (2.25, 1.15), (2.75, 1.15))
    box(ax, 2.8, 0.75, 2.05, 0.8, f"pos_embedding_layer\nnn.Embedding({T}, {C})",
        kind="layer", fontsize=8.5, mono=True)
    arrow(ax, (4.9, 1.15), (5.55, 1.15))
    box(ax, 5.6, 0.6, 1.7, 1.1, f"pos_embeddings\n(T, C)\n({T}, {C})", kind="embed",
        fontsize=9.5, mono=True)
    # the sum
    ax.add_patch(Circle((8.0, 2.3), 0.22, facecolor="white", edgecolor="#333333", linewidth=1.2))
    label(ax, 8.0, 2.3, "+", fontsize=14)
    arrow(ax, (7.6, 3.1), (7.85, 2.47))
    arrow(ax, (7.35, 1.2), (7.84, 2.15))
    label(ax, 7.55, 1.55, "same rows for\nall B samples\n(broadcast)", fontsize=8, ha="left",
          va="top", color="#555555")
    arrow(ax, (8.24, 2.3), (8.55, 2.3))
    stack(8.6, 1.75, 1.3, 1.1, 4, "input_\nembeddings\n(B, T, C)", "embed")
    label(ax, 9.25, 1.5, f"({B}, {T}, {C})", fontsize=9, mono=True)
    label(ax, 5.1, 4.38, "B = batch, T = tokens per window, C = emb_dim", fontsize=9,
          color="#555555")
    return fig


def draw_bpe_merges():
    """The first merges our BytePairTokenizer learns on The Verdict, and one word built by them."""
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    text = story()
    tok = BytePairTokenizer()
    history = tok.train(text, 12)  # the first twelve merges
    word, steps = " Gisburn", []
    tok_word = BytePairTokenizer()
    for k in range(160):  # merge by merge, until the name is one token
        ids = tok_word.encode(word)
        if not steps or steps[-1][1] != ids:
            steps.append((k, ids))
        if len(ids) == 1:
            break
        tok_word.train(text, 1)

    fig = plt.figure(figsize=(11.5, 4.6))
    grid = GridSpec(1, 2, width_ratios=[1.2, 1], wspace=0.12, left=0.2, right=0.99,
                    bottom=0.12, top=0.88)
    ax = fig.add_subplot(grid[0])
    names = [f"{len(history) - j}. {shown(tok.vocab[p[0]].decode())!r} + "
             f"{shown(tok.vocab[p[1]].decode())!r} -> {shown(tok.vocab[i].decode())!r}"
             for j, (p, i, _) in enumerate(reversed(history))]
    counts = [c for _, _, c in reversed(history)]
    ax.barh(range(len(history)), counts, color=COLORS["token"][0],
            edgecolor=COLORS["token"][1])
    ax.set_yticks(range(len(history)), names, fontsize=9, family="DejaVu Sans Mono")
    for j, c in enumerate(counts):
        ax.text(c + 4, j, str(c), va="center", fontsize=8)
    ax.set_xlabel("how often the pair occurs when it is merged")
    ax.set_title("The first 12 merges learned on The Verdict\n(new ids 256, 257, ...)",
                 fontsize=10)
    ax.set_xlim(0, max(counts) * 1.15)

    ax2 = fig.add_subplot(grid[1])
    ax2.set_axis_off()
    ax2.set_xlim(0, 5.6)
    ax2.set_ylim(-0.2, len(steps) * 0.55 + 0.2)
    ax2.set_title(f"The name {word!r} as merges are learned", fontsize=10)
    for r, (k, ids) in enumerate(steps):
        y = (len(steps) - 1 - r) * 0.55
        ax2.text(0.05, y + 0.2, f"after {k:3d} merges", fontsize=9,
                 family="DejaVu Sans Mono", va="center")
        x = 1.75
        for i in ids:
            piece = shown(tok_word.vocab[i].decode())
            wpiece = 0.22 + 0.17 * len(piece)
            box(ax2, x, y, wpiece, 0.4, piece, kind="text" if i < 256 else "token",
                fontsize=9, mono=True)
            x += wpiece + 0.06
    ax2.text(0.05, -0.15, "grey: single bytes (ids 0-255); blue: tokens made by merges",
             fontsize=8.5, color="#555555")
    return fig


FIGURES = {
    "01_pipeline.png": draw_pipeline,
    "01_sliding_window.png": draw_sliding_window,
    "01_embeddings.png": draw_embeddings,
    "01_bpe_merges.png": draw_bpe_merges,
}
