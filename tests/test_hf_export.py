"""hf_export.py (issue 18): a GPTModel exported to the Hugging Face format loads into transformers'
own GPT2LMHeadModel with our logits, back into our GPTModel bit for bit, and into transformers'
text-generation pipeline offline with our greedy tokens and GPT-2's tokenizer; what GPT-2's format
cannot hold is refused with a message that says what to do; an export is whole or absent."""

import json

import pytest
import torch
import torch.nn as nn

import course_data
import hf_export
from hf_export import export_to_hf
from lora import merge_lora, replace_linear_with_lora
from previous_chapters import (
    GPTModel,
    add_classification_head,
    generate,
    gpt_from_pretrained,
    text_to_token_ids,
    token_ids_to_text,
)
from qlora import LinearNF4, quantize_model_nf4

# GPT-2's vocabulary (so that the tokenizer files fit), everything else small
CFG = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}
PROMPT = "Every effort moves you"


def gpt(cfg=CFG, seed=123, tie=True, scale=0.3):
    """A GPTModel with random weights that are not the initial ones: every parameter (biases,
    layer-norm scales and shifts too) moved, so that a wrong mapping or transpose shows."""
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    if tie:
        model.out_head.weight = model.tok_emb.weight
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale * p.std().clamp(min=0.1))
    return model.eval()


def token_ids(seed=0, shape=(2, 40)):
    return torch.randint(0, CFG["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


def hf_logits(folder, idx):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(idx).logits, hf


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """transformers may not reach the hub: everything must come from the exported folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_transformers_gives_our_logits_and_the_tie(tmp_path, qkv_bias):
    model = gpt({**CFG, "qkv_bias": qkv_bias})
    export_to_hf(model, tmp_path / "export")
    idx = token_ids()
    logits, hf = hf_logits(tmp_path / "export", idx)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(idx), rtol=0, atol=1e-4)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["n_ctx"] == 64


def test_gpt_from_pretrained_gives_back_every_parameter_bit_for_bit(tmp_path):
    model = gpt()
    export_to_hf(model, tmp_path / "export")
    back = gpt_from_pretrained(tmp_path / "export")
    assert back.cfg == model.cfg
    assert back.out_head.weight is back.tok_emb.weight
    ours, theirs = model.state_dict(), back.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []


def test_the_pipeline_generates_our_greedy_tokens_offline(tmp_path):
    from transformers import pipeline

    model = gpt()
    with torch.no_grad():  # positions that matter more: a random model then repeats itself less
        model.pos_emb.weight.mul_(10)
    export_to_hf(model, tmp_path / "export")
    tokenizer = course_data.get_gpt2_tokenizer()
    idx = text_to_token_ids(PROMPT, tokenizer)
    ours = generate(model, idx, max_new_tokens=15, context_size=64)[0].tolist()
    new = ours[idx.shape[1]:]
    assert len(set(new)) > 3 and 50256 not in new  # a sequence worth comparing, no early stop
    pipe = pipeline("text-generation", model=str(tmp_path / "export"), device="cpu")
    out = pipe(PROMPT, max_new_tokens=15, do_sample=False, return_tensors=True)
    assert out[0]["generated_token_ids"] == ours
    text = pipe(PROMPT, max_new_tokens=15, do_sample=False)[0]["generated_text"]
    assert text == token_ids_to_text(torch.tensor([ours]), tokenizer)


def test_the_tokenizer_files_are_gpt2s_and_encode_as_tiktoken(tmp_path):
    from transformers import AutoTokenizer

    export_to_hf(gpt(), tmp_path / "export")
    folder = tmp_path / "export"
    assert (folder / "vocab.json").read_bytes() == \
        course_data.fetch_data("encoder.json").read_bytes()
    assert (folder / "merges.txt").read_bytes() == course_data.fetch_data("vocab.bpe").read_bytes()
    hf_tok = AutoTokenizer.from_pretrained(folder)
    tiktoken = course_data.get_gpt2_tokenizer()
    text = "Hello, world!  Naïve café\n\n  tabs\tand <|endoftext|> 1234567 ümlaut 日本"
    assert hf_tok(text)["input_ids"] == tiktoken.encode(text, allowed_special="all")
    assert hf_tok.eos_token_id == 50256 and hf_tok.model_max_length == 64
    spaced = "Hello , world . I do n't know ."  # decoded as it was, no "clean-up" of spaces
    assert hf_tok.decode(hf_tok(spaced)["input_ids"]) == spaced


def test_a_head_of_its_own_is_refused_unless_tie_false(tmp_path):
    model = gpt(tie=False)  # as trained from scratch in notebook 04
    with pytest.raises(ValueError, match="differs from model.tok_emb.weight.*tie=False"):
        export_to_hf(model, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    export_to_hf(model, tmp_path / "export", tie=False)
    idx = token_ids()
    logits, hf = hf_logits(tmp_path / "export", idx)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(idx), rtol=0, atol=1e-4)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    back = gpt_from_pretrained(tmp_path / "export")
    assert back.out_head.weight is not back.tok_emb.weight
    ours, theirs = model.state_dict(), back.state_dict()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []


def test_a_lora_model_must_be_merged_and_then_exports(tmp_path):
    model = gpt()
    idx = token_ids()
    replace_linear_with_lora(model, rank=4, alpha=8)
    with torch.no_grad():  # as after training: B away from zero, in every layer and the head
        for name, p in model.named_parameters():
            if name.endswith(".lora.B"):
                p.copy_(torch.randn_like(p) * 0.1)
        expected = model(idx)
    with pytest.raises(ValueError, match=r"lora\.merge_lora\(model\)"):
        export_to_hf(model, tmp_path / "export")
    merge_lora(model)
    # the head's LoRA was merged into the head only: it is a matrix of its own now
    with pytest.raises(ValueError, match="tie=False"):
        export_to_hf(model, tmp_path / "export")
    export_to_hf(model, tmp_path / "export", tie=False)
    logits, _ = hf_logits(tmp_path / "export", idx)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def test_a_4_bit_model_is_refused_with_what_to_do_instead(tmp_path):
    model = gpt()
    quantize_model_nf4(model)  # in place
    with pytest.raises(ValueError, match=r"4-bit layers.*load_lora_adapter.*merge_lora"):
        export_to_hf(model, tmp_path / "export")
    replace_linear_with_lora(model, rank=4, alpha=8, layer_types=(nn.Linear, LinearNF4))
    with pytest.raises(ValueError, match=r"4-bit layers"):
        export_to_hf(model, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_a_classifier_is_refused_with_what_to_do_instead(tmp_path):
    model = gpt()
    add_classification_head(model, num_classes=2)
    with pytest.raises(ValueError, match=r"classification head.*torch\.save"):
        export_to_hf(model, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_wrong_shapes_are_refused_by_name(tmp_path):
    model = gpt()
    model.pos_emb = nn.Embedding(32, CFG["emb_dim"])  # the cfg still says 64 positions
    with pytest.raises(ValueError, match=r"wpe\.weight has shape \(32, 32\).*\(64, 32\)"):
        export_to_hf(model, tmp_path / "export")
    small = gpt({**CFG, "vocab_size": 1000})
    with pytest.raises(ValueError, match="fewer than the 50257 tokens of GPT-2's tokenizer"):
        export_to_hf(small, tmp_path / "export")
    export_to_hf(small, tmp_path / "export", tokenizer=False)  # weights and config only
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    with pytest.raises(TypeError, match="exports a GPTModel"):
        export_to_hf(nn.Linear(3, 3), tmp_path / "other")


def test_float16_export_loads_with_float16_weights(tmp_path):
    model = gpt()
    export_to_hf(model, tmp_path / "export", dtype=torch.float16)
    back = gpt_from_pretrained(tmp_path / "export")
    assert torch.equal(back.tok_emb.weight, model.tok_emb.weight.half().float())
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["torch_dtype"] == "float16"


def test_an_export_is_whole_or_absent_and_replaces_only_an_export(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    first, second = gpt(seed=1), gpt(seed=2)
    export_to_hf(first, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail_midway(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        export_to_hf(second, folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the first, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left

    export_to_hf(second, folder)  # an earlier export is replaced
    back = gpt_from_pretrained(folder)
    assert torch.equal(back.tok_emb.weight, second.tok_emb.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]

    other = tmp_path / "my-notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier export"):
        export_to_hf(second, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_hf_state_dict_uses_gpt2_lm_head_models_names_and_shapes():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = gpt()
    ours = hf_export.hf_state_dict(model)
    config = GPT2Config(**{k: v for k, v in hf_export.hf_config(model).items()
                           if k not in ("architectures", "torch_dtype")})
    reference = {k: v.shape for k, v in GPT2LMHeadModel(config).state_dict().items()
                 if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert {k: v.shape for k, v in ours.items()} == reference
