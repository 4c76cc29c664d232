"""Tests of the pretraining script (issue 16): pretraining_data.py, pretraining.py,
pretraining_checkpoints.py, scripts/pretrain.py.

Oracles: tiktoken on the whole text (chunked tokenization), PyTorch's own LinearLR +
CosineAnnealingLR (the schedule), a single-process run on the concatenated batch (DDP on two gloo
ranks, started by torchrun on 127.0.0.1, one machine or two "nodes"), one large batch (gradient
accumulation), an uninterrupted run (stop and resume). Tiny models: emb_dim 32, 2 layers,
context 16.
"""

import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import course_data
import pretraining
import pretraining_data
from pretraining_checkpoints import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from previous_chapters import GPTModel, calc_loss_batch

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "pretraining_worker.py"
TINY_ARGS = ["--emb-dim", "32", "--n-layers", "2", "--n-heads", "2", "--context-length", "16",
             "--warmup-steps", "1", "--lr", "1e-3", "--min-lr", "1e-4", "--eval-batches", "2",
             "--sample-tokens", "0", "--log-every", "100"]
TIMEOUT = 120  # seconds any subprocess of these tests may take


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The Verdict cut into three documents, and its prepared train.bin / val.bin."""
    text = course_data.fetch_data("the-verdict.txt").read_text(encoding="utf-8")
    folder = tmp_path_factory.mktemp("corpus")
    third = len(text) // 3
    docs = [text[:third], text[third:2 * third], "Ünïcödé – “quotes” <|endoftext|> 🙂\n" * 3]
    for i, doc in enumerate(docs):
        (folder / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    data_dir = tmp_path_factory.mktemp("data")
    pretraining_data.prepare_corpus(folder, data_dir, val_fraction=0.1, progress=False)
    return docs, data_dir


def run_single(data_dir, out_dir, *extra):
    """scripts/pretrain.py's training in this process, on one thread (tiny matrices: two threads
    only wait for each other); returns (model, log rows)."""
    threads = torch.get_num_threads()
    try:
        return pretraining.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir),
                                 *TINY_ARGS, "--threads", "1", *map(str, extra)])
    finally:
        torch.set_num_threads(threads)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bounded(commands, cwd):
    """Start every command (each in its own process group), wait at most TIMEOUT seconds for all,
    then kill whatever still runs; assert that each exited with 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for c in commands]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


# ----- data preparation ------------------------------------------------------------------------

def test_prepared_ids_are_tiktokens_of_each_document_with_endoftext_between(corpus, tmp_path,
                                                                         monkeypatch):
    docs, data_dir = corpus
    tok = course_data.get_gpt2_tokenizer()
    expected = []
    for i, doc in enumerate(docs):
        expected += ([tok.eot_token] if i else []) + tok.encode_ordinary(doc)
    ids = np.concatenate([np.fromfile(data_dir / f, dtype="<u2") for f in ("train.bin", "val.bin")])
    assert ids.tolist() == expected
    assert tok.decode(ids.tolist()) == "<|endoftext|>".join(docs)  # the round trip
    assert len(np.memmap(data_dir / "val.bin", dtype="<u2")) == round(len(expected) * 0.1)
    # read in chunks of 64 bytes (cut after newlines), the ids are the same
    monkeypatch.setattr(pretraining_data, "CHUNK_BYTES", 64)
    pretraining_data.prepare_corpus(data_dir.parent / "corpus0", tmp_path, progress=False)
    again = np.concatenate([np.fromfile(tmp_path / f, dtype="<u2") for f in ("train.bin",
                                                                            "val.bin")])
    assert again.tolist() == expected


def test_prepare_refuses_bad_input_by_name_and_leaves_no_files(tmp_path):
    folder, out = tmp_path / "texts", tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ValueError, match="holds no .txt files"):
        pretraining_data.prepare_corpus(folder, out, progress=False)
    (folder / "a.txt").write_text("Fine text.\n" * 50, encoding="utf-8")
    (folder / "b.txt").write_bytes(b"Caf\xe9 in Latin-1\n")
    with pytest.raises(ValueError, match=r"b\.txt is not UTF-8 text: byte 0xe9 at offset 3"):
        pretraining_data.prepare_corpus(folder, out, progress=False)
    assert list(out.iterdir()) == []  # no partial train.bin

    class BigVocabulary:  # a tokenizer of more ids than uint16 holds (as tiktoken's cl100k)
        n_vocab, eot_token = 100277, 100257

    with pytest.raises(ValueError, match="100,277 ids, more than uint16 holds"):
        pretraining_data.prepare_corpus(folder, out, tokenizer=BigVocabulary(), progress=False)


def test_windows_are_a_seeded_permutation_per_epoch(corpus):
    _, data_dir = corpus
    data = pretraining_data.TokenWindows(data_dir / "train.bin", 16, seed=1)
    n = len(data)
    starts = [data.window_start(i) for i in range(2 * n)]
    assert sorted(starts[:n]) == sorted(starts[n:]) == [16 * k for k in range(n)]
    assert starts[:n] != starts[n:]  # another order in the second epoch
    x, y = data.batch(5, 3)
    assert x.shape == y.shape == (3, 16) and torch.equal(x[:, 1:], y[:, :-1])


# ----- the loop's pieces ----------------------------------------------------------------------

def test_lr_schedule_equals_the_formula_and_torchs_schedulers():
    peak, floor, initial, warmup, total = 6e-4, 6e-5, 1e-5, 10, 110
    lr = [pretraining.lr_at(s, peak, floor, warmup, total, initial) for s in range(total + 1)]
    assert lr[0] == initial
    assert lr[warmup // 2] == pytest.approx(initial + (peak - initial) / 2, abs=1e-15)
    assert lr[warmup] == pytest.approx(peak, abs=1e-15)  # warm-up end
    assert lr[warmup + (total - warmup) // 2] == pytest.approx((peak + floor) / 2, abs=1e-15)
    assert lr[total] == pytest.approx(floor, abs=1e-15)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, initial / peak, 1.0, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=floor)],
        milestones=[warmup])
    theirs = []
    for _ in range(total + 1):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lr, theirs, rtol=1e-9, atol=1e-12)


def test_weight_decay_only_on_matrices_each_parameter_once():
    torch.manual_seed(0)
    model = GPTModel({"vocab_size": 50, "context_length": 8, "emb_dim": 8, "n_heads": 2,
                      "n_layers": 1, "drop_rate": 0.0, "qkv_bias": True})
    model.out_head.weight = model.tok_emb.weight  # tied, as GPT-2's weights come
    decay, no_decay = pretraining.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2
                                                               for p in no_decay["params"])
    ids = sorted(id(p) for p in decay["params"] + no_decay["params"])
    assert ids == sorted({id(p) for p in model.parameters()})


def test_batch_loss_is_notebook_04s_loss(corpus):
    torch.manual_seed(0)
    model = GPTModel({"vocab_size": 50257, "context_length": 16, "emb_dim": 32, "n_heads": 2,
                      "n_layers": 2, "drop_rate": 0.0, "qkv_bias": True})
    x, y = pretraining_data.TokenWindows(corpus[1] / "train.bin", 16).batch(0, 2)
    assert pretraining.batch_loss(model, x, y).item() == calc_loss_batch(x, y, model, "cpu").item()


# ----- equal runs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_batch_run(corpus, tmp_path_factory):
    """3 steps of 4 rows, one micro-step: the reference for accumulation and DDP."""
    model, _ = run_single(corpus[1], tmp_path_factory.mktemp("big"), "--batch-size", 4,
                          "--accum", 2, "--max-steps", 3)
    return model.state_dict()


def assert_same_params(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_gradient_accumulation_equals_one_large_batch(corpus, tmp_path, big_batch_run):
    accumulated, _ = run_single(corpus[1], tmp_path, "--batch-size", 1, "--accum", 8,
                                "--max-steps", 3)
    assert_same_params(accumulated.state_dict(), big_batch_run, atol=1e-5)
    # the reference itself is 2 micro-steps of 4: check it against one step of 8 rows too
    one, _ = run_single(corpus[1], tmp_path / "one", "--batch-size", 8, "--max-steps", 3)
    assert_same_params(one.state_dict(), big_batch_run, atol=1e-5)


def ddp_args(data_dir, out_dir):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *TINY_ARGS,
            "--batch-size", "2", "--accum", "2", "--max-steps", "3", "--threads", "1"]


def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(corpus, tmp_path,
                                                                    big_batch_run):
    port = free_port()
    run_bounded([[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                  "--master_addr=127.0.0.1", f"--master_port={port}", str(WORKER),
                  *ddp_args(corpus[1], tmp_path)]], cwd=tmp_path)
    r0, r1 = (torch.load(tmp_path / f"params_rank{r}.pt") for r in (0, 1))
    assert_same_params(r0, r1, atol=0)  # identical on both ranks
    assert_same_params(r0, big_batch_run, atol=1e-5)


def test_two_torchrun_nodes_on_one_machine_equal_one_process(corpus, tmp_path, big_batch_run):
    port = free_port()
    agents = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=test",
               f"--rdzv_conf=is_host={int(node == 0)},join_timeout=60",
               str(WORKER), *ddp_args(corpus[1], tmp_path)] for node in (0, 1)]
    run_bounded(agents, cwd=tmp_path)
    r0, r1 = (torch.load(tmp_path / f"params_rank{r}.pt") for r in (0, 1))
    assert_same_params(r0, r1, atol=0)
    assert_same_params(r0, big_batch_run, atol=1e-5)


# ----- stop, resume, and damaged checkpoints ----------------------------------------------------

def test_stopped_process_resumes_exactly(corpus, tmp_path):
    """With dropout on, so the random states must be restored too; each run its own process."""
    script = [sys.executable, str(ROOT / "scripts" / "pretrain.py"), "--data-dir", str(corpus[1]),
              *TINY_ARGS, "--dropout", "0.1", "--batch-size", "2", "--accum", "2",
              "--max-steps", "6", "--eval-every", "3", "--ckpt-every", "2", "--threads", "1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_bounded([script + ["--out-dir", str(whole)],
                 script + ["--out-dir", str(parts), "--stop-after", "5"]], cwd=tmp_path)
    assert [p.name for p in list_checkpoints(parts / "checkpoints")] == [
        "step_00000002.pt", "step_00000004.pt"]  # step 5 was done, then lost
    (out,) = run_bounded([script + ["--out-dir", str(parts), "--resume"]], cwd=tmp_path)
    assert "Resuming from" in out and "step_00000004.pt (step 4)" in out
    assert (whole / "log.csv").read_text().splitlines()[0] == (
        parts / "log.csv").read_text().splitlines()[0]
    cols = slice(0, 6)  # step, tokens, lr, train loss, grad norm, val loss: not the timings
    rows = [[line.split(",")[cols] for line in (d / "log.csv").read_text().splitlines()]
            for d in (whole, parts)]
    assert rows[0] == rows[1] and len(rows[0]) == 7
    a, b = (load_checkpoint(d / "checkpoints" / "step_00000006.pt") for d in (whole, parts))
    assert_same_params(a["model"], b["model"], atol=0)


def test_truncated_or_foreign_checkpoint_is_refused_by_name_and_the_previous_one_used(
        corpus, tmp_path):
    _, rows = run_single(corpus[1], tmp_path, "--batch-size", 2, "--max-steps", 3,
                         "--ckpt-every", 1, "--keep", 2)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002.pt", "step_00000003.pt"]  # keep 2
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut short on disk
    torch.save({"model": {}}, tmp_path / "checkpoints" / "step_00000009.pt")  # another program's
    with pytest.raises(CheckpointError, match=r"step_00000003\.pt is not a readable checkpoint"):
        load_checkpoint(newest)
    messages = []
    path, state = latest_checkpoint(tmp_path / "checkpoints", log=messages.append)
    assert path == ckpts[0] and state["step"] == 2
    assert "step_00000009.pt is not a checkpoint of scripts/pretrain.py" in messages[0]
    assert "step_00000003.pt is not a readable checkpoint" in messages[1]
    assert messages[2].endswith("step_00000002.pt")
    # the run resumed from there repeats step 3 as before
    _, again = run_single(corpus[1], tmp_path, "--batch-size", 2, "--max-steps", 3, "--resume")
    assert again[-1]["step"] == 3 and again[-1]["train_loss"] == rows[-1]["train_loss"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    good = save_checkpoint({"step": 1, "x": torch.ones(3)}, tmp_path)

    def full_disk(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"step": 2, "x": torch.zeros(3)}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]
    assert math.isclose(torch.load(good)["x"].sum().item(), 3.0)


def test_continued_pretraining_from_openais_files_keeps_the_tied_head(corpus, tmp_path):
    """--init openai loads the tiny checkpoint in OpenAI's layout (conftest.py) by gpt_download3;
    step 1's loss is the loaded model's loss on the first batch; the tie survives a resume."""
    from gpt_download3 import download_and_load_gpt2
    from previous_chapters import config_from_hparams, load_weights_into_gpt

    init = ["--init", "openai", "--model", "tiny-test", "--batch-size", 2, "--ckpt-every", 1]
    _, rows = run_single(corpus[1], tmp_path, *init, "--max-steps", 1)
    settings, params = download_and_load_gpt2("tiny-test", os.environ["COURSE_MODELS_DIR"])
    reference = load_weights_into_gpt(GPTModel(config_from_hparams(settings)), params)
    x, y = pretraining_data.TokenWindows(corpus[1] / "train.bin", 16, seed=123).batch(0, 2)
    assert rows[0]["train_loss"] == pytest.approx(calc_loss_batch(x, y, reference, "cpu").item(),
                                                  abs=1e-6)
    model, _ = run_single(corpus[1], tmp_path, *init, "--max-steps", 2, "--resume")
    assert load_checkpoint(tmp_path / "checkpoints" / "step_00000002.pt")["tied"]
    assert model.out_head.weight is model.tok_emb.weight
