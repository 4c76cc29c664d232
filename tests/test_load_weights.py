"""Loading GPT-2 weights into our GPTModel, checked against an independent GPT-2: Hugging Face's.

A randomly initialised transformers.GPT2LMHeadModel (every weight, norm and bias random, so that
any mix-up shows) is written out twice: in OpenAI's TensorFlow layout (by TensorFlow itself) and
with save_pretrained. Both of our routes must give its logits.
"""

import json
import warnings

import numpy as np
import pytest
import torch

import gpt_download3
from previous_chapters import (
    GPTModel,
    config_from_hparams,
    gpt_from_pretrained,
    load_weights_into_gpt,
)
from tests.tiny_checkpoint import write_openai_checkpoint

HPARAMS = {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=HPARAMS["n_vocab"], n_positions=HPARAMS["n_ctx"], n_embd=HPARAMS["n_embd"],
        n_head=HPARAMS["n_head"], n_layer=HPARAMS["n_layer"])
    torch.manual_seed(123)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or "ln_f" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model


def openai_tensors(model):
    """Hugging Face's state dict -> OpenAI's checkpoint names and shapes."""
    sd = {k.removeprefix("transformer."): v.detach().numpy() for k, v in
          model.state_dict().items()}
    t = {"model/wte": sd["wte.weight"], "model/wpe": sd["wpe.weight"],
         "model/ln_f/g": sd["ln_f.weight"], "model/ln_f/b": sd["ln_f.bias"]}
    for i in range(HPARAMS["n_layer"]):
        for ours, hf in [("ln_1", "ln_1"), ("ln_2", "ln_2")]:
            t[f"model/h{i}/{ours}/g"] = sd[f"h.{i}.{hf}.weight"]
            t[f"model/h{i}/{ours}/b"] = sd[f"h.{i}.{hf}.bias"]
        for sub in ["attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"]:
            hf = sub.replace("/", ".")
            t[f"model/h{i}/{sub}/w"] = sd[f"h.{i}.{hf}.weight"][None]  # (1, in, out) as OpenAI
            t[f"model/h{i}/{sub}/b"] = sd[f"h.{i}.{hf}.bias"]
    return t


@pytest.fixture(scope="module")
def oracle_dirs(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    write_openai_checkpoint(root / "models" / "oracle", HPARAMS, openai_tensors(hf_model))
    hf_model.save_pretrained(root / "hf")
    return root


@pytest.fixture(scope="module")
def token_ids():
    return torch.randint(0, HPARAMS["n_vocab"], (2, 16), generator=torch.Generator().manual_seed(1))


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


def test_openai_route_gives_hugging_faces_logits(hf_model, oracle_dirs, token_ids):
    settings, params = gpt_download3.download_and_load_gpt2("oracle", oracle_dirs / "models")
    gpt = GPTModel(config_from_hparams(settings))
    load_weights_into_gpt(gpt, params).eval()
    with torch.no_grad():
        ours = gpt(token_ids)
    assert torch.allclose(ours, hf_logits(hf_model, token_ids), atol=1e-4, rtol=0)
    assert gpt.out_head.weight is gpt.tok_emb.weight  # tied, as in GPT-2


def test_tensorflow_reader_gives_the_same_params(oracle_dirs):
    _, ours = gpt_download3.download_and_load_gpt2("oracle", oracle_dirs / "models")
    _, tfs = gpt_download3.download_and_load_gpt2("oracle", oracle_dirs / "models",
                                                  reader="tensorflow")

    def leaves(tree, prefix=""):
        if isinstance(tree, dict):
            for k, v in sorted(tree.items()):
                yield from leaves(v, f"{prefix}/{k}")
        elif isinstance(tree, list):
            for i, v in enumerate(tree):
                yield from leaves(v, f"{prefix}/{i}")
        else:
            yield prefix, tree

    a, b = dict(leaves(ours)), dict(leaves(tfs))
    assert a.keys() == b.keys() and len(a) == 4 + 12 * HPARAMS["n_layer"]
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def test_from_pretrained_gives_hugging_faces_logits(hf_model, oracle_dirs, token_ids):
    gpt = GPTModel.from_pretrained(str(oracle_dirs / "hf"))
    assert isinstance(gpt, GPTModel) and not gpt.training
    with torch.no_grad():
        ours = gpt(token_ids)
    assert torch.allclose(ours, hf_logits(hf_model, token_ids), atol=1e-4, rtol=0)


def test_both_routes_fill_the_same_model(oracle_dirs):
    a = gpt_from_pretrained(oracle_dirs / "hf")  # a Path is always a local folder
    settings, params = gpt_download3.download_and_load_gpt2("oracle", oracle_dirs / "models")
    b = load_weights_into_gpt(GPTModel(config_from_hparams(settings)), params)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-7, rtol=0), k


@pytest.mark.parametrize("change, name", [
    ({"emb_dim": 48}, "pos_emb.weight (wpe)"),
    ({"context_length": 32}, "pos_emb.weight (wpe)"),
    ({"vocab_size": 1000}, "tok_emb.weight (wte)"),
])
def test_shape_mismatch_names_the_parameter(oracle_dirs, change, name):
    settings, params = gpt_download3.download_and_load_gpt2("oracle", oracle_dirs / "models")
    gpt = GPTModel({**config_from_hparams(settings), **change})
    with pytest.raises(ValueError, match=r"model has shape .* checkpoint gives") as err:
        load_weights_into_gpt(gpt, params)
    assert str(err.value).startswith(name)


def test_wrong_block_count_or_missing_qkv_bias_is_explained(oracle_dirs):
    settings, params = gpt_download3.download_and_load_gpt2("oracle", oracle_dirs / "models")
    cfg = config_from_hparams(settings)
    with pytest.raises(ValueError, match="2 transformer blocks but the model has 3"):
        load_weights_into_gpt(GPTModel({**cfg, "n_layers": 3}), params)
    with pytest.raises(ValueError, match="qkv_bias=True"):
        load_weights_into_gpt(GPTModel({**cfg, "qkv_bias": False}), params)


def test_a_known_name_means_the_hub_even_with_a_local_folder(oracle_dirs, tmp_path, monkeypatch):
    import huggingface_hub

    (tmp_path / "gpt2").symlink_to(oracle_dirs / "hf", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    asked = []

    def offline_hub(repo_id, filename, **kwargs):  # stands in for the network: records the ask
        asked.append((repo_id, filename))
        raise ConnectionError("no network in the tests")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline_hub)
    with pytest.warns(UserWarning, match="local folder of that name is not used"):
        with pytest.raises(OSError, match="Could not get openai-community/gpt2"):
            GPTModel.from_pretrained("gpt2")
    assert asked == [("openai-community/gpt2", "config.json")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(GPTModel.from_pretrained("./gpt2"), GPTModel)  # the folder, explicitly


def test_from_pretrained_checks_every_parameter_is_filled_once(oracle_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(oracle_dirs / "hf" / "model.safetensors")
    (tmp_path / "config.json").write_text((oracle_dirs / "hf" / "config.json").read_text())
    missing = {k: v for k, v in sd.items() if not k.endswith("h.1.ln_2.bias")}
    save_file(missing, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"unset: \['trf_blocks.1.norm2.shift'\]"):
        gpt_from_pretrained(tmp_path)
    save_file({**sd, "transformer.h.0.attn.c_extra.weight": sd["transformer.wpe.weight"].clone()},
              tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="c_extra.weight .* has no place in GPTModel"):
        gpt_from_pretrained(tmp_path)


def test_from_pretrained_refuses_other_models_and_empty_folders(oracle_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a GPT-2 name on the hub"):
        gpt_from_pretrained(tmp_path / "nothing-here")
    config = json.loads((oracle_dirs / "hf" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model, not GPT-2"):
        gpt_from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ValueError, match="activation_function"):
        gpt_from_pretrained(tmp_path)


def test_params_are_memory_mapped_not_copied(oracle_dirs):
    import mmap

    _, params = gpt_download3.download_and_load_gpt2("oracle", oracle_dirs / "models")
    base = params["blocks"][0]["attn"]["c_attn"]["w"]
    while isinstance(base, np.ndarray):
        assert not base.flags.owndata
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    assert params["wte"].flags.writeable  # a private copy-on-write mapping: torch takes it as is


@pytest.mark.parametrize("size", list(gpt_download3.GPT2_HPARAMS))
def test_config_from_hparams_builds_each_released_size_with_openais_count(size):
    """Notebook 05 (section 5.3, exercise 5.1): config_from_hparams gives the lecture's config
    (GPT_CONFIG_124M updated with the size, context 1024, qkv_bias), and our GPTModel with its
    head tied has exactly the parameters of OpenAI's checkpoint, for every released size."""
    from previous_chapters import GPT_CONFIG_124M

    hparams = gpt_download3.GPT2_HPARAMS[size]
    cfg = config_from_hparams(hparams)
    lecture = {**GPT_CONFIG_124M, "emb_dim": hparams["n_embd"], "n_heads": hparams["n_head"],
               "n_layers": hparams["n_layer"], "context_length": 1024, "qkv_bias": True,
               "drop_rate": 0.0}
    assert cfg == lecture
    with torch.device("meta"):  # shapes only: even 1558M costs no memory
        gpt = GPTModel(cfg)
    n = sum(p.numel() for p in gpt.parameters())
    assert n - hparams["n_vocab"] * hparams["n_embd"] == gpt_download3.count_gpt2_params(hparams)
