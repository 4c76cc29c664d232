"""Tests of chat_app.py (issue 17, "Must hold" for the app): the app runs as its own process on
127.0.0.1 (`python -m chat_app`, a free port) with checkpoints written here from the tiny
checkpoint, and headless Chromium (Debian's `chromium`, through Playwright) uses the page as a
learner would. The oracles are computed here, independently of the app: the chat answer is
`generate`'s tokens for the same prompt and settings, and the spam probabilities are the softmax
of the classifier's last-token logits on the padded text.

`UPDATE_SCREENSHOT=1 pytest tests/test_chat_app.py` also writes docs/chat_app.png (the chat tab
after an answer), the picture the README shows.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import course_data
from chat_app import LoadError, load_chat_model, load_spam_model
from gpt_download3 import download_and_load_gpt2
from previous_chapters import (
    GPTModel,
    add_classification_head,
    config_from_hparams,
    format_input,
    generate,
    load_weights_into_gpt,
)

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "chat_app.png"
SPAM_MAX_LENGTH = 24  # tokens each message is padded to (the app's --spam-max-length)
START_TIMEOUT, PAGE_TIMEOUT_MS = 120, 60_000  # seconds for the server; ms for each page action


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny GPT-2 as notebook 07's fine-tuned model and as notebook 06's classifier, each
    saved as its notebook saves it (state_dict, file name)."""
    models_dir = os.environ["COURSE_MODELS_DIR"]
    settings, params = download_and_load_gpt2("tiny-test", models_dir)
    cfg = config_from_hparams(settings)
    folder = tmp_path_factory.mktemp("chat_app")
    lm = load_weights_into_gpt(GPTModel(cfg), params).eval()
    torch.save(lm.state_dict(), folder / "gpt2-tiny-test-sft.pth")
    torch.manual_seed(123)  # the new head
    clf = add_classification_head(load_weights_into_gpt(GPTModel(cfg), params), 2).eval()
    torch.save(clf.state_dict(), folder / "review_classifier.pth")
    return SimpleNamespace(lm=lm, clf=clf, folder=folder, models_dir=models_dir,
                           chat=folder / "gpt2-tiny-test-sft.pth",
                           spam=folder / "review_classifier.pth")


# ----- loading: the messages a learner sees (no browser needed) -------------------------------

def test_loading_errors_say_what_to_do(tiny):
    with pytest.raises(LoadError, match="No chat model checkpoint at .*Run notebook 07"):
        load_chat_model(tiny.folder / "gpt2-355M-sft.pth", tiny.models_dir)
    with pytest.raises(LoadError, match="Which GPT-2 size is mine.pth"):
        shutil.copyfile(tiny.chat, tiny.folder / "mine.pth")
        load_chat_model(tiny.folder / "mine.pth", tiny.models_dir)
    with pytest.raises(LoadError, match=r"does not fit this GPTModel .*same config \(GPT-2 size\)"):
        load_chat_model(tiny.folder / "mine.pth", tiny.models_dir, size="124M")
    with pytest.raises(LoadError, match="is a classifier .* spam tab"):
        load_chat_model(tiny.spam, tiny.models_dir, size="tiny-test")
    with pytest.raises(LoadError, match="broken.pth could not be loaded .* that torch.save"):
        (tiny.folder / "broken.pth").write_bytes(tiny.chat.read_bytes()[:1000])
        load_chat_model(tiny.folder / "broken.pth", tiny.models_dir, size="tiny-test")
    with pytest.raises(LoadError, match="GPT-2 774M is not in the model folder"):
        load_chat_model("774M", tiny.models_dir)
    with pytest.raises(LoadError, match="not the spam classifier's 2: is it a language model"):
        load_spam_model(tiny.chat, tiny.models_dir, size="tiny-test")
    with pytest.raises(LoadError, match="No spam classifier checkpoint .*Run notebook 06"):
        load_spam_model(tiny.folder / "nothing.pth", tiny.models_dir, size="tiny-test")


def test_a_plain_gpt2_is_labelled_not_chat_tuned(tiny):
    loaded = load_chat_model("tiny-test", tiny.models_dir)
    assert not loaded.chat_tuned and "not fine-tuned for chat" in loaded.label
    assert torch.equal(loaded.model.tok_emb.weight, tiny.lm.tok_emb.weight)
    loaded = load_chat_model(tiny.chat, tiny.models_dir)
    assert loaded.chat_tuned and "fine-tuned on instructions" in loaded.label


# ----- the app in a real browser ---------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """`python -m chat_app` on 127.0.0.1 in its own process group; its URL. Always stopped."""
    port, log_path = free_port(), tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "chat_app", "--chat-model", str(tiny.chat),
           "--spam-model", str(tiny.spam), "--spam-size", "tiny-test",
           "--spam-max-length", str(SPAM_MAX_LENGTH), "--models-dir", tiny.models_dir,
           "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                   "")])}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group, killed below
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited ({proc.returncode}):\n{log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the app did not listen within {START_TIMEOUT} s:\n"
                                f"{log_path.read_text()}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def page(server):
    """A headless Chromium tab on the app."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("The browser test needs Debian's chromium package: apt-get install -y "
                    "chromium (.ci/run installs it). Playwright's own browser download is not "
                    "used.")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            tab = browser.new_page(viewport={"width": 1000, "height": 800})
            tab.set_default_timeout(PAGE_TIMEOUT_MS)
            tab.goto(server, wait_until="networkidle")
            yield tab
        finally:
            browser.close()


def words(text):
    return " ".join(text.split())  # the page's layout changes whitespace, not the words


def expected_answer(tiny, message, max_new_tokens, **sampling):
    """`generate`'s answer to `message` in notebook 07's prompt, decoded after the prompt."""
    tokenizer = course_data.get_gpt2_tokenizer()
    prompt = format_input({"instruction": message, "input": ""}) + "\n\n### Response:\n"
    prompt_ids = torch.tensor([tokenizer.encode(prompt)])
    torch.manual_seed(sampling.pop("seed", 123))
    out = generate(tiny.lm, prompt_ids, max_new_tokens, tiny.lm.cfg["context_length"],
                   eos_id=50256, **sampling)
    return tokenizer.decode(out[0, prompt_ids.shape[1]:].tolist())


def set_number(page, elem_id, value, attempts=5):
    """Type into a slider's / number box's number field, as a learner would, and leave it. A
    slider takes the value then: its handle shows it. (A field just made visible can still be
    redrawn once and lose the value: then type it again.)"""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    field = page.locator(f"#{elem_id} input[type=number]")
    handle = page.locator(f"#{elem_id} input[type=range]")
    for _ in range(attempts):
        field.fill(str(value))
        field.press("Tab")
        if not handle.count():
            return
        try:
            page.wait_for_function(  # the element as it is now, at each poll
                "([sel, v]) => Number(document.querySelector(sel)?.value) === v",
                arg=[f"#{elem_id} input[type=range]", value], timeout=5_000)
            return
        except PlaywrightTimeout:
            continue
    pytest.fail(f"the page's {elem_id} slider did not take the value {value}")


def set_text(page, elem_id, text, attempts=5):
    """Type `text` into a text box and leave it; again if the box was redrawn and lost it."""
    box = page.locator(f"#{elem_id} textarea")
    for _ in range(attempts):
        box.fill(text)
        box.press("Tab")
        time.sleep(0.3)
        if box.input_value() == text:
            return
    pytest.fail(f"the page's {elem_id} box did not keep the text {text!r}")


BOT = '#chatbot [data-testid="bot"]'  # the answers in the chat window


def ask(page, message):
    """Send `message` in the chat tab and wait until its answer has begun (window.__answers
    collects every text the newest answer shows, in order)."""
    before = page.locator(BOT).count()
    page.evaluate("""() => {
        window.__answers = [];
        const chat = document.querySelector('#chatbot');
        new MutationObserver(() => {
            const bots = chat.querySelectorAll('[data-testid="bot"]');
            if (bots.length) window.__answers.push(bots[bots.length - 1].innerText);
        }).observe(chat, {subtree: true, childList: true, characterData: true});
    }""")
    page.locator("#message textarea").fill(message)
    page.locator("#send").click()
    page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length > n",
                           arg=[BOT, before])


def final_answer(page, want, timeout=PAGE_TIMEOUT_MS / 1000):
    """Wait until the newest answer shows `want` (words) and stays; return what it shows."""
    deadline, shown = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        shown = page.locator(BOT).last.inner_text()
        if words(shown) == words(want):
            time.sleep(0.5)  # nothing more may follow
            return page.locator(BOT).last.inner_text()
        time.sleep(0.2)
    return shown


def test_chat_streams_the_tokens_generate_gives(page, tiny, tmp_path):
    page.get_by_role("tab", name="Chat").click()
    assert "fine-tuned on instructions" in page.locator("#chat-status").inner_text()
    message = "Name three primary colors."
    page.locator("#chat-sampling").get_by_text("Sampling").click()
    set_number(page, "max-tokens", 40)
    want = expected_answer(tiny, message, 40)  # greedy (the page's default temperature 0)
    ask(page, message)
    shown = final_answer(page, want)
    assert words(shown) == words(want), f"the page shows {shown!r}, generate gives {want!r}"
    updates = [u for u in dict.fromkeys(page.evaluate("window.__answers")) if u.strip()]
    assert len(updates) > 1, f"the answer arrived in one piece: {updates}"
    assert all(words(want).startswith(words(u)) for u in updates), "each update extends the last"

    # seeded sampling: the same draws as generate's after the same torch.manual_seed
    set_number(page, "temperature", 1.5)
    set_number(page, "top-k", 40)
    set_number(page, "seed", 7)
    greedy, want = want, expected_answer(tiny, message, 40, temperature=1.5, top_k=40, seed=7)
    assert words(want) != words(greedy), "sampling should give another answer than greedy"
    ask(page, message)
    shown = final_answer(page, want)
    assert words(shown) == words(want), f"the page shows {shown!r}, generate gives {want!r}"

    shot = tmp_path / "chat_app.png"  # the chat tab, its sampling controls open
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot), full_page=True)
    assert 0 < shot.stat().st_size < 200_000, "the screenshot should stay small"
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_stop_ends_an_answer_early(page, tiny):
    """The longest greedy answer (1,024 tokens) to a message that fills the context window (so
    every token is a full pass over 1,024 tokens: seconds in all), stopped as soon as it begins:
    what stays is a shorter beginning of generate's answer; the next message gets a full one."""
    page.get_by_role("tab", name="Chat").click()
    for elem_id, value in (("temperature", 0), ("top-k", 0), ("max-tokens", 1024)):
        set_number(page, elem_id, value)
    message = "Tell me a long story about a cat. " * 110  # about 1,000 tokens in the prompt
    ask(page, message)
    page.locator("#stop").click()
    time.sleep(1.5)
    stopped = words(page.locator(BOT).last.inner_text())
    time.sleep(1.5)
    assert words(page.locator(BOT).last.inner_text()) == stopped, "the answer went on"
    full = words(expected_answer(tiny, message, 1024))
    assert full.startswith(stopped) and len(stopped) < len(full), (len(stopped), len(full))
    set_number(page, "max-tokens", 40)
    ask(page, "Write a long story.")
    want = expected_answer(tiny, "Write a long story.", 40)
    assert words(final_answer(page, want)) == words(want), "no full answer after a stop"


def test_spam_tab_shows_the_two_class_probabilities(page, tiny):
    text = "Congratulations! You have won a free cruise. Text WIN to 80082 now."
    page.get_by_role("tab", name="Spam").click()
    assert "spam classifier" in page.locator("#spam-status").inner_text()
    page.locator("#spam-text textarea").fill(text)
    page.locator("#spam-classify").click()
    probs_text = page.locator("#spam-probs")
    probs_text.get_by_text("spam:").first.wait_for()
    shown = dict(re.findall(r"(not spam|spam): ([0-9.]+)", probs_text.inner_text()))
    assert set(shown) == {"not spam", "spam"}, probs_text.inner_text()
    assert abs(sum(float(p) for p in shown.values()) - 1) < 2e-6
    # the oracle: notebook 06's padding by hand, the model's last-token logits, a softmax
    ids = course_data.get_gpt2_tokenizer().encode(text)[:SPAM_MAX_LENGTH]
    ids += [50256] * (SPAM_MAX_LENGTH - len(ids))
    with torch.no_grad():
        probs = torch.softmax(tiny.clf(torch.tensor([ids]))[0, -1], dim=-1)
    assert float(shown["not spam"]) == pytest.approx(probs[0].item(), abs=2e-6)
    assert float(shown["spam"]) == pytest.approx(probs[1].item(), abs=2e-6)
    label = page.locator("#spam-label").inner_text()
    assert "spam" in label and "%" in label, label


def test_a_bad_checkpoint_path_shows_a_message(page, tiny, tmp_path):
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-model-box").get_by_text("Model", exact=True).click()
    missing = tiny.folder / "no-such-model.pth"
    set_text(page, "chat-model", str(missing))
    page.locator("#chat-load").click()
    status = page.locator("#chat-status")
    try:
        status.get_by_text("No model loaded").wait_for()
    except Exception:
        page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
        raise AssertionError(f"the status shows {status.inner_text()!r}; picture: "
                             f"{tmp_path / 'failed.png'}") from None
    assert f"No chat model checkpoint at {missing}" in status.inner_text()
    assert "Run notebook 07 to its end (it saves gpt2-<size>-sft.pth" in status.inner_text()
    ask(page, "Hello?")  # no traceback: the answer is the message
    page.locator(BOT).last.get_by_text("No chat model").wait_for()
    set_text(page, "chat-model", str(tiny.chat))  # the good one again
    page.locator("#chat-load").click()
    status.get_by_text("fine-tuned on instructions").wait_for()
