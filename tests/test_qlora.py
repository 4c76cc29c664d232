"""Tests of qlora.py: the NF4 levels, block-wise 4-bit quantization (with and without double
quantization), LinearNF4, quantize_model_nf4 on the tiny GPT-2 checkpoint in OpenAI's layout, and
the memory arithmetic of base_model_bytes.

The oracles: the NF4 table as printed in the QLoRA paper (typed in below, independent of
qlora.NF4_LEVELS), a brute-force nearest-level quantizer, F.linear, the model's fp32 logits,
gpt_download3.count_gpt2_params and the measured bytes of real models.
"""

import copy
import io
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gpt_download3
from previous_chapters import (
    GPTModel,
    add_classification_head,
    config_from_hparams,
    load_weights_into_gpt,
)
from qlora import (
    NF4_LEVELS,
    LinearNF4,
    NF4Tensor,
    base_model_bytes,
    dequantize_nf4,
    gpt2_memory_table,
    model_bytes,
    nf4_levels_from_normal,
    pack_4bit,
    quantize_model_nf4,
    quantize_nf4,
    unpack_4bit,
)

# Dettmers et al. (2023), "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314,
# Appendix E "NormalFloat 4-bit data type": the exact values of NF4, as printed there.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]
PUBLISHED = torch.tensor(PUBLISHED_NF4, dtype=torch.float32)
# Rounding to the nearest level is off by at most half the gap between the two levels around a
# value; the largest gap is the outermost one, -1 .. -0.696: 0.152 of the block's absmax.
HALF_MAX_GAP = float((PUBLISHED[1:] - PUBLISHED[:-1]).max()) / 2


def nearest_level_reference(weight, block_size=64, levels=PUBLISHED):
    """Brute force: every value of each block/absmax goes to the level at the least distance."""
    flat = weight.reshape(-1).float()
    n_blocks = -(-flat.numel() // block_size)
    blocks = F.pad(flat, (0, n_blocks * block_size - flat.numel())).view(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    nearest = (scaled[..., None] - levels).abs().argmin(dim=-1)  # (n_blocks, block_size)
    return (levels[nearest] * absmax).view(-1)[:flat.numel()].view(weight.shape), absmax


@pytest.fixture(scope="module")
def normal_matrix():
    return torch.randn(768, 768, generator=torch.Generator().manual_seed(123))


# ----- the levels ---------------------------------------------------------------------------------

def test_nf4_levels_are_the_published_table():
    assert NF4_LEVELS.dtype == torch.float32 and NF4_LEVELS.shape == (16,)
    assert torch.equal(NF4_LEVELS, PUBLISHED)
    assert NF4_LEVELS[0] == -1.0 and NF4_LEVELS[-1] == 1.0
    assert (NF4_LEVELS == 0.0).sum() == 1  # exactly one exact zero
    assert bool((NF4_LEVELS[1:] > NF4_LEVELS[:-1]).all())  # sorted, distinct
    assert (NF4_LEVELS < 0).sum() == 7 and (NF4_LEVELS > 0).sum() == 8  # the asymmetry


def test_levels_derived_from_normal_quantiles_match_the_table():
    derived = nf4_levels_from_normal()
    assert derived.dtype == torch.float32 and derived.shape == (16,)
    assert derived[0] == -1.0 and derived[7] == 0.0 and derived[-1] == 1.0
    # float32's step just below 1 is 6e-8: the table's last bits carry the authors' rounding
    # (see nf4_levels_from_normal); 2e-7 is about 3 steps, and 1/400 of the smallest gap
    assert torch.allclose(derived, PUBLISHED, rtol=0, atol=2e-7)
    # the offset matters: a visibly different one misses the table by far more than that
    assert (nf4_levels_from_normal(0.99) - PUBLISHED).abs().max() > 1e-2
    # each half holds equally likely bins: the levels' normal CDF values are evenly spaced
    q = torch.special.ndtri(torch.tensor(0.9677083, dtype=torch.float64))
    cdf = torch.special.ndtr(derived.double() * q)
    assert torch.allclose(cdf[8:].diff(), cdf[8:].diff()[0].expand(7), atol=1e-6)
    assert torch.allclose(cdf[:8].diff(), cdf[:8].diff()[0].expand(7), atol=1e-6)
    with pytest.raises(ValueError, match="probability"):
        nf4_levels_from_normal(1.0)


# ----- packing ------------------------------------------------------------------------------------

def test_pack_unpack_round_trip():
    idx = torch.randint(0, 16, (1000,), generator=torch.Generator().manual_seed(1))
    packed = pack_4bit(idx)
    assert packed.dtype == torch.uint8 and packed.shape == (500,)
    assert torch.equal(unpack_4bit(packed), idx.to(torch.uint8))
    # the layout: element 2j in the high nibble of byte j
    assert pack_4bit(torch.tensor([1, 2, 15, 0])).tolist() == [0x12, 0xF0]
    every_byte = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    assert torch.equal(pack_4bit(unpack_4bit(every_byte)), every_byte)
    # dequantize_nf4 reads two levels per byte: the same as levels[unpack_4bit(byte)]
    q = NF4Tensor(every_byte, torch.ones(8), torch.Size((512,)))
    assert torch.equal(dequantize_nf4(q), PUBLISHED[unpack_4bit(every_byte).long()])
    with pytest.raises(ValueError, match="even"):
        pack_4bit(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="0..15"):
        pack_4bit(torch.tensor([1, 16]))


# ----- quantize -> dequantize ---------------------------------------------------------------------

def test_quantize_stores_packed_indices_and_one_scale_per_block(normal_matrix):
    q = quantize_nf4(normal_matrix)
    n = normal_matrix.numel()
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (n // 2,)
    assert q.absmax.dtype == torch.float32 and q.absmax.shape == (n // 64,)
    blocks = normal_matrix.reshape(-1, 64)
    assert torch.equal(q.absmax, blocks.abs().amax(dim=1))
    assert q.stored_bytes() == n // 2 + 4 * n // 64
    assert q.stored_bytes() / (4 * n) == pytest.approx(4 / 32 + 32 / 64 / 32)  # 0.140625


def test_round_trip_error_of_a_normal_matrix_is_bounded(normal_matrix):
    w = normal_matrix
    deq = dequantize_nf4(quantize_nf4(w))
    assert deq.dtype == torch.float32 and deq.shape == w.shape
    expected, absmax = nearest_level_reference(w)
    assert torch.equal(deq, expected)  # every value went to its nearest level
    err = (deq - w).abs().view(-1, 64)
    # the bound: half the largest gap between adjacent levels times the block's absmax
    assert bool((err <= HALF_MAX_GAP * absmax * (1 + 1e-6)).all())
    assert float(err.max()) > 0.5 * HALF_MAX_GAP * float(absmax.min())  # not trivially small
    # mean absolute error for N(0, 1): a block's absmax is about 2.6, levels near 0 are 0.08-0.09
    # of it apart (0.22), and an error uniform over a gap averages a quarter of it (0.055); the
    # wider outer gaps add some: measured 0.073. NF4 beats 16 evenly spaced levels on normal
    # data (0.085 here), the paper's reason for the type.
    mae = float(err.mean())
    assert 0.05 < mae < 0.08
    uniform, _ = nearest_level_reference(w, levels=torch.linspace(-1, 1, 16))
    assert mae < 0.9 * float((uniform - w).abs().mean())


def test_values_on_the_grid_round_trip_exactly():
    gen = torch.Generator().manual_seed(2)
    n_blocks = 40
    idx = torch.randint(0, 16, (n_blocks, 64), generator=gen)
    idx[:, 5] = torch.randint(0, 2, (n_blocks,), generator=gen) * 15  # each block holds -1 or 1
    absmax = torch.rand(n_blocks, 1, generator=gen) * 3 + 0.01
    w = (PUBLISHED[idx] * absmax).view(32, 80)  # rows of 80 cross the blocks of 64
    q = quantize_nf4(w)
    assert torch.equal(unpack_4bit(q.packed), idx.view(-1).to(torch.uint8))
    assert torch.equal(dequantize_nf4(q), w)


@pytest.mark.parametrize("shape", [(5, 13), (3,), (2, 3, 50), (64,), (1, 65), (7, 96)])
def test_shapes_not_divisible_by_the_block_are_padded_and_restored(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    q = quantize_nf4(w)
    n_blocks = -(-w.numel() // 64)
    assert q.shape == w.shape and q.absmax.shape == (n_blocks,)
    assert q.packed.numel() == n_blocks * 32
    deq = dequantize_nf4(q)
    expected, _ = nearest_level_reference(w)
    assert deq.shape == w.shape and torch.equal(deq, expected)
    assert torch.equal(dequantize_nf4(quantize_nf4(torch.zeros(shape))), torch.zeros(shape))


def test_other_block_sizes_and_learner_errors():
    w = torch.randn(10, 30, generator=torch.Generator().manual_seed(4))
    for block in (2, 16, 128):
        q = quantize_nf4(w, block_size=block)
        assert q.absmax.numel() == -(-300 // block)
        assert torch.equal(dequantize_nf4(q), nearest_level_reference(w, block)[0])
    with pytest.raises(ValueError, match="even"):
        quantize_nf4(w, block_size=63)
    with pytest.raises(TypeError, match="floating-point"):
        quantize_nf4(torch.arange(10))
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(torch.zeros(0, 4))


def test_double_quantization_stores_int8_scales_and_adds_a_bounded_error(normal_matrix):
    w = torch.cat([normal_matrix, 3 * normal_matrix[:200]])  # scales of two sizes
    plain = quantize_nf4(w)
    q = quantize_nf4(w, double_quant=True)
    n_blocks = w.numel() // 64
    assert q.absmax is None and q.absmax_q.dtype == torch.int8 and q.absmax_q.shape == (n_blocks,)
    assert q.absmax_scale.shape == (-(-n_blocks // 256),) and q.absmax_mean.shape == ()
    assert torch.equal(q.packed, plain.packed)  # the 4-bit indices are the same
    # bytes: 4 bits + 8/64 + 32/(64 * 256) bits per weight, plus one float32 mean
    assert q.stored_bytes() == w.numel() // 2 + n_blocks + 4 * -(-n_blocks // 256) + 4
    assert q.stored_bytes() / (4 * w.numel()) == pytest.approx((4 + 8 / 64 + 32 / 64 / 256) / 32,
                                                               abs=1e-5)
    # each dequantized absmax is within half an int8 step of its group: max|absmax - mean|/254
    absmax = plain.absmax
    centred = F.pad(absmax - absmax.mean(), (0, q.absmax_scale.numel() * 256 - n_blocks))
    step_bound = centred.view(-1, 256).abs().amax(dim=1).repeat_interleave(256)[:n_blocks] / 254
    deq_plain, deq = dequantize_nf4(plain).view(-1, 64), dequantize_nf4(q).view(-1, 64)
    extra = (deq - deq_plain).abs()  # = |level| x |absmax error| <= the step bound
    assert bool((extra <= step_bound[:, None] * (1 + 1e-5) + 1e-6).all())
    assert float(extra.max()) > 0  # the scales really were quantized
    err = (deq - w.view(-1, 64)).abs()
    assert bool((err <= HALF_MAX_GAP * absmax[:, None] + step_bound[:, None] + 1e-5).all())
    mae_plain = float((deq_plain - w.view(-1, 64)).abs().mean())
    assert float(err.mean()) < 1.01 * mae_plain  # under 1% more error for 8% fewer bytes


# ----- LinearNF4 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("double_quant", [False, True])
def test_linear_nf4_forward_is_f_linear_with_the_dequantized_weight(double_quant):
    torch.manual_seed(5)
    linear = nn.Linear(96, 40)
    layer = LinearNF4.from_linear(linear, double_quant=double_quant)
    assert (layer.in_features, layer.out_features) == (96, 40)
    x = torch.randn(2, 7, 96)
    weight = dequantize_nf4(quantize_nf4(linear.weight, double_quant=double_quant))
    assert torch.equal(layer(x), F.linear(x, weight, linear.bias))
    assert torch.equal(layer.weight, weight)
    # close to the fp32 layer: for inputs independent of W, E|dW x|^2 / E|W x|^2 is exactly
    # |dW|^2 / |W|^2 (Frobenius), so the output's relative error is about the weight's
    with torch.no_grad():
        eps = float((weight - linear.weight).norm() / linear.weight.norm())
        rel = float((layer(x) - linear(x)).norm() / (linear(x) - linear.bias).norm())
    assert 0.5 * eps < rel < 1.5 * eps
    assert torch.equal(layer.bias, linear.bias) and not layer.bias.requires_grad
    assert [n for n, _ in layer.named_parameters()] == ["bias"]  # the weight is buffers
    buffers = dict(layer.named_buffers())
    assert buffers["packed"].dtype == torch.uint8 and not buffers["packed"].requires_grad
    no_bias = LinearNF4.from_linear(nn.Linear(96, 40, bias=False))
    assert no_bias.bias is None and no_bias(x).shape == (2, 7, 40)
    with pytest.raises(TypeError, match="nn.Linear"):
        LinearNF4.from_linear(nn.Embedding(10, 4))


def test_linear_nf4_stores_under_0_15_of_fp32():
    for out_f, in_f in [(768, 768), (3072, 768), (768, 3072), (50, 70)]:
        linear = nn.Linear(in_f, out_f)
        for dq, ratio in [(False, 0.140625), (True, 0.129)]:
            layer = LinearNF4.from_linear(linear, double_quant=dq)
            assert layer.stored_bytes() <= 0.15 * 4 * linear.weight.numel()
            assert layer.bytes_ratio() == pytest.approx(ratio, abs=2e-3)
    assert LinearNF4.from_linear(nn.Linear(768, 768)).bytes_ratio() == 0.140625


def test_gradients_reach_the_input_but_not_the_packed_weight():
    torch.manual_seed(6)
    linear = nn.Linear(64, 32)
    layer = LinearNF4.from_linear(linear)
    x = torch.randn(3, 64, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (F.linear(x_ref, layer.weight, linear.bias) ** 2).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, x_ref.grad, rtol=0, atol=1e-6)
    assert all(b.grad is None and not b.requires_grad for b in layer.buffers())
    assert layer.bias.grad is None  # frozen
    with pytest.raises(RuntimeError):
        layer.packed.requires_grad_(True)  # an integer tensor cannot even ask for a gradient


def test_backward_keeps_the_4bit_weight_not_a_float32_copy():
    torch.manual_seed(8)
    linear = nn.Linear(256, 512)
    layer = LinearNF4.from_linear(linear)
    x = torch.randn(4, 256, requires_grad=True)

    def saved_bytes(module):
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum().backward()
        return sum(sizes)

    assert saved_bytes(linear) >= 4 * linear.weight.numel()  # plain autograd keeps the weight
    assert saved_bytes(layer) == 0  # ours keeps nothing beyond the layer's own 4-bit buffers
    # a learner who unfreezes the bias gets its gradient, the one F.linear would give
    layer.bias.requires_grad_(True)
    layer(x).pow(2).sum().backward()
    bias = layer.bias.detach().clone().requires_grad_(True)
    F.linear(x.detach(), layer.weight, bias).pow(2).sum().backward()
    assert torch.allclose(layer.bias.grad, bias.grad, rtol=1e-5, atol=1e-5)


def test_linear_nf4_state_dict_round_trip():
    torch.manual_seed(7)
    a = LinearNF4.from_linear(nn.Linear(64, 48), double_quant=True)
    b = LinearNF4.from_linear(nn.Linear(64, 48), double_quant=True)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer))
    x = torch.randn(4, 64)
    assert torch.equal(a(x), b(x))


# ----- a whole model: the tiny checkpoint in OpenAI's layout --------------------------------------

@pytest.fixture(scope="module")
def tiny_gpt():
    settings, params = gpt_download3.download_and_load_gpt2("tiny-test",
                                                            os.environ["COURSE_MODELS_DIR"])
    model = GPTModel(config_from_hparams(settings))
    load_weights_into_gpt(model, params)
    return model.eval()


@pytest.fixture(scope="module")
def token_ids():
    return torch.randint(0, 50257, (4, 64), generator=torch.Generator().manual_seed(8))


def test_quantize_model_replaces_the_block_linears_and_keeps_the_tied_head(tiny_gpt):
    n_layers = len(tiny_gpt.trf_blocks)
    for skip in [("out_head",), ()]:
        model = copy.deepcopy(tiny_gpt)
        summary = quantize_model_nf4(model, skip=skip)
        assert len(summary["quantized"]) == 6 * n_layers
        assert "out_head" in summary["kept"] and len(summary["kept"]) == 1
        if not skip:  # the tied head is protected even when not skipped
            assert "tok_emb.weight" in summary["kept"]["out_head"]
        assert model.out_head.weight is model.tok_emb.weight
        assert not any(type(m) is nn.Linear for n, m in model.named_modules() if n != "out_head")
        assert isinstance(model.trf_blocks[0].ff.layers[0], LinearNF4)
        assert isinstance(model.trf_blocks[-1].att.W_query, LinearNF4)
        assert summary["linear_bytes_nf4"] <= 0.15 * summary["linear_bytes_fp32"]
        assert summary["model_bytes_after"] == model_bytes(model) < summary["model_bytes_before"]
    with pytest.raises(ValueError, match="does not have"):
        quantize_model_nf4(copy.deepcopy(tiny_gpt), skip=("outhead",))


def weight_error(model):
    """Relative RMS quantization error of the model's quantizable nn.Linear weights: |dW| / |W|."""
    num = den = 0.0
    for name, m in model.named_modules():
        if type(m) is nn.Linear and name != "out_head":
            w = m.weight.detach()
            num += float((dequantize_nf4(quantize_nf4(w)) - w).pow(2).sum())
            den += float(w.pow(2).sum())
    return (num / den) ** 0.5


def test_4bit_model_logits_stay_close_to_fp32(tiny_gpt, token_ids):
    model = copy.deepcopy(tiny_gpt)
    quantize_model_nf4(model)
    with torch.no_grad():
        ref, out = tiny_gpt(token_ids), model(token_ids)
    scale, eps = float(ref.std()), weight_error(tiny_gpt)
    diff = out - ref
    rms, largest = float(diff.pow(2).mean().sqrt()), float(diff.abs().max())
    print(f"weights' relative error {eps:.4f}; logits: std {scale:.4f}, rms diff {rms:.5f}, "
          f"max diff {largest:.5f}")
    assert 0.05 < eps < 0.12  # 4 bits on normal weights: about 9% (the round-trip test)
    # Each quantized layer's output is off by about eps (relative, see the LinearNF4 test); the
    # LayerNorms and residual connections carry that to the logits without amplifying it. So the
    # tolerance, relative to the logits' scale: rms difference under 1.5 eps x their std (measured
    # 0.09 x std), the largest difference under 0.75 x std (measured 0.53-0.61 x std over seeds).
    assert 0 < rms < 1.5 * eps * scale
    assert largest < 0.75 * scale
    # Greedy next token: this random model's top two logits are often within 0.03 of each other,
    # so 4 bits flip some choices (agreement 0.77-0.83 over seeds); where fp32 prefers its top
    # token by more than a quarter of the logits' std, the 4-bit model keeps it.
    agree = out.argmax(-1) == ref.argmax(-1)
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.25 * scale
    print(f"greedy next token agrees at {float(agree.float().mean()):.3f} of positions, at "
          f"{float(agree[clear].float().mean()):.3f} of the {int(clear.sum())} clear ones")
    assert float(agree.float().mean()) >= 0.7
    assert int(clear.sum()) >= 50 and float(agree[clear].float().mean()) >= 0.98


def test_4bit_classifier_logits_stay_close(tiny_gpt, token_ids):
    torch.manual_seed(9)
    clf = add_classification_head(copy.deepcopy(tiny_gpt), num_classes=2).eval()
    q = copy.deepcopy(clf)
    summary = quantize_model_nf4(q, double_quant=True)
    assert summary["kept"] == {"out_head": "in skip"} and type(q.out_head) is nn.Linear
    with torch.no_grad():
        ref, out = clf(token_ids), q(token_ids)  # (B, T, 2)
    scale, rms = float(ref.std()), float((out - ref).pow(2).mean().sqrt())
    print(f"class logits: std {scale:.4f}, rms diff {rms:.5f}")
    assert 0 < rms < 1.5 * weight_error(tiny_gpt) * scale  # as for the language model


def test_gradients_flow_through_the_4bit_blocks_to_the_input(tiny_gpt, token_ids):
    model = copy.deepcopy(tiny_gpt)
    quantize_model_nf4(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.pos_emb.weight.requires_grad_(True)  # stands for anything before the blocks
    logits = model(token_ids[:, :16])
    logits.sum().backward()
    grad = model.pos_emb.weight.grad
    assert grad is not None and float(grad[:16].abs().sum()) > 0
    ref = copy.deepcopy(tiny_gpt)  # the same with the dequantized weights as plain nn.Linear
    for name in [n for n, m in model.named_modules() if isinstance(m, LinearNF4)]:
        q = model.get_submodule(name)
        lin = ref.get_submodule(name)
        with torch.no_grad():
            lin.weight.copy_(q.weight)
    for p in ref.parameters():
        p.requires_grad_(False)
    ref.pos_emb.weight.requires_grad_(True)
    ref(token_ids[:, :16]).sum().backward()
    print(f"pos_emb grad: largest {float(grad.abs().max()):.4f}, largest difference from the "
          f"dequantized nn.Linear model {float((grad - ref.pos_emb.weight.grad).abs().max()):.2e}")
    # the same backward pass up to float rounding (the gradients here reach ~4000)
    assert torch.allclose(grad, ref.pos_emb.weight.grad, rtol=1e-5, atol=1e-3)
    for m in model.modules():
        if isinstance(m, LinearNF4):
            assert all(b.grad is None for b in m.buffers())


def test_qlora_a_lora_beside_each_4bit_layer_learns_while_the_4bit_base_stays_as_it_was(
        tiny_gpt, token_ids):
    """QLoRA: lora.py's LoRA wrapped around the 4-bit layers (and the full-precision head): the
    logits start equal to the 4-bit model's, only A and B learn, the packed base is untouched."""
    from lora import LinearWithLoRA, lora_layers, replace_linear_with_lora

    model = copy.deepcopy(tiny_gpt)
    quantize_model_nf4(model)
    with torch.no_grad():
        before = model(token_ids)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    assert buffers  # the packed weights and scales
    replace_linear_with_lora(model, rank=4, alpha=8, layer_types=(nn.Linear, LinearNF4))
    wrapped = lora_layers(model)
    assert sum(isinstance(w.linear, LinearNF4) for w in wrapped.values()) == 6 * len(
        model.trf_blocks)  # Q, K, V, out_proj and the two feed-forward layers of every block
    assert isinstance(model.out_head, LinearWithLoRA)  # the tied head, in full precision
    with torch.no_grad():
        assert torch.equal(model(token_ids), before)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(".lora." in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    targets = token_ids.roll(-1, dims=1)
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(token_ids).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert not torch.equal(model(token_ids), before)  # the LoRA has learned something
    for name, b in model.named_buffers():
        key = name.replace(".linear.", ".", 1) if name not in buffers else name
        assert torch.equal(b, buffers[key]), f"{name} changed"


# ----- memory arithmetic --------------------------------------------------------------------------

SMALL_CFGS = [
    {"vocab_size": 300, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
     "drop_rate": 0.0, "qkv_bias": True},
    {"vocab_size": 123, "context_length": 20, "emb_dim": 36, "n_heads": 4, "n_layers": 3,
     "drop_rate": 0.0, "qkv_bias": False},  # 36 * 36 is no multiple of 64: padded blocks
]


def tied_model(cfg):
    torch.manual_seed(10)
    model = GPTModel(cfg)
    model.out_head.weight = model.tok_emb.weight
    return model


@pytest.mark.parametrize("cfg", SMALL_CFGS)
def test_base_model_bytes_equal_measured_bytes(cfg):
    model = tied_model(cfg)
    assert base_model_bytes(cfg, "fp32") == model_bytes(model)
    assert base_model_bytes(cfg, "bf16") == model_bytes(copy.deepcopy(model).to(torch.bfloat16))
    untied = GPTModel(cfg)
    assert base_model_bytes(cfg, "fp32", tied_head=False) == model_bytes(untied)
    for block, dq in [(64, False), (64, True), (32, False)]:
        q = copy.deepcopy(model)
        quantize_model_nf4(q, block_size=block, double_quant=dq)
        assert base_model_bytes(cfg, "nf4", block_size=block, double_quant=dq) == model_bytes(q)
    bf16_rest = copy.deepcopy(model).to(torch.bfloat16)
    quantize_model_nf4(bf16_rest)
    assert base_model_bytes(cfg, "nf4", rest="bf16") == model_bytes(bf16_rest)
    # int8 with one fp32 scale per output channel, measured on the layers quantize_model_nf4
    # picks: 1 byte per weight + 4 per row, everything else 4 bytes per value
    names = quantize_model_nf4(copy.deepcopy(model))["quantized"]
    int8 = sum(model.get_submodule(n).weight.numel() + 4 * model.get_submodule(n).out_features
               for n in names)
    rest = model_bytes(model) - sum(4 * model.get_submodule(n).weight.numel() for n in names)
    assert base_model_bytes(cfg, "int8") == int8 + rest


def test_gpt2_memory_table():
    rows = {r["size"]: r for r in gpt2_memory_table()}
    assert list(rows) == ["124M", "355M", "774M", "1558M"]
    for size, row in rows.items():
        assert row["fp32"] == 4 * gpt_download3.count_gpt2_params(gpt_download3.GPT2_HPARAMS[size])
        assert row["bf16"] * 2 == row["fp32"]
        assert row["fp32"] > row["bf16"] > row["int8"] > row["nf4"]
    assert rows["124M"]["params"] == 124_439_808
    # 124M: the blocks' linear weights, 12 x 12 x 768^2 = 84.9M, are what gets quantized; the
    # embeddings (38.6M + 0.8M) stay fp32 and dominate the 4-bit model
    blocks = 12 * 12 * 768**2
    assert rows["124M"]["fp32"] - rows["124M"]["nf4"] == 4 * blocks - blocks * 4.5 / 8
    with pytest.raises(ValueError, match="dtype"):
        base_model_bytes(config_from_hparams(gpt_download3.GPT2_HPARAMS["124M"]), "int4")
