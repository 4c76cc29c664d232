"""GPT-2's tokenizer through tiktoken, offline: the cache primed from local copies of its files.

The oracle for the ids is Hugging Face's `tokenizers` (a separate BPE implementation, in Rust)
built from the same encoder.json and vocab.bpe, plus the ids the course's book prints.
"""

import hashlib
import os
import shutil
import socket
from pathlib import Path

import pytest
import requests
import tiktoken

import course_data

MIRROR = os.environ.get(course_data.MIRROR_ENV)
TOKENIZER_DIR = Path(MIRROR or ".", "gpt2-tokenizer")
needs_files = pytest.mark.skipif(
    not all((TOKENIZER_DIR / f).is_file() for f in course_data.TIKTOKEN_GPT2_FILES),
    reason=f"{course_data.MIRROR_ENV} is not set to a folder with gpt2-tokenizer/",
)

SENTENCE = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
SENTENCE_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812,
                2114, 286, 617, 34680, 27271, 13]  # as printed in the book's chapter 2


def reference_tokenizer():
    """GPT-2's BPE from the same two files, by Hugging Face's `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(TOKENIZER_DIR / "encoder.json"),
                                         str(TOKENIZER_DIR / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


@pytest.fixture
def offline(monkeypatch):
    """No network: every requests call and every new socket connection fails."""
    def refuse(*args, **kwargs):
        raise requests.ConnectionError("network disabled by the test")

    def refuse_socket(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(requests.sessions.Session, "request", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse_socket)
    monkeypatch.setattr(socket.socket, "connect", refuse_socket)


@pytest.fixture
def fresh_tiktoken(monkeypatch, tmp_path):
    """An empty tiktoken cache folder and an empty in-process registry of encodings."""
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return cache


def test_gpt2_tokenizer_gives_the_known_ids():
    enc = course_data.get_gpt2_tokenizer()
    assert enc.encode("Hello, world") == [15496, 11, 995]
    assert enc.encode(SENTENCE, allowed_special={"<|endoftext|>"}) == SENTENCE_IDS
    assert enc.decode(SENTENCE_IDS) == SENTENCE
    assert (enc.n_vocab, enc.eot_token) == (50257, 50256)
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode(SENTENCE)  # <|endoftext|> must be allowed explicitly


@needs_files
def test_tiktoken_agrees_with_an_independent_bpe():
    enc, ref = course_data.get_gpt2_tokenizer(), reference_tokenizer()
    texts = [SENTENCE, "Hello, world", "  spaces   and\ttabs\n\nnewlines ",
             "Ünïcödé, emoji 😀 and 日本語", "don't you'll I'M 12345 3.14159",
             Path(MIRROR, "the-verdict.txt").read_text(encoding="utf-8")]
    for text in texts:
        ids = enc.encode(text, allowed_special={"<|endoftext|>"})
        assert ids == ref.encode(text).ids, text[:40]
        assert enc.decode(ids) == text
    assert len(ids) == 5145  # the-verdict.txt, as in the book


@needs_files
def test_primed_cache_works_with_the_network_absent(fresh_tiktoken, offline):
    cache = course_data.prime_tiktoken_cache(TOKENIZER_DIR)
    assert cache == fresh_tiktoken
    # tiktoken names each cached file by the sha1 of the URL it would download
    expected = {hashlib.sha1(url.encode()).hexdigest()
                for url, _ in course_data.TIKTOKEN_GPT2_FILES.values()}
    assert {p.name for p in cache.iterdir()} == expected
    enc = tiktoken.get_encoding("gpt2")
    assert enc.encode(SENTENCE, allowed_special={"<|endoftext|>"}) == SENTENCE_IDS
    assert enc.encode("Hello, world") == [15496, 11, 995]


def test_without_the_cache_the_offline_fixture_really_blocks_tiktoken(fresh_tiktoken, offline):
    # the control for the test above: an empty cache and no network cannot give an encoding
    with pytest.raises((requests.ConnectionError, OSError)):
        tiktoken.get_encoding("gpt2")


def test_no_cache_no_mirror_no_network_gives_a_clear_error(fresh_tiktoken, offline,
                                                           monkeypatch):
    monkeypatch.delenv(course_data.MIRROR_ENV, raising=False)
    with pytest.raises(course_data.DownloadError) as err:
        course_data.get_gpt2_tokenizer()
    msg = str(err.value)
    assert "encoder.json" in msg and "network disabled by the test" in msg
    assert course_data.MIRROR_ENV in msg and "prime_tiktoken_cache" in msg


@needs_files
def test_get_gpt2_tokenizer_primes_from_the_mirror(fresh_tiktoken, offline, monkeypatch):
    monkeypatch.setenv(course_data.MIRROR_ENV, MIRROR)
    enc = course_data.get_gpt2_tokenizer()
    assert enc.encode("Hello, world") == [15496, 11, 995]
    assert len(list(fresh_tiktoken.iterdir())) == 2


@needs_files
def test_prime_refuses_a_wrong_file(fresh_tiktoken, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(TOKENIZER_DIR / "vocab.bpe", folder / "vocab.bpe")
    data = (TOKENIZER_DIR / "encoder.json").read_bytes()
    (folder / "encoder.json").write_bytes(data.replace(b'"Hello"', b'"Hellp"'))  # one letter
    with pytest.raises(ValueError, match="encoder.json"):
        course_data.prime_tiktoken_cache(folder)
    # nothing is cached, not even the good vocab.bpe: tiktoken would otherwise use half a pair
    assert not fresh_tiktoken.exists() or not any(fresh_tiktoken.iterdir())


def test_prime_names_a_missing_file(fresh_tiktoken, tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.bpe|encoder.json"):
        course_data.prime_tiktoken_cache(tmp_path)
