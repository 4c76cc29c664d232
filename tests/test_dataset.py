"""GPTDatasetV1's sliding windows and create_dataloader_v1's batches (previous_chapters.py, 01).

The windows are compared with torch's own `Tensor.unfold`, which cuts the same windows in an
independent way: window i is ids[i*stride : i*stride + max_length + 1], its first max_length
tokens the input and its last max_length tokens the target.
"""

import pytest
import torch

import course_data
from previous_chapters import GPTDatasetV1, create_dataloader_v1


@pytest.fixture(scope="module")
def tokenizer():
    return course_data.get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def verdict():
    return course_data.fetch_data("the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def verdict_ids(tokenizer, verdict):
    return tokenizer.encode(verdict)


def stacked(dataset):
    inputs, targets = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(inputs), torch.stack(targets)  # (N_windows, T) each


class WordTokenizer:
    """Each distinct word becomes the next id: 'a b c' -> [0, 1, 2]; readable toy ids."""

    def encode(self, txt, allowed_special=()):
        vocab = {}
        return [vocab.setdefault(w, len(vocab)) for w in txt.split()]


def test_the_verdict_has_5145_tokens(verdict_ids):
    assert len(verdict_ids) == 5145  # as in the book
    assert verdict_ids[:4] == [40, 367, 2885, 1464]  # "I HAD always thought"


@pytest.mark.parametrize("max_length,stride", [(4, 1), (4, 4), (256, 128), (8, 3), (4, 6),
                                               (1024, 1024)])
def test_windows_are_those_unfold_cuts(tokenizer, verdict, verdict_ids, max_length, stride):
    dataset = GPTDatasetV1(verdict, tokenizer, max_length=max_length, stride=stride)
    windows = torch.tensor(verdict_ids).unfold(0, max_length + 1, stride)  # (N, T + 1)
    inputs, targets = stacked(dataset)
    assert len(dataset) == windows.shape[0] == (len(verdict_ids) - max_length - 1) // stride + 1
    assert torch.equal(inputs, windows[:, :-1])
    assert torch.equal(targets, windows[:, 1:])
    assert inputs.dtype == torch.long and inputs.shape == (len(dataset), max_length)


def test_stride_equal_to_max_length_gives_non_overlapping_windows(tokenizer, verdict,
                                                                  verdict_ids):
    dataset = GPTDatasetV1(verdict, tokenizer, max_length=4, stride=4)
    inputs, _ = stacked(dataset)
    assert len(dataset) == 1286
    # laid end to end, the inputs are the text's tokens in order, each exactly once
    assert inputs.flatten().tolist() == verdict_ids[:1286 * 4]


def test_stride_1_starts_a_window_at_every_position(tokenizer, verdict, verdict_ids):
    dataset = GPTDatasetV1(verdict, tokenizer, max_length=4, stride=1)
    inputs, targets = stacked(dataset)
    assert len(dataset) == len(verdict_ids) - 4
    assert inputs[:, 0].tolist() == verdict_ids[:-4]
    assert torch.equal(inputs[1:, :-1], inputs[:-1, 1:])  # neighbours overlap by 3 tokens


def test_targets_are_the_inputs_shifted_by_one(tokenizer, verdict, verdict_ids):
    dataset = GPTDatasetV1(verdict, tokenizer, max_length=16, stride=16)
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert torch.equal(x[1:], y[:-1])
        assert y[-1].item() == verdict_ids[i * 16 + 16]  # the token after the window


def test_the_last_window_ends_within_the_text(tokenizer, verdict, verdict_ids):
    for max_length, stride in [(256, 128), (4, 4), (100, 7)]:
        dataset = GPTDatasetV1(verdict, tokenizer, max_length=max_length, stride=stride)
        last_start = (len(dataset) - 1) * stride
        assert last_start + max_length + 1 <= len(verdict_ids)  # its target fits
        assert last_start + stride + max_length + 1 > len(verdict_ids)  # no room for another
        assert dataset[len(dataset) - 1][1].tolist() == \
            verdict_ids[last_start + 1:last_start + max_length + 1]


def test_a_small_text_pinned_window_by_window():
    text = "a b c d e f g"  # ids 0..6
    dataset = GPTDatasetV1(text, WordTokenizer(), max_length=3, stride=2)
    inputs, targets = stacked(dataset)
    assert inputs.tolist() == [[0, 1, 2], [2, 3, 4]]
    assert targets.tolist() == [[1, 2, 3], [3, 4, 5]]
    # stride 1: every start that leaves room for a target
    inputs, targets = stacked(GPTDatasetV1(text, WordTokenizer(), max_length=3, stride=1))
    assert inputs.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    assert targets[-1].tolist() == [4, 5, 6]


def test_a_small_text_with_gpt2_tokens(tokenizer):
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"
    ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    dataset = GPTDatasetV1(text, tokenizer, max_length=4, stride=4)
    inputs, targets = stacked(dataset)
    assert 50256 in inputs.flatten().tolist()  # <|endoftext|> is allowed, kept as one token
    assert inputs.flatten().tolist() == ids[:len(dataset) * 4]
    assert targets[0].tolist() == ids[1:5]


def test_exactly_max_length_plus_one_tokens_give_one_window():
    dataset = GPTDatasetV1("a b c d e", WordTokenizer(), max_length=4, stride=1)
    assert len(dataset) == 1
    assert [t.tolist() for t in dataset[0]] == [[0, 1, 2, 3], [1, 2, 3, 4]]


@pytest.mark.parametrize("text", ["a b c d", "", "a"])
def test_a_too_short_text_gives_a_clear_error(text):
    with pytest.raises(ValueError, match=r"too few .* max_length=4 .* at least 5 tokens"):
        GPTDatasetV1(text, WordTokenizer(), max_length=4, stride=1)


def test_a_stride_below_one_is_refused():
    with pytest.raises(ValueError, match="stride"):
        GPTDatasetV1("a b c d e f", WordTokenizer(), max_length=2, stride=0)


def test_dataloader_batches_have_shape_batch_by_max_length(verdict):
    loader = create_dataloader_v1(verdict, batch_size=4, max_length=256, stride=128,
                                  shuffle=False)
    batches = list(loader)
    assert len(batches) == 39 // 4  # 39 windows; drop_last drops the last 3
    for x, y in batches:
        assert x.shape == y.shape == (4, 256)  # (B, T)
        assert torch.equal(x[:, 1:], y[:, :-1])
    x0, _ = batches[0]
    assert torch.equal(x0[1, :128], x0[0, 128:])  # stride 128: half of each window overlaps


def test_dataloader_keeps_the_last_short_batch_without_drop_last(verdict):
    loader = create_dataloader_v1(verdict, batch_size=4, max_length=256, stride=128,
                                  shuffle=False, drop_last=False)
    assert [x.shape[0] for x, _ in loader] == [4] * 9 + [3]


def test_dataloader_shuffles_reproducibly_with_a_seed(verdict):
    def first_batch():
        torch.manual_seed(123)
        return next(iter(create_dataloader_v1(verdict, batch_size=8, max_length=4, stride=4)))

    (a, _), (b, _) = first_batch(), first_batch()
    assert torch.equal(a, b)
    unshuffled, _ = next(iter(create_dataloader_v1(verdict, batch_size=8, max_length=4,
                                                   stride=4, shuffle=False)))
    assert not torch.equal(a, unshuffled)


def test_dataloader_with_too_little_text_for_one_batch_says_so():
    with pytest.raises(ValueError, match="fewer than one batch"):
        create_dataloader_v1("Hello, world. " * 30, batch_size=4, max_length=32, stride=32)
