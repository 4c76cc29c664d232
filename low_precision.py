"""Faster generation on a CPU: GPT-2's linear layers in int8 (our absmax quantization) or bf16.

At batch 1, every new token multiplies one vector by every weight matrix of the model, so a CPU
spends its time reading weights (about 500 MB per token for 124M in fp32): generation is bound
by memory bandwidth. Stored in 8 bits the weights are read four times faster, in bf16 twice.

- `absmax_quantize` / `dequantize`: one scale per output channel (row of an nn.Linear weight),
  scale = max |w| over the row / 127, q = round(w / scale) in int8; w is approximately q * scale.
  What is rounded: each weight, to the nearest of the 255 multiples -127..127 of its row's scale
  (error at most scale / 2). What stays fp32: the scales, the biases, and everything that is not
  an nn.Linear: embeddings, LayerNorms, the residual stream, attention's softmax, the KV cache.
- `Int8Linear`: a linear layer holding those int8 weights. Two kernels compute its product:
  "dynamic" (the default where available) packs OUR int8 weights and scales into PyTorch's
  quantized linear (fbgemm on x86, qnnpack on ARM), which also rounds the input to 8 bits on
  every call (one scale and zero point for the whole input tensor, 7 bits of range as PyTorch's
  default qconfig for these engines sets it, reduce_range) and multiplies integers; "reference"
  dequantizes the weights and calls F.linear in fp32 (exact in the activations, and slow: it
  writes a full fp32 copy of the weight on every call). Both read the same state dict.
- `BF16Linear`: the weight rounded to bfloat16 (8 bits of mantissa instead of 24); the input is
  rounded to bf16 for the product, the output and the bias are fp32.
- `quantize_int8(model)` / `to_bf16(model)` swap a GPTModel's nn.Linear layers in place; the
  course's `generate` (with its KV cache) runs the result unchanged.

Why these kernels: one token (batch 1) through all of GPT-2 small's weight matrices, measured on an
AMD EPYC with AVX-512 VNNI and BF16, torch 2.13, on a machine shared with other jobs
(benchmarks/bench_low_precision.py prints the same table): fp32 F.linear 24-36 ms; PyTorch's
dynamically quantized linear on our int8 weights 3.3-7 ms (5-8x faster); bf16 F.linear 15 ms at
one thread (about 2x), but erratic at two threads on the busy machine (36 ms at best);
torch.ops.aten._weight_int8pack_mm (int8 weights, fp32 input) 350-600 ms, far slower than fp32;
torch._int_mm (int8 x int8) at batch 1 over 500 ms. Hence the default: "dynamic" where available.
PyTorch 2.13 marks its quantized tensor types (torch.qint8, ...) as deprecated (pytorch issue
184982): we create one qint8 tensor per layer only to hand our weights to the packing op, and
silence that one warning there. If a later PyTorch removes them, kernel="auto" falls back to
"reference" (correct, slower) and says so.

The helpers check what they are given (a bf16 input to an int8 layer, a kernel or device that does
not exist, NaN weights, a model converted already, a layer built on the meta device and never
loaded) before changing anything; tests/test_fuzz_bonus_modules.py lists the mistakes.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from input_checks import check_features, check_int, shape_of
from qlora import model_bytes  # parameters and buffers, each tensor once

__all__ = ["absmax_quantize", "dequantize", "int8_engine", "Int8Linear", "BF16Linear",
           "quantize_int8", "to_bf16", "inference_bytes", "weight_errors"]

_QMAX = 127  # symmetric int8: -127..127 (-128 is never used, so the range is symmetric)
_DEPRECATION = "torch.quantize_per_tensor, torch.quantize_per_channel"  # torch 2.13's warning


def absmax_quantize(weight: torch.Tensor):
    """(q, scale) of a weight (out, in): q int8 (out, in), scale fp32 (out,), one per output
    channel, = max |w| of that row / 127, so that w = q * scale up to half a step per weight.
    A row of zeros gets scale 1 (any scale gives q = 0)."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"absmax_quantize takes a floating-point weight (out, in), not "
                        f"{shape_of(weight)}")
    if weight.dim() != 2 or weight.shape[1] == 0:
        raise ValueError(f"absmax_quantize takes a 2-D weight (out, in) with in >= 1, not "
                         f"{tuple(weight.shape)}")
    _check_finite(weight)
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / _QMAX  # (out,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-_QMAX, _QMAX).to(torch.int8)  # (out, in)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 weight (out, in) that int8 `q` (out, in) and per-row `scale` (out,) stand for."""
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8 or q.dim() != 2:
        raise TypeError(f"dequantize takes the int8 weight (out, in) that absmax_quantize "
                        f"returns, not {shape_of(q)}")
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point() or \
            tuple(scale.shape) != q.shape[:1]:
        raise ValueError(f"the scale must be {q.shape[0]} float values (one per row of the "
                         f"{tuple(q.shape)} weight), as absmax_quantize returns it, not "
                         f"{shape_of(scale)}")
    return q.float() * scale[:, None]


def int8_engine() -> str | None:
    """PyTorch's quantized engine whose dynamic linear we use: fbgemm (x86), else qnnpack (ARM);
    None when this PyTorch has neither (then only the "reference" kernel runs)."""
    try:
        engines = torch.backends.quantized.supported_engines
        torch.ops.quantized.linear_prepack, torch.ops.quantized.linear_dynamic  # noqa: B018
        torch._make_per_channel_quantized_tensor  # noqa: B018  (the qint8 container we hand over)
    except (AttributeError, RuntimeError):
        return None
    return next((e for e in ("fbgemm", "qnnpack") if e in engines), None)


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and one fp32 scale per output channel (absmax_quantize).

    State dict: weight_int8 (out, in) int8, scale (out,) fp32, bias (out,) fp32 or absent: plain
    tensors, saved and loaded with torch.save / torch.load like any other. kernel "dynamic":
    PyTorch's quantized linear on our packed weights (the int8 weights are then kept only in its
    packed form, 1 byte each); "reference": dequantize and F.linear in fp32. CPU only.
    """

    def __init__(self, in_features, out_features, bias=True, kernel="auto", device=None):
        super().__init__()
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        if not isinstance(bias, bool):
            raise TypeError(f"bias is True or False, not {shape_of(bias)}")
        _check_kernel(kernel)
        if device is not None:
            try:
                where = torch.device(device)
            except (RuntimeError, TypeError, ValueError, OverflowError):
                where = None
            if where is None or where.type not in ("cpu", "meta"):
                raise ValueError(f"device must be 'cpu' (Int8Linear computes on the CPU; 'meta' "
                                 f"for the structure only), not {shape_of(device)}")
            device = where
        if kernel == "auto":
            kernel = "dynamic" if int8_engine() else "reference"
            if kernel == "reference":
                warnings.warn("this PyTorch has no quantized linear engine (fbgemm or qnnpack): "
                              "Int8Linear computes with the slow 'reference' kernel.", stacklevel=2)
        if kernel not in ("dynamic", "reference"):
            raise ValueError(f"kernel is 'auto', 'dynamic' or 'reference', not {kernel!r}")
        if kernel == "dynamic" and int8_engine() is None:
            raise RuntimeError("kernel='dynamic' needs PyTorch's quantized engines (fbgemm or "
                               "qnnpack), which this PyTorch lacks; use kernel='reference'.")
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self.register_buffer("scale", torch.ones(out_features, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self._weight_int8 = torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        self._packed = None  # the "dynamic" kernel's packed weights, made on first use

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel="auto"):
        """An Int8Linear holding `linear`'s weight quantized by absmax_quantize, and its bias."""
        _check_linear(linear, "Int8Linear.from_linear")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, kernel,
                    device=linear.weight.device)
        q, scale = absmax_quantize(linear.weight)
        layer._set(q, scale, None if linear.bias is None else linear.bias.detach().float())
        return layer

    def _set(self, q, scale, bias):
        self._weight_int8, self._packed = q, None
        self.scale = scale
        if bias is not None:
            self.bias = bias
        if self.kernel == "dynamic" and q.device.type == "cpu":
            self._pack()

    def _pack(self):
        """Hand our int8 weights and scales to the engine's packing op; keep only the result."""
        engine, previous = int8_engine(), torch.backends.quantized.engine
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATION)  # see the module docstring
            qweight = torch._make_per_channel_quantized_tensor(  # our q and scales, not requantized
                self._weight_int8, self.scale.double(),
                torch.zeros(self.out_features, dtype=torch.long), 0)
            torch.backends.quantized.engine = engine  # the packed format is the engine's own
            try:
                self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
            finally:
                torch.backends.quantized.engine = previous
        self._weight_int8 = None  # the packed copy holds the same int8 values

    @property
    def weight_int8(self) -> torch.Tensor:
        """The int8 weights (out, in), read back from the packed form if need be."""
        if self._weight_int8 is not None:
            return self._weight_int8
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr()

    @property
    def weight(self) -> torch.Tensor:
        """The fp32 weight (out, in) the int8 weights stand for (dequantize)."""
        return dequantize(self.weight_int8, self.scale)

    def forward(self, x):
        check_features(x, self.in_features, "Int8Linear")
        if x.dtype != torch.float32:  # the int8 kernels take fp32 in, under autocast too
            raise TypeError(f"Int8Linear takes float32 inputs (it rounds them to 8 bits itself), "
                            f"not {x.dtype}; convert with x.float().")
        if self.scale.device.type == "meta":
            raise ValueError("this Int8Linear was built on the meta device and holds no weights "
                             "yet: load an int8 state dict into the model first (load_state_dict("
                             "..., assign=True)).")
        if x.device != self.scale.device:
            raise ValueError(f"the input is on {x.device} but Int8Linear's weights are on "
                             f"{self.scale.device}; move the input with .to(device).")
        if self.kernel == "reference":
            return F.linear(x, dequantize(self.weight_int8, self.scale), self.bias)
        if self._packed is None:
            self._pack()
        # quantizes x to 8 bits (7 of range: reduce_range, PyTorch's default for fbgemm and
        # qnnpack), multiplies integers, applies both scales and adds the fp32 bias
        x2d = x.reshape(-1, self.in_features)  # (..., in) -> (N, in): the op wants 2 dims
        out = torch.ops.quantized.linear_dynamic(x2d.contiguous(), self._packed, True)
        return out.view(*x.shape[:-1], self.out_features)  # (N, out) -> (..., out)

    def stored_bytes(self) -> int:
        """Bytes of the weights, scales and bias as this layer keeps them."""
        n = self.in_features * self.out_features + 4 * self.out_features
        return n + (0 if self.bias is None else 4 * self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight_int8"] = self.weight_int8

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight_int8"
        q = state_dict.get(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if key in unexpected_keys:  # nn.Module does not know the key: it is not a buffer
            unexpected_keys.remove(key)
        if q is None:
            missing_keys.append(key)
            return
        shape = (self.out_features, self.in_features)
        if q.dtype != torch.int8 or tuple(q.shape) != shape:
            error_msgs.append(f"{key}: expected int8 of shape {shape}, got {q.dtype} of shape "
                              f"{tuple(q.shape)}; was this state dict saved from quantize_int8 "
                              "of a model with the same config?")
            return
        self._set(q.detach().clone(), self.scale, None)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")


class BF16Linear(nn.Module):
    """nn.Linear whose weight is stored in bfloat16: (B, T, in) fp32 -> (B, T, out) fp32.

    The input is rounded to bf16 for the product (which accumulates in fp32); the bias and the
    output stay fp32, so the rest of the model (LayerNorm, softmax, KV cache) runs in fp32.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        _check_linear(linear, "BF16Linear")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = (None if linear.bias is None else
                     nn.Parameter(linear.bias.detach().float(), requires_grad=False))

    def forward(self, x):
        check_features(x, self.in_features, "BF16Linear")  # any float dtype: rounded to bf16
        if x.device != self.weight.device:
            raise ValueError(f"the input is on {x.device} but BF16Linear's weight is on "
                             f"{self.weight.device}; move the input with .to(device).")
        y = F.linear(x.to(torch.bfloat16), self.weight).float()
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _check_finite(weight, name="the weight"):
    """No NaN or inf in a weight (on the meta device there are no values to look at)."""
    if weight.device.type != "meta" and not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{name} {tuple(weight.shape)} holds NaN or inf values: a damaged "
                         "weight, or one that training made diverge; reload the weights.")


def _check_kernel(kernel):
    if not isinstance(kernel, str) or kernel not in ("auto", "dynamic", "reference"):
        raise ValueError(f"kernel is 'auto', 'dynamic' or 'reference', not {kernel!r}")


def _check_linear(linear, who):
    if type(linear) is not nn.Linear:
        converted = isinstance(linear, (Int8Linear, BF16Linear))
        raise TypeError(f"{who} converts an nn.Linear, not {shape_of(linear)}"
                        + (" (converted already)" if converted else ""))


def _check_model(model, who):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who} takes a model (an nn.Module such as GPTModel), not "
                        f"{shape_of(model)}")


def _swap_linears(model: nn.Module, make, head: bool, check=None) -> nn.Module:
    """Replace every nn.Linear of `model` (out_head too when `head`) by make(linear), in place;
    check(name, linear) runs on every one of them first, so that a refusal changes nothing."""
    if not isinstance(head, bool):
        raise TypeError(f"head is True or False (also convert out_head?), not {shape_of(head)}")
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    if not linears:
        raise ValueError("the model has no nn.Linear layers left to convert (already converted?)")
    linears = [(name, m) for name, m in linears if head or name != "out_head"]
    for name, linear in linears if check else ():
        check(name, linear)
    for name, linear in linears:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, make(linear))  # "layers.0" works too
    return model.eval()


def quantize_int8(model: nn.Module, head: bool = True, kernel: str = "auto") -> nn.Module:
    """Swap the model's nn.Linear layers for Int8Linear (absmax, per output channel), in place;
    returns the model, in eval mode. Keep an fp32 copy first (copy.deepcopy) if you need one.

    head: also out_head. GPT-2 ties it to tok_emb: the int8 head is then a copy (1 byte per
    weight) used for the logits, while the fp32 embedding stays for looking tokens up.
    kernel: "auto" (= "dynamic" where PyTorch has fbgemm or qnnpack), "dynamic", "reference".
    On a model built on the meta device this gives the structure to load an int8 state dict into.
    """
    _check_model(model, "quantize_int8")
    _check_kernel(kernel)  # before any layer is swapped
    return _swap_linears(model, lambda lin: Int8Linear.from_linear(lin, kernel), head,
                         check=lambda name, lin: _check_finite(lin.weight, f"{name}.weight"))


def to_bf16(model: nn.Module, head: bool = True) -> nn.Module:
    """Swap the model's nn.Linear layers for BF16Linear, in place; returns the model (eval).
    head: also out_head (a bf16 copy; GPT-2's tied fp32 embedding stays for the lookup)."""
    _check_model(model, "to_bf16")
    return _swap_linears(model, BF16Linear, head)


def inference_bytes(model: nn.Module) -> int:
    """Bytes of a model's weights as it holds them: parameters and buffers (each tensor once,
    tied weights too) plus the int8 weights Int8Linear keeps outside them."""
    _check_model(model, "inference_bytes")
    return model_bytes(model) + sum(m.in_features * m.out_features for m in model.modules()
                                    if isinstance(m, Int8Linear))


def weight_errors(model: nn.Module) -> list:
    """For each nn.Linear of an fp32 model: {"name", "int8", "bf16"}, the relative error
    ||w' - w|| / ||w|| of its weight rounded by absmax_quantize and by bfloat16."""
    _check_model(model, "weight_errors")
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears:
        raise ValueError(f"this {type(model).__name__} has no nn.Linear layer to measure: pass "
                         "the fp32 model (before quantize_int8 or to_bf16).")
    if any(m.weight.device.type == "meta" for m in linears):
        raise ValueError("the model is on the meta device (a shape, no values): load its weights "
                         "first.")
    rows = []
    for name, m in model.named_modules():
        if type(m) is nn.Linear:
            _check_finite(m.weight, f"{name}.weight")
            w = m.weight.detach().float()
            norm = w.norm()
            rows.append({"name": name,
                         "int8": float((dequantize(*absmax_quantize(w)) - w).norm() / norm),
                         "bf16": float((w.bfloat16().float() - w).norm() / norm)})
    return rows
