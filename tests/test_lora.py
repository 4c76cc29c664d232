"""Tests of lora.py (issue 15, "Must hold" for LoRA): on the tiny checkpoint in OpenAI's layout
(gpt_download3 + load_weights_into_gpt), as the language model (tied head) and as notebook 06's
classifier (add_classification_head). The independent oracle is peft's LoRA with our A and B."""

import copy
import json
import math
import os

import pytest
import torch
import torch.nn as nn

from gpt_download3 import download_and_load_gpt2
from lora import (
    LinearWithLoRA,
    LoRALayer,
    load_lora_adapter,
    lora_layers,
    lora_parameter_count,
    merge_lora,
    read_lora_adapter,
    replace_linear_with_lora,
    save_lora_adapter,
)
from previous_chapters import (
    GPTModel,
    add_classification_head,
    config_from_hparams,
    load_weights_into_gpt,
)

RANK, ALPHA = 4, 8  # scaling 2, so that a wrong scaling shows


@pytest.fixture(scope="module")
def tiny():
    """(settings, params) of the tiny random GPT-2 checkpoint conftest.py wrote."""
    return download_and_load_gpt2("tiny-test", os.environ["COURSE_MODELS_DIR"])


def base_model(tiny, kind, n_layers=None):
    """A freshly loaded tiny GPT-2: the language model ("lm", head tied to tok_emb) or notebook
    06's classifier ("classifier", a new seeded 2-class head)."""
    settings, params = tiny
    if n_layers is not None:  # a deeper/shallower model: blocks repeated or cut
        blocks = [params["blocks"][i % len(params["blocks"])] for i in range(n_layers)]
        settings, params = {**settings, "n_layer": n_layers}, {**params, "blocks": blocks}
    torch.manual_seed(123)
    model = load_weights_into_gpt(GPTModel(config_from_hparams(settings)), params)
    if kind == "classifier":
        add_classification_head(model, num_classes=2)
    return model.eval()


def batch(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 50257, (2, 8), generator=g)
    target = (torch.randint(0, 50257, (2, 8), generator=g) if kind == "lm"
              else torch.tensor([0, 1]))
    return idx, target


def loss_of(model, kind, idx, target):
    logits = model(idx)
    if kind == "classifier":
        logits = logits[:, -1, :]  # notebook 06: the last token's logits
    return nn.functional.cross_entropy(logits.flatten(0, -2), target.flatten())


def train_steps(model, kind, steps=3, lr=1e-2):
    """A few AdamW steps over model.parameters() (frozen ones included, as a learner would)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    for step in range(steps):
        optimizer.zero_grad()
        loss_of(model, kind, *batch(kind, step)).backward()
        optimizer.step()
    return model


def randomize_b(model, seed=1):
    """B off zero (as training would), so that every LoRA path contributes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora.B.copy_(torch.randn(m.lora.B.shape, generator=g) * 0.05)


KINDS = ["lm", "classifier"]
LINEAR_NAMES = {"att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0",
                "ff.layers.2"}


# ----- the layers ---------------------------------------------------------------------------------

def test_lora_layer_initialisation_and_scaling():
    torch.manual_seed(0)
    lora = LoRALayer(768, 300, rank=16, alpha=32)
    assert lora.A.shape == (768, 16) and lora.B.shape == (16, 300) and lora.scaling == 2.0
    assert torch.count_nonzero(lora.B) == 0
    # nn.Linear(768, 16)'s weight is uniform in +-1/sqrt(fan_in=768): so must A be
    bound = 1 / math.sqrt(768)
    assert lora.A.abs().max() <= bound and lora.A.abs().max() > 0.99 * bound
    assert abs(lora.A.std().item() - bound / math.sqrt(3)) < 0.03 * bound  # uniform's std
    # same seed, same numbers as nn.Linear would draw, transposed
    torch.manual_seed(5)
    reference = nn.Linear(768, 16, bias=False).weight.T
    torch.manual_seed(5)
    assert torch.equal(LoRALayer(768, 300, 16, 16).A, reference)
    x = torch.randn(3, 5, 768)
    with torch.no_grad():
        lora.B.normal_()
        assert torch.allclose(lora(x), 2.0 * (x @ lora.A) @ lora.B, atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        LoRALayer(8, 8, 0, 1)


class TinyNF4Stand_in(nn.Module):
    """A stand-in for qlora.py's LinearNF4: in_features, out_features, integer codes, fp16
    scales, a forward; not an nn.Linear, and no float weight (its LoRA must still be fp32)."""

    def __init__(self, weight):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("codes", (weight * 100).round().to(torch.int8))
        self.register_buffer("scale", torch.tensor(0.01, dtype=torch.float16))

    def forward(self, x):
        return x @ (self.codes * self.scale).to(x.dtype).T


def test_linear_with_lora_wraps_any_layer_with_in_and_out_features():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    wrapped = LinearWithLoRA(linear, rank=2, alpha=2)
    assert not any(p.requires_grad for p in linear.parameters())
    assert [n for n, p in wrapped.named_parameters() if p.requires_grad] == ["lora.A", "lora.B"]
    x = torch.randn(3, 6)
    assert torch.equal(wrapped(x), linear(x))  # B = 0
    quantized = TinyNF4Stand_in(torch.randn(4, 6) * 0.1)
    wrapped = LinearWithLoRA(quantized, rank=2, alpha=2)
    assert wrapped.lora.A.dtype == torch.float32 and (wrapped.in_features, wrapped.out_features) \
        == (6, 4)
    model = nn.Sequential(wrapped)
    with torch.no_grad():
        wrapped.lora.B.normal_()
    expected = model(x)
    merge_lora(model)  # a 4-bit base is not merged: it stays wrapped and computes the same
    assert model[0] is wrapped and torch.equal(model(x), expected)
    half = LinearWithLoRA(nn.Linear(6, 4, dtype=torch.bfloat16), 2, 2)  # a bf16 model's LoRA
    assert half.lora.A.dtype == half.lora.B.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="in_features"):
        LinearWithLoRA(nn.ReLU(), 2, 2)
    with pytest.raises(TypeError, match="already has a LoRA"):
        LinearWithLoRA(wrapped, 2, 2)


def plain_sum_and_fused(base, x, autocast=False):
    """(output, grads of x, A, B) of lora.py's in-place forward and of linear(x) + lora(x)."""
    torch.manual_seed(0)
    wrapped = LinearWithLoRA(base, rank=3, alpha=5)  # scaling 5/3: not a power of two
    with torch.no_grad():
        wrapped.lora.B.normal_()
    results = []
    for forward in (wrapped.forward, lambda t: wrapped.linear(t) + wrapped.lora(t)):
        xs = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = forward(xs)
        out.float().pow(2).sum().backward()
        results.append((out.detach(), xs.grad, wrapped.lora.A.grad, wrapped.lora.B.grad))
        wrapped.zero_grad(set_to_none=True)
    return results


@pytest.mark.parametrize("case", ["linear", "no-bias", "4-bit stand-in", "autocast bf16"])
def test_fused_forward_equals_the_plain_sum(case):
    """LinearWithLoRA adds the update into the frozen layer's output in place (addmm_): the same
    output and the same gradients for x, A and B as linear(x) + lora(x)."""
    torch.manual_seed(1)
    base = {"linear": nn.Linear(12, 7), "no-bias": nn.Linear(12, 7, bias=False),
            "4-bit stand-in": TinyNF4Stand_in(torch.randn(7, 12) * 0.1),
            "autocast bf16": nn.Linear(12, 7)}[case]
    x = torch.randn(2, 5, 12)  # (B, T, in)
    fused, plain = plain_sum_and_fused(base, x, autocast=case == "autocast bf16")
    assert fused[0].shape == plain[0].shape == (2, 5, 7) and fused[0].dtype == plain[0].dtype
    for a, b in zip(fused, plain):
        if case == "autocast bf16":  # bf16 keeps 8 bits: the two round differently, element-wise
            assert (a.float() - b.float()).norm() <= 2e-2 * b.float().norm()
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # inference, and a 2-D input
        wrapped = LinearWithLoRA(nn.Linear(12, 7), 3, 5)
        wrapped.lora.B.normal_()
        flat = torch.randn(4, 12)
        torch.testing.assert_close(wrapped(flat), wrapped.linear(flat) + wrapped.lora(flat))


# ----- replace_linear_with_lora on the tiny checkpoint --------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_after_replace_the_logits_are_exactly_the_original_ones(tiny, kind):
    model = base_model(tiny, kind)
    idx, _ = batch(kind)
    with torch.no_grad():
        expected = model(idx)
    replace_linear_with_lora(model, RANK, ALPHA)
    with torch.no_grad():
        assert torch.equal(model(idx), expected)
    # every nn.Linear is wrapped, the head too; nothing else is
    names = set(lora_layers(model))
    blocks = {f"trf_blocks.{i}.{n}" for i in range(len(model.trf_blocks)) for n in LINEAR_NAMES}
    assert names == blocks | {"out_head"}
    assert not [n for n, m in model.named_modules()
                if isinstance(m, nn.Linear) and not n.endswith(".linear")]
    if kind == "lm":  # the tie survives: the frozen head weight is still the embedding's tensor
        assert model.out_head.linear.weight is model.tok_emb.weight
    else:
        assert model.out_head.out_features == 2
    with pytest.raises(ValueError, match="already has LoRA layers"):
        replace_linear_with_lora(model, RANK, ALPHA)


@pytest.mark.parametrize("kind", KINDS)
def test_only_lora_parameters_learn_and_the_original_ones_stay_bit_identical(tiny, kind):
    model = base_model(tiny, kind)
    original = {id(p): (n, p, p.detach().clone()) for n, p in model.named_parameters()}
    replace_linear_with_lora(model, RANK, ALPHA)
    # wrapping moves no tensor: the model holds the original parameters and the LoRA ones
    lora = {id(p): (n, p, p.detach().clone()) for n, p in model.named_parameters()
            if id(p) not in original}
    assert lora and all(".lora." in n for n, _, _ in lora.values())
    assert len(original) + len(lora) == len(list(model.parameters()))
    assert {id(p) for p in model.parameters() if p.requires_grad} == set(lora)
    model.train()
    loss_of(model, kind, *batch(kind)).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in lora), n
    train_steps(model, kind, steps=3)
    for name, p, value in original.values():
        assert torch.equal(p, value), name
    for name, p, value in lora.values():
        assert not torch.equal(p, value), name


@pytest.mark.parametrize("kind", KINDS)
def test_merge_after_training_gives_the_same_logits_with_plain_linear_layers(tiny, kind):
    model = base_model(tiny, kind)
    original_count = sum(p.numel() for p in model.parameters())
    count_unshared = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    replace_linear_with_lora(model, RANK, ALPHA)
    wrapped_names = set(lora_layers(model))
    train_steps(model, kind, steps=3)
    idx, _ = batch(kind, seed=7)
    with torch.no_grad():
        unmerged = model(idx)
    merge_lora(model)
    with torch.no_grad():
        merged = model(idx)
    assert (merged - unmerged).abs().max() < 1e-5
    assert not any(isinstance(m, LinearWithLoRA) for m in model.modules())
    for name in wrapped_names:
        assert type(model.get_submodule(name)) is nn.Linear, name
    assert not any(p.requires_grad for p in model.parameters())  # frozen, as documented
    count = sum(p.numel() for p in model.parameters())
    if kind == "classifier":
        assert count == original_count
    else:  # the tie cannot survive W + update: the head is its own matrix, V x C more
        cfg = model.cfg
        assert count == original_count + cfg["vocab_size"] * cfg["emb_dim"] == count_unshared
        assert model.out_head.weight is not model.tok_emb.weight


# ----- the independent oracle: peft's LoRA --------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_peft_with_our_a_and_b_gives_the_same_logits_before_and_after_a_step(tiny, kind):
    peft = pytest.importorskip("peft")
    ours = base_model(tiny, kind)
    theirs = copy.deepcopy(ours)  # the same base, before LoRA
    replace_linear_with_lora(ours, RANK, ALPHA)
    randomize_b(ours)  # so that A gets a gradient too in the first step
    targets = sorted(lora_layers(ours))
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets)
    theirs = peft.inject_adapter_in_model(config, theirs)
    pairs = {}  # our LoRALayer -> peft's lora_A, lora_B
    for name in targets:
        layer = theirs.get_submodule(name)
        lora = ours.get_submodule(name).lora
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(lora.A.T)  # peft: (r, in), ours (in, r)
            layer.lora_B["default"].weight.copy_(lora.B.T)  # peft: (out, r), ours (r, out)
        assert layer.scaling["default"] == lora.scaling
        pairs[name] = (lora, layer.lora_A["default"].weight, layer.lora_B["default"].weight)
    peft_trainable = {n for n, p in theirs.named_parameters() if p.requires_grad}
    assert len(peft_trainable) == 2 * len(targets)  # peft, too, trains only A and B
    starts = {name: (lora.A.detach().clone(), lora.B.detach().clone())
              for name, (lora, _, _) in pairs.items()}
    idx, target = batch(kind)
    with torch.no_grad():
        assert (ours(idx) - theirs(idx)).abs().max() < 1e-5
    lr = 1e-3
    for model in (ours, theirs):  # one identical step: same optimizer, batch, lr
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=lr, weight_decay=0.1)
        model.train()
        loss_of(model, kind, idx, target).backward()
        optimizer.step()
        model.eval()
    # The gradients are the oracle's real check. Adam's first step is about lr * sign(grad), and
    # for a gradient as small as its eps (1e-8) float noise moves the step by a part in a thousand.
    for name, (lora, peft_a, peft_b) in pairs.items():
        for ours_p, theirs_p, start in ((lora.A, peft_a, starts[name][0]),
                                        (lora.B, peft_b, starts[name][1])):
            scale = ours_p.grad.abs().max()
            assert scale > 0, name
            assert torch.allclose(ours_p.grad, theirs_p.grad.T, rtol=1e-4, atol=1e-5 * scale), name
            assert torch.allclose(ours_p, theirs_p.T, rtol=0, atol=1e-3 * lr), name
            assert not torch.equal(ours_p, start), name  # the step moved it
    idx2, _ = batch(kind, seed=3)
    with torch.no_grad():
        assert (ours(idx2) - theirs(idx2)).abs().max() < 1e-5


# ----- trainable counts ---------------------------------------------------------------------------

def meta_model(cfg, num_classes=None):
    with torch.device("meta"):  # shapes only, no memory: 355M costs nothing
        model = GPTModel(cfg)
        if num_classes is not None:
            add_classification_head(model, num_classes)
    return model


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


GPT2_124M = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12,
             "n_layers": 12, "drop_rate": 0.0, "qkv_bias": True}


def test_124m_classifier_with_rank_16_trains_2666528_parameters():
    model = replace_linear_with_lora(meta_model(GPT2_124M, num_classes=2), rank=16, alpha=16)
    assert trainable(model) == 2_666_528 == lora_parameter_count(GPT2_124M, 16, num_classes=2)


@pytest.mark.parametrize("cfg, rank, num_classes", [
    (GPT2_124M, 8, None),
    ({**GPT2_124M, "emb_dim": 1024, "n_heads": 16, "n_layers": 24}, 16, None),  # 355M
    ({**GPT2_124M, "emb_dim": 1024, "n_heads": 16, "n_layers": 24}, 1, 3),
    ({**GPT2_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "qkv_bias": False}, 64, 2),
    ({**GPT2_124M, "vocab_size": 1000, "emb_dim": 48, "n_heads": 3, "n_layers": 5}, 7, None),
])
def test_the_formula_equals_the_counted_number(cfg, rank, num_classes):
    model = replace_linear_with_lora(meta_model(cfg, num_classes), rank=rank, alpha=rank)
    assert trainable(model) == lora_parameter_count(cfg, rank, num_classes)


# ----- the adapter checkpoint ---------------------------------------------------------------------

def lora_model(tiny, kind, rank=RANK, n_layers=None, seed=1):
    model = replace_linear_with_lora(base_model(tiny, kind, n_layers), rank, ALPHA)
    randomize_b(model, seed)
    return model


def snapshot(model):
    return {n: t.clone() for n, t in model.state_dict().items()}, \
        [(n, type(m)) for n, m in model.named_modules()], \
        {n: p.requires_grad for n, p in model.named_parameters()}


def assert_unchanged(model, before):
    tensors, modules, grads = snapshot(model)
    assert modules == before[1] and grads == before[2]
    assert tensors.keys() == before[0].keys()
    assert all(torch.equal(tensors[n], before[0][n]) for n in tensors)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_round_trip_onto_a_fresh_base(tiny, kind, tmp_path):
    model = lora_model(tiny, kind)
    idx, _ = batch(kind)
    with torch.no_grad():
        expected = model(idx)
    path = save_lora_adapter(model, tmp_path / "adapter.safetensors", epoch=3, note="test")
    n_lora = trainable(model)
    overhead = path.stat().st_size - 4 * n_lora  # float32 tensors + a JSON header
    assert 0 < overhead < 16_384, overhead
    fresh = load_lora_adapter(base_model(tiny, kind), path)
    with torch.no_grad():
        assert torch.equal(fresh(idx), expected)
    assert trainable(fresh) == n_lora and set(lora_layers(fresh)) == set(lora_layers(model))
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    if kind == "lm":
        assert fresh.out_head.linear.weight is fresh.tok_emb.weight  # still tied
    config, _ = read_lora_adapter(path)
    assert (config["rank"], config["alpha"], config["extra"]) == (RANK, ALPHA,
                                                                  {"epoch": 3, "note": "test"})
    # onto a model already wrapped with the same rank: A and B are overwritten
    again = load_lora_adapter(lora_model(tiny, kind, seed=9), path)
    with torch.no_grad():
        assert torch.equal(again(idx), expected)


def rewrite(path, target, change):
    """Copy an adapter file with `change(config, tensors)` applied to its config and tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata["config"])
    change(config, tensors)
    save_file(tensors, str(target), metadata={**metadata, "config": json.dumps(config)})
    return target


def other_rank_in_one_layer(config, tensors):
    name = "trf_blocks.1.att.W_key.lora."
    tensors[name + "A"] = tensors[name + "A"][:, :2].contiguous()  # rank 4 -> 2
    tensors[name + "B"] = tensors[name + "B"][:2]


def renamed_layer(config, tensors):
    for d in (config["layers"], config["base_layers"]):
        d["trf_blocks.0.att.W_q"] = d.pop("trf_blocks.0.att.W_query")
    for ab in "AB":
        tensors[f"trf_blocks.0.att.W_q.lora.{ab}"] = tensors.pop(
            f"trf_blocks.0.att.W_query.lora.{ab}")


def layer_without_tensors(config, tensors):
    del tensors["trf_blocks.0.ff.layers.2.lora.A"], tensors["trf_blocks.0.ff.layers.2.lora.B"]


@pytest.mark.parametrize("case, message", [
    ("other rank in one layer", r"trf_blocks.1.att.W_key: A has shape \(64, 2\)"),
    ("renamed layer", r"lacks the layers trf_blocks.0.att.W_q;"),
    ("layer without tensors", r"missing \['trf_blocks.0.ff.layers.2.lora.A'"),
    ("more blocks", r"adapter's base did not: trf_blocks.1.att.W_key, .* and 2 more"),
    ("fewer blocks", r"lacks the layers trf_blocks.2.att.W_key, .* and 2 more"),
    ("classifier onto the lm", r"layer out_head is \(64, 50257\) \(in, out\) here but \(64, 2\)"),
    ("other rank on a wrapped model", r"layer trf_blocks.0.att.W_query has a LoRA of rank 2"),
    ("random bytes", "cannot be read as a safetensors file"),
    ("a model checkpoint", "no adapter config"),
    ("torch.save file", "cannot be read as a safetensors file"),
])
def test_a_mismatching_adapter_is_refused_and_leaves_the_model_unchanged(tiny, case, message,
                                                                         tmp_path):
    saved_from, target = "lm", base_model(tiny, "lm")
    if case == "more blocks":
        saved_from = ("lm", 1)
    elif case == "fewer blocks":
        saved_from = ("lm", 3)
    elif case == "classifier onto the lm":
        saved_from = "classifier"
    elif case == "other rank on a wrapped model":
        target = lora_model(tiny, "lm", rank=2)
    kind, n_layers = saved_from if isinstance(saved_from, tuple) else (saved_from, None)
    path = save_lora_adapter(lora_model(tiny, kind, n_layers=n_layers), tmp_path / "a.safetensors")
    bad = tmp_path / "bad.safetensors"
    if case == "other rank in one layer":
        path = rewrite(path, bad, other_rank_in_one_layer)
    elif case == "renamed layer":
        path = rewrite(path, bad, renamed_layer)
    elif case == "layer without tensors":
        path = rewrite(path, bad, layer_without_tensors)
    elif case == "random bytes":
        bad.write_bytes(os.urandom(5000))
        path = bad
    elif case == "a model checkpoint":
        from safetensors.torch import save_model

        save_model(base_model(tiny, "classifier"), str(bad))
        path = bad
    elif case == "torch.save file":
        torch.save({"A": torch.zeros(3)}, bad)
        path = bad
    before = snapshot(target)
    with pytest.raises(ValueError, match=message):
        load_lora_adapter(target, path)
    assert_unchanged(target, before)


def test_save_refuses_a_model_without_lora_or_with_mixed_ranks(tiny, tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_lora_adapter(base_model(tiny, "lm"), tmp_path / "a.safetensors")
    model = lora_model(tiny, "classifier")
    block = model.trf_blocks[0].att
    block.W_query.lora = LoRALayer(64, 64, 2, ALPHA)
    with pytest.raises(ValueError, match="several"):
        save_lora_adapter(model, tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="JSON"):
        save_lora_adapter(lora_model(tiny, "lm"), tmp_path / "a.safetensors", when=object())


def test_replace_refuses_a_model_without_linear_layers():
    with pytest.raises(ValueError, match="no nn.Linear"):
        replace_linear_with_lora(nn.Sequential(nn.Embedding(5, 3)), RANK, ALPHA)
