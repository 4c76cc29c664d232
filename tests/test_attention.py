"""MultiHeadAttention (notebook 02): the fused helper against the lecture's module (taken from the
notebook itself) and the explicit math, against PyTorch's own attention modules, causality, and
dropout in training mode."""

import pytest
import torch
import torch.nn as nn

from previous_chapters import CausalAttentionWithDropout, GPTModel, MultiHeadAttention
from tests.notebook_code import class_from_notebook


class ExplicitMultiHeadAttention(MultiHeadAttention):
    """Notebook 02's step-by-step attention (mask, softmax, dropout, weighted sum), same weights."""

    def forward(self, x):
        b, t, _ = x.shape
        # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
        q, k, v = (lin(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for lin in (self.W_query, self.W_key, self.W_value))
        scores = q @ k.transpose(2, 3)  # (B, H, T, T)
        future = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        scores = scores.masked_fill(future, -torch.inf)
        weights = torch.softmax(scores / self.head_dim**0.5, dim=-1)
        weights = nn.functional.dropout(weights, self.dropout_p, training=self.training)
        context = (weights @ v).transpose(1, 2).reshape(b, t, self.d_out)  # -> (B, T, C)
        return self.out_proj(context)


def lecture_multi_head_attention():
    """The lecture-18 MultiHeadAttention as notebook 02 defines it (section 2.6: mask buffer,
    masked_fill_, softmax, nn.Dropout, out_proj), read from the notebook's own code cell."""
    return class_from_notebook("02_attention.ipynb", "MultiHeadAttention", "register_buffer")


def lecture_pair(dropout, qkv_bias=True, seed=0):
    """The lecture's module and previous_chapters' MultiHeadAttention with the same weights."""
    torch.manual_seed(seed)
    lecture = lecture_multi_head_attention()(40, 48, 64, dropout, num_heads=4, qkv_bias=qkv_bias)
    ours = MultiHeadAttention(40, 48, 64, dropout, num_heads=4, qkv_bias=qkv_bias)
    ours.load_state_dict(lecture.state_dict())  # the same parameter names; no mask in either
    return lecture, ours


@pytest.mark.parametrize("num_tokens", [1, 7, 64])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_previous_chapters_equals_the_lecture_module_in_eval_mode(num_tokens, qkv_bias):
    lecture, ours = lecture_pair(dropout=0.3, qkv_bias=qkv_bias)
    lecture.eval()
    ours.eval()
    x = torch.randn(3, num_tokens, 40)
    torch.testing.assert_close(ours(x), lecture(x), atol=1e-5, rtol=1e-5)


def test_training_with_dropout_on_cpu_equals_the_lecture_module_with_the_same_seed():
    """Training with dropout on a CPU runs CausalAttentionWithDropout and its hand-written
    backward pass; from the same seed it drops what the lecture's nn.Dropout drops, so the
    output and every gradient equal those of autograd through the lecture's module."""
    lecture, ours = lecture_pair(dropout=0.3)
    lecture.train()
    ours.train()
    x = torch.randn(2, 23, 40)
    results = []
    for module in (lecture, ours):
        inputs = x.clone().requires_grad_()
        torch.manual_seed(11)
        out = module(inputs)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads = {name: p.grad for name, p in module.named_parameters()}
        results.append((out, inputs.grad, grads))
    (out_a, gx_a, g_a), (out_b, gx_b, g_b) = results
    assert not torch.allclose(out_a, lecture.eval()(x))  # dropout did drop something
    torch.testing.assert_close(out_b, out_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_b, gx_a, atol=1e-5, rtol=1e-5)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], atol=1e-5, rtol=1e-5)


def make_pair(d_in=48, d_out=48, num_heads=4, dropout=0.0, qkv_bias=True, seed=0):
    torch.manual_seed(seed)
    fused = MultiHeadAttention(d_in, d_out, context_length=64, dropout=dropout,
                               num_heads=num_heads, qkv_bias=qkv_bias)
    explicit = ExplicitMultiHeadAttention(d_in, d_out, 64, dropout, num_heads, qkv_bias)
    explicit.load_state_dict(fused.state_dict())
    return fused, explicit


@pytest.mark.parametrize("num_tokens", [1, 2, 17, 64])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_fused_equals_explicit_math_in_eval_mode(num_tokens, qkv_bias):
    fused, explicit = make_pair(d_in=40, dropout=0.3, qkv_bias=qkv_bias)
    fused.eval()
    explicit.eval()
    x = torch.randn(3, num_tokens, 40)
    torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-5)


def test_fused_equals_torch_sdpa_given_the_same_projections():
    fused, _ = make_pair(dropout=0.2)
    fused.eval()
    x = torch.randn(2, 30, 48)
    b, t, h, d = 2, 30, 4, 12
    q, k, v = (lin(x).view(b, t, h, d).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)
               for lin in (fused.W_query, fused.W_key, fused.W_value))
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))  # an explicit mask, not is_causal
    for kwargs in ({"is_causal": True}, {"attn_mask": allowed}):
        ctx = nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
        expected = fused.out_proj(ctx.transpose(1, 2).reshape(b, t, h * d))
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


def test_fused_equals_torch_nn_multiheadattention():
    """PyTorch's own nn.MultiheadAttention, an independent implementation, with our weights."""
    fused, _ = make_pair(qkv_bias=True)
    fused.eval()
    ref = nn.MultiheadAttention(48, 4, bias=True, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([fused.W_query.weight, fused.W_key.weight,
                                            fused.W_value.weight]))
        ref.in_proj_bias.copy_(torch.cat([fused.W_query.bias, fused.W_key.bias,
                                          fused.W_value.bias]))
        ref.out_proj.weight.copy_(fused.out_proj.weight)
        ref.out_proj.bias.copy_(fused.out_proj.bias)
    x = torch.randn(2, 25, 48)
    future = torch.triu(torch.ones(25, 25, dtype=torch.bool), diagonal=1)  # True = hidden
    expected, _ = ref(x, x, x, attn_mask=future, need_weights=False)
    torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [0, 3, 10])
def test_causality_changing_token_t_plus_1_leaves_outputs_up_to_t(t):
    fused, _ = make_pair()
    fused.eval()
    x = torch.randn(1, 12, 48)
    changed = x.clone()
    changed[0, t + 1] += torch.randn(48)
    a, b = fused(x), fused(changed)
    torch.testing.assert_close(a[0, :t + 1], b[0, :t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a[0, t + 1], b[0, t + 1])


def test_dropout_only_in_training_mode():
    fused, _ = make_pair(dropout=0.5)
    x = torch.randn(2, 10, 48)
    fused.train()
    assert not torch.allclose(fused(x), fused(x))
    fused.eval()
    assert torch.equal(fused(x), fused(x))


def test_training_mode_dropout_has_the_same_distribution_in_both_paths():
    """Fused and explicit dropout draw different random masks, so outputs cannot be compared one
    by one. Both must be unbiased (the mean over many passes is the eval output, since everything
    after the dropout is linear) and equally noisy (the same spread across passes)."""
    fused, explicit = make_pair(d_in=16, d_out=16, num_heads=2, dropout=0.3)
    x = torch.randn(1, 8, 16).expand(2000, 8, 16)  # 2000 passes in one batch
    with torch.no_grad():
        fused.eval()
        target = fused(x[:1])
        fused.train()
        explicit.train()
        outs = {"fused": fused(x), "explicit": explicit(x)}
    spread = {name: out.std(dim=0) for name, out in outs.items()}  # (T, C)
    for name, out in outs.items():
        stderr = spread[name] / 2000**0.5
        assert ((out.mean(dim=0) - target[0]).abs() <= 5 * stderr + 1e-6).all(), name
    ratio = spread["fused"][1:].mean() / spread["explicit"][1:].mean()  # token 0 never drops out
    assert 0.9 < ratio < 1.1, ratio  # with only one key token 0 would be 0/0 sometimes: skipped


def test_training_with_dropout_on_cpu_equals_the_explicit_math_with_the_same_masks():
    """In training on a CPU the helper runs CausalAttentionWithDropout, which draws its mask as
    nn.functional.dropout does (keep with probability 1 - p, same random stream): from the same
    seed both paths drop the same weights, so outputs and every gradient must agree."""
    fused, explicit = make_pair(dropout=0.3)
    fused.train()
    explicit.train()
    x = torch.randn(2, 19, 48)
    results = []
    for module in (fused, explicit):
        inputs = x.clone().requires_grad_()
        torch.manual_seed(5)
        out = module(inputs)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append([out, inputs.grad] + [p.grad for p in module.parameters()])
    assert results[0][0].abs().sum() > 0
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_attention_function_without_dropout_equals_sdpa_forward_and_backward():
    """An independent oracle: PyTorch's scaled_dot_product_attention and its autograd, float64."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 8, dtype=torch.float64) for _ in range(3))
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)  # as the module passes them: views
    grad_out = torch.randn(2, 3, 11, 8, dtype=torch.float64)
    ours_in = [t.clone().requires_grad_() for t in (q_view, k, v)]
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ours = CausalAttentionWithDropout.apply(*ours_in, 0.0)
    ref = nn.functional.scaled_dot_product_attention(*ref_in, is_causal=True)
    torch.testing.assert_close(ours, ref)
    ours.backward(grad_out)
    ref.backward(grad_out)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad)


def test_attention_function_leaves_its_inputs_alone_and_handles_p_one():
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))  # contiguous: no copies to hide behind
    before = [t.clone() for t in (q, k, v)]
    CausalAttentionWithDropout.apply(q, k, v, 0.5)
    for t, b in zip((q, k, v), before):
        assert torch.equal(t, b)
    q.requires_grad_()
    out = CausalAttentionWithDropout.apply(q, k, v, 1.0)  # nn.Dropout(1.0) zeroes everything
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(q.grad, torch.zeros_like(q))
    with pytest.raises(ValueError, match="between 0 and 1"):
        MultiHeadAttention(8, 8, 16, dropout=1.5, num_heads=2)


def test_training_with_dropout_keeps_no_attention_weight_matrix():
    """What the backward pass keeps, as autograd's saved-tensor hooks see it: no float
    (B, H, T, T) matrix (the CPU fallback of scaled_dot_product_attention keeps two)."""
    fused, _ = make_pair(dropout=0.1)
    fused.train()
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused(torch.randn(2, 40, 48, requires_grad=True))
    square = [(shape, dtype) for shape, dtype in saved if shape[-2:] == (40, 40)]
    assert square == [((2, 4, 40, 40), torch.bool)], square  # only the dropout mask


def small_gpt(drop_rate, explicit):
    torch.manual_seed(123)
    cfg = {"vocab_size": 64, "context_length": 32, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
           "drop_rate": drop_rate, "qkv_bias": False}
    model = GPTModel(cfg)
    if explicit:  # the same weights, the notebook's explicit attention math
        for block in model.trf_blocks:
            att = ExplicitMultiHeadAttention(32, 32, 32, drop_rate, 4)
            att.load_state_dict(block.att.state_dict())
            block.att = att
    return model


def train_losses(model, steps=25):
    torch.manual_seed(7)
    data = torch.arange(33 * 8).remainder(13).view(8, 33)  # a learnable repeating pattern
    data = (data * 5 + torch.arange(8).view(8, 1)) % 64
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(data[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses)


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread (and do not fight the other tests' threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_curves_agree_between_fused_and_explicit_attention(one_thread):
    """Without dropout both paths compute the same function, so seeded training runs must give
    the same loss curve up to float round-off (which grows slowly over steps: hence 1e-3).
    With dropout, on a CPU, CausalAttentionWithDropout draws the masks nn.Dropout draws, so the
    curves must agree as closely. (On a GPU the fused kernels draw their own masks; there only
    the distribution is shared, which the test above checks.)"""
    no_drop = [train_losses(small_gpt(0.0, explicit)) for explicit in (False, True)]
    torch.testing.assert_close(no_drop[0], no_drop[1], atol=1e-3, rtol=1e-3)

    with_drop = [train_losses(small_gpt(0.2, explicit)) for explicit in (False, True)]
    for losses in with_drop:
        assert losses[-1] < 0.6 * losses[0], losses
    torch.testing.assert_close(with_drop[0], with_drop[1], atol=1e-3, rtol=1e-3)
