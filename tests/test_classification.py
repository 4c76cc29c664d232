"""Tests of notebook 06's helpers (previous_chapters.py, section 06_classification_finetuning):
the spam data pipeline, SpamDataset, the classification head, loss/accuracy, classify_review,
and that the fine-tuning code learns on the real data from the tiny random GPT-2 checkpoint."""

import csv
import math
import os
import time

import pandas as pd
import pytest
import tiktoken
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import course_data
from previous_chapters import (
    GPTModel,
    SpamDataset,
    add_classification_head,
    calc_accuracy_loader,
    calc_loss_batch_classifier,
    calc_loss_loader_classifier,
    classify_review,
    config_from_hparams,
    create_balanced_dataset,
    load_weights_into_gpt,
    random_split,
    read_sms_spam,
    train_classifier_simple,
)

SMALL_CFG = {"vocab_size": 50257, "context_length": 32, "emb_dim": 16, "n_heads": 2,
             "n_layers": 3, "drop_rate": 0.0, "qkv_bias": True}


@pytest.fixture(scope="module")
def tokenizer():
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def spam_path():
    return course_data.fetch_data("SMSSpamCollection")


def small_classifier(seed=123, num_trainable_blocks=1):
    torch.manual_seed(seed)
    return add_classification_head(GPTModel(SMALL_CFG), 2, num_trainable_blocks)


def write_csv(path, texts, labels):
    pd.DataFrame({"Label": labels, "Text": texts}).to_csv(path, index=False)
    return path


# ----- the data ----------------------------------------------------------------------------------

def test_read_sms_spam_keeps_every_line_as_one_message(spam_path):
    lines = spam_path.read_text(encoding="utf-8").splitlines()  # the oracle: plain Python
    df = read_sms_spam(spam_path)
    assert len(df) == len(lines) == 5574
    assert df["Label"].value_counts().to_dict() == {"ham": 4827, "spam": 747}
    assert list(df["Text"]) == [line.split("\t", 1)[1] for line in lines]
    # pandas' default quoting is the trap the notebook explains: it merges three lines
    default = pd.read_csv(spam_path, sep="\t", header=None, names=["Label", "Text"])
    assert default["Label"].value_counts().to_dict() == {"ham": 4825, "spam": 747}


def test_balance_and_split_are_seeded_complete_and_disjoint(spam_path):
    df = read_sms_spam(spam_path)
    balanced = create_balanced_dataset(df, seed=123)
    assert balanced["Label"].value_counts().to_dict() == {"ham": 747, "spam": 747}
    assert sorted(balanced.loc[balanced["Label"] == "spam", "Text"]) == sorted(
        df.loc[df["Label"] == "spam", "Text"])  # every spam message is kept
    assert balanced.equals(create_balanced_dataset(df, seed=123))
    assert not balanced.equals(create_balanced_dataset(df, seed=7))

    train, val, test = random_split(balanced, 0.7, 0.1, seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    assert sorted(pd.concat([train, val, test])["Text"]) == sorted(balanced["Text"])
    again = random_split(balanced, 0.7, 0.1, seed=123)
    assert all(a.equals(b) for a, b in zip((train, val, test), again))
    with pytest.raises(ValueError, match="sum to at most 1"):
        random_split(balanced, 0.8, 0.3)
    with pytest.raises(ValueError, match="fewer ham"):
        create_balanced_dataset(df[df["Label"] == "spam"])


def test_csv_round_trip_keeps_quotes_and_na_like_texts(tmp_path, tokenizer):
    texts = ['"Keep ur problems in ur heart', 'He said "yes", then "no"', "NA", "null", "",
             "a,b;c", "  leading and trailing  ", "caf\u00e9 \U0001F600 \u00a3100"]
    path = write_csv(tmp_path / "t.csv", texts, [0, 1] * 4)
    ds = SpamDataset(path, tokenizer)
    assert list(ds.data["Text"]) == texts  # nothing became NaN, no quote was lost
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        assert ds[i][0][:len(ids)].tolist() == ids


# ----- SpamDataset -------------------------------------------------------------------------------

def test_spam_dataset_pads_to_longest_and_cuts_to_max_length(tmp_path, tokenizer):
    texts = ["Hi", "Free entry in a weekly competition to win tickets!", "ok see you at 5"]
    path = write_csv(tmp_path / "train.csv", texts, [0, 1, 0])
    lengths = [len(tokenizer.encode(t)) for t in texts]
    ds = SpamDataset(path, tokenizer)
    assert ds.max_length == max(lengths) and len(ds) == 3
    for (ids, label), text, n, want in zip(ds, texts, lengths, [0, 1, 0]):
        assert ids.shape == (max(lengths),) and ids.dtype == torch.long
        assert ids[:n].tolist() == tokenizer.encode(text)
        assert (ids[n:] == 50256).all()
        assert label.item() == want and label.dtype == torch.long

    short = SpamDataset(path, tokenizer, max_length=3, pad_token_id=0)
    assert [ids.tolist() for ids, _ in short] == [
        (tokenizer.encode(t) + [0, 0, 0])[:3] for t in texts]

    val = SpamDataset(write_csv(tmp_path / "val.csv", ["short"], [1]), tokenizer,
                      max_length=ds.max_length)  # validation reuses the training length
    assert val[0][0].shape == (ds.max_length,)


def test_spam_dataset_errors_are_clear(tmp_path, tokenizer):
    long_text = "spam " * 40
    n = len(tokenizer.encode(long_text))  # 40-odd tokens
    path = write_csv(tmp_path / "long.csv", [long_text, "hi"], [1, 0])
    with pytest.raises(ValueError, match=rf"long.csv has {n} tokens.*context length of 32"):
        SpamDataset(path, tokenizer, context_length=32)
    assert SpamDataset(path, tokenizer, max_length=32, context_length=32).max_length == 32
    with pytest.raises(ValueError, match="between 1 and the context length 32"):
        SpamDataset(path, tokenizer, max_length=33, context_length=32)
    with pytest.raises(ValueError, match="between 1 and the context length"):
        SpamDataset(path, tokenizer, max_length=0)
    with pytest.raises(ValueError, match="all texts empty"):
        SpamDataset(write_csv(tmp_path / "empty.csv", ["", ""], [0, 1]), tokenizer)
    with pytest.raises(ValueError, match="must be integers"):
        SpamDataset(write_csv(tmp_path / "str.csv", ["a", "b"], ["ham", "spam"]), tokenizer)
    with pytest.raises(ValueError, match="holds no messages"):
        SpamDataset(write_csv(tmp_path / "none.csv", [], []), tokenizer)
    (tmp_path / "cols.csv").write_text("label,message\n0,hi\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['Label', 'Text'\]"):
        SpamDataset(tmp_path / "cols.csv", tokenizer)


def test_spam_dataset_treats_special_token_text_as_plain_text(tmp_path, tokenizer):
    path = write_csv(tmp_path / "s.csv", ["win <|endoftext|> now"], [1])
    ids = SpamDataset(path, tokenizer)[0][0].tolist()
    assert 50256 not in ids and tokenizer.decode(ids) == "win <|endoftext|> now"


# ----- the model change --------------------------------------------------------------------------

def test_only_the_intended_parameters_train():
    model = small_classifier()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("trf_blocks.2.", "final_norm.", "out_head."))}
    assert names == expected
    block, c = model.trf_blocks[-1], SMALL_CFG["emb_dim"]
    expected_count = (sum(p.numel() for p in block.parameters()) + 2 * c  # block + final norm
                      + c * 2 + 2)  # the new head: weight (2, C) and bias (2,)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected_count
    assert model.out_head.weight.shape == (2, c)
    assert model.out_head.weight is not model.tok_emb.weight  # no longer tied to the embedding

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    torch.manual_seed(0)
    inputs, labels = torch.randint(0, 50257, (4, 10)), torch.tensor([0, 1, 1, 0])
    optimizer.zero_grad()
    calc_loss_batch_classifier(inputs, labels, model, "cpu").backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name in expected:
            assert not torch.equal(param, before[name]), f"{name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
            assert param.grad is None



def test_counts_on_the_meta_device_equal_those_of_a_real_model():
    """Notebook 06 counts GPT-2 small's parameters, and its file size, on the meta device
    (shapes, no values): the same numbers as on a model with real tensors."""
    def counts(model):
        add_classification_head(model, 2, num_trainable_blocks=1)
        sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
        return (sum(p.numel() for p in model.parameters() if p.requires_grad),
                sum(p.numel() for p in model.parameters()), sum(sizes))

    with torch.device("meta"):
        on_meta = GPTModel(SMALL_CFG)
    assert next(on_meta.trf_blocks.parameters()).is_meta
    assert counts(on_meta) == counts(GPTModel(SMALL_CFG))

def test_head_options_and_output_shape():
    model = small_classifier(num_trainable_blocks=0)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {
        "final_norm", "out_head"}
    model = small_classifier(num_trainable_blocks=3)
    assert {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad} == {
        "tok_emb", "pos_emb"}
    with pytest.raises(ValueError, match="between 0 and the model's 3 blocks"):
        small_classifier(num_trainable_blocks=4)
    assert model(torch.zeros(5, 7, dtype=torch.long)).shape == (5, 7, 2)


# ----- loss and accuracy -------------------------------------------------------------------------

class LastTokenParity(nn.Module):
    """A stand-in classifier with known outputs: it predicts the parity of each token id, with
    probability sigmoid(2) for that class."""

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 2)
        logits[..., 0] = torch.where(idx % 2 == 0, 1.0, -1.0)
        logits[..., 1] = -logits[..., 0]
        return logits  # (B, T, 2)


def test_accuracy_and_loss_use_the_last_token():
    inputs = torch.tensor([[1, 2], [2, 3], [3, 4], [4, 6], [5, 7], [6, 8]])  # last ids decide
    labels = torch.tensor([0, 1, 1, 0, 0, 0])  # predicted: 0, 1, 0, 0, 1, 0 -> 4 of 6 right
    loader = DataLoader(list(zip(inputs, labels)), batch_size=2)
    model = LastTokenParity().train()
    assert calc_accuracy_loader(loader, model, "cpu") == pytest.approx(4 / 6)
    assert calc_accuracy_loader(loader, model, "cpu", num_batches=1) == 1.0
    assert calc_accuracy_loader(loader, model, "cpu", num_batches=99) == pytest.approx(4 / 6)
    assert model.training  # the mode is restored
    right, wrong = -math.log(1 / (1 + math.exp(-2))), -math.log(1 / (1 + math.exp(2)))
    loss = calc_loss_batch_classifier(inputs[:2], labels[:2], model, "cpu").item()
    assert loss == pytest.approx(right)
    assert calc_loss_loader_classifier(loader, model, "cpu") == pytest.approx(
        (4 * right + 2 * wrong) / 6)
    assert math.isnan(calc_accuracy_loader(DataLoader([], batch_size=2), model, "cpu"))


# ----- classify_review ---------------------------------------------------------------------------

def test_classify_review_agrees_with_the_dataset_path(tmp_path, tokenizer):
    model = small_classifier()
    texts = ["WINNER!! Claim your prize now", "see you later", "Call 0800 now for a free gift"]
    ds = SpamDataset(write_csv(tmp_path / "t.csv", texts, [1, 0, 1]), tokenizer)
    with torch.no_grad():
        logits = model(torch.stack([ds[i][0] for i in range(3)]))[:, -1, :]  # (B, 2)
    want = ["spam" if c == 1 else "not spam" for c in logits.argmax(-1).tolist()]
    got = [classify_review(t, model, tokenizer, "cpu", max_length=ds.max_length) for t in texts]
    assert got == want


@pytest.mark.parametrize("text", [
    "spam " * 100,  # 100 tokens, longer than the context of 32
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, \u00bfma\u00f1ana? \U0001F600\U0001F389 \u00a3100",
    "\U0001F4F1",  # one emoji: a few byte-level tokens
    "<|endoftext|>",
    " ",
])
@pytest.mark.parametrize("max_length", [None, 8, 32, 1000])
def test_classify_review_answers_odd_texts(text, max_length, tokenizer):
    model = small_classifier()
    assert classify_review(text, model, tokenizer, "cpu", max_length=max_length) in (
        "spam", "not spam")


def test_classify_review_errors_are_clear(tokenizer):
    model = small_classifier()
    for max_length in (None, 8):
        with pytest.raises(ValueError, match="the text is empty"):
            classify_review("", model, tokenizer, "cpu", max_length=max_length)
    with pytest.raises(ValueError, match="max_length must be at least 1"):
        classify_review("hi", model, tokenizer, "cpu", max_length=0)
    with pytest.raises(TypeError, match="needs a text"):
        classify_review(None, model, tokenizer, "cpu")


def test_saved_classifier_loads_back(tmp_path):
    model = small_classifier()
    torch.save(model.state_dict(), tmp_path / "classifier.pth")
    loaded = add_classification_head(GPTModel(SMALL_CFG))
    loaded.load_state_dict(torch.load(tmp_path / "classifier.pth", weights_only=True))
    x = torch.randint(0, 50257, (2, 9))
    assert torch.equal(model.eval()(x), loaded.eval()(x))


# ----- it learns ---------------------------------------------------------------------------------

LEARNING_BAR = 0.75  # chance is 0.50; measured on this machine: about 0.81 (3 seeds: 0.81-0.83)


@pytest.fixture
def one_thread():
    """One CPU thread: the tiny model gains nothing from more, and on a busy 2-core machine two
    threads per process stall each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_classifier_learns_spam_from_the_tiny_checkpoint(spam_path, tmp_path, tokenizer,
                                                         one_thread):
    """The notebook's code and settings (1 trainable block, AdamW 5e-5, wd 0.1, batch 8,
    5 epochs) on the real balanced data, from the tiny random checkpoint."""
    from gpt_download3 import download_and_load_gpt2

    start = time.time()
    df = create_balanced_dataset(read_sms_spam(spam_path))
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    for name, part in zip(("train", "validation", "test"), random_split(df, 0.7, 0.1)):
        part.to_csv(tmp_path / f"{name}.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    train_ds = SpamDataset(tmp_path / "train.csv", tokenizer)
    val_ds = SpamDataset(tmp_path / "validation.csv", tokenizer, max_length=train_ds.max_length)
    test_ds = SpamDataset(tmp_path / "test.csv", tokenizer, max_length=train_ds.max_length)
    train_loader = DataLoader(train_ds, batch_size=8, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(123))
    val_loader = DataLoader(val_ds, batch_size=8)
    test_loader = DataLoader(test_ds, batch_size=8)

    settings, params = download_and_load_gpt2("tiny-test", os.environ["COURSE_MODELS_DIR"])
    torch.manual_seed(123)
    model = load_weights_into_gpt(GPTModel(config_from_hparams(settings, drop_rate=0.0)), params)
    add_classification_head(model, num_classes=2, num_trainable_blocks=1)
    before = calc_accuracy_loader(test_loader, model, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    num_epochs = 5
    train_losses, val_losses, train_accs, val_accs, examples_seen = train_classifier_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs, eval_freq=50, eval_iter=5)
    test_acc = calc_accuracy_loader(test_loader, model, "cpu")
    print(f"tiny checkpoint: test accuracy {before:.1%} before, {test_acc:.1%} after "
          f"{num_epochs} epochs ({time.time() - start:.0f} s)")
    assert len(train_accs) == len(val_accs) == num_epochs
    assert len(train_losses) == len(val_losses) == math.ceil(num_epochs * len(train_loader) / 50)
    assert examples_seen == num_epochs * len(train_loader) * 8
    assert train_losses[-1] < train_losses[0]
    assert test_acc >= LEARNING_BAR
