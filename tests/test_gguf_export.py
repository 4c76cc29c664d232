"""gguf_export.py (issue 18, optional): a GPTModel written as a GGUF file is read back by
transformers' own GGUF loader (its names, its transposes, its tokenizer conversion) with our logits
and tiktoken's token ids; float16 halves the matrices; what GPT-2 cannot hold is refused; a file
is written whole or not at all."""

import gguf
import pytest
import torch

import course_data
from gguf_export import export_to_gguf
from previous_chapters import add_classification_head
from tests.test_hf_export import CFG, gpt, token_ids

CFG_1024 = {**CFG, "context_length": 1024}  # transformers' GGUF loader assumes GPT-2's 1,024


def load(path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path.parent, gguf_file=path.name).eval()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_transformers_reads_our_gguf_with_our_logits_tied_head_and_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    model = gpt(CFG_1024)
    path = export_to_gguf(model, tmp_path / "model.gguf")
    hf = load(path)
    idx = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=0, atol=1e-4)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    text = "Hello, world!  Naïve café\n\n  tabs\tand <|endoftext|> 1234567 ümlaut 日本"
    tiktoken = course_data.get_gpt2_tokenizer()
    assert tokenizer(text)["input_ids"] == tiktoken.encode(text, allowed_special="all")
    assert tokenizer.eos_token_id == 50256


def test_float16_and_an_untied_head(tmp_path):
    model = gpt(CFG_1024, tie=False)
    with pytest.raises(ValueError, match="tie=False"):
        export_to_gguf(model, tmp_path / "model.gguf")
    f32 = export_to_gguf(model, tmp_path / "model.gguf", tie=False)
    f16 = export_to_gguf(model, tmp_path / "model-f16.gguf", tie=False, float16=True)
    assert f16.stat().st_size < 0.65 * f32.stat().st_size
    hf = load(f16)
    assert not hf.config.tie_word_embeddings
    assert torch.equal(hf.lm_head.weight, model.out_head.weight.detach().half().float())
    assert torch.equal(hf.transformer.ln_f.bias, model.final_norm.shift.detach())  # float32
    hf = load(f32)
    idx = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=0, atol=1e-4)


def test_refusals_and_a_file_written_whole(tmp_path, monkeypatch):
    classifier = gpt(CFG_1024)
    add_classification_head(classifier)
    with pytest.raises(ValueError, match="classification head"):
        export_to_gguf(classifier, tmp_path / "model.gguf")
    with pytest.raises(ValueError, match="50257 tokens"):
        export_to_gguf(gpt({**CFG_1024, "vocab_size": 50304}), tmp_path / "model.gguf")
    first = export_to_gguf(gpt(CFG_1024, seed=1), tmp_path / "model.gguf").read_bytes()

    def fail(self):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export_to_gguf(gpt(CFG_1024, seed=2), tmp_path / "model.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no temporary file left
    assert (tmp_path / "model.gguf").read_bytes() == first
