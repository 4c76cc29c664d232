"""Talk to your model (issue 17): a Gradio web app with a chat tab for notebook 07's
instruction-fine-tuned GPT-2 and a spam tab for notebook 06's classifier.

    python -m chat_app                  # or: make chat; then open http://127.0.0.1:7860
    python -m chat_app --chat-model 124M             # OpenAI's GPT-2 from the model folder
    python -m chat_app --chat-model outputs/gpt2-124M-sft.pth --port 7861

The chat tab writes each message into notebook 07's Alpaca prompt (`format_input`, then the
"### Response:" tag the model was fine-tuned to answer after) and streams the answer token by
token from `generate_stream`, the loop of `generate` (KV cache, temperature, top-k): with the same
seed, the page shows exactly the tokens `generate` returns. Each message is answered on its own,
as in notebook 07's training data (no conversation history goes into the prompt). The spam tab
shows the softmax of `classifier_logits`, the logits `classify_review` decides by.

A model is a PyTorch state_dict (`torch.save(model.state_dict(), path)`, as notebooks 06 and 07
save them; the GPT-2 size comes from the file name `gpt2-<size>-sft.pth` or --chat-size), the
name of a GPT-2 size in the model folder (OpenAI's files, as notebook 05 downloads them: not
fine-tuned for chat, and labelled so), or a Hugging Face GPT-2 folder. A model that cannot be
loaded leaves a message in the page saying what to do; the page can load another one.

In a notebook (Jupyter or Colab), `build_app(...).launch()` shows the app inline.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt_download3 import GPT2_HPARAMS, download_and_load_gpt2
from input_checks import check_int, check_sampling, check_text, check_token_ids, shape_of
from previous_chapters import (
    GPTModel,
    add_classification_head,
    classifier_logits,
    config_from_hparams,
    format_input,
    generate_stream,
    gpt_from_pretrained,
    load_from_file,
    load_weights_into_gpt,
)

__all__ = ["LoadError", "LoadedModel", "DEFAULTS", "model_config", "load_chat_model",
           "load_spam_model", "chat_prompt", "stream_answer", "spam_probabilities", "build_app",
           "main"]

END_OF_TEXT = 50256  # GPT-2's <|endoftext|>: notebook 07's answers end with it
SPAM_CLASSES = ("not spam", "spam")  # notebook 06's labels 0 and 1
DEFAULTS = {
    # where notebooks 06 and 07 write (their SETTINGS out_dir) and read GPT-2 (models_dir)
    "out_dir": os.environ.get("COURSE_OUTPUT_DIR", "outputs"),
    "models_dir": os.environ.get("COURSE_MODELS_DIR", "models"),
    "chat_model": "gpt2-355M-sft.pth",  # notebook 07 at its default settings (GPT-2 medium)
    "spam_model": "review_classifier.pth",  # notebook 06
    "spam_size": "124M",  # notebook 06 fine-tunes GPT-2 small
    "spam_max_length": 120,  # notebook 06's train_dataset.max_length on the full data
    "host": "127.0.0.1", "port": 7860,
}


class LoadError(ValueError):
    """A model could not be loaded; the message says why and what to do (shown in the page)."""


@dataclass
class LoadedModel:
    """A model ready for the page: the module, a one-line description, and whether it was
    fine-tuned to follow instructions (False for OpenAI's plain GPT-2)."""
    model: torch.nn.Module | None
    label: str
    chat_tuned: bool = False


def _check_path(value, name, optional=False):
    """`value` if it is a str or os.PathLike (or None when optional); TypeError otherwise."""
    if (value is None and optional) or isinstance(value, (str, os.PathLike)):
        return value
    raise TypeError(f"{name} must be a path or name (a str or pathlib.Path)"
                    f"{' or None' if optional else ''}, not {shape_of(value)}")


def _check_gpt(model, who, classes=None):
    """`model` a GPTModel: a language model (classes None) or a classifier of `classes`."""
    if not isinstance(model, torch.nn.Module) or not all(
            hasattr(model, a) for a in ("cfg", "pos_emb", "out_head")):
        hint = (" Pass its .model (a LoadedModel holds the model and its label)."
                if isinstance(model, LoadedModel) else "")
        raise TypeError(f"{who} takes a GPTModel, not {shape_of(model)}.{hint}")
    if model.pos_emb.weight.is_meta:
        raise ValueError(f"{who}: the model's weights are on the meta device (built without "
                         "memory); load its weights first (load_chat_model does).")
    outputs = getattr(model.out_head, "out_features", None)
    if classes is None and outputs != model.cfg["vocab_size"]:
        raise ValueError(f"{who} takes a language model, but this model's head has {outputs} "
                         f"outputs, not its {model.cfg['vocab_size']} tokens: a classifier? Use "
                         "spam_probabilities (the spam tab) for it.")
    if classes is not None and outputs != classes:
        raise ValueError(f"{who} takes notebook 06's spam classifier ({classes} outputs), but "
                         f"this model's head has {outputs}: a language model? Use stream_answer "
                         "(the chat tab) for it.")


def _check_tokenizer(tokenizer):
    if not all(callable(getattr(tokenizer, a, None)) for a in ("encode", "decode")):
        raise TypeError(f"tokenizer must be GPT-2's tokenizer (course_data.get_gpt2_tokenizer()), "
                        f"not {shape_of(tokenizer)}")


def model_config(size, models_dir):
    """The course's GPTModel config of GPT-2 `size`: a released size ("124M", ...) or a folder
    under models_dir holding OpenAI's hparams.json (such as the tests' "tiny-test")."""
    if not isinstance(size, str) or not size.strip():
        raise TypeError(f"size must be a GPT-2 size such as '124M' (a str), not {shape_of(size)}")
    _check_path(models_dir, "models_dir")
    if size in GPT2_HPARAMS:
        return config_from_hparams(GPT2_HPARAMS[size])
    path = Path(models_dir) / size / "hparams.json"
    if not path.is_file():
        raise LoadError(f"No GPT-2 size {size!r}: it is none of {', '.join(GPT2_HPARAMS)} and "
                        f"{path} does not exist. Pass the size the model was fine-tuned from.")
    try:
        return config_from_hparams(json.loads(path.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise LoadError(f"{path} is not GPT-2's hparams.json ({type(e).__name__}: {e}); "
                        "download the model again (download_and_load_gpt2).") from None


def _read_state_dict(path, what, hint):
    """A state_dict saved by a notebook (load_from_file), with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"No {what} checkpoint at {path}. {hint}")
    try:
        state = load_from_file(path, torch.device("cpu"))
    except ValueError as e:  # truncated file, not a PyTorch file, a pickled object, ...
        raise LoadError(str(e)) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise LoadError(f"{path} holds a {type(state).__name__}, not a model's state_dict "
                        "(save one with torch.save(model.state_dict(), path)).")
    return state


def _fill(model, state, path):
    """load_state_dict, which checks keys and shapes before it copies (GPTModel's)."""
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise LoadError(f"{path}: {e}") from e
    return model.eval()


def load_chat_model(spec, models_dir=DEFAULTS["models_dir"], size=None):
    """A LoadedModel for the chat tab. `spec`: a .pth state_dict of notebook 07's fine-tuned
    GPTModel (its GPT-2 size from `size` or the name gpt2-<size>-sft.pth), a GPT-2 size in
    `models_dir` (OpenAI's files; not chat fine-tuned), or a Hugging Face GPT-2 folder."""
    _check_path(spec, "spec")
    _check_path(models_dir, "models_dir")
    _check_path(size, "size", optional=True)
    spec = str(spec).strip()
    if not spec:
        raise LoadError("Name a checkpoint (.pth) or a GPT-2 size such as 124M.")
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():  # Hugging Face's layout
        try:
            model = gpt_from_pretrained(path)
        except (OSError, ValueError) as e:
            raise LoadError(f"{path}: {e}") from e
        return LoadedModel(model, f"Hugging Face GPT-2 from {path} (not fine-tuned for chat)")
    if path.suffix != ".pth" and "/" not in spec and os.sep not in spec:  # a size name
        model_dir = Path(models_dir) / spec
        if not (model_dir / "hparams.json").is_file():
            raise LoadError(f"GPT-2 {spec} is not in the model folder {models_dir} (no "
                            f"{model_dir / 'hparams.json'}). Download it first, as notebook 05 "
                            f"does: download_and_load_gpt2({spec!r}, {str(models_dir)!r}).")
        try:
            settings, params = download_and_load_gpt2(spec, models_dir)
            model = load_weights_into_gpt(GPTModel(config_from_hparams(settings)), params)
        except (OSError, ValueError) as e:  # CheckpointError is a ValueError
            raise LoadError(f"GPT-2 {spec} in {models_dir} could not be read: {e}") from e
        return LoadedModel(model.eval(), f"OpenAI's GPT-2 {spec}, not fine-tuned for chat: it "
                           "continues the prompt rather than answering it")
    hint = ("Run notebook 07 to its end (it saves gpt2-<size>-sft.pth in its out_dir), or name "
            "another checkpoint, or a GPT-2 size such as 124M.")
    if not path.is_file():
        raise LoadError(f"No chat model checkpoint at {path}. {hint}")
    if size is None:
        match = re.fullmatch(r"gpt2-(.+)-sft\.pth", path.name)
        if match is None:
            raise LoadError(f"Which GPT-2 size is {path.name}? Its name is not notebook 07's "
                            "gpt2-<size>-sft.pth: pass the size (--chat-size 124M, say).")
        size = match.group(1)
    state = _read_state_dict(path, "chat model", hint)
    head = state.get("out_head.weight")
    if head is not None and head.shape[0] == len(SPAM_CLASSES):
        raise LoadError(f"{path} is a classifier ({head.shape[0]} outputs), such as notebook "
                        "06's: load it in the spam tab.")
    model = _fill(GPTModel(model_config(size, models_dir)), state, path)
    return LoadedModel(model, f"GPT-2 {size} fine-tuned on instructions ({path.name})",
                       chat_tuned=True)


def load_spam_model(path, models_dir=DEFAULTS["models_dir"], size=DEFAULTS["spam_size"]):
    """A LoadedModel for the spam tab: notebook 06's classifier state_dict (GPT-2 `size` with
    add_classification_head's 2-class head)."""
    _check_path(path, "path")
    _check_path(models_dir, "models_dir")
    _check_path(size, "size")
    path = Path(str(path).strip())
    state = _read_state_dict(path, "spam classifier", "Run notebook 06 to its end (it saves "
                             "review_classifier.pth in its out_dir), or name another checkpoint.")
    head = state.get("out_head.weight")
    if head is not None and head.shape[0] != len(SPAM_CLASSES):
        raise LoadError(f"{path} has {head.shape[0]} outputs, not the spam classifier's "
                        f"{len(SPAM_CLASSES)}: is it a language model? Load it in the chat tab.")
    model = add_classification_head(GPTModel(model_config(size, models_dir)),
                                    num_classes=len(SPAM_CLASSES))
    return LoadedModel(_fill(model, state, path), f"GPT-2 {size} spam classifier ({path.name})")


def chat_prompt(message):
    """Notebook 07's Alpaca prompt for one instruction, ending where the answer begins."""
    check_text(message, "the message")
    return format_input({"instruction": message, "input": ""}) + "\n\n### Response:\n"


def stream_answer(model, tokenizer, message, max_new_tokens=256, temperature=0.0, top_k=None,
                  seed=123):
    """The answer to `message` so far, after each new token (a generator of growing texts);
    the tokens are those of generate(..., eos_id=50256) after torch.manual_seed(seed). The
    arguments are checked at the call, before the first token is asked for."""
    _check_gpt(model, "stream_answer")
    _check_tokenizer(tokenizer)
    if not check_text(message, "the message").strip():
        raise ValueError("the message is empty; type an instruction, e.g. 'Name three primary "
                         "colors.'")
    check_sampling(max_new_tokens, temperature, top_k)  # generate's checks, now, not at a token
    check_int(seed, "seed", minimum=-(2**63), maximum=2**64 - 1)  # torch.manual_seed's range
    prompt_ids = torch.tensor([tokenizer.encode(chat_prompt(message))])  # (1, T)
    check_token_ids(prompt_ids, model.cfg["vocab_size"], what="the prompt's token ids")
    prompt_ids = prompt_ids.to(model.pos_emb.weight.device)
    return _answer_stream(model, tokenizer, prompt_ids, max_new_tokens, temperature, top_k, seed)


def _answer_stream(model, tokenizer, prompt_ids, max_new_tokens, temperature, top_k, seed):
    torch.manual_seed(seed)
    new_ids = []
    for idx_next in generate_stream(model, prompt_ids, max_new_tokens,
                                    model.cfg["context_length"], temperature, top_k,
                                    eos_id=END_OF_TEXT):
        new_ids.append(idx_next.item())
        yield tokenizer.decode(new_ids)  # all of it again: a character may span two tokens


def spam_probabilities(model, tokenizer, text, max_length=DEFAULTS["spam_max_length"]):
    """{class name: probability} of one text: the softmax of classifier_logits."""
    _check_gpt(model, "spam_probabilities", classes=len(SPAM_CLASSES))
    _check_tokenizer(tokenizer)
    check_text(text, "the text to classify")
    check_int(max_length, "max_length", minimum=1)
    probs = torch.softmax(classifier_logits(text, model, tokenizer, "cpu", max_length), dim=-1)
    return {name: probs[i].item() for i, name in enumerate(SPAM_CLASSES)}


def _try_load(loader, *args):
    try:
        return loader(*args)
    except LoadError as e:
        return LoadedModel(None, f"No model loaded. {e}")


def _status(loaded, kind):
    label = html.escape(loaded.label)  # a path or "gpt2-<size>" is text, not HTML
    if loaded.model is None:
        return f"⚠️ **{label}**"
    note = "" if loaded.chat_tuned or kind == "spam" else " ⚠️ **Not fine-tuned for chat.**"
    return f"**Model:** {label}.{note}"


def build_app(chat_model=None, spam_model=None, models_dir=DEFAULTS["models_dir"],
              chat_size=None, spam_size=DEFAULTS["spam_size"],
              spam_max_length=DEFAULTS["spam_max_length"]):
    """The gr.Blocks page (not launched): a chat tab and a spam tab. chat_model / spam_model:
    what load_chat_model / load_spam_model take; None means notebooks 07 / 06's output file."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    import gradio as gr

    import course_data

    out_dir = Path(DEFAULTS["out_dir"])
    chat_model = chat_model or out_dir / DEFAULTS["chat_model"]
    spam_model = spam_model or out_dir / DEFAULTS["spam_model"]
    tokenizer = course_data.get_gpt2_tokenizer()
    # One model per tab, shared by every browser tab of this server (models are too big to copy
    # into each session's gr.State); a load replaces it.
    models = {"chat": _try_load(load_chat_model, chat_model, models_dir, chat_size),
              "spam": _try_load(load_spam_model, spam_model, models_dir, spam_size)}

    def load_chat(spec):
        spec = spec.strip()
        size = chat_size if spec == str(chat_model) else None
        models["chat"] = _try_load(load_chat_model, spec, models_dir, size)
        return _status(models["chat"], "chat")

    def load_spam(spec):
        models["spam"] = _try_load(load_spam_model, spec, models_dir, spam_size)
        return _status(models["spam"], "spam")

    def respond(message, history, temperature, top_k, max_tokens, seed):
        history = list(history or []) + [{"role": "user", "content": message}]
        loaded = models["chat"]
        if loaded.model is None:
            yield history + [{"role": "assistant", "content": loaded.label}], ""
            return
        if not message.strip():
            yield history + [{"role": "assistant", "content": "(Type an instruction first.)"}], ""
            return
        answer = ""
        yield history + [{"role": "assistant", "content": answer}], ""
        for answer in stream_answer(loaded.model, tokenizer, message, int(max_tokens),
                                    float(temperature), int(top_k) or None, int(seed)):
            yield history + [{"role": "assistant", "content": answer}], ""
        if not answer:
            yield history + [{"role": "assistant", "content": "(The model ended at once.)"}], ""

    def classify(text):
        loaded = models["spam"]
        if loaded.model is None:
            return {}, loaded.label
        try:
            probs = spam_probabilities(loaded.model, tokenizer, text, int(spam_max_length))
        except ValueError as e:  # an empty text
            return {}, f"⚠️ {e}"
        return probs, " · ".join(f"{name}: {p:.6f}" for name, p in probs.items())

    with gr.Blocks(title="Talk to your model") as app:
        gr.Markdown("# Talk to your model\nThe GPT-2 you fine-tuned in the course: notebook 07's "
                    "instruction model and notebook 06's spam classifier.")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_status = gr.Markdown(_status(models["chat"], "chat"), elem_id="chat-status")
                chatbot = gr.Chatbot(elem_id="chatbot", height=360, render_markdown=False,
                                     label="Each message is answered on its own (Alpaca prompt)")
                message = gr.Textbox(placeholder="An instruction, e.g. Name three primary colors.",
                                     show_label=False, elem_id="message")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")
                with gr.Accordion("Sampling", open=False, elem_id="chat-sampling"):
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature "
                                            "(0: greedy)", elem_id="temperature")
                    top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0: all tokens)",
                                      elem_id="top-k")
                    max_tokens = gr.Slider(1, 1024, value=256, step=1, label="Max new tokens",
                                           elem_id="max-tokens")
                    seed = gr.Number(123, precision=0, label="Seed", elem_id="seed")
                with gr.Accordion("Model", open=False, elem_id="chat-model-box"):
                    chat_spec = gr.Textbox(str(chat_model), label="Checkpoint (.pth), GPT-2 size "
                                           "in the model folder, or Hugging Face folder",
                                           elem_id="chat-model")
                    chat_load = gr.Button("Load", elem_id="chat-load")
            with gr.Tab("Spam", id="spam"):
                spam_status = gr.Markdown(_status(models["spam"], "spam"), elem_id="spam-status")
                spam_text = gr.Textbox(lines=3, label="A message", elem_id="spam-text",
                                       placeholder="You have won a free cruise! Text WIN now.")
                spam_button = gr.Button("Classify", variant="primary", elem_id="spam-classify")
                spam_label = gr.Label(num_top_classes=2, label="Class probabilities",
                                      elem_id="spam-label")
                spam_probs = gr.Markdown(elem_id="spam-probs")
                with gr.Accordion("Model", open=False, elem_id="spam-model-box"):
                    spam_spec = gr.Textbox(str(spam_model), label="Classifier checkpoint (.pth)",
                                           elem_id="spam-model")
                    spam_load = gr.Button("Load", elem_id="spam-load")

        inputs = [message, chatbot, temperature, top_k, max_tokens, seed]
        # one answer at a time, from either trigger: they share the model and torch's seed
        answering = [trigger(respond, inputs, [chatbot, message], concurrency_limit=1,
                             concurrency_id="answer") for trigger in (send.click, message.submit)]
        stop.click(None, cancels=answering)
        clear.click(lambda: [], None, chatbot, cancels=answering)
        chat_load.click(load_chat, chat_spec, chat_status)
        for event in (spam_button.click, spam_text.submit):
            event(classify, spam_text, [spam_label, spam_probs])
        spam_load.click(load_spam, spam_spec, spam_status)
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m chat_app", description="A web page to chat with notebook 07's model and "
        "try notebook 06's spam classifier; open the URL it prints.")
    out = Path(DEFAULTS["out_dir"])
    parser.add_argument("--chat-model", default=None, help="notebook 07's state_dict (.pth), a "
                        "GPT-2 size in --models-dir (OpenAI's, not chat fine-tuned) or a Hugging "
                        f"Face folder (default: {out / DEFAULTS['chat_model']})")
    parser.add_argument("--chat-size", default=None, help="GPT-2 size the .pth was fine-tuned "
                        "from (default: from its name, gpt2-<size>-sft.pth)")
    parser.add_argument("--spam-model", default=None, help="notebook 06's classifier state_dict "
                        f"(default: {out / DEFAULTS['spam_model']})")
    parser.add_argument("--spam-size", default=DEFAULTS["spam_size"],
                        help="GPT-2 size of the classifier (default: %(default)s)")
    parser.add_argument("--spam-max-length", type=int, default=DEFAULTS["spam_max_length"],
                        help="tokens each message is cut or padded to, as in training "
                        "(notebook 06's train_dataset.max_length; default: %(default)s)")
    parser.add_argument("--models-dir", default=DEFAULTS["models_dir"],
                        help="the course's GPT-2 folder (default: %(default)s)")
    parser.add_argument("--host", default=DEFAULTS["host"], help="default: %(default)s (this "
                        "computer only; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=DEFAULTS["port"], help="default: %(default)s")
    args = parser.parse_args(argv)
    app = build_app(args.chat_model, args.spam_model, args.models_dir, args.chat_size,
                    args.spam_size, args.spam_max_length)
    app.queue().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
