"""Tests of notebook 04's helpers (previous_chapters.py, section 04_pretraining.ipynb): the loss,
decoding with temperature and top-k, saving/loading/resuming, and that training learns."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

import course_data
from previous_chapters import (
    GPT_CONFIG_124M,
    GPTModel,
    calc_loss_batch,
    calc_loss_loader,
    create_dataloader_v1,
    fused_cross_entropy,
    generate,
    generate_text_simple,
    text_to_token_ids,
    token_ids_to_text,
    train_model_simple,
)

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_pretraining.ipynb"
# A model small enough for unit tests: a 97-token vocabulary, 16-token context.
TINY = {**GPT_CONFIG_124M, "vocab_size": 97, "context_length": 16, "emb_dim": 32,
        "n_heads": 2, "n_layers": 2, "drop_rate": 0.0}


def tiny_model(seed=123, **changes):
    torch.manual_seed(seed)
    return GPTModel({**TINY, **changes}).eval()


class CharTokenizer:
    """Printable ASCII as token ids 0-96: enough of a tokenizer for the tiny vocabulary."""

    def encode(self, text, allowed_special=()):
        return [ord(c) - 32 for c in text]

    def decode(self, ids):
        return "".join(chr(32 + i) for i in ids)


def token_loader(n_windows, batch_size=2, seed=0, vocab=TINY["vocab_size"], t=8):
    """A loader of fixed random (input, target) windows, not shuffled."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (n_windows, t + 1), generator=g)
    pairs = list(zip(data[:, :-1], data[:, 1:]))
    return torch.utils.data.DataLoader(pairs, batch_size=batch_size, shuffle=False)


@pytest.fixture(scope="module")
def tokenizer():
    return course_data.get_gpt2_tokenizer()


# ----- text <-> ids, the loss --------------------------------------------------------------------

def test_text_to_token_ids_round_trip_matches_tiktoken(tokenizer):
    text = "Every effort moves you<|endoftext|> forward."
    ids = text_to_token_ids(text, tokenizer)
    assert ids.shape == (1, len(tokenizer.encode(text, allowed_special="all")))
    assert ids[0].tolist() == tokenizer.encode(text, allowed_special="all")
    assert token_ids_to_text(ids, tokenizer) == text
    assert token_ids_to_text(ids[0], tokenizer) == text  # (T,) works too
    assert token_ids_to_text(ids[:, :1], tokenizer) == "Every"  # a single token
    with pytest.raises(ValueError, match="one sequence"):
        token_ids_to_text(torch.cat([ids, ids]), tokenizer)


def test_calc_loss_batch_is_mean_negative_log_probability_of_targets():
    model = tiny_model()
    x, y = next(iter(token_loader(2)))
    loss = calc_loss_batch(x, y, model, "cpu")
    # independent: float64 log-softmax, pick the target of every position, average, negate
    with torch.no_grad():
        logp = torch.log_softmax(model(x).double(), dim=-1)  # (B, T, V)
    manual = -logp.gather(-1, y.unsqueeze(-1)).mean()
    assert abs(loss.item() - manual.item()) < 1e-5


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])  # ordinary, confident, extreme logits
def test_fused_cross_entropy_equals_torch_loss_and_gradient(scale):
    """Section 4.8's fused_cross_entropy against the lectures' loss: the oracle is PyTorch's
    F.cross_entropy (log-softmax, NLL, autograd), in float64."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(37, 501, generator=g) * scale
    targets = torch.randint(0, 501, (37,), generator=g)
    targets[::5] = -100  # padding, as notebook 07's collate writes
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.double().requires_grad_()
    ours = fused_cross_entropy(ours_in, targets)
    ref = torch.nn.functional.cross_entropy(ref_in, targets)
    (3.0 * ours).backward()  # a scaled loss scales the gradient
    (3.0 * ref).backward()
    assert torch.isfinite(ours)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(ours_in.grad, ref_in.grad.float(), rtol=1e-4, atol=1e-7)
    assert ours_in.grad[::5].abs().max() == 0  # ignored rows get no gradient
    with torch.no_grad():  # evaluation takes PyTorch's own path
        assert fused_cross_entropy(logits, targets).item() == pytest.approx(ref.item(), rel=1e-5)


def test_fused_cross_entropy_edge_cases():
    logits = torch.randn(4, 10, requires_grad=True)
    loss = fused_cross_entropy(logits, torch.full((4,), -100))
    loss.backward()
    assert torch.isnan(loss) and logits.grad.abs().max() == 0  # as F.cross_entropy: NaN, no push
    loss = fused_cross_entropy(logits, torch.tensor([1, 2, 3, 4]))
    loss.backward(retain_graph=True)
    once = logits.grad.clone()
    loss.backward()  # a second backward through the same graph gives the same gradient again
    torch.testing.assert_close(logits.grad, 2 * once)
    with pytest.raises(ValueError, match="not a token id in 0..9"):
        fused_cross_entropy(logits, torch.tensor([1, 2, 10, 4]))
    with pytest.raises(ValueError, match="flatten them first"):
        fused_cross_entropy(logits.unsqueeze(0), torch.tensor([[1, 2, 3, 4]]))


def test_training_with_the_fused_loss_and_fused_adamw_follows_the_plain_curve():
    """Section 4.8's leaner training step (calc_loss_batch with fused_cross_entropy,
    AdamW(fused=True)) against the lectures' of sections 4.3-4.4 (F.cross_entropy, AdamW's
    default implementation): same losses, same weights."""
    loader = token_loader(8)
    curves, weights = [], []
    for fused in (False, True):
        model = tiny_model().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
        losses = []
        for _ in range(3):
            for x, y in loader:
                optimizer.zero_grad()
                if fused:
                    loss = calc_loss_batch(x, y, model, "cpu")
                else:
                    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        curves.append(losses)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert curves[0][-1] < curves[0][0] - 0.5  # it trains
    assert curves[1] == pytest.approx(curves[0], abs=1e-4)
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=1e-4)


def test_untrained_loss_is_near_log_vocabulary_size():
    model = tiny_model(vocab_size=50257)
    x, y = next(iter(token_loader(4, batch_size=4, vocab=50257)))
    with torch.no_grad():
        loss = calc_loss_batch(x, y, model, "cpu").item()
    assert abs(loss - math.log(50257)) < 0.5, loss


def test_calc_loss_loader_averages_the_first_num_batches():
    model = tiny_model()
    loader = token_loader(8)  # 4 batches
    with torch.no_grad():
        per_batch = [calc_loss_batch(x, y, model, "cpu").item() for x, y in loader]
        assert calc_loss_loader(loader, model, "cpu") == pytest.approx(sum(per_batch) / 4)
        assert calc_loss_loader(loader, model, "cpu", num_batches=2) == pytest.approx(
            sum(per_batch[:2]) / 2)
        assert calc_loss_loader(loader, model, "cpu", num_batches=99) == pytest.approx(
            sum(per_batch) / 4)  # capped at the loader's length
        with pytest.raises(ValueError, match="num_batches"):
            calc_loss_loader(loader, model, "cpu", num_batches=0)
        with pytest.raises(ValueError, match="no batches"):
            calc_loss_loader(token_loader(0), model, "cpu")


def test_too_short_text_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        create_dataloader_v1("Every effort moves you.", batch_size=2, max_length=256, stride=256)


# ----- generate ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_and_prompt():
    model = tiny_model()
    prompt = torch.tensor([[5, 17, 42, 8], [60, 3, 3, 91]])  # (B, T) = (2, 4)
    return model, prompt


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (0.0, 5), (0.5, 1), (1.0, 1),
                                               (50.0, 1)])
def test_generate_greedy_cases_equal_generate_text_simple(model_and_prompt, temperature, top_k):
    model, prompt = model_and_prompt
    greedy = generate_text_simple(model, prompt, max_new_tokens=12, context_size=16)
    torch.manual_seed(0)
    out = generate(model, prompt, 12, 16, temperature=temperature, top_k=top_k)
    assert torch.equal(out, greedy)


def test_generate_samples_like_multinomial_on_scaled_top_k_softmax(model_and_prompt):
    """One step of generate against an independent re-implementation of the recipe."""
    model, prompt = model_and_prompt
    with torch.no_grad():
        logits = model(prompt)[:, -1, :].double()  # (B, V)
    kth = torch.sort(logits, dim=-1, descending=True).values[:, 4:5]  # 5th largest
    probs = torch.softmax(torch.where(logits < kth, float("-inf"), logits) / 0.8, dim=-1)
    torch.manual_seed(0)
    draws = torch.stack([generate(model, prompt, 1, 16, temperature=0.8, top_k=5)[:, -1]
                         for _ in range(400)])  # (400, B)
    for b in range(prompt.shape[0]):
        allowed = set(torch.nonzero(probs[b]).flatten().tolist())
        assert set(draws[:, b].tolist()) <= allowed  # only the top 5 are ever drawn
        freq = torch.bincount(draws[:, b], minlength=TINY["vocab_size"]).double() / 400
        assert (freq - probs[b]).abs().max() < 0.12  # and about as often as softmax says


def test_generate_with_a_seed_is_reproducible(model_and_prompt):
    model, prompt = model_and_prompt
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(generate(model, prompt, 20, 16, temperature=1.5, top_k=50))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_generate_stops_at_eos_id(model_and_prompt):
    model, _ = model_and_prompt
    prompt = torch.tensor([[5, 17, 42, 8]])
    greedy = generate(model, prompt, 10, 16)
    new = greedy[0, 4:].tolist()
    eos = new[3]
    stopped = generate(model, prompt, 10, 16, eos_id=eos)
    first = new.index(eos)  # generation stops there, without appending the eos token
    assert stopped.tolist() == greedy[:, :4 + first].tolist()
    never = generate(model, prompt, 10, 16, eos_id=TINY["vocab_size"] + 1)  # not a token
    assert torch.equal(never, greedy)


def test_generate_crops_a_prompt_longer_than_the_context(model_and_prompt):
    model, _ = model_and_prompt
    long_prompt = torch.arange(40).unsqueeze(0) % TINY["vocab_size"]  # (1, 40) > context 16
    out = generate(model, long_prompt, 6, context_size=16)
    assert out.shape == (1, 46) and torch.equal(out[:, :40], long_prompt)
    cropped = generate(model, long_prompt[:, -16:], 6, context_size=16)
    assert torch.equal(out[:, 40:], cropped[:, 16:])  # only the last 16 tokens mattered


def test_generate_refuses_an_empty_prompt_and_bad_arguments(model_and_prompt, tokenizer):
    model, prompt = model_and_prompt
    with pytest.raises(ValueError, match="empty"):
        generate(model, text_to_token_ids("", tokenizer), 5, 16)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, prompt, 5, 16, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 5, 16, temperature=-1.0)


# ----- saving, loading, resuming -----------------------------------------------------------------

def test_torch_save_and_load_reproduce_the_logits(tmp_path, model_and_prompt):
    model, prompt = model_and_prompt
    torch.save(model.state_dict(), tmp_path / "model.pth")
    loaded = tiny_model(seed=999)  # different random weights until loaded
    with torch.no_grad():
        assert not torch.equal(loaded(prompt), model(prompt))
        loaded.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
        assert torch.equal(loaded(prompt), model(prompt))


def test_safetensors_round_trip_with_tied_weights(tmp_path, model_and_prompt):
    from safetensors.torch import load_model, save_file, save_model

    model, prompt = model_and_prompt
    tied = tiny_model(seed=7)
    tied.out_head.weight = tied.tok_emb.weight  # as GPT-2 (notebook 05)
    with pytest.raises(RuntimeError, match="share memory"):
        save_file(tied.state_dict(), tmp_path / "refused.safetensors")
    save_model(tied, str(tmp_path / "tied.safetensors"))
    fresh = tiny_model(seed=8)
    fresh.out_head.weight = fresh.tok_emb.weight
    load_model(fresh, str(tmp_path / "tied.safetensors"))
    assert fresh.out_head.weight is fresh.tok_emb.weight
    with torch.no_grad():
        assert torch.equal(fresh(prompt), tied(prompt))


def train(model, optimizer, loader, epochs):
    losses, _, _ = train_model_simple(model, loader, loader, optimizer, "cpu", epochs,
                                      eval_freq=1, eval_iter=1, start_context="ab",
                                      tokenizer=CharTokenizer())
    return losses


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def test_resuming_from_the_saved_optimizer_continues_the_same_loss_curve(tmp_path):
    loader = token_loader(6)  # 3 batches per epoch, fixed order; the model has no dropout
    model = tiny_model()
    straight = train(model, adamw(model), loader, epochs=4)

    model = tiny_model()
    optimizer = adamw(model)
    first_half = train(model, optimizer, loader, epochs=2)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
               tmp_path / "checkpoint.pth")
    del model, optimizer
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    model = tiny_model(seed=999)
    model.load_state_dict(checkpoint["model"])
    optimizer = adamw(model)
    optimizer.load_state_dict(checkpoint["optimizer"])
    second_half = train(model, optimizer, loader, epochs=2)
    assert first_half + second_half == straight  # bit for bit

    model = tiny_model(seed=999)
    model.load_state_dict(checkpoint["model"])
    fresh_optimizer = train(model, adamw(model), loader, epochs=2)
    assert first_half + fresh_optimizer != straight  # the optimizer's state matters


# ----- the training loop -------------------------------------------------------------------------

def test_train_model_simple_returns_one_entry_per_evaluation(capsys):
    loader = token_loader(10)  # 5 batches of (2, 8)
    model = tiny_model(drop_rate=0.1)
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, loader, loader, adamw(model), "cpu", num_epochs=2, eval_freq=3, eval_iter=2,
        start_context="ab", tokenizer=CharTokenizer())
    steps = 2 * 5
    evaluated = [s for s in range(steps) if s % 3 == 0]  # steps 0, 3, 6, 9
    assert len(train_losses) == len(val_losses) == len(tokens_seen) == len(evaluated)
    assert tokens_seen == [(s + 1) * 2 * 8 for s in evaluated]
    assert all(math.isfinite(v) for v in train_losses + val_losses)
    samples = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ab")]
    assert len(samples) == 2  # a sample after each epoch
    with pytest.raises(ValueError, match="eval_freq"):
        train_model_simple(model, loader, loader, adamw(model), "cpu", 1, 0, 1, "ab",
                           CharTokenizer())


def test_calc_loss_batch_moves_the_batch_to_the_device():
    """The model lives on the 'meta' device (shapes only): CPU batches must be moved there."""
    model = GPTModel(TINY).to("meta")
    x, y = next(iter(token_loader(2)))
    loss = calc_loss_batch(x, y, model, torch.device("meta"))
    assert loss.device.type == "meta" and loss.shape == ()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")),
    pytest.param("mps", marks=pytest.mark.skipif(
        not torch.backends.mps.is_available(), reason="no MPS device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_training_and_generation_run_on_the_device(device):
    loader = token_loader(4)  # CPU tensors, as create_dataloader_v1 gives
    model = tiny_model().to(device)
    optimizer = adamw(model)
    before = calc_loss_loader(loader, model, device)
    for _ in range(5):
        for x, y in loader:
            optimizer.zero_grad()
            calc_loss_batch(x, y, model, device).backward()
            optimizer.step()
    assert calc_loss_loader(loader, model, device) < before
    out = generate(model, torch.tensor([[1, 2, 3]], device=device), 4, 16, temperature=1.0,
                   top_k=3)
    assert out.device.type == torch.device(device).type and out.shape == (1, 7)


def notebook_code_cells():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_takes_the_device_from_the_settings_cell_only():
    cells = notebook_code_cells()
    assert 'os.environ.get("COURSE_DEVICE")' in cells[1]
    for src in cells[2:]:
        assert not re.search(r"""["'](cuda|mps|cpu)["']|\.cuda\(|\.cpu\(""", src), src[:200]


# ----- training learns, at the notebook's test settings, on the real text -------------------------

def notebook_test_settings(monkeypatch):
    """SETTINGS as the notebook's settings cell defines it under the test suite (COURSE_FAST=1)."""
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    namespace = {}
    exec(notebook_code_cells()[1], namespace)
    return namespace["SETTINGS"]


def test_training_learns_on_the_verdict_at_test_settings(monkeypatch, tokenizer):
    settings = notebook_test_settings(monkeypatch)
    assert settings["num_epochs"] == 1 and settings["text_fraction"] < 1
    cfg = {**GPT_CONFIG_124M, **settings["model"]}
    text = course_data.fetch_data("the-verdict.txt").read_text(encoding="utf-8")
    text = text[:int(settings["text_fraction"] * len(text))]
    split = int(0.9 * len(text))
    ctx = cfg["context_length"]
    torch.manual_seed(123)
    train_loader = create_dataloader_v1(text[:split], batch_size=2, max_length=ctx, stride=ctx,
                                        shuffle=True, drop_last=True)
    val_loader = create_dataloader_v1(text[split:], batch_size=2, max_length=ctx, stride=ctx,
                                      shuffle=False, drop_last=False)
    model = GPTModel(cfg)
    model.eval()
    with torch.no_grad():
        untrained = calc_loss_loader(train_loader, model, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"],
                                  weight_decay=0.1)
    train_model_simple(model, train_loader, val_loader, optimizer, "cpu",
                       settings["num_epochs"], 5, 5, "Every effort moves you", tokenizer)
    model.eval()
    with torch.no_grad():
        trained = calc_loss_loader(train_loader, model, "cpu")
    print(f"training loss on the-verdict.txt: untrained {untrained:.3f}, after one epoch "
          f"({len(train_loader)} steps) {trained:.3f}")
    assert abs(untrained - math.log(50257)) < 0.5
    assert trained < 7.5, f"one epoch took the training loss only to {trained:.3f}"

