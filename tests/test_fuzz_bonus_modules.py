"""The mistakes a learner can make with the bonus modules lora.py, qlora.py and low_precision.py,
one row each (the call, the exception it must raise, words its message must hold), and a fuzzed
sweep (hypothesis) of every public helper of the three: random ranks, alphas, shapes, dtypes,
configs, block sizes, NF4Tensors with parts that do not belong together, damaged adapter files.
Every call either succeeds or raises TypeError, ValueError or FileNotFoundError from a `raise` of
the course's own code (the three modules or input_checks.py); anything else fails the test with
the example that caused it, and FUZZ_SEED repeats the run (tests/fuzzing.py).

A refused call changes nothing: the fuzz tests check that a model a helper refused is as it was.
"""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

import previous_chapters as pc
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
from low_precision import (
    BF16Linear,
    Int8Linear,
    absmax_quantize,
    dequantize,
    inference_bytes,
    int8_engine,
    quantize_int8,
    to_bf16,
    weight_errors,
)
from qlora import (
    LinearNF4,
    base_model_bytes,
    dequantize_absmax_int8,
    dequantize_nf4,
    gpt2_memory_table,
    model_bytes,
    nf4_levels_from_normal,
    pack_4bit,
    quantize_absmax_int8,
    quantize_model_nf4,
    quantize_nf4,
    unpack_4bit,
)
from tests import fuzzing
from tests.fuzzing import failed, fuzz, table_tests
from tests.test_fuzz_helpers import ANY, COUNTS, SCALARS, tensors

OURS = {"lora.py", "qlora.py", "low_precision.py", "input_checks.py"}
TINY = {"vocab_size": 300, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
KERNELS = ["dynamic", "reference"] if int8_engine() else ["reference"]


def outcome(call):
    return fuzzing.outcome(call, OURS)


def tiny_model(seed=123, **changes):
    torch.manual_seed(seed)
    return pc.GPTModel({**TINY, **changes}).eval()


def lora_model(rank=2, seed=123, **changes):
    model = replace_linear_with_lora(tiny_model(seed, **changes), rank, 2 * rank)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora.B.normal_()
    return model


def meta_model():
    with torch.device("meta"):
        return pc.GPTModel(TINY)


def nan_model():
    model = tiny_model()
    with torch.no_grad():
        model.trf_blocks[1].ff.layers[0].weight[0, 0] = math.nan
    return model


def ids(*values):
    return torch.tensor([list(values)])


def state(model):
    """What a refused call must leave as it was: the tensors (their values unless on the meta
    device), the layers, what is frozen."""
    return ({k: None if v.is_meta else v.clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()],
            [(n, p.requires_grad) for n, p in model.named_parameters()])


def equal(a, b):
    """torch.equal, with NaN equal to NaN (nan_model's weight)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()) \
        if a.is_floating_point() and b.is_floating_point() else torch.equal(a, b)


def same_state(model, before):
    tensors, layers, grads = state(model)
    return (tensors.keys() == before[0].keys()
            and all(v is before[0][k] is None or equal(v, before[0][k])
                    for k, v in tensors.items())
            and layers == before[1] and grads == before[2])


class Ctx:
    """What the rows need: a tiny GPTModel, a tiny one with LoRA, a scratch folder."""

    def __init__(self, tmp_path):
        self.model = tiny_model()
        self.tmp = tmp_path

    def adapter(self, name="a.safetensors", rank=2, **changes):
        return save_lora_adapter(lora_model(rank, **changes), self.tmp / name)

    def file(self, name, data):
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def adapter_with_config(self, **config):
        from safetensors.torch import save_file
        path = self.adapter()
        _, tensors = read_lora_adapter(path)
        meta = {"format": "course-lora-adapter", "version": "1", "extra": "{}",
                "config": json.dumps(config)}
        save_file(tensors, str(path), metadata=meta)
        return path


def nf4(double_quant=False, **changes):
    torch.manual_seed(0)
    q = quantize_nf4(torch.randn(4, 8), block_size=8, double_quant=double_quant)
    for key, value in changes.items():
        setattr(q, key, value)
    return q


def unquantized_int8():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 4))
    return quantize_int8(model)[0]


# (id, call(ctx), exception type, words the message must contain)
CASES = [
    # ----- lora.py: the layers
    ("lora-rank-0", lambda c: LoRALayer(8, 8, 0, 1), ValueError,
     ["rank", "at least 1, not 0"]),
    ("lora-rank-float", lambda c: LoRALayer(8, 8, 2.5, 4), TypeError,
     ["rank", "whole number", "2.5"]),
    ("lora-alpha-string", lambda c: LoRALayer(8, 8, 2, "16"), TypeError,
     ["alpha must be a number", "str '16'"]),
    ("lora-alpha-nan", lambda c: LoRALayer(8, 8, 2, math.nan), ValueError,
     ["alpha", "finite positive", "nan"]),
    ("lora-alpha-0", lambda c: LoRALayer(8, 8, 2, 0), ValueError,
     ["alpha", "scaling = alpha / rank", "not 0"]),
    ("lora-alpha-huge", lambda c: LoRALayer(8, 8, 1, 3.4e38), ValueError,
     ["alpha / rank = 3.4e+38", "float16", "rank or 2 * rank"]),
    ("lora-in-dim-0", lambda c: LoRALayer(0, 8, 2, 2), ValueError,
     ["in_dim must be at least 1, not 0"]),
    ("lora-layer-wrong-width", lambda c: LoRALayer(8, 4, 2, 2)(torch.randn(2, 5)), ValueError,
     ["LoRALayer", "(..., 8)", "(2, 5)"]),
    ("lora-wrap-a-name", lambda c: LinearWithLoRA("W_query", 2, 2), TypeError,
     ["wraps a layer", "str 'W_query'"]),
    ("lora-wrap-no-features", lambda c: LinearWithLoRA(nn.ReLU(), 2, 2), TypeError,
     ["in_features", "ReLU"]),
    ("lora-wrap-twice", lambda c: LinearWithLoRA(LinearWithLoRA(nn.Linear(8, 8), 2, 2), 2, 2),
     TypeError, ["already has a LoRA", "merge_lora"]),
    ("lora-forward-token-ids", lambda c: LinearWithLoRA(nn.Linear(8, 8), 2, 2)(ids(1, 2)),
     TypeError, ["float activations", "torch.int64"]),
    ("lora-forward-float64", lambda c: LinearWithLoRA(nn.Linear(8, 8), 2, 2)(
        torch.randn(2, 8, dtype=torch.float64)), TypeError,
     ["torch.float32 weights", "input is torch.float64", "x.to(torch.float32)"]),
    ("lora-forward-wrong-width", lambda c: LinearWithLoRA(nn.Linear(8, 8), 2, 2)(
        torch.randn(1, 3, 6)), ValueError, ["LinearWithLoRA", "(..., 8)", "(1, 3, 6)"]),
    # ----- lora.py: a whole model
    ("replace-rank-negative", lambda c: replace_linear_with_lora(c.model, -2, 4), ValueError,
     ["rank", "at least 1, not -2"]),
    ("replace-alpha-string", lambda c: replace_linear_with_lora(c.model, 4, "8"), TypeError,
     ["alpha must be a number", "str '8'"]),
    ("replace-applied-twice", lambda c: replace_linear_with_lora(lora_model(), 2, 4), ValueError,
     ["already has LoRA layers", "merge_lora"]),
    ("replace-a-state-dict", lambda c: replace_linear_with_lora(c.model.state_dict(), 2, 4),
     TypeError, ["replace_linear_with_lora takes a model", "OrderedDict"]),
    ("replace-layer-types-string", lambda c: replace_linear_with_lora(c.model, 2, 4, "Linear"),
     TypeError, ["layer_types", "tuple of layer classes", "str 'Linear'"]),
    ("replace-no-linear", lambda c: replace_linear_with_lora(nn.Sequential(nn.Embedding(5, 3)),
                                                             2, 4), ValueError, ["no nn.Linear"]),
    ("merge-without-lora", lambda c: merge_lora(c.model), ValueError,
     ["no LoRA layers to merge", "merged already"]),
    ("merge-a-string", lambda c: merge_lora("model.pth"), TypeError,
     ["merge_lora takes a model", "str"]),
    ("count-config-lacks-key", lambda c: lora_parameter_count({"emb_dim": 8}, 4), ValueError,
     ["lora_parameter_count", "lacks", "vocab_size"]),
    ("count-config-string", lambda c: lora_parameter_count("124M", 4), TypeError,
     ["config dict", "str '124M'"]),
    ("count-rank-0", lambda c: lora_parameter_count(TINY, 0), ValueError,
     ["rank", "at least 1, not 0"]),
    ("count-num-classes-0", lambda c: lora_parameter_count(TINY, 4, num_classes=0), ValueError,
     ["num_classes", "at least 1, not 0"]),
    ("count-emb-dim-float", lambda c: lora_parameter_count({**TINY, "emb_dim": 8.0}, 4),
     TypeError, ["'emb_dim'", "whole number", "8.0"]),
    # ----- lora.py: adapter files
    ("save-without-lora", lambda c: save_lora_adapter(c.model, c.tmp / "a.safetensors"),
     ValueError, ["no LoRA layers to save", "replace_linear_with_lora"]),
    ("save-no-folder", lambda c: save_lora_adapter(lora_model(), c.tmp / "no" / "a.safetensors"),
     FileNotFoundError, ["does not exist", "mkdir"]),
    ("save-to-a-folder", lambda c: save_lora_adapter(lora_model(), c.tmp), ValueError,
     ["is a folder", "adapter.safetensors"]),
    ("save-path-none", lambda c: save_lora_adapter(lora_model(), None), TypeError,
     ["str or a Path", "NoneType"]),
    ("save-extra-not-json", lambda c: save_lora_adapter(lora_model(), c.tmp / "a.safetensors",
                                                        when=object()), TypeError, ["JSON"]),
    ("save-extra-circular", lambda c: (lambda d: save_lora_adapter(
        lora_model(), c.tmp / "a.safetensors", notes=d))((lambda d: d.update(me=d) or d)({})),
     TypeError, ["JSON", "Circular"]),
    ("save-meta-model", lambda c: save_lora_adapter(replace_linear_with_lora(meta_model(), 2, 4),
                                                    c.tmp / "a.safetensors"), ValueError,
     ["meta device", "nothing to save"]),
    ("read-missing-file", lambda c: read_lora_adapter(c.tmp / "none.safetensors"),
     FileNotFoundError, ["no adapter file", "none.safetensors", "save_lora_adapter"]),
    ("read-a-folder", lambda c: read_lora_adapter(c.tmp), ValueError, ["is a folder"]),
    ("read-random-bytes", lambda c: read_lora_adapter(c.file("r.safetensors", bytes(range(200)))),
     ValueError, ["r.safetensors", "cannot be read as a safetensors file"]),
    ("read-cut-file", lambda c: read_lora_adapter(c.file(
        "cut.safetensors", c.adapter().read_bytes()[:-40])), ValueError,
     ["cut.safetensors", "cannot be read"]),
    ("read-a-model-checkpoint", lambda c: read_lora_adapter(c.file(
        "m.safetensors", __import__("safetensors.torch").torch.save(
            {"w": torch.zeros(2)}))), ValueError, ["no adapter config", "model checkpoint"]),
    ("read-config-rank-0", lambda c: read_lora_adapter(c.adapter_with_config(
        rank=0, alpha=4, layers={}, base_layers={})), ValueError, ["config is damaged"]),
    ("read-config-lacks-layers", lambda c: read_lora_adapter(c.adapter_with_config(
        rank=2, alpha=4)), ValueError, ["config is damaged", "layers"]),
    ("load-other-size", lambda c: load_lora_adapter(c.model, c.adapter(emb_dim=16)), ValueError,
     ["trained on another model", "(16, 16) in the adapter's base", "same size"]),
    ("load-other-depth", lambda c: load_lora_adapter(tiny_model(n_layers=1), c.adapter()),
     ValueError, ["trained on another model", "lacks the layers", "trf_blocks.1"]),
    ("load-other-rank", lambda c: load_lora_adapter(lora_model(rank=4), c.adapter(rank=2)),
     ValueError, ["rank 4", "adapter rank 2", "fresh model"]),
    ("load-meta-model", lambda c: load_lora_adapter(meta_model(), c.adapter()), ValueError,
     ["meta device", "Load the base model's weights first"]),
    ("load-path-list", lambda c: load_lora_adapter(c.model, ["a.safetensors"]), TypeError,
     ["str or a Path", "list"]),
    ("load-not-a-model", lambda c: load_lora_adapter({}, c.adapter()), TypeError,
     ["load_lora_adapter takes a model", "dict"]),
    # ----- qlora.py: NF4 levels, packing, double quantization
    ("nf4-offset-string", lambda c: nf4_levels_from_normal("0.97"), TypeError,
     ["offset is a probability", "str '0.97'"]),
    ("nf4-offset-1", lambda c: nf4_levels_from_normal(1.0), ValueError,
     ["offset is a probability", "1.0"]),
    ("pack-floats", lambda c: pack_4bit(torch.tensor([1.5, 2.0])), TypeError,
     ["integer level indices", "torch.float32"]),
    ("pack-a-list", lambda c: pack_4bit([1, 2]), TypeError, ["torch tensor", "list [1, 2]"]),
    ("pack-odd-length", lambda c: pack_4bit(torch.tensor([1, 2, 3])), ValueError,
     ["even length", "(3,)"]),
    ("pack-index-16", lambda c: pack_4bit(torch.tensor([1, 16])), ValueError, ["0..15"]),
    ("unpack-int64", lambda c: unpack_4bit(torch.tensor([1, 2])), TypeError,
     ["uint8", "torch.int64"]),
    ("unpack-2d", lambda c: unpack_4bit(torch.zeros(2, 2, dtype=torch.uint8)), ValueError,
     ["flat tensor of bytes", "(2, 2)"]),
    ("absmax-int8-empty", lambda c: quantize_absmax_int8(torch.zeros(0)), ValueError,
     ["non-empty flat tensor", "(0,)"]),
    ("absmax-int8-block-0", lambda c: quantize_absmax_int8(torch.ones(4), 0), ValueError,
     ["block_size must be at least 1, not 0"]),
    ("absmax-int8-ints", lambda c: quantize_absmax_int8(torch.arange(4)), TypeError,
     ["floating-point", "torch.int64"]),
    ("dequant-int8-other-block", lambda c: dequantize_absmax_int8(
        *quantize_absmax_int8(torch.rand(300), 256), block_size=64), ValueError,
     ["300 codes in groups of 64 need 5 scales, not 2", "block_size they were quantized with"]),
    ("dequant-int8-float-codes", lambda c: dequantize_absmax_int8(
        torch.zeros(4), torch.ones(1), 0.0), ValueError, ["int8 codes", "torch.float32"]),
    # ----- qlora.py: NF4 tensors and layers
    ("nf4-block-63", lambda c: quantize_nf4(torch.randn(4, 8), block_size=63), ValueError,
     ["positive even number", "not 63", "QLoRA uses 64"]),
    ("nf4-block-string", lambda c: quantize_nf4(torch.randn(4, 8), block_size="64"), TypeError,
     ["block_size must be a whole number", "str '64'"]),
    ("nf4-double-quant-string", lambda c: quantize_nf4(torch.randn(4, 8), double_quant="yes"),
     TypeError, ["double_quant is True or False", "str 'yes'"]),
    ("nf4-ints", lambda c: quantize_nf4(torch.arange(10)), TypeError, ["floating-point"]),
    ("nf4-empty", lambda c: quantize_nf4(torch.zeros(0, 4)), ValueError, ["empty"]),
    ("nf4-nan-weight", lambda c: quantize_nf4(torch.tensor([1.0, math.nan])), ValueError,
     ["NaN or inf", "1 of them", "Reload the weights"]),
    ("nf4-meta-weight", lambda c: quantize_nf4(torch.empty(4, 8, device="meta")), ValueError,
     ["meta device", "no values", "Load the weights first"]),
    ("dequant-nf4-a-tensor", lambda c: dequantize_nf4(torch.zeros(4)), TypeError,
     ["NF4Tensor that quantize_nf4 returns", "torch.float32 tensor of shape (4,)"]),
    ("dequant-nf4-other-block", lambda c: dequantize_nf4(nf4(block_size=16)), ValueError,
     ["do not belong together", "absmax must be 2", "shape (4,)"]),
    ("dequant-nf4-other-shape", lambda c: dequantize_nf4(nf4(shape=torch.Size((8, 8)))),
     ValueError, ["do not belong together", "16 bytes hold 32 values, not the 64 of shape (8, 8)",
                  "quantize_nf4"]),
    ("dequant-nf4-no-scales", lambda c: dequantize_nf4(nf4(absmax=None)), ValueError,
     ["do not belong together", "absmax_q must be 4 torch.int8 values", "NoneType"]),
    ("dequant-nf4-scales-of-another", lambda c: dequantize_nf4(nf4(absmax=torch.ones(3))),
     ValueError, ["absmax must be 4", "shape (3,)"]),
    ("linearnf4-3d-weight", lambda c: LinearNF4(quantize_nf4(torch.randn(2, 4, 8))), ValueError,
     ["2-D (out, in)", "(2, 4, 8)"]),
    ("linearnf4-bias-shape", lambda c: LinearNF4(nf4(), torch.zeros(8)), ValueError,
     ["one value per output", "(4,)", "(8,)"]),
    ("linearnf4-from-embedding", lambda c: LinearNF4.from_linear(nn.Embedding(4, 8)), TypeError,
     ["takes an nn.Linear", "Embedding"]),
    ("linearnf4-forward-width", lambda c: LinearNF4(nf4())(torch.randn(2, 5)), ValueError,
     ["LinearNF4", "(..., 8)", "(2, 5)"]),
    ("linearnf4-forward-ids", lambda c: LinearNF4(nf4())(ids(1, 2)), TypeError,
     ["LinearNF4 takes float activations", "torch.int64"]),
    ("quantize-model-twice", lambda c: quantize_model_nf4(
        (lambda m: quantize_model_nf4(m, skip=()) and m)(c.model), skip=()), ValueError,
     ["quantized already", "LinearNF4", "freshly loaded"]),
    ("quantize-model-meta", lambda c: quantize_model_nf4(meta_model()), ValueError,
     ["trf_blocks.0.att.W_query.weight is on the meta device", "Load the weights first"]),
    ("quantize-model-nan", lambda c: quantize_model_nf4(nan_model()), ValueError,
     ["trf_blocks.1.ff.layers.0.weight holds NaN"]),
    ("quantize-model-skip-int", lambda c: quantize_model_nf4(c.model, skip=3), TypeError,
     ["skip is a module name", "int 3"]),
    ("quantize-model-unknown-skip", lambda c: quantize_model_nf4(c.model, skip=("head",)),
     ValueError, ["skip names ['head']", "does not have"]),
    ("quantize-model-block-odd", lambda c: quantize_model_nf4(c.model, block_size=7), ValueError,
     ["positive even number", "not 7"]),
    ("quantize-model-a-dict", lambda c: quantize_model_nf4(c.model.state_dict()), TypeError,
     ["quantize_model_nf4 takes a model", "OrderedDict"]),
    ("model-bytes-a-dict", lambda c: model_bytes({}), TypeError, ["model_bytes takes a model"]),
    ("base-bytes-lacks-qkv-bias", lambda c: base_model_bytes(
        {k: v for k, v in TINY.items() if k != "qkv_bias"}), ValueError, ["lacks", "qkv_bias"]),
    ("base-bytes-int4", lambda c: base_model_bytes(TINY, "int4"), ValueError,
     ["dtype is one of", "'int4'"]),
    ("base-bytes-block-odd", lambda c: base_model_bytes(TINY, "nf4", block_size=5), ValueError,
     ["positive even number", "not 5"]),
    ("base-bytes-n-layers-0", lambda c: base_model_bytes({**TINY, "n_layers": 0}), ValueError,
     ["'n_layers' must be at least 1, not 0"]),
    ("memory-table-unknown-size", lambda c: gpt2_memory_table(("125M",)), ValueError,
     ["unknown GPT-2 sizes ['125M']", "'124M'"]),
    # ----- low_precision.py
    ("absmax-1d", lambda c: absmax_quantize(torch.randn(8)), ValueError,
     ["2-D weight (out, in)", "(8,)"]),
    ("absmax-ints", lambda c: absmax_quantize(torch.ones(2, 2, dtype=torch.long)), TypeError,
     ["floating-point weight", "torch.int64"]),
    ("absmax-nan", lambda c: absmax_quantize(torch.tensor([[1.0, math.inf]])), ValueError,
     ["NaN or inf", "reload"]),
    ("dequantize-float-q", lambda c: dequantize(torch.ones(2, 2), torch.ones(2)), TypeError,
     ["int8 weight (out, in)", "torch.float32"]),
    ("dequantize-scale-shape", lambda c: dequantize(*absmax_quantize(torch.randn(4, 2))[:1],
                                                    torch.ones(2)), ValueError,
     ["4 float values (one per row", "(2,)"]),
    ("int8-kernel-unknown", lambda c: Int8Linear(8, 4, kernel="fast"), ValueError,
     ["kernel is 'auto', 'dynamic' or 'reference'", "'fast'"]),
    ("int8-in-features-0", lambda c: Int8Linear(0, 4), ValueError,
     ["in_features must be at least 1, not 0"]),
    ("int8-bias-string", lambda c: Int8Linear(8, 4, bias="no"), TypeError,
     ["bias is True or False", "str 'no'"]),
    ("int8-device-unknown", lambda c: Int8Linear(8, 4, device="gpu0"), ValueError,
     ["device must be 'cpu'", "'gpu0'"]),
    ("int8-bf16-input", lambda c: Int8Linear.from_linear(nn.Linear(8, 4))(
        torch.randn(2, 8, dtype=torch.bfloat16)), TypeError,
     ["float32 inputs", "torch.bfloat16", "x.float()"]),
    ("int8-wrong-width", lambda c: Int8Linear.from_linear(nn.Linear(8, 4))(torch.randn(2, 5)),
     ValueError, ["Int8Linear", "(..., 8)", "(2, 5)"]),
    ("int8-meta-forward", lambda c: unquantized_int8()(torch.randn(2, 8)), ValueError,
     ["meta device", "load an int8 state dict"]),
    ("int8-from-bf16linear", lambda c: Int8Linear.from_linear(BF16Linear(nn.Linear(8, 4))),
     TypeError, ["converts an nn.Linear", "BF16Linear", "converted already"]),
    ("bf16-from-embedding", lambda c: BF16Linear(nn.Embedding(4, 8)), TypeError,
     ["BF16Linear converts an nn.Linear", "Embedding"]),
    ("bf16-token-ids", lambda c: BF16Linear(nn.Linear(8, 4))(ids(1, 2)), TypeError,
     ["BF16Linear takes float activations"]),
    ("quantize-int8-twice", lambda c: quantize_int8(quantize_int8(c.model)), ValueError,
     ["no nn.Linear layers left", "already converted"]),
    ("quantize-int8-nan", lambda c: quantize_int8(nan_model()), ValueError,
     ["trf_blocks.1.ff.layers.0.weight (32, 8) holds NaN"]),
    ("quantize-int8-kernel", lambda c: quantize_int8(c.model, kernel=None), ValueError,
     ["kernel is", "None"]),
    ("to-bf16-head-string", lambda c: to_bf16(c.model, head="yes"), TypeError,
     ["head is True or False", "str 'yes'"]),
    ("to-bf16-a-dict", lambda c: to_bf16(c.model.state_dict()), TypeError,
     ["to_bf16 takes a model", "OrderedDict"]),
    ("weight-errors-int8-model", lambda c: weight_errors(quantize_int8(c.model)), ValueError,
     ["no nn.Linear layer to measure", "fp32 model"]),
    ("weight-errors-meta", lambda c: weight_errors(meta_model()), ValueError, ["meta device"]),
    ("inference-bytes-a-dict", lambda c: inference_bytes({}), TypeError,
     ["inference_bytes takes a model"]),
]


@pytest.fixture
def ctx(tmp_path):
    return Ctx(tmp_path)


test_a_mistake_gets_a_clear_message, test_every_case_has_its_own_id = table_tests(CASES)


# ----- a refusal changes nothing; correct input works as before ----------------------------

def test_a_refused_replace_or_quantization_leaves_the_model_as_it_was():
    model = nan_model()
    before = state(model)
    for call in (lambda: replace_linear_with_lora(model, 0, 4),  # would have frozen it first
                 lambda: replace_linear_with_lora(model, 4, "8"),
                 lambda: quantize_model_nf4(model), lambda: quantize_int8(model),
                 lambda: quantize_model_nf4(model, block_size=3)):
        with pytest.raises((TypeError, ValueError)):
            call()
        assert same_state(model, before)


def test_a_model_without_the_layers_to_wrap_is_not_frozen_by_the_refusal():
    """Found by the sweep: replace_linear_with_lora froze the model, then found nothing to wrap."""
    model = quantize_int8(tiny_model())  # its linear layers are Int8Linear now
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        replace_linear_with_lora(model, 2, 4)
    assert model.tok_emb.weight.requires_grad


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_linear_takes_a_single_vector_as_nn_linear_does(kernel):
    """Found by the sweep: the dynamic kernel refused a 1-D input, which nn.Linear takes."""
    torch.manual_seed(0)
    linear = nn.Linear(8, 4)
    layer = Int8Linear.from_linear(linear, kernel=kernel)
    x = torch.randn(8)
    with torch.no_grad():
        assert layer(x).shape == linear(x).shape == (4,)
        assert torch.allclose(layer(x), linear(x), atol=0.05)
        assert torch.equal(layer(x), layer(x[None])[0])


def test_a_failed_save_keeps_the_old_adapter_and_leaves_no_partial_file(tmp_path):
    path = save_lora_adapter(lora_model(), tmp_path / "a.safetensors")
    good = path.read_bytes()
    with pytest.raises(TypeError, match="JSON"):
        save_lora_adapter(lora_model(seed=5), path, when=object())
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_an_adapter_of_a_model_on_the_meta_device_loads_once_its_weights_are_there(tmp_path):
    """The meta-device refusal points at what to do, and doing it works: the same logits as the
    model the adapter was saved from (the independent reference)."""
    source = lora_model()
    path = save_lora_adapter(source, tmp_path / "a.safetensors")
    target = meta_model()
    with pytest.raises(ValueError, match="meta device"):
        load_lora_adapter(target, path)
    target.load_state_dict(tiny_model().state_dict(), assign=True)
    load_lora_adapter(target, path)
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(target.eval()(idx), source(idx))


def test_lora_under_autocast_takes_a_bf16_input_as_before():
    layer = LinearWithLoRA(nn.Linear(8, 4), 2, 2)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.shape == (3, 4)


# ----- the fuzzed sweep: lora.py -------------------------------------------------------------

ALPHAS = st.one_of(st.integers(-2, 64), st.floats(-1, 64), SCALARS)


@fuzz(in_dim=COUNTS, out_dim=COUNTS, rank=COUNTS, alpha=ALPHAS,
      base=st.sampled_from(["linear", "bf16", "nf4", "wrapped", "relu", "text", "none"]))
def test_lora_layers_construction(in_dim, out_dim, rank, alpha, base):
    layer = outcome(lambda: LoRALayer(in_dim, out_dim, rank, alpha))
    if not failed(layer):
        assert layer.A.shape == (in_dim, rank) and layer.B.shape == (rank, out_dim)
        assert layer.scaling == alpha / rank
    linear = {"linear": lambda: nn.Linear(8, 4), "bf16": lambda: nn.Linear(8, 4).bfloat16(),
              "nf4": lambda: LinearNF4(nf4()), "relu": nn.ReLU,
              "wrapped": lambda: LinearWithLoRA(nn.Linear(8, 4), 2, 2), "text": lambda: "W_query",
              "none": lambda: None}[base]()
    outcome(lambda: LinearWithLoRA(linear, rank, alpha))


@fuzz(x=st.one_of(tensors(), ANY), base=st.sampled_from(["linear", "bf16", "nf4"]))
def test_lora_forward(x, base):
    """Shapes in, shapes out; a result that is computed is the frozen layer's plus the LoRA's."""
    torch.manual_seed(0)
    linear = {"linear": lambda: nn.Linear(8, 9), "bf16": lambda: nn.Linear(8, 9).bfloat16(),
              "nf4": lambda: LinearNF4(quantize_nf4(torch.randn(9, 8)))}[base]()
    layer = LinearWithLoRA(linear, 2, 3)
    with torch.no_grad():
        layer.lora.B.normal_()
        out = outcome(lambda: layer(x))
        if not failed(out):
            assert out.shape == (*x.shape[:-1], 9) and out.dtype == x.dtype
        if not failed(out) and x.numel() and bool(x.isfinite().all()):
            # the layer's definition, linear(x) + scaling * x A B, in float32 (bf16: a few
            # roundings of 2^-8 relative apart)
            bias = None if linear.bias is None else linear.bias.float()
            expected = F.linear(x.float(), linear.weight.float(), bias) + layer.lora.scaling * (
                x.float() @ layer.lora.A.float() @ layer.lora.B.float())
            tol = 3e-2 if base == "bf16" else 1e-4
            scale = float(expected.abs().max())
            assert torch.allclose(out.float(), expected, atol=tol * (1 + scale), rtol=tol)
        outcome(lambda: layer.lora(x))


MODELS = {"gpt": tiny_model, "lora": lora_model, "meta": meta_model, "nan": nan_model,
          "no-linear": lambda: nn.Sequential(nn.Embedding(5, 3)), "state-dict":
          lambda: tiny_model().state_dict(), "nf4": lambda: (lambda m: quantize_model_nf4(
              m, skip=()) and m)(tiny_model()), "int8": lambda: quantize_int8(tiny_model())}
LAYER_TYPES = st.one_of(st.just((nn.Linear,)), st.just((nn.Linear, LinearNF4)),
                        st.just(nn.Linear), st.just(()), st.just((nn.ReLU,)), ANY)


@fuzz(which=st.sampled_from(sorted(MODELS)), rank=COUNTS, alpha=ALPHAS, layer_types=LAYER_TYPES)
def test_replace_and_merge(which, rank, alpha, layer_types):
    model = MODELS[which]()
    idx = torch.tensor([[1, 2, 3]])
    before = state(model) if isinstance(model, nn.Module) else None
    wrapped = outcome(lambda: replace_linear_with_lora(model, rank, alpha, layer_types))
    if failed(wrapped):
        assert before is None or same_state(model, before)
    elif which != "meta":
        with torch.no_grad():
            logits = model(idx)
        if which != "nan":
            outcome(lambda: lora_parameter_count(TINY, rank))
    merged = outcome(lambda: merge_lora(model))
    if not failed(merged) and not failed(wrapped) and which in ("gpt", "lora"):
        with torch.no_grad():
            assert torch.allclose(model(idx), logits, atol=1e-4)  # B is still zero


@fuzz(cfg=st.dictionaries(st.sampled_from(sorted(TINY)), st.one_of(st.integers(-2, 16), SCALARS),
                          max_size=7), base=st.booleans(), rank=COUNTS,
      num_classes=st.one_of(st.none(), COUNTS))
def test_lora_parameter_count(cfg, base, rank, num_classes):
    """What it counts by formula, on a config it accepts, is what a wrapped model holds."""
    cfg = {**TINY, **cfg} if base else cfg
    count = outcome(lambda: lora_parameter_count(cfg, rank, num_classes))
    if failed(count) or any(cfg[k] >= 64 for k in ("vocab_size", "emb_dim", "n_layers")):
        return  # a huge but valid size would only take time to build
    with torch.device("meta"):
        try:
            model = pc.GPTModel(cfg)
        except (TypeError, ValueError):  # a config GPTModel refuses (drop_rate, n_heads ...)
            return
        if num_classes is not None:
            model.out_head = nn.Linear(cfg["emb_dim"], num_classes)
        replace_linear_with_lora(model, rank, 1)
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)


@fuzz(path=st.one_of(st.sampled_from(["a.safetensors", "", "no/a.safetensors", "."]), ANY),
      extra=st.dictionaries(st.text(max_size=4).filter(lambda k: k not in ("model", "path")),
                            ANY, max_size=2))  # save_lora_adapter(model, path, **extra)
def test_save_lora_adapter(tmp_path, path, extra):
    model = lora_model()
    where = tmp_path / path if isinstance(path, str) and path else path
    saved = outcome(lambda: save_lora_adapter(model, where, **extra))
    assert not list(tmp_path.glob("*.tmp"))
    if not failed(saved):
        config, tensors = read_lora_adapter(saved)
        assert json.dumps(config["extra"]) == json.dumps(extra)  # NaN != NaN: as text
        assert torch.equal(tensors["trf_blocks.0.att.W_query.lora.B"],
                           model.trf_blocks[0].att.W_query.lora.B)


@pytest.fixture(scope="module")
def adapter_bytes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return {name: save_lora_adapter(lora_model(**changes), folder / name).read_bytes()
            for name, changes in [("good", {}), ("rank-4", {"rank": 4}),
                                  ("wide", {"emb_dim": 16}), ("shallow", {"n_layers": 1})]}


@fuzz(which=st.sampled_from(["good", "rank-4", "wide", "shallow"]),
      how=st.sampled_from(["none", "cut", "flip", "random", "insert"]), where=st.floats(0, 1),
      data=st.binary(min_size=1, max_size=40), target=st.sampled_from(["fresh", "wrapped"]))
def test_load_lora_adapter_on_damaged_files(tmp_path, adapter_bytes, which, how, where, data,
                                            target):
    raw = adapter_bytes[which]
    at = int(where * (len(raw) - 1))
    raw = {"none": raw, "cut": raw[:at], "flip": raw[:at] + bytes([raw[at] ^ 0x55])
           + raw[at + 1:], "random": data, "insert": raw[:at] + data + raw[at:]}[how]
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(raw)
    outcome(lambda: read_lora_adapter(path))
    model = tiny_model() if target == "fresh" else lora_model()
    if target == "wrapped":
        with torch.no_grad():
            for m in lora_layers(model).values():
                m.lora.B.zero_()
    before = state(model)
    loaded = outcome(lambda: load_lora_adapter(model, path))
    if failed(loaded):
        assert same_state(model, before)
    elif how == "none":  # an intact adapter of this model: the saved model's logits
        source = lora_model(**({"rank": 4} if which == "rank-4" else {}))
        with torch.no_grad():
            assert torch.equal(model(ids(1, 2, 3)), source(ids(1, 2, 3)))


JSON = st.recursive(st.one_of(SCALARS.filter(lambda v: not isinstance(v, bytes)),
                              st.integers(-3, 70)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=8), inner,
                                                            max_size=3)), max_leaves=8)


@fuzz(rank=st.one_of(st.just(2), JSON), alpha=st.one_of(st.just(4), JSON),
      layers=st.one_of(st.just("same"), JSON), base=st.one_of(st.just("same"), JSON),
      drop=st.sampled_from([None, "rank", "layers", "base_layers"]),
      version=st.sampled_from(["1", "2"]), extra=st.one_of(st.just("{}"), st.text(max_size=6)))
def test_read_lora_adapter_with_fuzzed_configs(tmp_path, adapter_bytes, rank, alpha, layers,
                                               base, drop, version, extra):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "good.safetensors"
    path.write_bytes(adapter_bytes["good"])
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata["config"])
    config.update(rank=rank, alpha=alpha)
    if layers != "same":
        config["layers"] = layers
    if base != "same":
        config["base_layers"] = base
    config.pop(drop, None)
    save_file(tensors, str(path), metadata={**metadata, "config": json.dumps(config),
                                            "version": version, "extra": extra})
    result = outcome(lambda: read_lora_adapter(path))
    model = tiny_model()
    before = state(model)
    if failed(outcome(lambda: load_lora_adapter(model, path))):
        assert same_state(model, before)
    elif not failed(result):
        assert result[0]["rank"] == 2


# ----- the fuzzed sweep: qlora.py ------------------------------------------------------------

@fuzz(weight=st.one_of(tensors(sides=(0, 1, 3, 8, 9)), ANY),
      block_size=st.one_of(st.sampled_from([2, 4, 8, 64]), COUNTS),
      double_quant=st.one_of(st.booleans(), SCALARS),
      dq_block_size=st.one_of(st.sampled_from([1, 2, 256]), COUNTS))
def test_quantize_and_dequantize_nf4(weight, block_size, double_quant, dq_block_size):
    """A quantized weight comes back with its shape, each value within half the widest gap
    between levels (0.16) times its block's absmax (plus the double quantization's error)."""
    q = outcome(lambda: quantize_nf4(weight, block_size, double_quant, dq_block_size))
    if failed(q):
        return
    back = dequantize_nf4(q)
    assert back.shape == weight.shape and back.dtype == torch.float32
    w = weight.float()
    bound = 0.17 * w.abs().max() * (1.01 if double_quant else 1.0) + 1e-6
    assert bool(((back - w).abs() <= bound).all())
    if len(weight.shape) == 2:
        layer = LinearNF4(q)
        assert torch.equal(layer.weight, back)


@fuzz(indices=st.one_of(tensors(sides=(0, 1, 2, 4), max_dims=2, low=-2, high=17), ANY),
      packed=st.one_of(tensors(sides=(0, 1, 3), max_dims=2, low=0, high=255), ANY))
def test_pack_and_unpack(indices, packed):
    result = outcome(lambda: pack_4bit(indices))
    if not failed(result):
        assert torch.equal(unpack_4bit(result), indices.to(torch.uint8))
    outcome(lambda: unpack_4bit(packed))


@fuzz(values=st.one_of(tensors(sides=(0, 1, 3, 9), max_dims=2), ANY), block_size=COUNTS,
      codes=st.one_of(st.none(), tensors(sides=(0, 1, 3, 9), max_dims=2, low=-130, high=130)),
      scales=st.one_of(st.none(), tensors(sides=(0, 1, 2), max_dims=2)),
      mean=st.one_of(st.none(), SCALARS, tensors(sides=(1, 2), max_dims=1)))
def test_double_quantization(values, block_size, codes, scales, mean):
    result = outcome(lambda: quantize_absmax_int8(values, block_size))
    if failed(result):
        return
    parts = [result[0] if codes is None else codes, result[1] if scales is None else scales,
             result[2] if mean is None else mean]
    back = outcome(lambda: dequantize_absmax_int8(*parts, block_size))
    if codes is scales is mean is None:
        centred = values.float() - values.float().mean()
        assert torch.allclose(back, values.float(), atol=float(centred.abs().max()) / 254 + 1e-4)


NF4_FIELDS = ["packed", "absmax", "shape", "block_size", "absmax_q", "absmax_scale",
              "absmax_mean", "dq_block_size"]


@fuzz(double_quant=st.booleans(), field=st.sampled_from(NF4_FIELDS),
      value=st.one_of(tensors(sides=(0, 1, 4, 16), max_dims=2, low=0, high=255), COUNTS, ANY,
                      st.lists(st.integers(-1, 9), max_size=3).map(tuple)),
      bias=st.one_of(st.none(), tensors(sides=(1, 4, 8), max_dims=2)),
      x=st.one_of(tensors(), ANY))
def test_nf4_tensor_with_parts_that_do_not_belong_together(double_quant, field, value, bias, x):
    q = nf4(double_quant, **{field: value})
    back = outcome(lambda: dequantize_nf4(q))
    if not failed(back):
        assert back.shape == q.shape
    layer = outcome(lambda: LinearNF4(q, bias))
    if not failed(layer):
        out = outcome(lambda: layer(x))
        if not failed(out):
            assert out.shape == (*x.shape[:-1], 4)


@fuzz(which=st.sampled_from(sorted(MODELS)), block_size=st.one_of(st.just(8), COUNTS),
      double_quant=st.one_of(st.booleans(), SCALARS),
      skip=st.one_of(st.just(("out_head",)), st.just("trf_blocks.0"), st.just(()), ANY,
                     st.lists(st.sampled_from(["out_head", "head", "trf_blocks", ""]),
                              max_size=2)))
def test_quantize_model_nf4(which, block_size, double_quant, skip):
    model = MODELS[which]()
    before = state(model) if isinstance(model, nn.Module) else None
    summary = outcome(lambda: quantize_model_nf4(model, block_size, double_quant, skip))
    if failed(summary):
        assert before is None or same_state(model, before)
        return
    assert summary["model_bytes_after"] == model_bytes(model)
    with torch.no_grad():
        assert model(ids(1, 2, 3)).shape == (1, 3, TINY["vocab_size"])


@fuzz(cfg=st.dictionaries(st.sampled_from(sorted(TINY)), st.one_of(st.integers(-2, 16), SCALARS),
                          max_size=7), dtype=st.one_of(st.sampled_from(["fp32", "bf16", "int8",
                                                                        "nf4"]), ANY),
      block_size=st.one_of(st.just(64), COUNTS), double_quant=st.one_of(st.booleans(), SCALARS),
      rest=st.one_of(st.sampled_from(["fp32", "bf16"]), ANY),
      tied_head=st.one_of(st.booleans(), SCALARS),
      sizes=st.one_of(st.just(("124M",)), st.just("355M"), ANY,
                      st.lists(st.sampled_from(["124M", "1558M", "125M", ""]), max_size=2)))
def test_memory_arithmetic(cfg, dtype, block_size, double_quant, rest, tied_head, sizes):
    cfg = {**TINY, **cfg}
    total = outcome(lambda: base_model_bytes(cfg, dtype, block_size, double_quant, rest,
                                             tied_head))
    if not failed(total) and dtype == "fp32" and tied_head is False and all(
            cfg[k] < 64 for k in ("vocab_size", "context_length", "emb_dim", "n_layers")):
        try:
            with torch.device("meta"):
                model = pc.GPTModel(cfg)  # a fresh GPTModel's head is a matrix of its own
        except (TypeError, ValueError):  # a config GPTModel refuses (drop_rate, n_heads ...)
            model = None
        if model is not None:  # counted by formula = the parameters of the model itself
            assert total == 4 * sum(p.numel() for p in model.parameters())
    rows = outcome(lambda: gpt2_memory_table(sizes, double_quant, rest))
    if not failed(rows):
        assert all(row["fp32"] > row["nf4"] for row in rows)


# ----- the fuzzed sweep: low_precision.py ----------------------------------------------------

@fuzz(weight=st.one_of(tensors(sides=(0, 1, 3, 8)), ANY),
      q=st.one_of(st.none(), tensors(sides=(0, 1, 3, 8), low=-130, high=130), ANY),
      scale=st.one_of(st.none(), tensors(sides=(0, 1, 3), max_dims=2), ANY))
def test_absmax_quantize_and_dequantize(weight, q, scale):
    result = outcome(lambda: absmax_quantize(weight))
    if failed(result):
        return
    back = dequantize(*result)
    w = weight.float()
    assert bool(((back - w).abs() <= result[1][:, None] / 2 + 1e-6 * (1 + w.abs())).all())
    outcome(lambda: dequantize(result[0] if q is None else q,
                               result[1] if scale is None else scale))


@fuzz(in_features=COUNTS, out_features=COUNTS, bias=st.one_of(st.booleans(), SCALARS),
      kernel=st.one_of(st.sampled_from(["auto", *KERNELS]), SCALARS),
      device=st.one_of(st.none(), st.sampled_from(["cpu", "meta", "gpu0", ""]), SCALARS))
def test_int8_linear_construction(in_features, out_features, bias, kernel, device):
    layer = outcome(lambda: Int8Linear(in_features, out_features, bias, kernel, device))
    if not failed(layer):
        assert layer.scale.shape == (out_features,)


@fuzz(x=st.one_of(tensors(), ANY), kernel=st.sampled_from([*KERNELS, "bf16"]))
def test_low_precision_forward(x, kernel):
    """A computed output has the shape of nn.Linear's, and is close to its output (the
    independent reference) wherever the input is finite and small."""
    torch.manual_seed(0)
    linear = nn.Linear(8, 9)
    layer = (BF16Linear(linear) if kernel == "bf16" else
             Int8Linear.from_linear(linear, kernel=kernel))
    with torch.no_grad():
        out = outcome(lambda: layer(x))
        if failed(out):
            return
        assert out.shape == (*x.shape[:-1], 9) and out.dtype == torch.float32
        if x.numel() and bool(torch.isfinite(x).all()):
            expected = linear(x.float())
            scale = float(x.float().abs().max()) + 1
            assert torch.allclose(out, expected, atol=0.05 * scale, rtol=0.05)


@fuzz(which=st.sampled_from(sorted(MODELS)), head=st.one_of(st.booleans(), SCALARS),
      kernel=st.one_of(st.sampled_from(["auto", *KERNELS]), SCALARS),
      convert=st.sampled_from(["int8", "bf16"]))
def test_model_conversions(which, head, kernel, convert):
    model = MODELS[which]()
    before = state(model) if isinstance(model, nn.Module) and which != "meta" else None
    errors = outcome(lambda: weight_errors(model))
    if not failed(errors):
        assert all(0 <= row["int8"] < 0.05 and 0 <= row["bf16"] < 0.01 for row in errors)
    fp32 = outcome(lambda: inference_bytes(model))
    converted = outcome(lambda: quantize_int8(model, head, kernel) if convert == "int8"
                        else to_bf16(model, head))
    if failed(converted):
        assert before is None or same_state(model, before)
        return
    if which in ("gpt", "lora"):  # untied heads: every linear layer gets smaller
        assert inference_bytes(model) < fp32
        with torch.no_grad():
            assert model(ids(1, 2, 3)).shape == (1, 3, TINY["vocab_size"])

