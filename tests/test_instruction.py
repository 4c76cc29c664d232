"""Tests of notebook 07's data pipeline (previous_chapters.py, section 07_instruction_finetuning):
entry validation, prompt format, split, InstructionDataset, custom_collate_fn (against the
lecture's rule written out independently here), ROUGE-L (against a brute-force LCS), and a short
fine-tuning run of the tiny checkpoint on the real instruction data."""

import itertools
import json
import os
import random
import time

import pytest
import torch

from previous_chapters import (
    GPTModel,
    InstructionDataset,
    calc_loss_loader,
    config_from_hparams,
    custom_collate_fn,
    extract_response,
    format_input,
    load_weights_into_gpt,
    rouge_l_f1,
    split_instruction_data,
    train_model_simple,
    validate_instruction_data,
)

EOT = 50256
TOY = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]


@pytest.fixture(scope="module")
def tokenizer():
    import course_data

    return course_data.get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def data():
    import course_data

    return json.loads(course_data.fetch_data("instruction-data.json").read_text(encoding="utf-8"))


# ----- custom_collate_fn ------------------------------------------------------------------------

def lecture_rule(batch, pad=EOT, ignore=-100, allowed_max_length=None):
    """The lecture's rule, written independently: append one end token, pad with
    torch's pad_sequence, shift by one, then hide every pad-valued target but the first."""
    from torch.nn.utils.rnn import pad_sequence

    rows = pad_sequence([torch.tensor(list(item) + [pad]) for item in batch],
                        batch_first=True, padding_value=pad)  # (B, longest + 1)
    inputs, targets = rows[:, :-1].clone(), rows[:, 1:].clone()
    for row in targets:
        pad_positions = (row == pad).nonzero().flatten()
        row[pad_positions[1:]] = ignore
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


def random_batch(rng, size, max_len, end_with_eot=False):
    """Token lists without 50256 inside (where the lecture's rule is the reference)."""
    batch = [[rng.randrange(EOT) for _ in range(rng.randint(1, max_len))] for _ in range(size)]
    if end_with_eot:
        batch[0].append(EOT)
    return batch


def test_toy_batch_as_in_the_lecture():
    inputs, targets = custom_collate_fn(TOY)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, EOT, EOT, EOT], [7, 8, 9, EOT, EOT]]
    assert targets.tolist() == [[1, 2, 3, 4, EOT], [6, EOT, -100, -100, -100],
                                [8, 9, EOT, -100, -100]]
    ref_inputs, ref_targets = lecture_rule(TOY)
    assert torch.equal(inputs, ref_inputs) and torch.equal(targets, ref_targets)
    assert inputs.dtype == targets.dtype == torch.long


@pytest.mark.parametrize("seed", range(20))
def test_matches_the_lecture_rule_on_random_batches(seed):
    rng = random.Random(seed)
    batch = random_batch(rng, rng.randint(1, 8), 30, end_with_eot=seed % 2 == 0)
    limit = rng.choice([None, 1, 5, 17, 100])
    got = custom_collate_fn(batch, allowed_max_length=limit)
    want = lecture_rule(batch, allowed_max_length=limit)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("seed", range(10))
def test_properties_on_random_batches(seed):
    """Inputs start with the item; unmasked targets are the next input token; exactly one
    end token is kept per row (the first), and everything after it is -100."""
    rng = random.Random(100 + seed)
    batch = random_batch(rng, rng.randint(1, 8), 25)
    inputs, targets = custom_collate_fn(batch)
    longest = max(len(item) for item in batch)
    assert inputs.shape == targets.shape == (len(batch), longest)  # (B, T)
    for item, x, y in zip(batch, inputs.tolist(), targets.tolist()):
        n = len(item)
        assert x[:n] == item and all(t == EOT for t in x[n:])
        assert y[:n - 1] == item[1:] and y[n - 1] == EOT  # the first end token: kept
        assert all(t == -100 for t in y[n:])


def test_batch_of_one():
    inputs, targets = custom_collate_fn([[11, 12, 13]])
    assert inputs.tolist() == [[11, 12, 13]]
    assert targets.tolist() == [[12, 13, EOT]]


def test_all_sequences_of_equal_length():
    inputs, targets = custom_collate_fn([[1, 2, 3], [4, 5, 6]])
    assert inputs.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert targets.tolist() == [[2, 3, EOT], [5, 6, EOT]]  # no padding, nothing masked


def test_a_sequence_that_already_ends_with_end_of_text():
    """Its own end token is its end: kept as a target, and no second one is learnt."""
    inputs, targets = custom_collate_fn([[5, 6, EOT], [7, 8, 9, 10]])
    assert inputs.tolist() == [[5, 6, EOT, EOT], [7, 8, 9, 10]]
    assert targets.tolist() == [[6, EOT, -100, -100], [8, 9, 10, EOT]]
    ref = lecture_rule([[5, 6, EOT], [7, 8, 9, 10]])
    assert torch.equal(targets, ref[1])


def test_end_of_text_inside_a_sequence_is_not_taken_for_padding():
    """The mask goes by position: a 50256 in the middle leaves the real end token visible."""
    inputs, targets = custom_collate_fn([[1, EOT, 2], [3, 4, 5, 6, 7]])
    assert targets.tolist()[0] == [EOT, 2, EOT, -100, -100]


def test_the_first_end_of_text_target_is_never_masked():
    rng = random.Random(7)
    for _ in range(50):
        batch = random_batch(rng, rng.randint(1, 6), 12, end_with_eot=rng.random() < 0.5)
        _, targets = custom_collate_fn(batch)
        for row in targets:
            eot_positions = (row == EOT).nonzero().flatten()
            masked = (row == -100).nonzero().flatten()
            assert len(eot_positions) >= 1
            if len(masked):
                assert eot_positions[0] < masked[0]  # the first end token comes before any mask


def test_truncation_shorter_than_the_longest_sequence():
    inputs, targets = custom_collate_fn(TOY, allowed_max_length=2)
    assert inputs.tolist() == [[0, 1], [5, 6], [7, 8]]
    assert targets.tolist() == [[1, 2], [6, EOT], [8, 9]]
    full = custom_collate_fn(TOY)
    for limit in (1, 3, 4):
        cut = custom_collate_fn(TOY, allowed_max_length=limit)
        assert torch.equal(cut[0], full[0][:, :limit]) and torch.equal(cut[1], full[1][:, :limit])
    longer = custom_collate_fn(TOY, allowed_max_length=1024)
    assert torch.equal(longer[0], full[0]) and torch.equal(longer[1], full[1])


def test_other_pad_and_ignore_values():
    inputs, targets = custom_collate_fn([[1, 2, 3], [4]], pad_token_id=0, ignore_index=-1)
    assert inputs.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert targets.tolist() == [[2, 3, 0], [0, -1, -1]]


DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])  # meta: no memory


@pytest.mark.parametrize("device", DEVICES)
def test_device_placement(device):
    inputs, targets = custom_collate_fn(TOY, device=device)
    assert inputs.device.type == targets.device.type == device
    assert inputs.shape == targets.shape == (3, 5)


def test_empty_batch_or_sequence_is_refused_clearly():
    with pytest.raises(ValueError, match="non-empty"):
        custom_collate_fn([])
    with pytest.raises(ValueError, match="non-empty"):
        custom_collate_fn([[1, 2], []])


def test_cross_entropy_ignores_the_masked_targets():
    """torch's cross-entropy with the collated targets equals the mean over the kept positions,
    computed by hand from log-softmax."""
    torch.manual_seed(123)
    inputs, targets = custom_collate_fn(TOY)
    logits = torch.randn(*inputs.shape, 50257)  # (B, T, V)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    keep = targets != -100
    log_probs = torch.log_softmax(logits, dim=-1)[keep]  # (kept positions, V)
    by_hand = -log_probs.gather(1, targets[keep].unsqueeze(1)).mean()
    assert keep.sum() == 5 + 2 + 3  # each item's tokens - 1, plus its end token
    assert torch.allclose(loss, by_hand, atol=1e-5)


# ----- data: validation, format, split, dataset ------------------------------------------------

def test_the_real_data_is_well_formed(data):
    assert validate_instruction_data(data) is data
    assert len(data) == 1100


@pytest.mark.parametrize("bad,problem", [
    ({"instruction": "x", "input": ""}, "'output' is missing"),
    ({"input": "", "output": "y"}, "'instruction' is missing"),
    ({"instruction": "x", "input": None, "output": "y"}, "'input' should be a str, not NoneType"),
    ({"instruction": "x", "input": "", "output": 3}, "'output' should be a str, not int"),
    ({"instruction": "  ", "input": "", "output": "y"}, "'instruction' is empty"),
    (["x", "", "y"], "should be a dict, not list"),
])
def test_a_malformed_entry_is_reported_with_its_index(data, bad, problem):
    broken = data[:17] + [bad] + data[17:30]
    with pytest.raises(ValueError, match=r"^entry 17: ") as info:
        validate_instruction_data(broken)
    assert problem in str(info.value)


def test_several_malformed_entries_are_all_named(data):
    broken = [dict(e) for e in data[:10]]
    del broken[3]["output"]
    broken[8]["input"] = 1
    with pytest.raises(ValueError) as info:
        validate_instruction_data(broken)
    assert "entry 3:" in str(info.value) and "entry 8:" in str(info.value)
    with pytest.raises(ValueError, match="must be a list"):
        validate_instruction_data({"instruction": "x"})


def test_the_dataset_reports_a_malformed_entry_not_a_key_error(data, tokenizer):
    broken = data[:5] + [{"instruction": "x", "output": "y"}]
    with pytest.raises(ValueError, match="entry 5: the key 'input' is missing"):
        InstructionDataset(broken, tokenizer)


def test_format_input_with_and_without_input():
    preamble = ("Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.")
    with_input = {"instruction": "Correct the spelling.", "input": "Ocassion", "output": "-"}
    assert format_input(with_input) == (
        f"{preamble}\n\n### Instruction:\nCorrect the spelling.\n\n### Input:\nOcassion")
    without = {"instruction": "Name a colour.", "input": "", "output": "-"}
    assert format_input(without) == f"{preamble}\n\n### Instruction:\nName a colour."


def test_the_split_is_85_5_10_and_fixed(data):
    train, val, test = split_instruction_data(data)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert train + test + val == data  # file order: train, then test, then validation
    assert split_instruction_data(data)[2] == test == data[935:1045]
    assert split_instruction_data(list(range(20))) == (list(range(17)), [19], [17, 18])


def test_instruction_dataset_tokenises_prompt_and_response(data, tokenizer):
    dataset = InstructionDataset(data[:4], tokenizer)
    assert len(dataset) == 4
    for entry, ids in zip(data[:4], dataset):
        text = format_input(entry) + "\n\n### Response:\n" + entry["output"]
        assert ids == tokenizer.encode(text)
        assert tokenizer.decode(ids) == text


def test_extract_response():
    prompt = "### Instruction:\nSay hi."
    assert extract_response(prompt + "\n\n### Response:\nHi there. ", prompt) == "Hi there."
    assert extract_response(prompt + " Hello", prompt) == "Hello"  # no header: all of it
    assert extract_response("### Response:\nA\n### Response:\nB", "") == "A\n### Response:\nB"


# ----- ROUGE-L ----------------------------------------------------------------------------------

def brute_force_lcs(a, b):
    """Length of the longest common subsequence, by trying every subsequence of a (tiny a)."""
    for k in range(len(a), 0, -1):
        for picked in itertools.combinations(a, k):
            it = iter(b)
            if all(word in it for word in picked):  # `in` on an iterator consumes it: in order
                return k
    return 0


@pytest.mark.parametrize("seed", range(30))
def test_rouge_l_against_a_brute_force_lcs(seed):
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat"]
    a = [rng.choice(words) for _ in range(rng.randint(1, 8))]
    b = [rng.choice(words) for _ in range(rng.randint(1, 8))]
    lcs = brute_force_lcs(a, b)
    want = 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))  # F1 of lcs/len(a) and lcs/len(b)
    assert rouge_l_f1(" ".join(a), " ".join(b)) == pytest.approx(want)
    assert rouge_l_f1(" ".join(b), " ".join(a)) == pytest.approx(want)


def test_rouge_l_known_values():
    assert rouge_l_f1("The meal is cooked.", "the MEAL is cooked") == 1.0  # case, punctuation
    assert rouge_l_f1("Paris", "Rome") == 0.0
    assert rouge_l_f1("", "Rome") == 0.0 and rouge_l_f1("...", "Rome") == 0.0
    # "a b c d" vs "a c e": LCS "a c" = 2; P = 2/4, R = 2/3, F1 = 4/7
    assert rouge_l_f1("a b c d", "a c e") == pytest.approx(4 / 7)


# ----- learning ---------------------------------------------------------------------------------

def test_instruction_tuning_learns_on_real_data(data, tokenizer):
    """From the tiny random checkpoint, a short run of train_model_simple on 120 real training
    entries (15 steps, lr 5e-3: a random model needs bigger steps than GPT-2's 5e-5) must bring
    the loss on all 55 validation entries at least 2 nats below its start (about 10.9)."""
    import functools

    from torch.utils.data import DataLoader

    from gpt_download3 import download_and_load_gpt2

    start = time.time()
    settings, params = download_and_load_gpt2("tiny-test", os.environ["COURSE_MODELS_DIR"])
    cfg = config_from_hparams(settings, drop_rate=0.0)
    torch.manual_seed(123)
    model = load_weights_into_gpt(GPTModel(cfg), params)
    train_data, val_data, _ = split_instruction_data(data)
    collate = functools.partial(custom_collate_fn, allowed_max_length=1024)
    train_loader = DataLoader(InstructionDataset(train_data[:120], tokenizer), batch_size=8,
                              shuffle=True, drop_last=True, collate_fn=collate)
    val_loader = DataLoader(InstructionDataset(val_data, tokenizer), batch_size=8,
                            collate_fn=collate)
    model.eval()
    with torch.no_grad():
        before = calc_loss_loader(val_loader, model, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
    train_losses, val_losses, _ = train_model_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=1, eval_freq=100,
        eval_iter=1, start_context=format_input(val_data[0]), tokenizer=tokenizer)
    model.eval()
    with torch.no_grad():
        after = calc_loss_loader(val_loader, model, "cpu")
    print(f"\nvalidation loss {before:.3f} -> {after:.3f} in {len(train_loader)} steps, "
          f"{time.time() - start:.1f} s")
    assert len(train_losses) == 1  # evaluated once, after the first step
    assert before > 10.5  # a random model: about ln(50257) = 10.8
    assert after < before - 2.0
