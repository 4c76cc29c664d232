"""Figures of notebook 04 (pretraining, lectures 26-31, and the KV cache of section 4.9).

The cross-entropy picture uses the notebook's numbers: the token ids of section 4.2 and the
target probabilities that the untrained GPT-2 small of section 4.1 (GPTModel, seed 123, context
length 256) gives them. The temperature and top-k chart uses the notebook's toy vocabulary of
nine words and its made-up logits (sections 4.5-4.6). The training loop and the KV cache are
diagrams with the notebook's names and default settings.
"""

import matplotlib.pyplot as plt
import torch
from common import arrow, box, canvas, label
from matplotlib.patches import Patch

from previous_chapters import GPT_CONFIG_124M, GPTModel

# Section 4.2: "every effort moves you" and "I really like chocolate", as GPT-2 token ids.
INPUT_IDS = [[16833, 3626, 6100], [40, 1107, 588]]
TARGET_IDS = [[3626, 6100, 345], [1107, 588, 11311]]
INPUT_TEXT = [["every", " effort", " moves"], ["I", " really", " like"]]
TARGET_TEXT = [[" effort", " moves", " you"], [" really", " like", " chocolate"]]

# Sections 4.5-4.6: the toy next-token vocabulary and its logits.
VOCAB = ["ahead", "again", "closer", "forward", "home", "nowhere", "pizza", "slowly", "toward"]
LOGITS = torch.tensor([3.2, 0.6, 5.1, 6.6, 1.4, -0.8, -2.0, 2.3, 6.1])


def target_probabilities():
    """(B, T) probabilities of the targets under the untrained model of section 4.1."""
    torch.manual_seed(123)
    model = GPTModel({**GPT_CONFIG_124M, "context_length": 256}).eval()
    with torch.no_grad():
        probas = torch.softmax(model(torch.tensor(INPUT_IDS)), dim=-1)  # (B, T, V)
    return probas.gather(-1, torch.tensor(TARGET_IDS).unsqueeze(-1)).squeeze(-1)  # (B, T)


def draw_cross_entropy():
    """Inputs, targets shifted by one, p(target), -log p, and the mean: the loss."""
    p = target_probabilities()
    neg_log = -torch.log(p)
    loss = neg_log.mean().item()

    fig, ax = canvas(9.6, 5.1)
    cols = [(0.3, 1.45, "input token"), (2.15, 1.7, "target token\n(the next one)"),
            (4.25, 1.7, "p(target)\nsoftmax of the logits"), (6.35, 1.1, "-ln p")]
    top = 4.0
    for x, w, title in cols:
        label(ax, x + w / 2, top + 0.45, title, fontsize=9.5)
    h, gap = 0.42, 0.1
    y = top
    for b in range(2):
        label(ax, 0.12, y - 1.5 * (h + gap) + h, f"text {b + 1}", rotation=90, fontsize=9)
        for t in range(3):
            y -= h + gap
            box(ax, cols[0][0], y, cols[0][1], h, repr(INPUT_TEXT[b][t]), kind="token",
                fontsize=9, mono=True)
            arrow(ax, (cols[0][0] + cols[0][1] + 0.05, y + h / 2), (cols[1][0] - 0.05, y + h / 2))
            box(ax, cols[1][0], y, cols[1][1], h, repr(TARGET_TEXT[b][t]), kind="loss",
                fontsize=9, mono=True)
            box(ax, cols[2][0], y, cols[2][1], h, f"{p[b, t].item():.2e}", kind="embed",
                fontsize=9, mono=True)
            arrow(ax, (cols[2][0] + cols[2][1] + 0.05, y + h / 2), (cols[3][0] - 0.05, y + h / 2))
            box(ax, cols[3][0], y, cols[3][1], h, f"{neg_log[b, t].item():.2f}", kind="plain",
                fontsize=9, mono=True)
            arrow(ax, (cols[3][0] + cols[3][1] + 0.05, y + h / 2), (8.05, 2.55), color="#999999")
        y -= 0.25
    box(ax, 8.05, 2.1, 1.35, 0.9, f"mean\n= loss\n{loss:.3f}", kind="loss", fontsize=10)
    label(ax, 4.8, 0.22, "inputs, targets: (B, T) = (2, 3); logits (2, 3, 50257).  "
          "The untrained GPT-2 small gives each target about 1/50,257 = 2e-5, "
          "so the loss is near ln(50,257) = 10.8", fontsize=8.5, color="#555555")
    return fig


def draw_training_loop():
    """One optimizer step of train_model_simple, and what happens every eval_freq steps."""
    fig, ax = canvas(9.4, 4.6)
    w, h = 2.35, 0.85
    steps = [  # (x, y, text, kind)
        (0.3, 3.3, "train_loader\nbatch: inputs, targets\n(B, T) = (2, 256)", "token"),
        (3.5, 3.3, "model(input_batch)\nlogits (B, T, V)\n= (2, 256, 50257)", "layer"),
        (6.7, 3.3, "calc_loss_batch\ncross-entropy\n(one number)", "loss"),
        (6.7, 1.75, "loss.backward()\na gradient in each\nparameter's .grad", "loss"),
        (3.5, 1.75, "optimizer.step()\nAdamW moves every\nweight (lr 0.0004)", "layer"),
        (0.3, 1.75, "optimizer.zero_grad()\nclear the gradients,\nnext batch", "plain"),
    ]
    for x, y, text, kind in steps:
        box(ax, x, y, w, h, text, kind=kind, fontsize=9)
    arrow(ax, (0.3 + w, 3.3 + h / 2), (3.5, 3.3 + h / 2))
    arrow(ax, (3.5 + w, 3.3 + h / 2), (6.7, 3.3 + h / 2))
    arrow(ax, (6.7 + w / 2, 3.3), (6.7 + w / 2, 1.75 + h))
    arrow(ax, (6.7, 1.75 + h / 2), (3.5 + w, 1.75 + h / 2))
    arrow(ax, (3.5, 1.75 + h / 2), (0.3 + w, 1.75 + h / 2))
    arrow(ax, (0.3 + w / 2, 1.75 + h), (0.3 + w / 2, 3.3))
    label(ax, 4.7, 4.42, "one step (9 per epoch on The Verdict at the default settings, "
          "10 epochs)", fontsize=10)
    box(ax, 0.3, 0.2, 5.55, 0.95, "every eval_freq = 5 steps: evaluate_model\n"
        "training and validation loss on eval_iter = 5 batches each,\n"
        "model.eval(), no gradients; recorded with the tokens seen", kind="norm", fontsize=9)
    box(ax, 6.15, 0.2, 2.9, 0.95, "after each epoch:\ngenerate_and_print_sample\n"
        "(a greedy sample)", kind="text", fontsize=9)
    arrow(ax, (3.5 + w / 2, 1.75), (3.5 + w / 2, 1.15), color="#6b46c1")
    return fig


def draw_temperature_topk():
    """The toy vocabulary's next-token probabilities at three temperatures, then with top-k."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    x = torch.arange(len(VOCAB))
    for i, t in enumerate([1.0, 0.1, 5.0]):
        axes[0].bar(x + (i - 1) * 0.27, torch.softmax(LOGITS / t, dim=0), width=0.27,
                    label=f"T = {t}")
    axes[0].set_title("Temperature: softmax(logits / T)")
    top_logits, top_pos = torch.topk(LOGITS, 3)
    kept = torch.full_like(LOGITS, -torch.inf).scatter(0, top_pos, top_logits)
    for i, t in enumerate([1.0, 5.0]):
        axes[1].bar(x + (i - 0.5) * 0.36, torch.softmax(kept / t, dim=0), width=0.36,
                    label=f"top-k = 3, T = {t}", color=["tab:blue", "tab:green"][i])
    axes[1].set_title("Top-k = 3: the other logits become -inf")
    for ax in axes:
        ax.set_xticks(x, VOCAB, rotation=45)
        ax.legend(fontsize=8.5)
    axes[0].set_ylabel("probability of the next word")
    fig.suptitle("The word after \"every effort moves you\" (made-up logits)", fontsize=11)
    fig.tight_layout()
    return fig


def draw_kv_cache(prompt_len=4, steps=6):
    """One row per generation step, one square per position: computed, or read from the cache."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.7))
    titles = ["the lectures' generate: every position, every step",
              "with a KV cache: only the new token"]
    for ax, title, use_cache in zip(axes, titles, (False, True)):
        for step in range(steps):
            seen = prompt_len + step  # tokens the model sees at this step
            for pos in range(seen):
                computed = not use_cache or step == 0 or pos == seen - 1
                ax.add_patch(plt.Rectangle((pos, steps - 1 - step), 0.9, 0.9,
                                           color="tab:orange" if computed else "tab:blue",
                                           alpha=0.9 if computed else 0.35))
            work = seen if not use_cache or step == 0 else 1
            ax.text(prompt_len + steps, steps - 1 - step + 0.45, f"{work} computed", va="center")
        ax.set_xlim(0, prompt_len + steps + 3.2)
        ax.set_ylim(0, steps)
        ax.set_yticks([steps - 1 - s + 0.45 for s in range(steps)],
                      [f"step {s + 1}" for s in range(steps)])
        ax.set_xticks([q + 0.45 for q in range(prompt_len + steps - 1)],
                      range(prompt_len + steps - 1))
        ax.set_xlabel("token position")
        ax.set_title(title, fontsize=10.5)
        ax.set_aspect("equal")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.legend(handles=[Patch(color="tab:orange", label="computed (Q, K, V, the whole block)"),
                        Patch(color="tab:blue", alpha=0.35, label="K, V read from the cache")],
               loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


FIGURES = {
    "04_cross_entropy.png": draw_cross_entropy,
    "04_training_loop.png": draw_training_loop,
    "04_temperature_topk.png": draw_temperature_topk,
    "04_kv_cache.png": draw_kv_cache,
}
