"""Fidelity to the lectures' code (issue 18), checked against tests/lecture_reference.py, our own
write-up of the lectures' classes: the same seed builds the same initial weights, which generate
the same tokens (the book's own chapter-4 ids for GPT_CONFIG_124M), sampling with temperature and
top-k draws the same tokens with and without our KV cache, and state dicts move both ways between
the two models, the lectures' causal-mask buffers included."""

import pytest
import torch

import previous_chapters as ours
from tests import lecture_reference as lecture

# The book's chapter 4 (and lecture 25) prints these ids for "Hello, I am" and six new tokens,
# from GPTModel(GPT_CONFIG_124M) built after torch.manual_seed(123):
# "Hello, I am Featureiman Byeswickattribute argue".
BOOK_IDS = [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267]

# twelve blocks, as GPT-2 small, but narrow: twelve mask buffers in a state dict of a few MB
NARROW12 = {"vocab_size": 300, "context_length": 24, "emb_dim": 32, "n_heads": 4,
            "n_layers": 12, "drop_rate": 0.1, "qkv_bias": True}
MASKS12 = [f"trf_blocks.{i}.att.mask" for i in range(12)]


def token_ids(seed, shape=(2, 24)):
    return torch.randint(0, NARROW12["vocab_size"], shape,
                         generator=torch.Generator().manual_seed(seed))


def build(module, cfg, seed):
    torch.manual_seed(seed)
    return module.GPTModel(cfg)


@pytest.fixture(scope="module")
def models_124m():
    """The lectures' GPTModel and ours, each built after torch.manual_seed(123), in eval mode."""
    return (build(lecture, ours.GPT_CONFIG_124M, 123).eval(),
            build(ours, ours.GPT_CONFIG_124M, 123).eval())


def test_the_same_seed_builds_the_same_initial_weights(models_124m):
    theirs, mine = models_124m
    their_state = theirs.state_dict()
    assert sorted(k for k in their_state if k.endswith(".att.mask")) == sorted(MASKS12)
    my_state = mine.state_dict()
    assert sorted(my_state) == sorted(k for k in their_state if k not in MASKS12)
    different = [k for k in my_state if not torch.equal(my_state[k], their_state[k])]
    assert different == []


def test_generate_text_simple_gives_the_books_ids_in_both(models_124m):
    idx = torch.tensor([BOOK_IDS[:4]])
    for module, model in zip((lecture, ours), models_124m):
        out = module.generate_text_simple(model, idx, max_new_tokens=6, context_size=1024)
        assert out[0].tolist() == BOOK_IDS, module.__name__


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, None), (1.4, 25), (0.7, 3),
                                               (2.0, 1)])
def test_sampling_draws_the_same_ids_with_and_without_our_cache(temperature, top_k):
    cfg = {**NARROW12, "n_layers": 2, "drop_rate": 0.0}
    theirs, mine = build(lecture, cfg, 5).eval(), build(ours, cfg, 5).eval()
    with torch.no_grad():  # a wider spread of logits than the initial weights give
        for model in (theirs, mine):
            model.out_head.weight.mul_(20)
    idx = torch.tensor([[7, 42, 199]])
    # 30 new tokens: past the 24-token context, so the sliding window is compared as well
    torch.manual_seed(123)
    expected = lecture.generate(theirs, idx, 30, context_size=24, temperature=temperature,
                                top_k=top_k)
    assert expected.shape == (1, 33)
    for use_cache in (False, True):
        torch.manual_seed(123)
        got = ours.generate(mine, idx, 30, context_size=24, temperature=temperature, top_k=top_k,
                            use_cache=use_cache)
        assert got.tolist() == expected.tolist(), f"use_cache={use_cache}"


def test_eos_stops_both_at_the_same_place():
    cfg = {**NARROW12, "n_layers": 2, "drop_rate": 0.0}
    theirs, mine = build(lecture, cfg, 9).eval(), build(ours, cfg, 9).eval()
    idx = torch.tensor([[1, 2, 3]])
    full = lecture.generate(theirs, idx, 8, context_size=24)
    eos = full[0, 6].item()  # the fourth new token
    cut = lecture.generate(theirs, idx, 8, context_size=24, eos_id=eos)
    assert cut.shape[1] <= 6
    assert ours.generate(mine, idx, 8, context_size=24, eos_id=eos).tolist() == cut.tolist()


@pytest.fixture
def lecture_checkpoint(tmp_path):
    """A model.pth as the lectures' code saves it (twelve mask buffers), and that model."""
    theirs = build(lecture, NARROW12, 11).eval()
    with torch.no_grad():  # trained-looking weights: not the initial ones of any seed we use
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "model.pth"
    torch.save(theirs.state_dict(), path)
    return torch.load(path, weights_only=True), theirs


def test_the_lectures_state_dict_loads_into_ours_with_the_same_logits(lecture_checkpoint):
    state, theirs = lecture_checkpoint
    assert [k for k in state if k.endswith(".mask")] == MASKS12
    mine = build(ours, NARROW12, 0).eval()
    result = mine.load_state_dict(state)  # strict
    assert result.missing_keys == [] and result.unexpected_keys == []
    without_masks = build(ours, NARROW12, 1).eval()
    without_masks.load_state_dict({k: v for k, v in state.items() if k not in MASKS12})
    idx = token_ids(seed=0)
    with torch.no_grad():
        logits = mine(idx)
        assert torch.equal(logits, without_masks(idx))  # the masks were only left out
        torch.testing.assert_close(logits, theirs(idx), rtol=0, atol=1e-5)


@pytest.mark.parametrize("change,named", [
    (lambda s: s.update({"trf_blocks.0.att.bias": torch.zeros(1)}), "trf_blocks.0.att.bias"),
    (lambda s: s.update({"trf_blocks.12.att.mask": s["trf_blocks.0.att.mask"]}),
     "trf_blocks.12.att.mask"),  # a mask for a block this model does not have
    (lambda s: s.pop("trf_blocks.3.ff.layers.0.bias"), "trf_blocks.3.ff.layers.0.bias"),
    (lambda s: s.pop("out_head.weight"), "out_head.weight"),
])
def test_any_other_unexpected_or_missing_key_fails_naming_it(lecture_checkpoint, change, named):
    state = dict(lecture_checkpoint[0])
    change(state)
    mine = build(ours, NARROW12, 0)
    with pytest.raises(ValueError, match=named.replace(".", r"\.") + ".*nothing was loaded"):
        mine.load_state_dict(state)


def test_a_mask_that_is_not_causal_is_refused_naming_it(lecture_checkpoint):
    state = dict(lecture_checkpoint[0])
    state["trf_blocks.5.att.mask"] = torch.zeros(24, 24)
    with pytest.raises(ValueError, match=r"trf_blocks\.5\.att\.mask is not the lectures' causal"):
        build(ours, NARROW12, 0).load_state_dict(state)


def test_strict_false_still_leaves_the_masks_out(lecture_checkpoint):
    state = {k: v for k, v in lecture_checkpoint[0].items() if k != "final_norm.shift"}
    result = build(ours, NARROW12, 0).load_state_dict(state, strict=False)
    assert result.missing_keys == ["final_norm.shift"] and result.unexpected_keys == []


def test_our_state_dict_loads_into_the_lectures_model_with_strict_false(tmp_path):
    """The documented way (notebook 03, section 3.6): strict=False, then check that only the
    masks, which the lectures' model builds itself, were missing."""
    mine = build(ours, NARROW12, 21).eval()
    torch.save(mine.state_dict(), tmp_path / "ours.pth")
    theirs = build(lecture, NARROW12, 0).eval()
    result = theirs.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True),
                                    strict=False)
    assert sorted(result.missing_keys) == sorted(MASKS12) and result.unexpected_keys == []
    causal = torch.ones(24, 24).triu(diagonal=1)
    assert all(torch.equal(b.att.mask, causal) for b in theirs.trf_blocks)
    idx = token_ids(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx), mine(idx), rtol=0, atol=1e-5)
