"""gpt_download3: the numpy checkpoint reader against TensorFlow's, its errors on damaged files,
and the downloads against a real HTTP server on 127.0.0.1 (404/500 primary, cut connections)."""

import hashlib
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import gpt_download3 as g
from course_data import DownloadError

DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="module")
def tiny_dir():
    """The tiny checkpoint conftest.py wrote with TensorFlow (OpenAI's layout and file names)."""
    folder = Path(os.environ["COURSE_MODELS_DIR"]) / "tiny-test"
    if not (folder / DATA).is_file():
        from tests.tiny_checkpoint import write_tiny_checkpoint

        write_tiny_checkpoint(os.environ["COURSE_MODELS_DIR"], "tiny-test")
    return folder


@pytest.fixture
def copy_of_tiny(tiny_dir, tmp_path):
    """A private copy at tmp_path/models/tiny-copy, free to damage."""
    dest = tmp_path / "models" / "tiny-copy"
    shutil.copytree(tiny_dir, dest)
    return dest


def test_numpy_reader_matches_tensorflow_bit_for_bit(tiny_dir):
    tf = pytest.importorskip("tensorflow")
    prefix = str(tiny_dir / "model.ckpt")
    ours = g.read_tf_checkpoint(prefix)
    theirs = dict(tf.train.list_variables(prefix))
    assert sorted(ours) == sorted(theirs) and len(ours) == 4 + 12 * 2
    reader = tf.train.load_checkpoint(prefix)
    for name, array in ours.items():
        expected = reader.get_tensor(name)
        assert list(array.shape) == theirs[name] and array.dtype == expected.dtype, name
        assert array.tobytes() == expected.tobytes(), name


def test_reader_handles_other_dtypes_and_shapes(tmp_path):
    """Scalars, empty tensors and non-float dtypes, written by TensorFlow and read back."""
    from tests.tiny_checkpoint import write_openai_checkpoint

    rng = np.random.default_rng(0)
    tensors = {"a/scalar": np.float64(3.25), "b/empty": np.zeros((0, 3), np.float32),
               "c/int": rng.integers(-9, 9, (4, 5)).astype(np.int64),
               "d/half": rng.standard_normal(7).astype(np.float16),
               "e/bool": np.array([True, False, True])}
    write_openai_checkpoint(tmp_path, {}, tensors)
    got = g.read_tf_checkpoint(str(tmp_path / "model.ckpt"), list(tensors))
    for name, want in tensors.items():
        want = np.asarray(want)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert np.array_equal(got[name], want), name


def test_unsupported_dtype_is_a_clear_error(tmp_path):
    from tests.tiny_checkpoint import write_openai_checkpoint

    write_openai_checkpoint(tmp_path, {}, {"s": np.array([b"text"]), "x": np.ones(2, np.float32)})
    with pytest.raises(g.CheckpointError, match="tensor s has TensorFlow dtype string"):
        g.read_tf_checkpoint(str(tmp_path / "model.ckpt"))
    assert g.read_tf_checkpoint(str(tmp_path / "model.ckpt"), ["x"])["x"].tolist() == [1, 1]


def _entry_at_middle(folder):
    _, entries = g.read_tf_checkpoint_index(str(folder / "model.ckpt"))
    return max(entries.items(), key=lambda kv: kv[1]["size"])  # the token embedding


def test_flipped_byte_in_shard_names_tensor_and_file(copy_of_tiny):
    name, entry = _entry_at_middle(copy_of_tiny)
    path = copy_of_tiny / DATA
    data = bytearray(path.read_bytes())
    data[entry["offset"] + entry["size"] // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(g.CheckpointError, match=f"tensor {name} in {DATA}: its CRC32C") as err:
        g.download_and_load_gpt2("tiny-copy", copy_of_tiny.parent)
    assert "corrupted" in str(err.value) and "download it again" in str(err.value)
    tf = pytest.importorskip("tensorflow")  # the oracle agrees that the file is damaged
    with pytest.raises(Exception, match="(?i)checksum"):
        tf.train.load_checkpoint(str(copy_of_tiny / "model.ckpt")).get_tensor(name)


def test_truncated_shard_names_tensor_and_file(copy_of_tiny):
    path = copy_of_tiny / DATA
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(g.CheckpointError, match=f"of {DATA}, but the file has only "
                                                f"{size - 1000:,} bytes: it is truncated"):
        g.download_and_load_gpt2("tiny-copy", copy_of_tiny.parent)


def test_damaged_index_is_detected(copy_of_tiny):
    path = copy_of_tiny / "model.ckpt.index"
    data = bytearray(path.read_bytes())
    data[20] ^= 0x40  # inside the first data block
    path.write_bytes(bytes(data))
    with pytest.raises(g.CheckpointError, match="model.ckpt.index: a block's CRC32C"):
        g.download_and_load_gpt2("tiny-copy", copy_of_tiny.parent)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(g.CheckpointError, match="not a TensorFlow checkpoint index"):
        g.download_and_load_gpt2("tiny-copy", copy_of_tiny.parent)


def test_missing_files_are_named_with_where_to_get_them(copy_of_tiny):
    (copy_of_tiny / "model.ckpt.index").unlink()
    (copy_of_tiny / "vocab.bpe").unlink()
    with pytest.raises(g.CheckpointError) as err:
        g.download_and_load_gpt2("tiny-copy", copy_of_tiny.parent)
    msg = str(err.value)
    assert "lacks model.ckpt.index, vocab.bpe" in msg
    assert "xhlulu/openai-gpt2-weights" in msg and "openaipublic.blob.core.windows.net" in msg


def test_unknown_size_lists_the_valid_ones(tmp_path):
    with pytest.raises(g.CheckpointError, match="Unknown GPT-2 model size '125M': choose one "
                                                "of 124M, 355M, 774M, 1558M"):
        g.download_and_load_gpt2("125M", tmp_path)


def test_hparams_that_do_not_match_the_checkpoint(copy_of_tiny):
    hp = copy_of_tiny / "hparams.json"
    hp.write_text(json.dumps({**json.loads(hp.read_text()), "n_embd": 128}))
    with pytest.raises(g.CheckpointError, match=r"does not match its hparams.json .* model/wpe "
                                                r"is \(1024, 64\), hparams.json implies"):
        g.download_and_load_gpt2("tiny-copy", copy_of_tiny.parent)
    hp.write_text(json.dumps({"n_vocab": 50257}))
    with pytest.raises(g.CheckpointError, match="missing or wrong"):
        g.download_and_load_gpt2("tiny-copy", copy_of_tiny.parent)


def test_checkpoint_of_another_family_is_refused(tmp_path, tiny_dir):
    from tests.tiny_checkpoint import write_openai_checkpoint

    folder = write_openai_checkpoint(
        tmp_path / "bert", json.loads((tiny_dir / "hparams.json").read_text()),
        {"bert/embeddings/word_embeddings": np.zeros((10, 4), np.float32)})
    assert sorted(p.name for p in folder.iterdir()) == sorted(g.CHECKPOINT_FILES)
    with pytest.raises(g.CheckpointError, match="not one of OpenAI's GPT-2 checkpoints: it has "
                                                "no variable 'model/wte'.*bert/embeddings"):
        g.download_and_load_gpt2("bert", tmp_path)


def test_loading_primes_tiktokens_cache(tiny_dir, tmp_path, monkeypatch):
    from course_data import TIKTOKEN_GPT2_FILES

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    g.download_and_load_gpt2("tiny-test", tiny_dir.parent)
    for name, (url, _) in TIKTOKEN_GPT2_FILES.items():
        cached = tmp_path / "cache" / hashlib.sha1(url.encode()).hexdigest()
        assert cached.read_bytes() == (tiny_dir / name).read_bytes()


def test_published_data_sizes_follow_from_the_architecture():
    for size, files in g.PUBLISHED_SIZES.items():
        assert 4 * g.count_gpt2_params(g.GPT2_HPARAMS[size]) == files[DATA]
    assert g.count_gpt2_params(g.GPT2_HPARAMS["124M"]) == 124_439_808


def test_urls_are_joined_as_urls(monkeypatch):
    monkeypatch.delenv(g.MIRRORS_ENV, raising=False)
    assert g.gpt2_file_urls("124M", "model.ckpt.index") == [
        "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/model.ckpt.index",
        "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/124M/model.ckpt.index"]
    monkeypatch.setenv(g.MIRRORS_ENV, "http://a.example/x/, http://b.example")
    assert g.gpt2_file_urls("355M", "vocab.bpe")[:2] == ["http://a.example/x/355M/vocab.bpe",
                                                         "http://b.example/355M/vocab.bpe"]


# ----- downloads against a local HTTP server ------------------------------------------------

class FakeStorage(http.server.BaseHTTPRequestHandler):
    """Serves files under /<base>/<size>/<file> with Range support; `modes` maps a base to
    'ok', '404', '500', 'cut-once' (the first answer for the data shard stops halfway) or 'cut'."""

    files: dict = {}
    modes: dict = {}
    log: list = []

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        base, _, rest = self.path.strip("/").partition("/")
        rng = self.headers.get("Range")
        self.log.append((base, rest, rng))
        mode = self.modes.get(base, "404")
        body = self.files.get(rest)
        if mode in ("404", "500") or body is None:
            code = 500 if mode == "500" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = rest.endswith(DATA) and (mode == "cut" or (mode == "cut-once" and not rng))
        self.wfile.write(body[start:start + (len(body) - start) // 2] if cut else body[start:])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def storage(tiny_dir, monkeypatch):
    """A server on 127.0.0.1 holding the tiny checkpoint as the (pretend) size 'tiny-test'."""
    FakeStorage.files = {f"tiny-test/{f}": (tiny_dir / f).read_bytes() for f in g.CHECKPOINT_FILES}
    FakeStorage.modes, FakeStorage.log = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeStorage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # Let the download code treat "tiny-test" like one of OpenAI's sizes, with its true sizes.
    monkeypatch.setattr(g, "MODEL_SIZES", g.MODEL_SIZES + ("tiny-test",))
    monkeypatch.setattr(g, "PUBLISHED_SIZES", {**g.PUBLISHED_SIZES, "tiny-test": {
        f: len(b) for f, b in ((f, FakeStorage.files[f"tiny-test/{f}"]) for f in
                               g.CHECKPOINT_FILES)}})
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield url, FakeStorage
    server.shutdown()
    server.server_close()
    thread.join()


def assert_same_files(folder, tiny_dir):
    for f in g.CHECKPOINT_FILES:
        assert (folder / f).read_bytes() == (tiny_dir / f).read_bytes(), f
    assert not list(folder.glob("*.part"))


@pytest.mark.parametrize("primary", ["404", "500"])
def test_falls_back_to_the_mirror(storage, tiny_dir, tmp_path, primary):
    url, server = storage
    server.modes = {"primary": primary, "mirror": "ok"}
    settings, params = g.download_and_load_gpt2(
        "tiny-test", tmp_path, base_urls=[f"{url}/primary", f"{url}/mirror"])
    assert settings["n_embd"] == 64 and params["wte"].shape == (50257, 64)
    assert_same_files(tmp_path / "tiny-test", tiny_dir)
    tried = [(base, f) for base, f, _ in server.log]
    for f in g.CHECKPOINT_FILES:
        first, second = ("primary", f"tiny-test/{f}"), ("mirror", f"tiny-test/{f}")
        assert tried.index(first) < tried.index(second)


def test_resumes_after_a_cut_connection(storage, tiny_dir, tmp_path):
    url, server = storage
    server.modes = {"primary": "cut-once"}
    g.download_and_load_gpt2("tiny-test", tmp_path, base_urls=[f"{url}/primary"])
    assert_same_files(tmp_path / "tiny-test", tiny_dir)
    ranges = [r for _, f, r in server.log if f.endswith(DATA)]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"


def test_a_failed_download_leaves_no_complete_looking_file(storage, tiny_dir, tmp_path):
    url, server = storage
    server.modes = {"primary": "cut"}
    with pytest.raises(DownloadError, match="(?s)Could not download model.ckpt.data.*xhlulu"):
        g.download_and_load_gpt2("tiny-test", tmp_path, base_urls=[f"{url}/primary"])
    folder = tmp_path / "tiny-test"
    assert not (folder / DATA).exists() and (folder / f"{DATA}.part").stat().st_size > 0
    kept = (folder / f"{DATA}.part").stat().st_size
    server.modes, server.log = {"primary": "ok"}, []
    g.download_and_load_gpt2("tiny-test", tmp_path, base_urls=[f"{url}/primary"])
    assert server.log == [("primary", f"tiny-test/{DATA}", f"bytes={kept}-")]  # only the rest
    assert_same_files(folder, tiny_dir)


def test_a_complete_folder_needs_no_network(storage, tiny_dir, tmp_path):
    url, server = storage
    shutil.copytree(tiny_dir, tmp_path / "tiny-test")
    g.download_and_load_gpt2("tiny-test", tmp_path, base_urls=[f"{url}/primary"])
    assert server.log == []


def test_a_cut_short_file_from_elsewhere_is_resumed(storage, tiny_dir, tmp_path):
    url, server = storage
    folder = tmp_path / "tiny-test"
    shutil.copytree(tiny_dir, folder)
    data = (tiny_dir / DATA).read_bytes()
    (folder / DATA).write_bytes(data[:1_000_000])  # e.g. a browser download that stopped
    server.modes = {"primary": "ok"}
    g.download_and_load_gpt2("tiny-test", tmp_path, base_urls=[f"{url}/primary"])
    assert server.log == [("primary", f"tiny-test/{DATA}", "bytes=1000000-")]
    assert_same_files(folder, tiny_dir)


def test_a_released_size_folder_with_another_models_files(tiny_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_dir, tmp_path / "124M")
    sizes = {f: (tiny_dir / f).stat().st_size for f in g.CHECKPOINT_FILES}
    monkeypatch.setattr(g, "PUBLISHED_SIZES", {**g.PUBLISHED_SIZES, "124M": sizes})
    with pytest.raises(g.CheckpointError, match="but OpenAI's 124M model has .*'n_embd': 768"):
        g.download_and_load_gpt2("124M", tmp_path)


def test_an_index_of_many_blocks(tmp_path):
    """Thousands of long names: TensorFlow spreads the index over several table blocks."""
    tf = pytest.importorskip("tensorflow")
    names = [hashlib.sha256(str(i).encode()).hexdigest() * 2 for i in range(4000)]  # unshared
    values = [np.full(2, i, np.float32) for i in range(4000)]
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "model.ckpt"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=values)
    index = (tmp_path / "model.ckpt.index").read_bytes()
    footer = index[-48:]
    _, pos = g._varint(footer, 0, "")
    _, pos = g._varint(footer, pos, "")
    assert len(list(g._table_block(index, footer[pos:], ""))) >= 2  # two data blocks or more
    got = g.read_tf_checkpoint(str(tmp_path / "model.ckpt"))
    assert list(got) == sorted(names)
    assert all(got[n].tolist() == [i, i] for i, n in enumerate(names))
