"""QLoRA's 4-bit base model from scratch: NF4 levels, block-wise quantization, LinearNF4.

QLoRA (Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314)
keeps the frozen base model in 4 bits and trains LoRA adapters in full precision on top. This
module builds the 4-bit half (the adapters live in lora.py):

- `NF4_LEVELS`: the 16 NormalFloat-4 values of the paper, and `nf4_levels_from_normal`, which
  derives them from the quantiles of the standard normal distribution.
- `quantize_nf4` / `dequantize_nf4`: block-wise absmax quantization (one float32 scale per block of
  64 values, two 4-bit level indices packed per byte), with optional double quantization of the
  scales (int8 in groups of 256, mean subtracted).
- `LinearNF4`: a frozen linear layer that stores its weight that way and dequantizes it on the
  fly in forward; `quantize_model_nf4` swaps a model's nn.Linear layers for it in place.
- `base_model_bytes`: the memory of GPT-2's weights in fp32, bf16, int8 and NF4, from its config.

Memory per weight with blocks of 64: 4 bits + 32 bits / 64 = 4.5 bits, 0.1406 of fp32's 32 bits;
with double quantization 4 + 8/64 + 32/(64 * 256) = 4.127 bits (the paper's 0.127 bits of scale
overhead per weight), 0.129 of fp32.

The helpers check what they are given (block sizes, dtypes, NaN or meta-device weights, an
NF4Tensor whose parts do not belong together, a model quantized already) before changing anything;
tests/test_fuzz_bonus_modules.py lists the mistakes and sweeps random inputs.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from input_checks import check_features, check_int, shape_of

__all__ = ["NF4_LEVELS", "NF4_OFFSET", "nf4_levels_from_normal", "pack_4bit", "unpack_4bit",
           "NF4Tensor", "quantize_absmax_int8", "dequantize_absmax_int8", "quantize_nf4",
           "dequantize_nf4", "LinearNF4", "model_bytes", "quantize_model_nf4", "base_model_bytes",
           "gpt2_memory_table"]

# The 16 NF4 values exactly as published: Dettmers et al. (2023), QLoRA, arXiv:2305.14314,
# Appendix E "NormalFloat 4-bit data type". Index 7 is an exact 0; the ends are -1 and 1.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)

# Probability at which the outermost quantile is taken (the paper does not print it): the value
# of the authors' implementation, 1 - (1/32 + 1/30) / 2 to 7 digits, i.e. the centre of the outer
# bin of 16 (1 - 1/32) and of 15 (1 - 1/30) equally likely bins, averaged.
NF4_OFFSET = 0.9677083


def nf4_levels_from_normal(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels derived from N(0, 1)'s quantile function, as float32, sorted.

    The paper (section 3) estimates each level from quantiles of N(0, 1) so that every level
    covers an equal share of normally distributed weights, then rescales them into [-1, 1].
    For an exact zero it makes the type asymmetric: 2^(k-1) = 8 quantiles for the negative half,
    2^(k-1) + 1 = 9 for the positive half, both including 0; the union, with one of the two zeros
    removed, has 7 + 1 + 8 = 16 values. The quantile function is infinite at probabilities 0 and
    1, so the probabilities run from 1 - offset to offset instead of from 0 to 1.

    With offset = 0.9677083 this reproduces the published table to within 1.2e-7, i.e. two float32
    steps near 1 (computed here in float64, rounded once). The published values are float32
    numbers whose last bits reflect the authors' own order of rounding, so no float64 derivation
    matches them bit for bit; tests/test_qlora.py allows 2e-7, far below the smallest gap between
    levels (0.08).
    """
    if isinstance(offset, bool) or not isinstance(offset, numbers.Real):
        raise TypeError(f"offset is a probability between 0.5 and 1 (NF4_OFFSET = {NF4_OFFSET}), "
                        f"not {shape_of(offset)}")
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset is a probability between 0.5 and 1, not {offset}")
    quantile = torch.special.ndtri  # the quantile function Q_X of N(0, 1)
    p_neg = torch.linspace(1 - offset, 0.5, 8, dtype=torch.float64)  # 7 negative quantiles and 0
    p_pos = torch.linspace(0.5, offset, 9, dtype=torch.float64)  # 0 and 8 positive quantiles
    levels = torch.cat([quantile(p_neg), quantile(p_pos)[1:]])  # one zero dropped: 16 values
    levels = levels / quantile(torch.tensor(offset, dtype=torch.float64))  # into [-1, 1]
    return levels.to(torch.float32)


# ----- checks -------------------------------------------------------------------------------------

def check_config(cfg, keys, who) -> None:
    """Check that `cfg` is a config dict with the course's keys `keys`, each a whole number of at
    least 1 ("qkv_bias": True or False)."""
    if not isinstance(cfg, dict):
        raise TypeError(f"{who} takes a config dict with the course's keys (e.g. "
                        f"GPT_CONFIG_124M), not {shape_of(cfg)}")
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ValueError(f"{who}: the config lacks {missing}; it needs {list(keys)} "
                         "(see GPT_CONFIG_124M)")
    for key in keys:
        if key == "qkv_bias":
            if not isinstance(cfg[key], bool):
                raise TypeError(f"the config's 'qkv_bias' is True or False, not "
                                f"{shape_of(cfg[key])}")
        else:
            check_int(cfg[key], f"the config's {key!r}", minimum=1)


def _check_tensor(value, name, float_only=True):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, not {shape_of(value)}")
    if float_only and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, not {value.dtype}")


def _check_values(value, name):
    """No values on the meta device (nothing to quantize), no NaN or inf (a damaged weight: its
    block's scale would spread it over every value of the block)."""
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device: it has a shape but no values. Load the "
                         "weights first (load_weights_into_gpt, load_state_dict(..., "
                         "assign=True)), then quantize.")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN or inf values ({int((~torch.isfinite(value)).sum())} "
                         "of them): a damaged weight, or one that training made diverge; "
                         "quantizing would spread them over their block. Reload the weights.")


def _check_quant_settings(block_size, double_quant, dq_block_size):
    block_size = check_int(block_size, "block_size", minimum=1)
    if block_size < 2 or block_size % 2:
        raise ValueError(f"block_size must be a positive even number (two 4-bit values share a "
                         f"byte), not {block_size}; QLoRA uses 64")
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant is True or False, not {shape_of(double_quant)}")
    return block_size, check_int(dq_block_size, "dq_block_size", minimum=1)


# ----- packing: two 4-bit indices per byte --------------------------------------------------------

def pack_4bit(indices: torch.Tensor) -> torch.Tensor:
    """Pack a flat tensor of an even number of values 0..15 into bytes: (N,) -> (N // 2,) uint8.
    Element 2j goes into the high 4 bits of byte j, element 2j + 1 into the low 4 bits."""
    _check_tensor(indices, "pack_4bit's indices", float_only=False)
    if indices.is_floating_point() or indices.is_complex():
        raise TypeError(f"pack_4bit takes integer level indices 0..15, not {indices.dtype} "
                        "values (round them, then .long())")
    if indices.dim() != 1 or indices.numel() % 2:
        raise ValueError(f"pack_4bit takes a flat tensor of an even length, not shape "
                         f"{tuple(indices.shape)}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) > 15):
        raise ValueError(f"4-bit indices must lie in 0..15, not {int(indices.min())}.."
                         f"{int(indices.max())}")
    pairs = indices.to(torch.uint8).view(-1, 2)  # (N,) -> (N/2, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_4bit: (M,) uint8 -> (2M,) uint8 indices 0..15."""
    _check_tensor(packed, "unpack_4bit's packed data", float_only=False)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed 4-bit data is uint8, not {packed.dtype}")
    if packed.dim() != 1:
        raise ValueError(f"unpack_4bit takes a flat tensor of bytes (M,), as pack_4bit returns "
                         f"it, not shape {tuple(packed.shape)}")
    # (M,) -> (M, 2): high nibble first -> (2M,)
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).view(-1)


# ----- block-wise quantization --------------------------------------------------------------------

@dataclass
class NF4Tensor:
    """A weight stored in NF4: what quantize_nf4 returns and dequantize_nf4 reads.

    Without double quantization the block scales are `absmax`; with it they are stored as
    `absmax_q` (int8), `absmax_scale` (one float32 per group of `dq_block_size` blocks) and
    `absmax_mean` (one float32), and `absmax` is None.
    """

    packed: torch.Tensor  # uint8 (n_blocks * block_size // 2,): two level indices per byte
    absmax: torch.Tensor | None  # float32 (n_blocks,): max |w| of each block
    shape: torch.Size  # the original weight's shape; the last block is padded with zeros
    block_size: int = 64
    absmax_q: torch.Tensor | None = None  # int8 (n_blocks,): (absmax - mean) / absmax_scale
    absmax_scale: torch.Tensor | None = None  # float32 (n_groups,): max |absmax - mean| / 127
    absmax_mean: torch.Tensor | None = None  # float32 (): the mean of all absmaxes
    dq_block_size: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax is None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def stored_bytes(self) -> int:
        """Bytes of the packed indices and the scales (the shape is metadata, not counted)."""
        tensors = [self.packed, self.absmax, self.absmax_q, self.absmax_scale, self.absmax_mean]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _check_nf4(q, who) -> None:
    """Check that `q` is an NF4Tensor whose parts belong together: the packed bytes cover the
    shape in whole blocks, with one scale per block (or its double-quantized codes)."""
    if not isinstance(q, NF4Tensor):
        raise TypeError(f"{who} takes the NF4Tensor that quantize_nf4 returns, not {shape_of(q)}")
    bad = "this NF4Tensor's parts do not belong together"
    if isinstance(q.block_size, bool) or not isinstance(q.block_size, int) or q.block_size < 2 \
            or q.block_size % 2:
        raise ValueError(f"{bad}: block_size {q.block_size!r} is not a positive even number")
    if not isinstance(q.shape, tuple) or not all(type(d) is int and d >= 0 for d in q.shape):
        raise ValueError(f"{bad}: shape {q.shape!r} is not a tuple of sizes")
    if not (isinstance(q.packed, torch.Tensor) and q.packed.dtype == torch.uint8
            and q.packed.dim() == 1):
        raise ValueError(f"{bad}: packed must be flat uint8 bytes, not {shape_of(q.packed)}")
    n_blocks, rest = divmod(2 * q.packed.numel(), q.block_size)
    if rest or not (n_blocks - 1) * q.block_size < q.numel <= n_blocks * q.block_size:
        raise ValueError(f"{bad}: {q.packed.numel()} bytes hold {2 * q.packed.numel()} values, "
                         f"not the {q.numel} of shape {tuple(q.shape)} in blocks of "
                         f"{q.block_size}. Quantize the weight again with quantize_nf4.")
    if q.absmax is None:
        if type(q.dq_block_size) is not int or q.dq_block_size < 1:
            raise ValueError(f"{bad}: dq_block_size {q.dq_block_size!r} is not a whole number "
                             "of at least 1")
        groups = -(-n_blocks // q.dq_block_size)
        parts = [("absmax_q", q.absmax_q, (torch.int8,), n_blocks),
                 ("absmax_scale", q.absmax_scale, (torch.float32,), groups),
                 ("absmax_mean", q.absmax_mean, (torch.float32,), 1)]
    else:
        extra = [name for name in ("absmax_q", "absmax_scale", "absmax_mean")
                 if getattr(q, name) is not None]
        if extra:
            raise ValueError(f"{bad}: it has the scales absmax and also {extra}, which only a "
                             "double-quantized NF4Tensor (absmax None) has")
        parts = [("absmax", q.absmax, (torch.float32, torch.float16, torch.bfloat16), n_blocks)]
    for name, t, dtypes, count in parts:
        if not (isinstance(t, torch.Tensor) and t.dtype in dtypes and t.dim() <= 1
                and t.numel() == count):
            raise ValueError(f"{bad}: {name} must be {count} {dtypes[0]} values (one per "
                             f"{'block' if count == n_blocks else 'group'}), not {shape_of(t)}")
        if t.device != q.packed.device:
            raise ValueError(f"{bad}: {name} is on {t.device}, packed on {q.packed.device}")


def quantize_absmax_int8(values: torch.Tensor, block_size: int = 256):
    """Double quantization of the block scales: subtract their mean, then symmetric int8 with one
    float32 scale per group of `block_size`. (n,) float32 -> (int8 (n,), scales, mean).

    The paper uses 8-bit floats here; a linear int8 code has the same size and a simple error
    bound: each dequantized value is within scale / 2 = max |value - mean| / 254 of its group."""
    _check_tensor(values, "quantize_absmax_int8's values")
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"quantize_absmax_int8 takes a non-empty flat tensor (n,) (the block "
                         f"scales), not shape {tuple(values.shape)}")
    _check_values(values, "quantize_absmax_int8's values")
    block_size = check_int(block_size, "block_size", minimum=1)
    values = values.float()  # the scales and the mean in float32, whatever came in
    mean = values.mean()
    centred = values - mean  # the absmaxes are all positive: centre them for a symmetric code
    n = centred.numel()
    n_groups = -(-n // block_size)
    padded = F.pad(centred, (0, n_groups * block_size - n))
    groups = padded.view(n_groups, block_size)  # (n,) -> (n_groups, block_size)
    scales = groups.abs().amax(dim=1) / 127
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # all-equal group: codes 0
    codes = torch.round(groups / safe[:, None]).clamp(-127, 127).to(torch.int8)
    return codes.view(-1)[:n], scales, mean


def dequantize_absmax_int8(codes, scales, mean, block_size: int = 256) -> torch.Tensor:
    """Inverse of quantize_absmax_int8: (n,) int8 -> (n,) float32."""
    block_size = check_int(block_size, "block_size", minimum=1)
    _check_tensor(codes, "codes", float_only=False)
    _check_tensor(scales, "scales")
    if not isinstance(mean, (torch.Tensor, numbers.Real)) or isinstance(mean, bool) or (
            isinstance(mean, torch.Tensor) and (mean.numel() != 1 or not mean.is_floating_point())):
        raise TypeError(f"mean must be a number (a float tensor of one value), not "
                        f"{shape_of(mean)}")
    if not isinstance(mean, torch.Tensor):
        try:
            mean = float(mean)
        except OverflowError:
            raise ValueError(f"mean {mean} is too large for a float") from None
    if codes.dtype != torch.int8 or codes.dim() != 1 or scales.dim() != 1:
        raise ValueError(f"dequantize_absmax_int8 takes int8 codes (n,) and scales (n_groups,), "
                         f"as quantize_absmax_int8 returns them, not {shape_of(codes)} and "
                         f"{shape_of(scales)}")
    if scales.numel() != -(-codes.numel() // block_size):
        raise ValueError(f"{codes.numel()} codes in groups of {block_size} need "
                         f"{-(-codes.numel() // block_size)} scales, not {scales.numel()}: pass "
                         "the block_size they were quantized with")
    n = codes.numel()
    padded = F.pad(codes.to(torch.float32), (0, scales.numel() * block_size - n))
    groups = padded.view(-1, block_size)  # (n,) -> (n_groups, block_size)
    return (groups * scales[:, None]).view(-1)[:n] + mean


def quantize_nf4(weight: torch.Tensor, block_size: int = 64, double_quant: bool = False,
                 dq_block_size: int = 256) -> NF4Tensor:
    """Quantize a float tensor of any shape to NF4, block-wise: each block of `block_size`
    consecutive values (row-major) is divided by its absmax and rounded to the nearest of the 16
    levels. A size not divisible by block_size is padded with zeros; the shape is kept."""
    if not torch.is_tensor(weight) or not weight.is_floating_point():
        raise TypeError(f"quantize_nf4 takes a floating-point tensor, not {type(weight).__name__}"
                        f"{'' if not torch.is_tensor(weight) else ' of ' + str(weight.dtype)}")
    if weight.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor (shape {tuple(weight.shape)})")
    block_size, dq_block_size = _check_quant_settings(block_size, double_quant, dq_block_size)
    _check_values(weight, "the weight to quantize")
    flat = weight.detach().to(torch.float32).reshape(-1)
    n_blocks = -(-flat.numel() // block_size)
    padded = F.pad(flat, (0, n_blocks * block_size - flat.numel()))
    blocks = padded.view(n_blocks, block_size)  # (N,) -> (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block stays 0
    normalized = blocks / safe[:, None]  # in [-1, 1]
    levels = NF4_LEVELS.to(weight.device)
    midpoints = (levels[1:] + levels[:-1]) / 2  # (15,) decision boundaries between levels
    indices = torch.bucketize(normalized, midpoints)  # nearest level's index, 0..15
    packed = pack_4bit(indices.view(-1))
    if not double_quant:
        return NF4Tensor(packed, absmax, weight.shape, block_size)
    codes, scales, mean = quantize_absmax_int8(absmax, dq_block_size)
    return NF4Tensor(packed, None, weight.shape, block_size, codes, scales, mean, dq_block_size)


def dequantize_nf4(q: NF4Tensor) -> torch.Tensor:
    """The float32 weight of shape q.shape: level[index] * absmax of its block."""
    _check_nf4(q, "dequantize_nf4")
    if q.double_quant:
        absmax = dequantize_absmax_int8(q.absmax_q, q.absmax_scale, q.absmax_mean,
                                        q.dq_block_size)
    else:
        absmax = q.absmax
    n_blocks = 2 * q.packed.numel() // q.block_size
    if n_blocks != absmax.numel():
        raise ValueError(f"this NF4 tensor has {n_blocks} blocks of {q.block_size} but "
                         f"{absmax.numel()} scales: its parts do not belong together")
    # NF4_LEVELS[unpack_4bit(packed)], in one lookup per byte (twice as fast): row b of the table
    # holds the levels of byte b's two indices, (256, 2)
    byte_levels = torch.stack([NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)], dim=1)
    pairs = torch.index_select(byte_levels.to(q.packed.device), 0, q.packed.int())  # (N/2, 2)
    values = pairs.view(n_blocks, q.block_size) * absmax[:, None]  # (N/2, 2) -> (n_blocks, bs)
    return values.view(-1)[:q.numel].view(q.shape)  # drop the padding; (N,) -> shape


# ----- the 4-bit linear layer ---------------------------------------------------------------------

class _LinearNF4Function(torch.autograd.Function):
    """y = x W^T + b with W dequantized from NF4 in forward, and again in backward. F.linear on
    the dequantized weight would make autograd keep that float32 copy of every layer until the
    backward pass, the full-precision model again; this keeps only the 4-bit weight (the layer's
    buffers). No gradient for W (frozen); one for b only if a learner unfroze it."""

    @staticmethod
    def forward(ctx, x, q: NF4Tensor, bias):
        ctx.q = q  # the layer's own buffers: nothing new is kept alive
        weight = dequantize_nf4(q).to(x.dtype)  # (out, in), only for this call
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ dequantize_nf4(ctx.q).to(grad_out.dtype)  # (..., out) @ (out, in)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)  # (..., out) -> (out,)
        return grad_x, None, grad_bias


class LinearNF4(nn.Module):
    """A frozen nn.Linear whose weight is stored in NF4 (buffers, not parameters) and
    dequantized on the fly in forward (and again in backward, so that no float32 copy is kept
    for it); the bias stays in full precision, frozen too.
    (B, T, in_features) -> (B, T, out_features), like the layer it came from."""

    def __init__(self, q: NF4Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        _check_nf4(q, "LinearNF4")
        if len(q.shape) != 2:
            raise ValueError(f"a linear layer's weight is 2-D (out, in), not {tuple(q.shape)}")
        self.out_features, self.in_features = q.shape
        if bias is not None:
            _check_tensor(bias, "LinearNF4's bias")
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"the bias must have one value per output, shape "
                                 f"({self.out_features},), not {tuple(bias.shape)}")
        self.block_size, self.dq_block_size = q.block_size, q.dq_block_size
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax", q.absmax)
        self.register_buffer("absmax_q", q.absmax_q)
        self.register_buffer("absmax_scale", q.absmax_scale)
        self.register_buffer("absmax_mean", q.absmax_mean)
        bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.bias = bias  # registers a (frozen) parameter, or None

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64,
                    double_quant: bool = False) -> LinearNF4:
        """Quantize an nn.Linear's weight to NF4; its bias is kept as it is."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LinearNF4.from_linear takes an nn.Linear, not "
                            f"{type(linear).__name__}")
        q = quantize_nf4(linear.weight, block_size, double_quant)
        return cls(q, linear.bias)

    @property
    def quantized(self) -> NF4Tensor:
        """The stored weight as an NF4Tensor (the same tensors, no copy)."""
        shape = torch.Size((self.out_features, self.in_features))
        return NF4Tensor(self.packed, self.absmax, shape, self.block_size, self.absmax_q,
                         self.absmax_scale, self.absmax_mean, self.dq_block_size)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight (out, in), computed on each access, never stored."""
        return dequantize_nf4(self.quantized)

    def forward(self, x):
        check_features(x, self.in_features, "LinearNF4")  # any float dtype: W is made in x's
        if x.device != self.packed.device:
            raise ValueError(f"the input is on {x.device} but LinearNF4's weight is on "
                             f"{self.packed.device}; move one of them with .to(device).")
        # F.linear(x, self.weight, self.bias), but the backward pass keeps only the 4-bit weight
        return _LinearNF4Function.apply(x, self.quantized, self.bias)

    def stored_bytes(self) -> int:
        """Bytes of the packed weight and its scales (the bias is not counted)."""
        return self.quantized.stored_bytes()

    def bytes_ratio(self) -> float:
        """stored_bytes() / the weight's bytes in fp32 (0.1406 for blocks of 64)."""
        return self.stored_bytes() / (4 * self.out_features * self.in_features)

    def extra_repr(self):
        dq = ", double_quant" if self.absmax is None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block_size={self.block_size}{dq}")


# ----- a whole model ------------------------------------------------------------------------------

def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each tensor counted once (tied weights too)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_bytes takes a model (an nn.Module), not {shape_of(model)}")
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def quantize_model_nf4(model: nn.Module, block_size: int = 64, double_quant: bool = False,
                       skip=("out_head",)) -> dict:
    """Replace the model's nn.Linear layers by frozen LinearNF4 layers, in place; a summary.

    Stays in full precision: everything that is not an nn.Linear (embeddings, LayerNorms), the
    modules named in `skip` (a name, e.g. "out_head", or a prefix such as "trf_blocks.0"), and any
    linear layer whose weight is shared with another module: GPT-2's out_head is tok_emb's very
    tensor, so a 4-bit copy would add memory, not save it. The default skips out_head in every
    case: the classifier's 2-class head is tiny (C x 2) and is the part that gets trained.
    Summary: {"quantized": [names], "kept": {name: why}, "linear_bytes_fp32",
    "linear_bytes_nf4", "model_bytes_before", "model_bytes_after"}.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_model_nf4 takes a model (an nn.Module such as GPTModel), not "
                        f"{shape_of(model)}")
    _check_quant_settings(block_size, double_quant, 256)  # before any layer is swapped
    skip = (skip,) if isinstance(skip, str) else skip
    if not isinstance(skip, (tuple, list, set, frozenset)) or not all(
            isinstance(s, str) for s in skip):
        raise TypeError(f"skip is a module name or a tuple of them (e.g. ('out_head',)), not "
                        f"{shape_of(skip)}")
    skip = tuple(skip)
    names = [name for name, _ in model.named_modules()]
    unknown = [s for s in skip if not any(n == s or n.startswith(s + ".") for n in names)]
    if unknown:
        raise ValueError(f"skip names {unknown}, which this model does not have; pass skip=() "
                         f"or names of its modules, e.g. {names[1:4]}")
    owners = {}  # parameter -> the names it appears under (more than one: shared)
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(param, []).append(name)
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in linears:  # every weight checked before any layer is swapped
        if not any(name == s or name.startswith(s + ".") for s in skip):
            _check_values(linear.weight, f"{name}.weight")
    summary = {"quantized": [], "kept": {}, "linear_bytes_fp32": 0, "linear_bytes_nf4": 0,
               "model_bytes_before": model_bytes(model)}
    for name, linear in linears:
        if any(name == s or name.startswith(s + ".") for s in skip):
            summary["kept"][name] = "in skip"
            continue
        shared = [n for n in owners[linear.weight] if n != f"{name}.weight"]
        if shared:
            summary["kept"][name] = f"its weight is shared with {', '.join(shared)}"
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LinearNF4.from_linear(linear, block_size, double_quant)
        setattr(parent, attr, layer)  # works for nn.Sequential children ("layers.0") too
        summary["quantized"].append(name)
        summary["linear_bytes_fp32"] += linear.weight.numel() * 4
        summary["linear_bytes_nf4"] += layer.stored_bytes()
    if not summary["quantized"]:  # nothing was changed
        if any(isinstance(m, LinearNF4) for m in model.modules()):
            kept = f"; kept in full precision: {summary['kept']}" if summary["kept"] else ""
            raise ValueError(f"this {type(model).__name__} is quantized already (its layers are "
                             f"LinearNF4{kept}); quantize a freshly loaded full-precision model.")
        if not linears:
            raise ValueError(f"this {type(model).__name__} has no nn.Linear layer to quantize.")
    summary["model_bytes_after"] = model_bytes(model)
    return summary


# ----- memory arithmetic for GPT-2 ----------------------------------------------------------------

_BYTES = {"fp32": 4, "bf16": 2}


def _nf4_bytes(numel: int, block_size: int, double_quant: bool, dq_block_size: int = 256) -> int:
    n_blocks = -(-numel // block_size)
    indices = n_blocks * block_size // 2  # padded, two per byte
    if not double_quant:
        return indices + 4 * n_blocks
    return indices + n_blocks + 4 * -(-n_blocks // dq_block_size) + 4  # int8, scales, mean


def base_model_bytes(cfg: dict, dtype: str = "fp32", block_size: int = 64,
                     double_quant: bool = False, rest: str = "fp32", tied_head: bool = True) -> int:
    """Bytes of a GPTModel's weights from its config (course keys), without building it.

    dtype "fp32" / "bf16": every parameter in that type. "int8": the transformer blocks' linear
    weights (W_query, W_key, W_value, out_proj, ff.layers[0] and [2]) in int8 with one fp32 scale
    per output channel; "nf4": those weights as quantize_model_nf4 stores them. The rest
    (embeddings, LayerNorms, biases; out_head when untied) stays in `rest` ("fp32" or "bf16").
    tied_head: out_head shares tok_emb's weight, as in GPT-2 (counted once).
    """
    if not isinstance(dtype, str) or dtype not in ("fp32", "bf16", "int8", "nf4"):
        raise ValueError(f"dtype is one of 'fp32', 'bf16', 'int8', 'nf4', not {dtype!r}")
    if not isinstance(rest, str) or rest not in _BYTES:
        raise ValueError(f"rest is 'fp32' or 'bf16', not {rest!r}")
    check_config(cfg, ("vocab_size", "context_length", "emb_dim", "n_layers", "qkv_bias"),
                 "base_model_bytes")
    block_size, _ = _check_quant_settings(block_size, double_quant, 256)
    if not isinstance(tied_head, bool):
        raise TypeError(f"tied_head is True or False, not {shape_of(tied_head)}")
    c, v, t, n = cfg["emb_dim"], cfg["vocab_size"], cfg["context_length"], cfg["n_layers"]
    # (out, in) of each block's linear layers, and whether it has a bias
    linears = [(c, c, cfg["qkv_bias"])] * 3 + [(c, c, True), (4 * c, c, True), (c, 4 * c, True)]
    others = v * c + t * c + 2 * c  # tok_emb, pos_emb, final_norm
    others += n * (4 * c + sum(o for o, _, b in linears if b))  # norm1, norm2, the biases
    others += 0 if tied_head else v * c
    weights = [o * i for o, i, _ in linears] * n
    if dtype in _BYTES:
        return _BYTES[dtype] * (others + sum(weights))
    if dtype == "int8":
        quantized = n * sum(o * i + 4 * o for o, i, _ in linears)
    else:
        quantized = sum(_nf4_bytes(w, block_size, double_quant) for w in weights)
    return _BYTES[rest] * others + quantized


def gpt2_memory_table(sizes=("124M", "355M", "774M", "1558M"), double_quant: bool = False,
                      rest: str = "fp32"):
    """Rows {"size", "params", "fp32", "bf16", "int8", "nf4"} (bytes) for OpenAI's GPT-2 sizes,
    from base_model_bytes (tied head; for int8 and nf4 the embeddings, norms and biases in
    `rest`)."""
    from gpt_download3 import GPT2_HPARAMS, count_gpt2_params
    from previous_chapters import config_from_hparams

    sizes = (sizes,) if isinstance(sizes, str) else sizes
    if not isinstance(sizes, (tuple, list)):
        raise TypeError(f"sizes is a tuple of GPT-2 sizes such as ('124M', '355M'), not "
                        f"{shape_of(sizes)}")
    unknown = [s for s in sizes if not isinstance(s, str) or s not in GPT2_HPARAMS]
    if unknown:
        raise ValueError(f"unknown GPT-2 sizes {unknown}; OpenAI's are {list(GPT2_HPARAMS)}")
    rows = []
    for size in sizes:
        cfg = config_from_hparams(GPT2_HPARAMS[size])
        row = {"size": size, "params": count_gpt2_params(GPT2_HPARAMS[size])}
        for dtype in ("fp32", "bf16", "int8", "nf4"):
            row[dtype] = base_model_bytes(cfg, dtype, double_quant=double_quant, rest=rest)
        rows.append(row)
    return rows
