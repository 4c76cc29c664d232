"""Our byte pair encoding (previous_chapters.BytePairTokenizer, notebook 01) against tiktoken.

With GPT-2's own encoder.json and vocab.bpe loaded into our merge loop (`load_gpt2_bpe`), the ids
must be exactly tiktoken's "gpt2" ids: on all of The Verdict and on every entry of the
instruction data (each field alone, and the whole prompt + response as notebook 07 builds it).
Decoding must give the text back. Training must merge the most frequent pair first and grow the
vocabulary by one id per merge. The data comes through course_data (data/, the mirror or the URL).
"""

import json
from collections import Counter

import pytest

import course_data
from previous_chapters import BytePairTokenizer, bytes_to_unicode, format_input, load_gpt2_bpe

EOT = {"<|endoftext|>"}


@pytest.fixture(scope="module")
def ours():
    return load_gpt2_bpe(course_data.fetch_data("encoder.json"),
                         course_data.fetch_data("vocab.bpe"))


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    return course_data.get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def verdict():
    return course_data.fetch_data("the-verdict.txt").read_text(encoding="utf-8")


def instruction_texts():
    """Every text of the instruction data: each field alone, and the full training text."""
    path = course_data.fetch_data("instruction-data.json")
    for entry in json.loads(path.read_text(encoding="utf-8")):
        yield format_input(entry) + "\n\n### Response:\n" + entry["output"]  # as notebook 07
        yield from (entry["instruction"], entry["input"], entry["output"])


def test_gpt2_in_our_loop_gives_tiktokens_ids_on_the_whole_verdict(ours, tiktoken_gpt2, verdict):
    ids = ours.encode(verdict)
    assert len(ids) == 5145
    assert ids == tiktoken_gpt2.encode(verdict)
    assert ours.decode(ids) == verdict


def test_gpt2_in_our_loop_gives_tiktokens_ids_on_every_instruction_entry(ours, tiktoken_gpt2):
    texts = list(instruction_texts())
    assert len(texts) == 4 * 1100
    differ = [t for t in texts if ours.encode(t) != tiktoken_gpt2.encode(t)]
    assert not differ, f"{len(differ)} texts differ, the first: {differ[0][:200]!r}"
    not_back = [t for t in texts if ours.decode(ours.encode(t)) != t]
    assert not not_back, f"{len(not_back)} texts do not decode back: {not_back[0][:200]!r}"
    assert any(not t.isascii() for t in texts)  # multi-byte characters are among them


def test_the_special_token_and_texts_beyond_the_data(ours, tiktoken_gpt2):
    texts = [
        "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.",
        "<|endoftext|><|endoftext|>",
        "naïve café, 東京, emoji 🙂 and a tab\tthen   spaces\n\n\nand newlines  ",
        "I'm sure they'll say we've done it, isn't it? 12345 + 6.78 = $$$",
        "",
    ]
    for text in texts:
        ids = ours.encode(text, allowed_special=EOT)
        assert ids == tiktoken_gpt2.encode(text, allowed_special=EOT), text
        assert ours.decode(ids) == text
    assert ours.encode("a<|endoftext|>b", allowed_special=EOT)[1] == 50256
    # not allowed: the string is ordinary text, several tokens, never the special id
    assert 50256 not in ours.encode("a<|endoftext|>b")
    assert ours.encode("a<|endoftext|>b") == tiktoken_gpt2.encode("a<|endoftext|>b",
                                                                   disallowed_special=())


def test_bytes_to_unicode_is_gpt2s_map(ours):
    mapping = bytes_to_unicode()
    assert len(set(mapping.values())) == 256  # reversible
    assert mapping[ord("A")] == "A" and mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ"
    assert all(c.isprintable() and not c.isspace() for c in mapping.values())
    assert ours.byte_ids[ord("!")] == 0 and ours.byte_ids[ord(" ")] == 220
    assert len(ours.vocab) == 50257 and len(ours.merges) == 50000


# ----- training our own merges ------------------------------------------------------------------

def test_the_first_merge_is_the_most_frequent_pair_and_each_merge_adds_one_id(verdict):
    tok = BytePairTokenizer()
    chunks = tok.split.findall(verdict)
    pairs = Counter(p for c in chunks for p in zip(c.encode("utf-8"), c.encode("utf-8")[1:]))
    history = tok.train(verdict, 1)
    (pair, new_id, count), = history
    assert (pair, count) == pairs.most_common(1)[0] and new_id == 256
    assert tok.vocab[256] == bytes(pair)  # b" t" in The Verdict

    sizes = [len(tok.vocab)]
    for _ in range(20):
        tok.train(verdict, 1)
        sizes.append(len(tok.vocab))
    assert sizes == list(range(257, 278))
    assert len(set(tok.vocab.values())) == len(tok.vocab)  # every new token is new


def test_training_compresses_and_round_trips(verdict):
    tok = BytePairTokenizer()
    history = tok.train(verdict, 200)
    assert [new_id for _, new_id, _ in history] == list(range(256, 456))
    counts = [count for _, _, count in history]
    assert counts[0] == max(counts)  # the counts are of the text as merged so far
    ids = tok.encode(verdict)
    assert len(ids) < len(verdict.encode("utf-8")) * 0.6
    assert tok.decode(ids) == verdict
    for text in ["An unseen word: Zyzzyva!", "naïve 東京 🙂", ""]:
        assert tok.decode(tok.encode(text)) == text  # bytes cover every text


def test_encoding_applies_merges_in_the_order_learned():
    tok = BytePairTokenizer()
    history = tok.train("abab abab abab cd", 3)
    a, b = ord("a"), ord("b")
    assert history[0][:2] == ((a, b), 256)  # "ab" is the most frequent pair
    assert tok.encode("abab") == [tok.merges[(256, 256)]]
    assert tok.encode("ba") == [b, a]  # a pair never merged stays two bytes
