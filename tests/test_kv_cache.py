"""The KV cache and the final `generate` (notebook 04, section 4.9): cached generation gives the
same tokens as recomputing everything, which is the lecture's `generate` of section 4.6 (greedy
and seeded sampling, every prompt length up to the context length, past it too), the cached
logits equal the full forward pass, and Hugging Face's own cached generation gives the same
tokens as ours. `generate_stream` yields those tokens one by one (the chat app's streaming)."""

import pytest
import torch

from previous_chapters import (
    GPT_CONFIG_124M,
    GPTModel,
    KVCache,
    generate,
    generate_stream,
    generate_text_simple,
    gpt_forward_cached,
)

TINY = {"vocab_size": 97, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(123)
    return GPTModel(TINY).eval()


@pytest.fixture(scope="module")
def gpt124m():
    """The 124M configuration with random weights (GPT-2's biases, its tied head)."""
    torch.manual_seed(123)
    model = GPTModel({**GPT_CONFIG_124M, "qkv_bias": True, "drop_rate": 0.0}).eval()
    model.out_head.weight = model.tok_emb.weight
    return model


def prompt(batch, length, vocab, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("length", [1, 2, 7, 15, 16, 40])
def test_tiny_cached_greedy_equals_uncached_and_generate_text_simple(tiny, length):
    """20 new tokens run past the 16-token context: the sliding window is tested too."""
    idx = prompt(2, length, TINY["vocab_size"], seed=length)
    cached = generate(tiny, idx, 20, context_size=16)
    assert cached.shape == (2, length + 20)
    assert torch.equal(cached, generate(tiny, idx, 20, context_size=16, use_cache=False))
    assert torch.equal(cached, generate_text_simple(tiny, idx, 20, context_size=16))


@pytest.mark.parametrize("length", [1, 8, 15, 16])
def test_tiny_seeded_sampling_is_the_same_with_and_without_the_cache(tiny, length):
    idx = prompt(3, length, TINY["vocab_size"], seed=length)
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(42)
        runs.append(generate(tiny, idx, 25, 16, temperature=1.3, top_k=30, use_cache=use_cache))
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(43)
    assert not torch.equal(runs[0], generate(tiny, idx, 25, 16, temperature=1.3, top_k=30))


@pytest.mark.parametrize("length", [1, 64, 1023])
def test_124m_cached_equals_uncached(gpt124m, length):
    """Greedy; from 1023 prompt tokens 3 new ones: the window fills, then slides by one."""
    idx = prompt(1, length, 50257, seed=length)
    cached = generate(gpt124m, idx, 3, 1024)
    assert torch.equal(cached, generate(gpt124m, idx, 3, 1024, use_cache=False))
    if length == 1:  # seeded sampling too
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(7)
            runs.append(generate(gpt124m, idx, 4, 1024, temperature=1.0, top_k=50,
                                 use_cache=use_cache))
        assert torch.equal(runs[0], runs[1])


def test_cached_logits_equal_the_full_forward_pass_at_every_step(tiny):
    """Prefill 5 tokens, then feed one at a time: positions continue across the calls."""
    idx = prompt(2, 16, TINY["vocab_size"], seed=3)
    cache = KVCache(tiny, batch_size=2, capacity=16)
    with torch.no_grad():
        steps = [gpt_forward_cached(tiny, idx[:, :5], cache)]
        steps += [gpt_forward_cached(tiny, idx[:, t:t + 1], cache) for t in range(5, 16)]
        full = tiny(idx)  # (B, T, V)
    assert cache.length == 16
    for i, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, 4 + i], atol=1e-5, rtol=1e-5)


def test_a_chunk_after_cached_tokens_sees_them_and_is_causal(tiny):
    """Several new tokens after cached ones (the mask is offset by the cached length)."""
    idx = prompt(1, 12, TINY["vocab_size"], seed=4)
    cache = KVCache(tiny, 1, 16)
    with torch.no_grad():
        gpt_forward_cached(tiny, idx[:, :7], cache)
        last = gpt_forward_cached(tiny, idx[:, 7:], cache)
        torch.testing.assert_close(last, tiny(idx)[:, -1], atol=1e-5, rtol=1e-5)


def test_a_full_cache_is_a_clear_error(tiny):
    cache = KVCache(tiny, 1, 8)
    with torch.no_grad():
        gpt_forward_cached(tiny, prompt(1, 8, TINY["vocab_size"]), cache)
        with pytest.raises(ValueError, match="capacity"):
            gpt_forward_cached(tiny, prompt(1, 1, TINY["vocab_size"]), cache)
    big = KVCache(tiny, 1, 40)  # larger than the model's context length: positions run out
    with torch.no_grad(), pytest.raises(ValueError, match="context length"):
        gpt_forward_cached(tiny, prompt(1, 17, TINY["vocab_size"]), big)


def test_prompts_of_different_lengths_one_at_a_time_equal_a_batch_of_equal_ones(tiny):
    """generate takes one (B, T) tensor: rows of a batch behave as if generated alone."""
    idx = prompt(3, 6, TINY["vocab_size"], seed=9)
    batch = generate(tiny, idx, 12, 16)
    for row in range(3):
        assert torch.equal(batch[row:row + 1], generate(tiny, idx[row:row + 1], 12, 16))


def test_stops_at_eos_with_the_cache(tiny):
    idx = prompt(1, 4, TINY["vocab_size"], seed=5)
    greedy = generate(tiny, idx, 12, 16, use_cache=False)
    eos = greedy[0, 4 + 6].item()
    first = greedy[0, 4:].tolist().index(eos)
    assert torch.equal(generate(tiny, idx, 12, 16, eos_id=eos), greedy[:, :4 + first])


def test_the_same_tokens_as_huggingface_cached_generation():
    """An independent oracle: transformers' GPT2LMHeadModel.generate with its own KV cache,
    given the same weights (copied with tests/test_gpt_model.py's HF -> ours function)."""
    pytest.importorskip("transformers")
    from tests.test_gpt_model import SMALL, copy_hf_into_gpt, hf_gpt2

    hf = hf_gpt2(SMALL, seed=1)
    ours = copy_hf_into_gpt(hf, GPTModel(SMALL)).eval()
    idx = prompt(2, 5, SMALL["vocab_size"], seed=11)
    with torch.no_grad():
        expected = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=30,
                               do_sample=False, use_cache=True, pad_token_id=0,
                               min_new_tokens=30)
    assert torch.equal(generate(ours, idx, 30, SMALL["context_length"]), expected)


def test_the_output_is_an_ordinary_tensor_usable_in_training(tiny):
    """generate runs under inference_mode but must not hand back an inference tensor."""
    out = generate(tiny, prompt(1, 3, TINY["vocab_size"]), 4, 16)
    assert not out.is_inference()
    tiny.train()
    try:
        tiny(out).sum().backward()  # the embedding saves its input ids for the backward pass
    finally:
        tiny.zero_grad()
        tiny.eval()


def test_generate_stream_yields_the_lecture_tokens_one_at_a_time(tiny):
    """Each yield is one (B, 1) token, in the order of section 4.6's uncached generation
    (seeded sampling, past the context length); between two tokens the caller is not in
    inference mode; eos_id ends the stream without yielding it."""
    idx = prompt(2, 5, TINY["vocab_size"], seed=3)
    torch.manual_seed(7)
    want = generate(tiny, idx, 20, 16, temperature=1.2, top_k=20, use_cache=False)
    torch.manual_seed(7)
    got = []
    for token in generate_stream(tiny, idx, 20, 16, temperature=1.2, top_k=20):
        assert token.shape == (2, 1) and not torch.is_inference_mode_enabled()
        got.append(token)
    assert torch.equal(torch.cat([idx, *got], dim=1), want)
    greedy = generate(tiny, idx[:1], 10, 16)[0, 5:].tolist()
    stream = [t.item() for t in generate_stream(tiny, idx[:1], 10, 16, eos_id=greedy[3])]
    assert stream == greedy[:greedy.index(greedy[3])]
