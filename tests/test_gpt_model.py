"""GPTModel and its parts (notebook 03), checked against independent implementations.

The central test copies the weights of a randomly initialised Hugging Face GPT2LMHeadModel into
our GPTModel, with a copying function written here (independent of load_weights_into_gpt), and
requires the same logits: our model is GPT-2, not merely GPT-like.
"""

import pytest
import torch
import torch.nn as nn

from previous_chapters import (
    GELU,
    GPT_CONFIG_124M,
    GPTModel,
    LayerNorm,
    generate_text_simple,
)
from tests.notebook_code import class_from_notebook

transformers = pytest.importorskip("transformers")

SMALL = {"vocab_size": 50257, "context_length": 128, "emb_dim": 96, "n_heads": 4, "n_layers": 3,
         "drop_rate": 0.0, "qkv_bias": True}


def hf_gpt2(cfg, seed=0):
    """A randomly initialised HF GPT-2 with every parameter (biases, norms too) randomised."""
    config = transformers.GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["context_length"], n_embd=cfg["emb_dim"],
        n_layer=cfg["n_layers"], n_head=cfg["n_heads"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5, activation_function="gelu_new",
    )
    config._attn_implementation = "eager"  # HF's own explicit attention math, not SDPA
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF starts biases at 0 and norms at 1: randomise so all are tested
        for name, p in hf.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight")
                        else 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "wte" in name or "wpe" in name:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.1)
    return hf


def copy_hf_into_gpt(hf, gpt):
    """Copy HF GPT2LMHeadModel weights into our GPTModel. HF's Conv1D stores weights as
    (in, out), nn.Linear as (out, in); c_attn is query, key and value side by side."""
    sd = hf.state_dict()
    with torch.no_grad():
        gpt.tok_emb.weight.copy_(sd["transformer.wte.weight"])
        gpt.pos_emb.weight.copy_(sd["transformer.wpe.weight"])
        for i, block in enumerate(gpt.trf_blocks):
            p = f"transformer.h.{i}."
            q_w, k_w, v_w = sd[p + "attn.c_attn.weight"].split(gpt.cfg["emb_dim"], dim=1)
            q_b, k_b, v_b = sd[p + "attn.c_attn.bias"].split(gpt.cfg["emb_dim"], dim=0)
            for lin, w, b in [(block.att.W_query, q_w, q_b), (block.att.W_key, k_w, k_b),
                              (block.att.W_value, v_w, v_b)]:
                lin.weight.copy_(w.T)
                lin.bias.copy_(b)
            for lin, key in [(block.att.out_proj, "attn.c_proj"), (block.ff.layers[0], "mlp.c_fc"),
                             (block.ff.layers[2], "mlp.c_proj")]:
                lin.weight.copy_(sd[p + key + ".weight"].T)
                lin.bias.copy_(sd[p + key + ".bias"])
            for norm, key in [(block.norm1, "ln_1"), (block.norm2, "ln_2")]:
                norm.scale.copy_(sd[p + key + ".weight"])
                norm.shift.copy_(sd[p + key + ".bias"])
        gpt.final_norm.scale.copy_(sd["transformer.ln_f.weight"])
        gpt.final_norm.shift.copy_(sd["transformer.ln_f.bias"])
        gpt.out_head.weight.copy_(sd["lm_head.weight"])  # HF ties it to wte
    return gpt


@pytest.fixture(scope="module")
def hf_and_ours():
    hf = hf_gpt2(SMALL)
    ours = copy_hf_into_gpt(hf, GPTModel(SMALL)).eval()
    return hf, ours


@pytest.mark.parametrize("num_tokens", [1, 7, 128])
def test_logits_equal_huggingface_gpt2(hf_and_ours, num_tokens):
    hf, ours = hf_and_ours
    torch.manual_seed(num_tokens)
    idx = torch.randint(0, SMALL["vocab_size"], (2, num_tokens))  # two different sequences
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert got.shape == expected.shape == (2, num_tokens, SMALL["vocab_size"])
    assert expected.std() > 0.5, "logits too small for the tolerance to mean anything"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_padded_batch_matches_separate_sequences(hf_and_ours):
    """Causal attention: right-padding a short sequence does not change its logits."""
    hf, ours = hf_and_ours
    torch.manual_seed(1)
    long_seq = torch.randint(0, SMALL["vocab_size"], (1, 20))
    short = long_seq[:, :9].clone()
    padded = torch.cat([short, torch.full((1, 11), 50256)], dim=1)
    with torch.no_grad():
        batch_logits = ours(torch.cat([long_seq, padded]))
        torch.testing.assert_close(batch_logits[1, :9], hf(short).logits[0], atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(batch_logits[0], hf(long_seq).logits[0], atol=1e-4, rtol=1e-4)


def test_causality_changing_a_later_token_leaves_earlier_logits_unchanged():
    torch.manual_seed(0)
    cfg = {**SMALL, "vocab_size": 100, "qkv_bias": False}
    model = GPTModel(cfg).eval()
    idx = torch.randint(0, 100, (1, 12))
    for t in (0, 5, 10):
        changed = idx.clone()
        changed[0, t + 1] = (idx[0, t + 1] + 1) % 100
        with torch.no_grad():
            a, b = model(idx), model(changed)
        torch.testing.assert_close(a[0, :t + 1], b[0, :t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(a[0, t + 1], b[0, t + 1])


def test_missing_config_key_is_named():
    cfg = {k: v for k, v in GPT_CONFIG_124M.items() if k != "n_heads"}
    with pytest.raises(ValueError, match="n_heads"):
        GPTModel(cfg)


def test_input_longer_than_context_length_is_a_clear_error():
    model = GPTModel({**SMALL, "vocab_size": 100, "context_length": 8})
    with pytest.raises(ValueError, match="context length is 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_of_the_124m_config():
    with torch.device("meta"):
        model = GPTModel(GPT_CONFIG_124M)
    assert count(model) == 163_009_536  # the figures the lecture and the issue state
    assert count(model) - model.out_head.weight.numel() == 124_412_160


@pytest.mark.parametrize("emb_dim,n_layers,n_heads", [(768, 12, 12), (1024, 24, 16),
                                                      (1280, 36, 20), (1600, 48, 25)])
def test_parameter_counts_equal_huggingface_for_all_gpt2_sizes(emb_dim, n_layers, n_heads):
    """With qkv_bias and a tied head, our count equals HF's GPT-2 of the same size."""
    cfg = {**GPT_CONFIG_124M, "emb_dim": emb_dim, "n_layers": n_layers, "n_heads": n_heads,
           "qkv_bias": True}
    config = transformers.GPT2Config(n_embd=emb_dim, n_layer=n_layers, n_head=n_heads)
    with torch.device("meta"):
        ours = GPTModel(cfg)
        hf = transformers.GPT2LMHeadModel(config)
    assert count(ours) - ours.out_head.weight.numel() == hf.num_parameters()


def test_layernorm_equals_torch_layernorm():
    torch.manual_seed(0)
    x = 3.0 * torch.randn(4, 7, 32) + 1.0
    ours, ref = LayerNorm(32), nn.LayerNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.scale.copy_(torch.randn(32))
        ours.shift.copy_(torch.randn(32))
        ref.weight.copy_(ours.scale)
        ref.bias.copy_(ours.shift)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_gelu_equals_torch_tanh_gelu():
    x = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(GELU()(x), nn.functional.gelu(x, approximate="tanh"),
                               atol=1e-6, rtol=1e-6)


class ShapeRecorder(nn.Module):
    """Wraps a model and records the shape of every input it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.shapes = model, []

    def forward(self, idx):
        self.shapes.append(tuple(idx.shape))
        return self.model(idx)


def test_generate_text_simple_crops_context_and_equals_a_greedy_loop():
    torch.manual_seed(0)
    cfg = {**SMALL, "vocab_size": 100, "context_length": 8, "n_layers": 2}
    model = ShapeRecorder(GPTModel(cfg).eval())
    prompt = torch.randint(0, 100, (2, 5))
    out = generate_text_simple(model, prompt, max_new_tokens=10, context_size=8)
    assert out.shape == (2, 15)
    assert torch.equal(out[:, :5], prompt)
    assert max(shape[1] for shape in model.shapes) == 8  # never more than the context

    idx = prompt.clone()  # the same greedy decoding, written out
    for _ in range(10):
        with torch.no_grad():
            logits = model.model(idx[:, -8:])
        next_id = logits[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, next_id], dim=1)
    assert torch.equal(out, idx)


# The lectures' explicit layer norm and GELU (notebook 03, sections 3.2 and 3.3), from the
# notebook's own cells: previous_chapters.py keeps the fused versions, which must compute the same.
LecturesLayerNorm = class_from_notebook("03_gpt_architecture.ipynb", "LayerNorm", "x.var(")
LecturesGELU = class_from_notebook("03_gpt_architecture.ipynb", "GELU", "torch.tanh(")


def forward_and_grads(module, x):
    """module(x) and the gradients of a fixed random projection of it, w.r.t. x and params."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * weights).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def test_fused_layernorm_equals_the_lectures_layernorm():
    torch.manual_seed(0)
    x = 3.0 * torch.randn(4, 7, 64) + 1.0
    lecture, fused = LecturesLayerNorm(64), LayerNorm(64)
    with torch.no_grad():
        lecture.scale.normal_()
        lecture.shift.normal_()
    fused.load_state_dict(lecture.state_dict())  # same parameter names: scale, shift
    out_l, dx_l, dp_l = forward_and_grads(lecture, x)
    out_f, dx_f, dp_f = forward_and_grads(fused, x)
    torch.testing.assert_close(out_f, out_l, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx_f, dx_l, atol=1e-4, rtol=1e-4)
    for name in ("scale", "shift"):
        torch.testing.assert_close(dp_f[name], dp_l[name], atol=1e-4, rtol=1e-4)


def test_fused_gelu_equals_the_lectures_gelu():
    x = torch.linspace(-8, 8, 2001)
    out_l, dx_l, _ = forward_and_grads(LecturesGELU(), x)
    out_f, dx_f, _ = forward_and_grads(GELU(), x)
    torch.testing.assert_close(out_f, out_l, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dx_f, dx_l, atol=1e-5, rtol=1e-5)


def test_gpt_with_fused_layers_equals_gpt_with_the_lectures_layers(monkeypatch):
    """A GPTModel built with the lectures' classes (as in notebook 03's main path) and one built
    with previous_chapters' fused classes give the same logits and gradients, same weights."""
    import previous_chapters

    torch.manual_seed(0)
    cfg = {**SMALL, "vocab_size": 100, "drop_rate": 0.0}
    fused = GPTModel(cfg)
    with monkeypatch.context() as patch:  # the names the classes look up when a model is built
        patch.setattr(previous_chapters, "LayerNorm", LecturesLayerNorm)
        patch.setattr(previous_chapters, "GELU", LecturesGELU)
        lecture = GPTModel(cfg)
    assert isinstance(lecture.final_norm, LecturesLayerNorm)
    assert isinstance(lecture.trf_blocks[0].ff.layers[1], LecturesGELU)
    with torch.no_grad():  # random norms, so that scale and shift matter
        for p in fused.parameters():
            if p.dim() == 1:
                p.normal_()
    lecture.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 100, (2, 16))
    logits = {}
    for name, model in [("fused", fused), ("lecture", lecture)]:
        logits[name] = model(idx)
        nn.functional.cross_entropy(logits[name].flatten(0, 1), idx.flatten()).backward()
    torch.testing.assert_close(logits["fused"], logits["lecture"], atol=1e-4, rtol=1e-4)
    for (name, p_f), p_l in zip(fused.named_parameters(), lecture.parameters()):
        torch.testing.assert_close(p_f.grad, p_l.grad, atol=1e-4, rtol=1e-3, msg=name)
