"""Bad input to gpt_download3 and course_data: every mistake a learner can make gets a clear error.

1. A table of the mistakes checked (wrong sizes, folders that are files, damaged checkpoint and
   hparams files, mirror folders with damaged copies, wrong URLs...): each row the exception type
   and the words its message must hold (the problem, the value or file, the fix).
2. A fuzzed sweep (hypothesis; profile "ci" by default, HYPOTHESIS_PROFILE=nightly for more) of
   every public function: random argument types and values; random bytes, truncations and bit
   flips of the tiny checkpoint's index, data and hparams.json files (written by TensorFlow,
   tests/tiny_checkpoint.py); random mirror-folder contents for fetch_data; random arguments to
   download_file against a server on 127.0.0.1. Every call either succeeds, with the right
   result (the arrays TensorFlow wrote, the file whose sha256 is pinned), or raises one of the
   allowed types from the module's own check, never from inside json, struct, numpy or pathlib.
No test uses the network: every URL is on 127.0.0.1 (a server started here or a closed port).
"""

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import traceback
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import course_data
import gpt_download3 as g
from course_data import DownloadError
from tests.test_course_data import _Server, closed_port_url
from tests.tiny_checkpoint import (
    TINY_HPARAMS,
    random_gpt2_tensors,
    write_openai_checkpoint,
    write_openai_checkpoint_raw,
)

DATA = "model.ckpt.data-00000-of-00001"
INDEX = "model.ckpt.index"
# A GPT-2 of 31 KB, written like the tiny one, for the sweep that rewrites the data shard.
SMALL_HPARAMS = {"n_vocab": 100, "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2}
# What a learner's mistake may raise (CheckpointError and UnknownDataFileError are ValueErrors;
# DownloadError, a RuntimeError, only for what the network or a mirror failed to give).
ALLOWED = (ValueError, TypeError, FileNotFoundError, DownloadError)
OUR_MODULES = {Path(g.__file__).resolve(), Path(course_data.__file__).resolve()}


def assert_clean(e: BaseException, call: str):
    """e is an allowed type, raised by gpt_download3's or course_data's own code, with a message."""
    where = traceback.extract_tb(e.__traceback__)[-1]
    detail = "".join(traceback.format_exception(e))
    assert isinstance(e, ALLOWED), f"{call} raised {type(e).__name__} from inside:\n{detail}"
    assert Path(where.filename).resolve() in OUR_MODULES, (
        f"{call} raised {type(e).__name__} from {where.filename}, not from a check:\n{detail}")
    assert len(str(e)) >= 25, f"{call}: a message too short to explain: {e!r}"


def attempt(call: str, fn, *args, **kwargs):
    """(True, result) or (False, error) after checking the error is clean; anything else fails.
    The outcome is recorded (hypothesis.event) for --hypothesis-show-statistics."""
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 (every other type is the failure this sweep looks for)
        assert_clean(e, call)
        _event(f"{call}: {type(e).__name__}")
        return False, e
    _event(f"{call}: ok")
    return True, result


def _event(text):
    if currently_in_test_context():  # inside a hypothesis example (not when debugging one)
        event(text)


# ----- shared set-up: a private copy of the tiny checkpoint, no URL off 127.0.0.1 -------------

class World(SimpleNamespace):
    def __repr__(self):  # a failing example prints its arguments: not 13 MB of arrays
        return "world"


@pytest.fixture(scope="module")
def world():
    """A module-wide sandbox: cwd is a private temporary folder (relative paths a fuzz example
    makes land there), OpenAI's URLs and the data files' URLs point at a closed port on
    127.0.0.1, and `models/tiny-test` is a private copy of the suite's tiny checkpoint."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-downloads-"))
    src = Path(os.environ["COURSE_MODELS_DIR"]) / "tiny-test"
    if not (src / DATA).is_file():
        from tests.tiny_checkpoint import write_tiny_checkpoint

        write_tiny_checkpoint(os.environ["COURSE_MODELS_DIR"], "tiny-test")
    tiny = root / "models" / "tiny-test"
    shutil.copytree(src, tiny)
    small = write_openai_checkpoint(root / "small-models" / "small", SMALL_HPARAMS,
                                    random_gpt2_tensors(SMALL_HPARAMS, seed=7))
    closed = closed_port_url("")
    server = _Server()
    with pytest.MonkeyPatch.context() as mp:
        (root / "cwd" / "sub").mkdir(parents=True)
        mp.chdir(root / "cwd" / "sub")  # "..": still inside root
        mp.setattr(g, "BASE_URLS", (closed,))
        mp.delenv(g.MIRRORS_ENV, raising=False)
        for name, spec in course_data.DATA_FILES.items():
            mp.setitem(course_data.DATA_FILES, name, replace(spec, urls=(f"{closed}/{name}",)))
        yield World(root=root, tiny=tiny, prefix=str(tiny / "model.ckpt"),
                              closed=closed, server=server, mp=mp, small=small,
                              tensors=random_gpt2_tensors(TINY_HPARAMS, seed=123),
                              small_tensors=random_gpt2_tensors(SMALL_HPARAMS, seed=7))
    server.close()
    shutil.rmtree(root, ignore_errors=True)


def scratch(world) -> Path:
    """A new empty folder under the sandbox (hypothesis examples cannot use tmp_path)."""
    return Path(tempfile.mkdtemp(dir=world.root))


def model_folder(world, replaced: dict, source=None) -> Path:
    """A new models folder whose `tiny-x` holds links to the tiny checkpoint's files (or
    `source`'s), except the ones in `replaced` ({file name: bytes}), written as given."""
    models = scratch(world)
    folder = models / "tiny-x"
    folder.mkdir()
    for name in g.CHECKPOINT_FILES:
        if name in replaced:
            (folder / name).write_bytes(replaced[name])
        else:
            (folder / name).symlink_to((source or world.tiny) / name)
    return models


def assert_tiny_params(world, settings, params, hparams=TINY_HPARAMS, tensors=None):
    """The loaded checkpoint is the one TensorFlow wrote: its hparams and every tensor. n_head
    leaves no trace in a checkpoint's shapes (C = H x D whatever H is), so another n_head that
    divides n_embd loads too; for OpenAI's sizes GPT2_HPARAMS pins it."""
    shaped = [k for k in g.HPARAMS_KEYS if k != "n_head"]
    assert {k: settings[k] for k in shaped} == {k: hparams[k] for k in shaped}
    assert settings["n_embd"] % settings["n_head"] == 0
    t = tensors or world.tensors
    assert np.array_equal(params["wte"], t["model/wte"])
    assert np.array_equal(params["wpe"], t["model/wpe"])
    assert np.array_equal(params["g"], t["model/ln_f/g"])
    for i, block in enumerate(params["blocks"]):
        assert np.array_equal(block["attn"]["c_attn"]["w"], t[f"model/h{i}/attn/c_attn/w"][0])
        assert np.array_equal(block["mlp"]["c_proj"]["b"], t[f"model/h{i}/mlp/c_proj/b"])
        assert np.array_equal(block["ln_2"]["g"], t[f"model/h{i}/ln_2/g"])


def _mask(crc: int) -> int:
    """LevelDB's CRC masking (table/format.h): rotate right by 15 bits, add 0xa282ead8."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return google_crc32c.value(data)


def index_blocks(index: bytes):
    """(offset, size) of the index's data blocks and its index block, from the footer."""
    footer = index[-48:]
    _, pos = g._varint(footer, 0, "")
    _, pos = g._varint(footer, pos, "")
    off, pos2 = g._varint(footer, pos, "")
    size, _ = g._varint(footer, pos2, "")
    blocks = [(off, size)]
    for _, handle in g._table_block(index, footer[pos:], ""):
        o, p = g._varint(handle, 0, "")
        s, _ = g._varint(handle, p, "")
        blocks.append((o, s))
    return blocks


def with_fixed_crcs(index: bytes, blocks) -> bytes:
    """The index with each block's stored (masked) CRC32C recomputed: damage the CRC cannot see."""
    data = bytearray(index)
    for off, size in blocks:
        crc = _crc32c(bytes(data[off:off + size + 1]))  # the block and its compression byte
        data[off + size + 1:off + size + 5] = _mask(crc).to_bytes(4, "little")
    return bytes(data)


def test_the_crc_helpers_reproduce_tensorflows_index(world):
    """_mask and with_fixed_crcs agree with TensorFlow's writer (so the fuzz's damage is real)."""
    index = (world.tiny / INDEX).read_bytes()
    assert with_fixed_crcs(index, index_blocks(index)) == index


# ----- 1. the table of mistakes ----------------------------------------------------------------

@pytest.fixture
def ctx(world, tmp_path, monkeypatch):
    """tmp_path, a models folder with a damageable copy (`c.copy("tiny-x", {file: bytes})`)."""
    (tmp_path / "a-file").write_text("not a folder")
    return SimpleNamespace(
        tmp=tmp_path, file=tmp_path / "a-file", w=world, mp=monkeypatch,
        copy=lambda replaced=None: model_folder(world, replaced or {}),
        index=(world.tiny / INDEX).read_bytes(), data=(world.tiny / DATA).read_bytes())


def _hparams(**changes) -> bytes:
    return json.dumps({**TINY_HPARAMS, **changes}).encode()


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[pos % len(out)] ^= 1 << bit
    return bytes(out)


def _small_checkpoint(c, dtype=np.float32):
    """A 1-block GPT-2 of tiny sizes written by TensorFlow, its token embedding of `dtype`."""
    hp = {"n_vocab": 10, "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 1}
    tensors = random_gpt2_tensors(hp)
    tensors["model/wte"] = tensors["model/wte"].astype(dtype)
    write_openai_checkpoint_raw(c.tmp / "small", hp, tensors)
    return str(c.tmp / "small" / "model.ckpt"), hp


def _mirror(c, files: dict) -> Path:
    mirror = c.tmp / "mirror"
    for rel, data in files.items():
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes(data)
    return mirror


def _zip(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, data)
    return buf.getvalue()


def _damaged_zip(member: str, data: bytes) -> bytes:
    """A zip whose deflate stream has a byte changed (zipfile raises zlib.error or bad CRC)."""
    packed = bytearray(_zip(member, data))
    packed[30 + len(member) + 200] ^= 0xFF  # inside the compressed data of the one member
    return bytes(packed)


def _spec_toy_zip(c):
    """Register 'toy.tsv' (served as a zip, pinned sha256) for one test."""
    body = b"".join(b"ham\t%d\n" % i for i in range(5000))
    c.mp.setitem(course_data.DATA_FILES, "toy.tsv", course_data.DataFile(
        name="toy.tsv", urls=(c.w.closed + "/toy.zip",), sha256=hashlib.sha256(body).hexdigest(),
        mirror_paths=("toy.zip",), source="test bytes", zip_member="toy.tsv"))
    return body


def _tokenizer_mirror(c, damaged: str):
    files = {f"gpt2-tokenizer/{n}": (c.w.tiny / n).read_bytes() for n in ("encoder.json",
                                                                        "vocab.bpe")}
    files[f"gpt2-tokenizer/{damaged}"] = _flip(files[f"gpt2-tokenizer/{damaged}"], 5000)
    c.mp.setenv(course_data.MIRROR_ENV, str(_mirror(c, files)))


# (id, the bad call, the exception type, words its message must hold)
CASES = [
    # --- gpt_download3: sizes and folders
    ("size-lowercase", lambda c: g.download_and_load_gpt2("124m", c.tmp), g.CheckpointError,
     ["Unknown GPT-2 model size '124m'", "124M, 355M", "Did you mean '124M'?"]),
    ("size-nickname", lambda c: g.download_and_load_gpt2("small", c.tmp), g.CheckpointError,
     ["'small'", "Did you mean '124M'?"]),
    ("size-hf-name", lambda c: g.download_gpt2_files("gpt2-medium", c.tmp), g.CheckpointError,
     ["Did you mean '355M'?"]),
    ("size-int", lambda c: g.download_and_load_gpt2(124, c.tmp), TypeError,
     ["model_size should be a string", "int 124", "Did you mean '124M'?"]),
    ("size-path", lambda c: g.download_gpt2_files("../124M", c.tmp), ValueError,
     ["'../124M'", "not a path", "models_dir"]),
    ("models-dir-file", lambda c: g.download_and_load_gpt2("124M", c.file), ValueError,
     ["models_dir", "a-file", "is a file, not a folder"]),
    ("models-dir-none", lambda c: g.download_gpt2_files("124M", None), TypeError,
     ["models_dir should be a folder path", "NoneType"]),
    ("size-folder-is-file", lambda c: (c.tmp / "124M").write_text("x")
     and g.download_gpt2_files("124M", c.tmp), ValueError, ["124M is a file", "seven files"]),
    ("reader-unknown", lambda c: g.download_and_load_gpt2("124M", c.tmp, reader="torch"),
     ValueError, ["reader must be 'numpy' or 'tensorflow'", "'torch'"]),
    ("missing-file", lambda c: g.download_and_load_gpt2("tiny-x", _missing(c, INDEX)),
     g.CheckpointError, ["lacks model.ckpt.index", "cannot be downloaded", "xhlulu"]),
    ("no-network", lambda c: g.download_gpt2_files("124M", c.tmp, [c.w.closed]), DownloadError,
     ["Could not download", "could not be reached", "Kaggle dataset", "xhlulu"]),
    # --- gpt_download3: hparams.json and settings
    ("hparams-missing-keys", lambda c: _load(c, {"hparams.json": b'{"n_vocab": 50257}'}),
     g.CheckpointError, ["hparams.json", "'n_ctx'", "missing or wrong", "OpenAI's GPT-2"]),
    ("hparams-a-list", lambda c: _load(c, {"hparams.json": b"[1, 2]"}), g.CheckpointError,
     ["hparams.json should hold a JSON object like OpenAI's", "not [1, 2]"]),
    ("hparams-random-bytes", lambda c: _load(c, {"hparams.json": b"\xff\xfe\x00garbage"}),
     g.CheckpointError, ["hparams.json is not a readable JSON file", "Download hparams.json"]),
    ("hparams-deep-json", lambda c: _load(c, {"hparams.json": b"[" * 100_000}),
     g.CheckpointError, ["not a readable JSON file", "RecursionError"]),
    ("hparams-huge-int", lambda c: _load(c, {"hparams.json": b'{"n_ctx": 1' + b"0" * 5000
                                                              + b"}"}),
     g.CheckpointError, ["not a readable JSON file", "integer"]),
    ("hparams-string-value", lambda c: _load(c, {"hparams.json": _hparams(n_embd="64")}),
     g.CheckpointError, ["['n_embd'] are missing or wrong"]),
    ("hparams-bool-value", lambda c: _load(c, {"hparams.json": _hparams(n_head=True)}),
     g.CheckpointError, ["['n_head'] are missing or wrong"]),
    ("hparams-not-divisible", lambda c: _load(c, {"hparams.json": _hparams(n_head=5)}),
     g.CheckpointError, ["n_embd 64 is not divisible by n_head 5"]),
    ("hparams-other-width", lambda c: _load(c, {"hparams.json": _hparams(n_embd=128)}),
     g.CheckpointError, ["does not match its hparams.json", "model/wpe is (1024, 64)",
                         "fetch all seven files"]),
    ("hparams-other-depth", lambda c: _load(c, {"hparams.json": _hparams(n_layer=3)}),
     g.CheckpointError, ["has 2 transformer blocks", "n_layer=3", "fetch all seven files"]),
    ("hparams-absurd-depth", lambda c: _load(c, {"hparams.json": _hparams(n_layer=10**12)}),
     g.CheckpointError, ["has 2 transformer blocks", "n_layer=1000000000000"]),
    ("settings-none", lambda c: g.load_gpt2_params_from_tf_ckpt(c.w.prefix, None), TypeError,
     ["settings should be a dict like OpenAI's hparams.json", "NoneType None"]),
    ("settings-wrong", lambda c: g.load_gpt2_params_from_tf_ckpt(
        c.w.prefix, {**TINY_HPARAMS, "n_vocab": 50000}), g.CheckpointError,
     ["does not match", "model/wte is (50257, 64)"]),
    ("count-missing-key", lambda c: g.count_gpt2_params({"n_vocab": 50257}), g.CheckpointError,
     ["settings should give positive integers", "'n_ctx'"]),
    ("count-not-a-dict", lambda c: g.count_gpt2_params("124M"), TypeError,
     ["settings should be a dict like OpenAI's", "str '124M'"]),
    ("sizes-int", lambda c: g.expected_file_sizes(124), TypeError,
     ["model_size should be a string", "Did you mean '124M'?"]),
    ("sizes-list", lambda c: g.expected_file_sizes(["124M"]), TypeError,
     ["model_size should be a string", "list"]),
    # --- gpt_download3: URLs
    ("urls-size", lambda c: g.gpt2_file_urls("124m", "vocab.bpe"), ValueError,
     ["storage has the sizes", "'124m'", "Did you mean '124M'?"]),
    ("urls-file", lambda c: g.gpt2_file_urls("124M", "model.ckpt"), ValueError,
     ["'model.ckpt' is not one of the checkpoint's files", "model.ckpt.index"]),
    ("urls-base-str", lambda c: g.gpt2_file_urls("124M", "vocab.bpe", "http://x.org"),
     TypeError, ["base_urls should be a list of base URLs", "str 'http://x.org'"]),
    ("urls-base-empty", lambda c: g.gpt2_file_urls("124M", "vocab.bpe", []), ValueError,
     ["base_urls is empty"]),
    ("urls-base-scheme", lambda c: g.download_gpt2_files("124M", c.tmp, ["ftp://x.org"]),
     ValueError, ["base_urls holds 'ftp://x.org'", "http:// or https://"]),
    ("urls-mirrors-env", lambda c: c.mp.setenv(g.MIRRORS_ENV, "www.example.org/gpt2")
     or g.gpt2_file_urls("124M", "vocab.bpe"), ValueError,
     ["$COURSE_GPT2_MIRRORS holds 'www.example.org/gpt2'", "http://"]),
    # --- gpt_download3: the checkpoint's files
    ("index-truncated", lambda c: _load(c, {INDEX: c.index[:-10]}), g.CheckpointError,
     ["model.ckpt.index is not a TensorFlow checkpoint index", "truncated", "Download it again"]),
    ("index-random", lambda c: _load(c, {INDEX: os.urandom(len(c.index))}), g.CheckpointError,
     ["model.ckpt.index", "Download it again"]),
    ("index-flip", lambda c: _load(c, {INDEX: _flip(c.index, 20, 6)}), g.CheckpointError,
     ["model.ckpt.index: a block's CRC32C does not match", "corrupted"]),
    ("index-flip-crc-fixed", lambda c: _load(c, {INDEX: with_fixed_crcs(
        _flip(c.index, 3, 7), index_blocks(c.index))}), g.CheckpointError,
     ["model.ckpt.index", "damaged", "Download it again"]),
    ("index-name-not-utf8", lambda c: _load(c, {INDEX: _rename_first_tensor(c.index)}),
     g.CheckpointError, ["a tensor name is not UTF-8", "damaged"]),
    ("data-flip", lambda c: _load(c, {DATA: _flip(c.data, len(c.data) // 2)}), g.CheckpointError,
     ["in model.ckpt.data-00000-of-00001: its CRC32C", "corrupted", "download it again"]),
    ("data-truncated", lambda c: _load(c, {DATA: c.data[:-1]}), g.CheckpointError,
     ["model.ckpt.data-00000-of-00001, but the file has only", "truncated"]),
    ("data-missing", lambda c: g.read_tf_checkpoint(_missing(c, DATA) / "tiny-x/model.ckpt"),
     g.CheckpointError, ["model.ckpt.data-00000-of-00001 is missing", "Download it again"]),
    ("data-not-float32", lambda c: g.load_gpt2_params_from_tf_ckpt(
        *_small_checkpoint(c, np.int32)), g.CheckpointError,
     ["non-float32 GPT-2 variables", "model/wte", "download model.ckpt.index again"]),
    ("tf-reader-flip", lambda c: g.download_and_load_gpt2(
        "tiny-x", c.copy({DATA: _flip(c.data, len(c.data) // 2)}), reader="tensorflow"),
     g.CheckpointError, ["TensorFlow could not read the checkpoint", "Checksum does not match",
                         "download the seven files again"]),
    ("tf-reader-missing", lambda c: g.load_gpt2_params_from_tf_ckpt(
        c.tmp / "model.ckpt", TINY_HPARAMS, reader="tensorflow"), g.CheckpointError,
     ["TensorFlow could not read", "NotFoundError", "model.ckpt"]),
    ("ckpt-path-folder", lambda c: g.read_tf_checkpoint(c.w.tiny), g.CheckpointError,
     ["is a folder", "tiny-test/model.ckpt"]),
    ("ckpt-path-index", lambda c: g.read_tf_checkpoint_index(c.w.prefix + ".index"),
     g.CheckpointError, ["without the ending", "tiny-test/model.ckpt."]),
    ("ckpt-path-none", lambda c: g.read_tf_checkpoint_index(None), TypeError,
     ["ckpt_path should be the checkpoint's prefix", "NoneType"]),
    ("names-a-string", lambda c: g.read_tf_checkpoint(c.w.prefix, "model/wte"), TypeError,
     ["names should be a list of tensor names", "['model/wte']"]),
    ("names-not-str", lambda c: g.read_tf_checkpoint(c.w.prefix, [1, 2]), TypeError,
     ["names should hold tensor names"]),
    ("names-unknown", lambda c: g.read_tf_checkpoint(c.w.prefix, ["model/wtf"]),
     g.CheckpointError, ["has no tensor(s) ['model/wtf']", "model/h0/attn/c_attn/b"]),
    # --- course_data: fetch_data
    ("data-name-unknown", lambda c: course_data.fetch_data("the-verdict", data_dir_path=c.tmp),
     course_data.UnknownDataFileError, ["unknown data file 'the-verdict'",
                                        "Did you mean 'the-verdict.txt'?"]),
    ("data-name-case", lambda c: course_data.fetch_data("smsspamcollection",
                                                        data_dir_path=c.tmp),
     KeyError, ["Did you mean 'SMSSpamCollection'?"]),
    ("data-name-list", lambda c: course_data.fetch_data(["the-verdict.txt"]), TypeError,
     ["name should be the name of a course data file", "list"]),
    ("data-dir-file", lambda c: course_data.fetch_data("the-verdict.txt", data_dir_path=c.file),
     ValueError, ["data_dir_path", "a-file is a file, not a folder"]),
    ("data-dir-env-file", lambda c: c.mp.setenv("COURSE_DATA_DIR", str(c.file))
     or course_data.fetch_data("the-verdict.txt"), ValueError,
     ["$COURSE_DATA_DIR", "is a file, not a folder"]),
    ("data-dest-folder", lambda c: (c.tmp / "the-verdict.txt").mkdir()
     or course_data.fetch_data("the-verdict.txt", data_dir_path=c.tmp), ValueError,
     ["the-verdict.txt is a folder", "move it away"]),
    ("data-urls-str", lambda c: course_data.fetch_data("vocab.bpe", data_dir_path=c.tmp,
                                                       urls="http://127.0.0.1:9/v"), TypeError,
     ["urls should be a list of URLs", "['http://127.0.0.1:9/v']"]),
    ("data-urls-scheme", lambda c: course_data.fetch_data("vocab.bpe", data_dir_path=c.tmp,
                                                          urls=["file:///tmp/vocab.bpe"]),
     ValueError, ["each of urls should be an http:// or https:// URL", "file:///tmp/vocab.bpe"]),
    ("mirror-missing", lambda c: course_data.fetch_data(
        "vocab.bpe", data_dir_path=c.tmp / "d", mirror=c.tmp / "usb"), DownloadError,
     ["mirror folder", "usb", "does not exist", "could not be reached", "by hand"]),
    ("mirror-flipped-byte", lambda c: course_data.fetch_data(
        "vocab.bpe", data_dir_path=c.tmp / "d", mirror=_mirror(
            c, {"vocab.bpe": _upper_one_letter((c.w.tiny / "vocab.bpe").read_bytes())})),
     DownloadError, ["mirror copy", "vocab.bpe", "its sha256 is", "by hand"]),
    ("mirror-truncated-json", lambda c: course_data.fetch_data(
        "encoder.json", data_dir_path=c.tmp / "d", mirror=_mirror(
            c, {"encoder.json": (c.w.tiny / "encoder.json").read_bytes()[:5000]})),
     DownloadError, ["mirror copy", "does not look like encoder.json"]),
    ("mirror-deep-json", lambda c: course_data.fetch_data(
        "instruction-data.json", data_dir_path=c.tmp / "d",
        mirror=_mirror(c, {"instruction-data.json": b"[" * 100_000})),
     DownloadError, ["does not look like instruction-data.json", "recursion"]),
    ("mirror-damaged-zip", lambda c: course_data.fetch_data(
        "toy.tsv", data_dir_path=c.tmp / "d", mirror=_mirror(
            c, {"toy.zip": _damaged_zip("toy.tsv", _spec_toy_zip(c))})),
     DownloadError, ["mirror copy", "toy.zip", "not a valid zip file"]),
    # --- course_data: download_file, sha256_of, the tokenizer's files
    ("download-url-int", lambda c: course_data.download_file(5, c.tmp / "x"), ValueError,
     ["url should be an http:// or https:// URL", "5"]),
    ("download-dest-folder", lambda c: course_data.download_file(c.w.closed + "/f.bin", c.tmp),
     ValueError, ["is a folder", "the path of the file", "f.bin"]),
    ("download-dest-in-file", lambda c: course_data.download_file(c.w.closed + "/f",
                                                                  c.file / "x"),
     ValueError, ["the folder of dest", "is a file, not a folder"]),
    ("download-sha-short", lambda c: course_data.download_file(
        c.w.closed + "/f", c.tmp / "f", expected_sha256="abc123"), ValueError,
     ["expected_sha256 should be 64 hexadecimal digits", "'abc123'"]),
    ("download-size-negative", lambda c: course_data.download_file(
        c.w.closed + "/f", c.tmp / "f", expected_size=-1), ValueError,
     ["expected_size should be 0 or more bytes"]),
    ("download-size-str", lambda c: course_data.download_file(
        c.w.closed + "/f", c.tmp / "f", expected_size="10"), TypeError,
     ["expected_size should be a number of bytes", "str '10'"]),
    ("download-timeout-zero", lambda c: course_data.download_file(
        c.w.closed + "/f", c.tmp / "f", timeout=0), ValueError,
     ["timeout should be a positive number of seconds"]),
    ("download-timeout-huge", lambda c: course_data.download_file(
        c.w.closed + "/f", c.tmp / "f", timeout=9223372037.0), ValueError,
     ["at most 86400", "9223372037.0"]),
    ("download-unreachable", lambda c: course_data.download_file(c.w.closed + "/f", c.tmp / "f"),
     DownloadError, ["could not be reached", "Check the network connection", "by hand"]),
    ("sha256-int", lambda c: course_data.sha256_of(0), TypeError,
     ["path should be a path", "int 0"]),
    ("sha256-folder", lambda c: course_data.sha256_of(c.tmp), ValueError,
     ["is a folder; sha256_of needs a file"]),
    ("sha256-missing", lambda c: course_data.sha256_of(c.tmp / "nope.bin"), FileNotFoundError,
     ["nope.bin does not exist", "an existing file"]),
    ("tokenizer-folder-none", lambda c: course_data.prime_tiktoken_cache(None), TypeError,
     ["folder should be a path", "NoneType"]),
    ("tokenizer-folder-missing", lambda c: course_data.prime_tiktoken_cache(c.tmp / "nope"),
     FileNotFoundError, ["nope is not a folder", "encoder.json and vocab.bpe"]),
    ("tokenizer-file-missing", lambda c: course_data.prime_tiktoken_cache(c.tmp),
     FileNotFoundError, ["vocab.bpe is missing; GPT-2's tokenizer needs vocab.bpe there"]),
    ("tokenizer-file-damaged", lambda c: course_data.prime_tiktoken_cache(
        _mirror(c, {"vocab.bpe": b"#version: 0.2\n", "encoder.json": b"{}"})), ValueError,
     ["is not GPT-2's", "sha256 differs", "Replace it with a good copy"]),
    ("tokenizer-cache-file", lambda c: c.mp.setenv("TIKTOKEN_CACHE_DIR", str(c.file))
     or course_data.prime_tiktoken_cache(c.w.tiny), ValueError,
     ["tiktoken's cache folder", "a-file", "TIKTOKEN_CACHE_DIR", "is a file"]),
    ("tokenizer-mirror-damaged", lambda c: _tokenizer_mirror(c, "encoder.json")
     or course_data.get_gpt2_tokenizer(), ValueError,
     ["gpt2-tokenizer/encoder.json is not GPT-2's encoder.json"]),
]


def _upper_one_letter(data: bytes) -> bytes:
    """One 'e' made 'E': the same structure, other bytes (only the sha256 can tell)."""
    at = data.index(b"e", 1000)
    return data[:at] + b"E" + data[at + 1:]


def _load(c, replaced):
    return g.download_and_load_gpt2("tiny-x", c.copy(replaced))


def _missing(c, name) -> Path:
    models = c.copy()
    (models / "tiny-x" / name).unlink()
    return models


def _rename_first_tensor(index: bytes) -> bytes:
    """The index with a byte of the first tensor name made invalid UTF-8, CRCs recomputed."""
    at = index.find(b"model/")
    return with_fixed_crcs(index[:at] + b"\xff" + index[at + 1:], index_blocks(index))


@pytest.mark.parametrize("case", CASES, ids=[row[0] for row in CASES])
def test_a_mistake_gets_a_clear_error(case, ctx):
    _, call, expected, words = case
    with pytest.raises(expected) as err:
        call(ctx)
    assert_clean(err.value, case[0])
    for word in words:
        assert word in str(err.value), f"{word!r} not in: {err.value}"


def test_the_table_covers_every_public_function():
    called = " ".join(repr(row[1].__code__.co_names) for row in CASES)
    helpers = " ".join(repr(f.__code__.co_names) for f in (_load, _missing, _small_checkpoint))
    for name in ["download_and_load_gpt2", "download_gpt2_files", "gpt2_file_urls",
                 "expected_file_sizes", "count_gpt2_params", "load_gpt2_params_from_tf_ckpt",
                 "read_tf_checkpoint", "read_tf_checkpoint_index", "download_file", "fetch_data",
                 "prime_tiktoken_cache", "get_gpt2_tokenizer", "sha256_of"]:
        assert f"'{name}'" in called + helpers, name


def test_nothing_is_loaded_or_left_after_a_damaged_mirror_copy(ctx):
    """A good copy in data/ stays untouched when a damaged mirror copy is met; a damaged copy in
    data/ is never returned, and no partial file is left behind."""
    good = (ctx.w.tiny / "vocab.bpe").read_bytes()
    data = ctx.tmp / "data"
    data.mkdir()
    (data / "vocab.bpe").write_bytes(_flip(good, 10))
    mirror = _mirror(ctx, {"vocab.bpe": good[:-5]})
    with pytest.raises(DownloadError, match="will be replaced"):
        course_data.fetch_data("vocab.bpe", data_dir_path=data, mirror=mirror)
    assert sorted(p.name for p in data.iterdir()) == ["vocab.bpe"]  # no temporary files
    (mirror / "vocab.bpe").write_bytes(good)
    path = course_data.fetch_data("vocab.bpe", data_dir_path=data, mirror=mirror)
    assert path.read_bytes() == good


# ----- 2. the fuzzed sweep ----------------------------------------------------------------------

SAFE_TEXT = st.text(st.characters(blacklist_characters="/\\\0~",
                                  blacklist_categories=("Cs",)), max_size=12)
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), SAFE_TEXT,
                 st.binary(max_size=16), st.lists(st.integers(), max_size=3),
                 st.dictionaries(SAFE_TEXT, st.integers(), max_size=3))


def arg(*good, junk=0.2):
    """One argument: a value from `good` (strategies, or plain values to sample from) most of
    the time, JUNK (any type, any value) with probability `junk`."""
    good = [x if isinstance(x, st.SearchStrategy) else st.just(x) for x in good]
    pick = st.sampled_from(range(100))  # uniform enough (st.floats favours 0.0)
    return pick.flatmap(lambda u: JUNK if u < 100 * junk else st.one_of(good))


SIZES = arg(*["124M", "355M", "124m", "small", "gpt2-xl", "tiny-test", "", ".", "..", "a/b",
              "124M/"], SAFE_TEXT)
HPARAM_VALUES = st.one_of(st.sampled_from(sorted(set(TINY_HPARAMS.values()))),
                          st.integers(-3, 2**70), st.floats(), st.booleans(), st.none(),
                          SAFE_TEXT)
HPARAMS = arg(
    TINY_HPARAMS,
    st.dictionaries(st.sampled_from(g.HPARAMS_KEYS + ("n_x",)), HPARAM_VALUES, max_size=6)
    .map(lambda d: {**TINY_HPARAMS, **d}),
    st.dictionaries(st.sampled_from(g.HPARAMS_KEYS), HPARAM_VALUES, max_size=5))


@st.composite
def damaged(draw, data: bytes):
    """`data` after a random damage: bit flips, a truncation, a splice of random bytes, bytes
    appended, or random bytes altogether."""
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "append", "random"]))
    if kind == "flip":
        out = bytearray(data)
        for pos, bit in draw(st.lists(st.tuples(st.integers(0, len(data) - 1),
                                                st.integers(0, 7)), min_size=1, max_size=4)):
            out[pos] ^= 1 << bit
        return kind, bytes(out)
    if kind == "truncate":
        return kind, data[:draw(st.integers(0, len(data) - 1))]
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        junk = draw(st.binary(min_size=1, max_size=32))
        return kind, data[:at] + junk + data[at + len(junk):]
    if kind == "append":
        return kind, data + draw(st.binary(min_size=1, max_size=64))
    return kind, draw(st.binary(max_size=2 * len(data) if len(data) < 10_000 else 256))


def folder_arg(world, choice):
    """A models_dir-like argument: a private models folder, a file, a missing path, or junk."""
    if not isinstance(choice, str) or not choice.startswith("@"):
        return choice
    if choice == "@models":
        return world.tiny.parent
    folder = scratch(world)
    if choice == "@file":
        (folder / "f").write_text("x")
        return folder / "f"
    return folder / "missing" if choice == "@missing" else folder


FOLDERS = arg("@models", "@models", "@file", "@missing", "@empty")
BASES = arg("@closed", "@none", "@none", "http://x.org", "@empty-list", "@ftp", "@int")


def base_arg(world, choice):
    return {"@closed": [world.closed], "@none": None, "@empty-list": [],
            "@ftp": ["ftp://127.0.0.1/x"], "@int": [5]}.get(choice, choice) \
        if isinstance(choice, str) else choice


@given(fn=st.sampled_from(["download_and_load_gpt2", "download_gpt2_files",
                           "expected_file_sizes", "gpt2_file_urls", "count_gpt2_params"]),
       size=SIZES, folder=FOLDERS, base=BASES, file_name=arg(*g.CHECKPOINT_FILES, "x"),
       hparams=HPARAMS, reader=arg("numpy", junk=0.1))
@example(fn="download_and_load_gpt2", size="tiny-test", folder="@models", base="@none",
         file_name="vocab.bpe", hparams=None, reader="numpy")
def test_fuzz_the_download_functions_arguments(world, fn, size, folder, base, file_name, hparams,
                                               reader):
    """Random sizes, folders, base URLs, file names, hparams and readers: a result or a clear
    error. Base URLs and OpenAI's URLs point at a closed port on 127.0.0.1."""
    folder, base = folder_arg(world, folder), base_arg(world, base)
    calls = {
        "download_and_load_gpt2": lambda: g.download_and_load_gpt2(size, folder, reader=reader,
                                                                   base_urls=base),
        "download_gpt2_files": lambda: g.download_gpt2_files(size, folder, base),
        "expected_file_sizes": lambda: g.expected_file_sizes(size),
        "gpt2_file_urls": lambda: g.gpt2_file_urls(size, file_name, base),
        "count_gpt2_params": lambda: g.count_gpt2_params(hparams),
    }
    ok, result = attempt(fn, calls[fn])
    if ok and fn == "download_and_load_gpt2":
        assert size == "tiny-test" and folder == world.tiny.parent
        assert_tiny_params(world, *result)
    if ok and fn == "count_gpt2_params":
        c, n = hparams["n_embd"], hparams["n_layer"]  # the count, from the shapes TF would hold
        shapes = [(hparams["n_vocab"], c), (hparams["n_ctx"], c), (c,), (c,)] + n * [
            (c,), (c,), (c,), (c,), (c, 3 * c), (3 * c,), (c, c), (c,), (c, 4 * c), (4 * c,),
            (4 * c, c), (c,)]
        assert result == sum(math.prod(s) for s in shapes)
    if ok and fn == "gpt2_file_urls":
        assert all(u.startswith(("http://", "https://")) and u.endswith("/" + file_name)
                   for u in result)


@given(hparams=st.one_of(st.binary(max_size=200),
                        HPARAMS.map(lambda h: json.dumps(h, default=repr).encode())))
@example(hparams=json.dumps({**TINY_HPARAMS, "n_head": 2}).encode())  # loads: see above
def test_fuzz_hparams_json(world, hparams):
    """Random bytes or JSON as hparams.json: only the right hparams load, and they load right."""
    ok, result = attempt("download_and_load_gpt2", g.download_and_load_gpt2, "tiny-x",
                         model_folder(world, {"hparams.json": hparams}))
    if ok:
        assert_tiny_params(world, *result)


@given(data=st.data())
def test_fuzz_the_index_file(world, data):
    """Random damage to model.ckpt.index: a clear error, or (padding, an ignored field) the same
    tensors as TensorFlow wrote."""
    kind, index = data.draw(damaged((world.tiny / INDEX).read_bytes()), label="index")
    ok, result = attempt("download_and_load_gpt2", g.download_and_load_gpt2, "tiny-x",
                         model_folder(world, {INDEX: index}))
    if ok:
        assert_tiny_params(world, *result)


@given(data=st.data())
def test_fuzz_the_index_file_past_its_crcs(world, data):
    """Damage inside the index's blocks with their CRCs recomputed, so that the parser meets
    it: names, dtypes, shapes, offsets, sizes, varints, wire types. A clear error, or the same
    tensors as TensorFlow wrote."""
    pristine = (world.tiny / INDEX).read_bytes()
    blocks = index_blocks(pristine)
    off, size = data.draw(st.sampled_from(blocks), label="block")
    kind, inner = data.draw(damaged(pristine[off:off + size]), label="damage")
    if len(inner) != size:  # the block keeps its length: the handles still point at it
        inner = (inner + bytes(size))[:size]
    index = with_fixed_crcs(pristine[:off] + inner + pristine[off + size:], blocks)
    ok, result = attempt("download_and_load_gpt2", g.download_and_load_gpt2, "tiny-x",
                         model_folder(world, {INDEX: index}))
    if ok:
        assert_tiny_params(world, *result)
    ok, result = attempt("read_tf_checkpoint", g.read_tf_checkpoint, str(
        model_folder(world, {INDEX: index}) / "tiny-x" / "model.ckpt"))
    if ok:  # any tensor it gives has the bytes the index's CRC32C vouches for
        assert all(isinstance(a, np.ndarray) for a in result.values())


@given(data=st.data())
def test_fuzz_the_data_file(world, data):
    """Random damage to the data shard: a flipped bit is REPORTED by the CRC32C check, a
    truncation as such; loading succeeds only with every tensor as TensorFlow wrote it."""
    pristine = (world.small / DATA).read_bytes()
    kind, shard = data.draw(damaged(pristine), label="data")
    ok, result = attempt("download_and_load_gpt2", g.download_and_load_gpt2, "tiny-x",
                         model_folder(world, {DATA: shard}, world.small))
    if ok:
        assert_tiny_params(world, *result, SMALL_HPARAMS, world.small_tensors)
    elif kind == "flip":
        assert "CRC32C" in str(result) and "corrupted" in str(result)
    changed = len(shard) < len(pristine) or shard[:len(pristine)] != pristine
    assert ok != changed, f"{kind}: loaded={ok}, bytes changed={changed}"


@given(prefix=arg("@prefix", "@prefix", "@folder", "@index", "@missing"),
       names=arg(None, st.lists(st.sampled_from(sorted(random_gpt2_tensors(TINY_HPARAMS))),
                                max_size=3), st.lists(SAFE_TEXT, max_size=2)),
       check_crc=arg(st.booleans(), junk=0.1), settings=HPARAMS, reader=arg("numpy", junk=0.1))
def test_fuzz_the_reader_functions_arguments(world, prefix, names, check_crc, settings, reader):
    """Random prefixes, names, settings and readers for the three reading functions."""
    prefix = {"@prefix": world.prefix, "@folder": world.tiny, "@index": world.prefix + ".index",
              "@missing": world.root / "nope" / "model.ckpt"}.get(prefix, prefix) \
        if isinstance(prefix, str) else prefix
    ok, result = attempt("read_tf_checkpoint", g.read_tf_checkpoint, prefix, names,
                         check_crc=check_crc)
    if ok:
        for name, array in result.items():
            assert np.array_equal(array, world.tensors[name]), name
    ok, result = attempt("read_tf_checkpoint_index", g.read_tf_checkpoint_index, prefix)
    if ok:
        assert sorted(result[1]) == sorted(world.tensors)
    ok, result = attempt("load_gpt2_params_from_tf_ckpt", g.load_gpt2_params_from_tf_ckpt,
                         prefix, settings, reader=reader)
    if ok:
        assert_tiny_params(world, settings, result)


MIRROR_DAMAGE = st.sampled_from(["absent", "good", "flip", "truncate", "random", "empty",
                                 "folder", "zip", "damaged-zip", "zip-of-junk"])


def real_bytes(world, name):
    """The real data file: GPT-2's tokenizer files from the tiny checkpoint, others from the
    data mirror when it is set (CI has one); None when unavailable."""
    if name in ("encoder.json", "vocab.bpe"):
        return (world.tiny / name).read_bytes()
    mirror = os.environ.get(course_data.MIRROR_ENV)
    spec = course_data.DATA_FILES[name]
    for rel in spec.mirror_paths if mirror else ():
        path = Path(mirror, rel)
        if path.is_file() and not zipfile.is_zipfile(path):
            return path.read_bytes()
    return None


@given(name=arg(*sorted(course_data.DATA_FILES), junk=0.1),
       layout=st.lists(st.tuples(MIRROR_DAMAGE, st.integers(0, 2**32)), min_size=4, max_size=4),
       mirror_kind=st.sampled_from(["folder", "folder", "folder", "none", "missing", "file"]),
       urls=arg(None, ["@closed"], junk=0.1))
def test_fuzz_fetch_data_with_random_mirror_contents(world, name, layout, mirror_kind, urls):
    """Random mirror folders (absent, damaged, truncated, zipped, junk copies) and URLs that lead
    nowhere: fetch_data returns only the file whose sha256 is pinned, else a clear error, and
    leaves no file in the data folder."""
    known = isinstance(name, str) and name in course_data.DATA_FILES
    real = real_bytes(world, name) if known else b"x"
    if real is None:
        return  # the data mirror is not set: only the tokenizer files are at hand
    root = scratch(world)
    mirror = {"folder": root / "mirror", "none": "", "missing": root / "nope",
              "file": root / "f"}[mirror_kind]
    (root / "f").write_text("x")
    spec = course_data.DATA_FILES.get(name) if isinstance(name, str) else None
    rng = np.random.default_rng(layout[0][1])
    for rel, (damage, seed) in zip(spec.mirror_paths if spec else (), layout):
        path = root / "mirror" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        member = spec.zip_member or spec.name
        body = {"good": real, "flip": _flip(real, seed, seed % 8),
                "truncate": real[:seed % len(real)], "random": rng.bytes(seed % 3000),
                "empty": b"", "zip": _zip(member, real),
                "damaged-zip": _damaged_zip(member, real) if len(real) > 300 else b"PK",
                "zip-of-junk": _zip(member, rng.bytes(seed % 3000))}.get(damage)
        if damage == "folder":
            path.mkdir()
        elif body is not None:
            path.write_bytes(body)
    urls = [world.closed + "/x"] if urls == ["@closed"] else urls
    data = root / "data"
    ok, result = attempt("fetch_data", course_data.fetch_data, name, data_dir_path=data,
                         mirror=mirror, urls=urls)
    if ok:
        assert hashlib.sha256(result.read_bytes()).hexdigest() == spec.sha256
        assert result.read_bytes() == real
    leftovers = [p.name for p in data.iterdir()] if data.is_dir() else []
    assert leftovers == ([spec.name] if ok else []), leftovers


@given(url=arg("@ok", "@ok", "@missing", "@closed", "ftp://127.0.0.1/x", "http://",
                "127.0.0.1/x", junk=0.1),
       dest=arg("@file", "@file", "@folder", "@in-a-file", junk=0.1),
       sha=arg(None, "@right", "@RIGHT", "@wrong", junk=0.1),
       size=arg(None, "@right", "@less", "@more", junk=0.1),
       timeout=arg(10, st.floats(), junk=0.1))
@example(url="@ok", dest="@file", sha=None, size=None, timeout=9223372037.0)  # found at nightly
def test_fuzz_download_file_arguments(world, url, dest, sha, size, timeout):
    """Random arguments to download_file against the server on 127.0.0.1: it writes dest only
    with the bytes served (and the right sha256 when one is given), else a clear error."""
    body = hashlib.sha512(b"fuzz").digest() * 100
    world.server.routes["/ok.bin"] = ("ok", body)
    right = hashlib.sha256(body).hexdigest()
    url = {"@ok": world.server.url + "/ok.bin", "@missing": world.server.url + "/missing.bin",
           "@closed": world.closed + "/x"}.get(url, url) if isinstance(url, str) else url
    folder = scratch(world)
    (folder / "a-file").write_text("x")
    dest = {"@file": folder / "out.bin", "@folder": folder,
            "@in-a-file": folder / "a-file" / "out.bin"}.get(dest, dest) \
        if isinstance(dest, str) else dest
    sha = {"@right": right, "@RIGHT": right.upper(), "@wrong": "0" * 64}.get(sha, sha) \
        if isinstance(sha, str) else sha
    size = {"@right": len(body), "@less": len(body) - 1, "@more": len(body) + 1}.get(size, size) \
        if isinstance(size, str) else size
    ok, result = attempt("download_file", course_data.download_file, url, dest,
                         expected_sha256=sha, expected_size=size, timeout=timeout)
    if ok:
        assert Path(result).read_bytes() == body
    elif isinstance(dest, Path) and dest.parent == folder and dest.name == "out.bin":
        assert not dest.exists()  # nothing at dest unless the download passed every check


@given(files=st.lists(st.sampled_from(["good", "flip", "random", "absent", "folder"]),
                      min_size=2, max_size=2),
       folder=arg("@folder", "@folder", "@file", "@missing"),
       seed=st.integers(0, 2**32))
def test_fuzz_sha256_of_and_the_tokenizer_cache(world, files, folder, seed):
    """sha256_of on random paths gives hashlib's answer or a clear error; prime_tiktoken_cache
    with random tokenizer files caches only GPT-2's two real files."""
    root = scratch(world)
    (root / "tok").mkdir()
    (root / "f").write_text("some text")
    for name, state in zip(("encoder.json", "vocab.bpe"), files):
        real = (world.tiny / name).read_bytes()
        body = {"good": real, "flip": _flip(real, seed, seed % 8),
                "random": np.random.default_rng(seed).bytes(seed % 500)}.get(state)
        if state == "folder":
            (root / "tok" / name).mkdir()
        elif body is not None:
            (root / "tok" / name).write_bytes(body)
    folder = {"@folder": root / "tok", "@file": root / "f", "@missing": root / "nope"}.get(
        folder, folder) if isinstance(folder, str) else folder
    for candidate in (folder, root / "tok" / "vocab.bpe", root / "tok" / "encoder.json"):
        ok, result = attempt("sha256_of", course_data.sha256_of, candidate)
        if ok:
            assert result == hashlib.sha256(Path(candidate).read_bytes()).hexdigest()
    cache, before = root / "cache", os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        ok, result = attempt("prime_tiktoken_cache", course_data.prime_tiktoken_cache, folder)
    finally:
        if before is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = before
    cached = sorted(p.read_bytes() for p in cache.iterdir()) if cache.is_dir() else []
    if ok:
        assert files == ["good", "good"] and folder == root / "tok"
        assert cached == sorted((world.tiny / n).read_bytes() for n in ("encoder.json",
                                                                          "vocab.bpe"))
    else:
        assert cached == []  # nothing is cached unless both files passed
