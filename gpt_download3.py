"""Fetch OpenAI's GPT-2 checkpoint files and read them into nested dicts of numpy arrays.

`download_and_load_gpt2(model_size, models_dir)` -> (settings, params) is what notebook 05 calls.
`load_gpt2_params_from_tf_ckpt(ckpt_path, settings)` reads the TensorFlow checkpoint, by default
with `read_tf_checkpoint`, a reader of TensorFlow's checkpoint format written here with numpy
(no TensorFlow needed; every tensor's CRC32C is checked); `reader="tensorflow"` takes the
lecture's `tf.train` route and gives bit-identical arrays.

Every public function checks what it is given before any work: a wrong size ("124m", 124), a
folder that is a file, hparams.json or settings that do not fit the checkpoint, a damaged index or
data file raise TypeError, ValueError or CheckpointError (a ValueError) naming the value or file
and what to do; network failures raise course_data.DownloadError.

TensorFlow's checkpoint format, as far as this reader needs it:
- `model.ckpt.index` is a LevelDB-style sorted string table: data blocks of (key, value) entries,
  each block followed by a compression byte and a masked CRC32C, then an index block that points
  at the data blocks, and a 48-byte footer ending in a magic number. Key "" holds a
  BundleHeaderProto (number of shards, endianness, version); every other key is a tensor name
  whose value is a BundleEntryProto (dtype, shape, shard, offset, size, masked CRC32C).
- `model.ckpt.data-00000-of-00001` holds the tensors' raw little-endian bytes, back to back.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

import numpy as np

__all__ = [
    "MODEL_SIZES", "CHECKPOINT_FILES", "BASE_URLS", "MIRRORS_ENV", "GPT2_HPARAMS",
    "PUBLISHED_SIZES", "CheckpointError", "download_and_load_gpt2", "download_gpt2_files",
    "gpt2_file_urls", "expected_file_sizes", "count_gpt2_params",
    "load_gpt2_params_from_tf_ckpt", "read_tf_checkpoint", "read_tf_checkpoint_index",
]

MODEL_SIZES = ("124M", "355M", "774M", "1558M")
CHECKPOINT_FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
                    "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
# OpenAI's public storage first, then a mirror of the same files (the one the book
# "Build a Large Language Model (From Scratch)" falls back to). $COURSE_GPT2_MIRRORS can name
# more base URLs (separated by spaces or commas): they are tried first.
BASE_URLS = ("https://openaipublic.blob.core.windows.net/gpt-2/models",
             "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2")
MIRRORS_ENV = "COURSE_GPT2_MIRRORS"
KAGGLE_DATASET = "https://www.kaggle.com/datasets/xhlulu/openai-gpt2-weights"

# hparams.json of each released size (n_layer, n_head, n_embd: OpenAI's release notes and files).
GPT2_HPARAMS = {
    size: {"n_vocab": 50257, "n_ctx": 1024, "n_embd": c, "n_head": h, "n_layer": n}
    for size, (c, h, n) in {"124M": (768, 12, 12), "355M": (1024, 16, 24),
                            "774M": (1280, 20, 36), "1558M": (1600, 25, 48)}.items()
}
# Byte sizes as served by OpenAI's storage (and the mirror) for 124M and 355M. For 774M and 1558M
# no published list was found: their data shard's size follows from the architecture
# (4 bytes x count_gpt2_params), the three tokenizer/checkpoint files are the same as for the
# smaller sizes, and the index and meta files are checked by the index's own block CRCs and every
# tensor's CRC32C instead.
PUBLISHED_SIZES = {
    "124M": {"checkpoint": 77, "encoder.json": 1_042_301, "hparams.json": 90,
             "model.ckpt.data-00000-of-00001": 497_759_232, "model.ckpt.index": 5_215,
             "model.ckpt.meta": 471_155, "vocab.bpe": 456_318},
    "355M": {"checkpoint": 77, "encoder.json": 1_042_301, "hparams.json": 91,
             "model.ckpt.data-00000-of-00001": 1_419_292_672, "model.ckpt.index": 10_399,
             "model.ckpt.meta": 926_519, "vocab.bpe": 456_318},
}
_DATA_FILE = "model.ckpt.data-00000-of-00001"


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or not what the loader expects; says what to do."""


# ----- checking what a learner passes in -------------------------------------------------------

HPARAMS_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
# Names a learner may know the sizes by (the paper's, Hugging Face's) -> OpenAI's folder name.
_SIZE_NICKNAMES = {"small": "124M", "gpt2": "124M", "gpt2-small": "124M", "117M": "124M",
                   "medium": "355M", "gpt2-medium": "355M", "345M": "355M",
                   "large": "774M", "gpt2-large": "774M", "762M": "774M",
                   "xl": "1558M", "gpt2-xl": "1558M", "1.5B": "1558M", "1542M": "1558M"}


def _short(value, limit=120) -> str:
    """repr(value), cut to `limit` characters (random bytes or a huge dict stay readable)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _size_hint(model_size) -> str:
    """" Did you mean '124M'?" for a near miss ("124m", 124, "small", "gpt2-medium"), else ""."""
    text = str(model_size).strip()
    guess = next((s for s in MODEL_SIZES if text.upper() in (s.upper(), s[:-1])), None)
    guess = guess or {k.upper(): v for k, v in _SIZE_NICKNAMES.items()}.get(text.upper())
    return f" Did you mean {guess!r}?" if guess else ""


def _check_model_size(model_size) -> None:
    """A size is a string: one of MODEL_SIZES or the name of one folder (no path)."""
    if not isinstance(model_size, str):
        raise TypeError(f"model_size should be a string such as '124M' (one of "
                        f"{', '.join(MODEL_SIZES)}), not {type(model_size).__name__} "
                        f"{_short(model_size)}.{_size_hint(model_size)}")
    if model_size.strip() in ("", ".", "..") or any(c in model_size for c in "/\\\0"):
        raise ValueError(f"model_size {model_size!r} should be one of {', '.join(MODEL_SIZES)} "
                         "or the name of a folder under models_dir, not a path: pass the folder "
                         "that holds it as models_dir.")


def _check_folder_arg(folder, what) -> Path:
    """Path(folder), after checking it is a path and not an existing file."""
    if not isinstance(folder, (str, os.PathLike)) or isinstance(folder, bytes):
        raise TypeError(f"{what} should be a folder path (a str or pathlib.Path), not "
                        f"{type(folder).__name__} {_short(folder)}.")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder: pass the folder that holds "
                         "(or will hold) the model folders, such as 'models'.")
    return path


def _check_hparams(settings, source=None) -> dict:
    """settings, after checking it is OpenAI's hparams.json: positive integers HPARAMS_KEYS, with
    n_embd divisible by n_head. `source` (the file read) is named in the message, if given."""
    where = f"{source}" if source is not None else "settings"
    if not isinstance(settings, dict) and source is not None:
        raise CheckpointError(f"{where} should hold a JSON object like OpenAI's "
                              f"({_short(GPT2_HPARAMS['124M'])}), not {_short(settings)}. Is "
                              "this OpenAI's GPT-2 hparams.json?")
    if not isinstance(settings, dict):
        raise TypeError(f"settings should be a dict like OpenAI's hparams.json "
                        f"({_short(GPT2_HPARAMS['124M'])}), not {type(settings).__name__} "
                        f"{_short(settings)}.")
    bad = [k for k in HPARAMS_KEYS if isinstance(settings.get(k), bool)
           or not isinstance(settings.get(k), int) or settings[k] <= 0]
    if bad:
        raise CheckpointError(f"{where} should give positive integers {HPARAMS_KEYS}; {bad} are "
                              f"missing or wrong in {_short(settings, 300)}. Is this OpenAI's "
                              "GPT-2 hparams.json?")
    if settings["n_embd"] % settings["n_head"]:
        raise CheckpointError(f"{where}: n_embd {settings['n_embd']} is not divisible by "
                              f"n_head {settings['n_head']}.")
    return settings


# ----- downloading ---------------------------------------------------------------------------

def count_gpt2_params(hparams) -> int:
    """Number of parameters in OpenAI's checkpoint of a GPT-2 with these hparams (no head)."""
    _check_hparams(hparams)
    v, t, c, n = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"], hparams["n_layer"]
    per_block = (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c) + 4 * c
    return v * c + t * c + n * per_block + 2 * c


def expected_file_sizes(model_size) -> dict:
    """{file name: byte size} known for a released size (see PUBLISHED_SIZES); else {}."""
    _check_model_size(model_size)
    if model_size in PUBLISHED_SIZES:
        return dict(PUBLISHED_SIZES[model_size])
    if model_size in GPT2_HPARAMS:
        same = {f: PUBLISHED_SIZES["124M"][f] for f in ("checkpoint", "encoder.json", "vocab.bpe")}
        return {**same, _DATA_FILE: 4 * count_gpt2_params(GPT2_HPARAMS[model_size])}
    return {}


def _base_urls(base_urls=None) -> tuple:
    """base_urls (checked: a list of http(s) URLs), else $COURSE_GPT2_MIRRORS + BASE_URLS."""
    if base_urls is None:
        extra = os.environ.get(MIRRORS_ENV, "").replace(",", " ").split()
        where, base_urls = f"${MIRRORS_ENV}", tuple(extra) + BASE_URLS
    elif isinstance(base_urls, (str, bytes)) or not isinstance(base_urls, (list, tuple)):
        raise TypeError(f"base_urls should be a list of base URLs such as "
                        f"[{BASE_URLS[0]!r}], not {type(base_urls).__name__} "
                        f"{_short(base_urls)}.")
    else:
        where = "base_urls"
    if not base_urls:
        raise ValueError("base_urls is empty: give at least one base URL, or None for OpenAI's "
                         "storage and its mirror.")
    for base in base_urls:
        if not isinstance(base, str) or not re.match(r"https?://[^/\s]", base):
            raise ValueError(f"{where} holds {_short(base)}, which is not an http:// or https:// "
                             f"base URL (such as {BASE_URLS[0]!r}).")
    return tuple(base_urls)


def gpt2_file_urls(model_size, file_name, base_urls=None) -> list:
    """The URLs to try for one file, in order: base URL + "/" + size + "/" + name (as URLs)."""
    _check_model_size(model_size)
    if model_size not in MODEL_SIZES:
        raise ValueError(f"OpenAI's storage has the sizes {', '.join(MODEL_SIZES)}, not "
                         f"{model_size!r}.{_size_hint(model_size)}")
    if file_name not in CHECKPOINT_FILES:
        raise ValueError(f"file_name {_short(file_name)} is not one of the checkpoint's files: "
                         f"{', '.join(CHECKPOINT_FILES)}.")
    # Joined as URL text with "/", never with os.path.join (which writes "\" on Windows).
    return [f"{base.rstrip('/')}/{quote(model_size)}/{quote(file_name)}"
            for base in _base_urls(base_urls)]


def _fetch(file_name, dest: Path, urls, expected_size, attempts=3):
    """Download one file, trying each URL in turn; a cut connection is resumed up to `attempts`
    times from the same URL before moving on. Raises DownloadError listing what was tried."""
    from course_data import DownloadError, download_file

    part = dest.with_name(dest.name + ".part")
    problems = []
    for url in urls:
        for _ in range(attempts):
            before = part.stat().st_size if part.exists() else 0
            try:
                return download_file(url, dest, expected_size=expected_size, desc=file_name,
                                     manual_hint=False)
            except DownloadError as e:
                problems.append(str(e))
                if (part.stat().st_size if part.exists() else 0) <= before:
                    break  # no progress from this URL: try the next one
    raise DownloadError("\n  - ".join([f"Could not download {file_name}; tried:"] + problems))


def _where_to_get(model_dir: Path, model_size) -> str:
    size = model_size if model_size in MODEL_SIZES else "124M"
    return (f"Put OpenAI's seven files ({', '.join(CHECKPOINT_FILES)}) into {model_dir}: from "
            f"{BASE_URLS[0]}/{size}/<file name> (sizes {', '.join(MODEL_SIZES)}), or from "
            f"the Kaggle dataset xhlulu/openai-gpt2-weights ({KAGGLE_DATASET}), unzipped so "
            f"that the folder holds them directly.")


def download_gpt2_files(model_size, models_dir, base_urls=None) -> Path:
    """Make models_dir/model_size hold the seven files; download what is missing or incomplete.

    A folder that already holds all seven files (of the right sizes, where they are known) is
    used as it is, without the network. Returns the folder.
    """
    _check_model_size(model_size)
    model_dir = _check_folder_arg(models_dir, "models_dir") / model_size
    if model_dir.exists() and not model_dir.is_dir():
        raise ValueError(f"{model_dir} is a file, but it should be the folder of the model's "
                         "seven files: move the file away.")
    base_urls = None if base_urls is None else _base_urls(base_urls)  # checked before any work
    sizes = expected_file_sizes(model_size)

    def complete(name):
        path = model_dir / name
        return path.is_file() and (name not in sizes or path.stat().st_size == sizes[name])

    todo = [f for f in CHECKPOINT_FILES if not complete(f)]
    if not todo:
        return model_dir
    if model_size not in MODEL_SIZES:
        if not model_dir.is_dir():
            raise CheckpointError(
                f"Unknown GPT-2 model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)} "
                f"(or name a folder under {models_dir} that holds the seven checkpoint files)."
                + _size_hint(model_size))
        raise CheckpointError(
            f"The folder {model_dir} lacks {', '.join(todo)}. {model_size!r} is not one of "
            f"OpenAI's sizes ({', '.join(MODEL_SIZES)}), so they cannot be downloaded. "
            + _where_to_get(model_dir, model_size) + _size_hint(model_size))
    from course_data import DownloadError

    model_dir.mkdir(parents=True, exist_ok=True)
    todo.sort(key=lambda f: f == _DATA_FILE)  # the small files first: problems show early
    for name in todo:
        dest = model_dir / name
        if dest.is_file():  # wrong size: a cut-short copy is resumed, anything else replaced
            part = dest.with_name(dest.name + ".part")
            if dest.stat().st_size < sizes.get(name, -1) and not part.exists():
                os.replace(dest, part)
            else:
                dest.unlink()
        try:
            _fetch(name, dest, gpt2_file_urls(model_size, name, base_urls), sizes.get(name))
        except DownloadError as e:
            raise DownloadError(f"{e}\n{_where_to_get(model_dir, model_size)}") from None
    return model_dir


def download_and_load_gpt2(model_size, models_dir, *, reader="numpy", base_urls=None):
    """Return (settings, params) of GPT-2 `model_size` ("124M", "355M", "774M", "1558M", or any
    folder name under models_dir holding the seven files), downloading missing files first.

    settings is hparams.json; params the nested dict of `load_gpt2_params_from_tf_ckpt`. The
    folder's encoder.json and vocab.bpe also prime tiktoken's cache, so the tokenizer works offline.
    """
    _check_reader(reader)  # before any download
    model_dir = download_gpt2_files(model_size, models_dir, base_urls)
    settings = _read_hparams(model_dir / "hparams.json")
    known = GPT2_HPARAMS.get(model_size)
    if known is not None and settings != known:
        raise CheckpointError(
            f"{model_dir / 'hparams.json'} describes {settings}, but OpenAI's {model_size} model "
            f"has {known}: the folder holds another model's files. Move them away and try again.")
    _prime_tokenizer(model_dir)
    params = load_gpt2_params_from_tf_ckpt(str(model_dir / "model.ckpt"), settings, reader=reader)
    return settings, params


def _read_hparams(path: Path) -> dict:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON and UTF-8 errors
        raise CheckpointError(f"{path} is not a readable JSON file ({type(e).__name__}: "
                              f"{_short(str(e), 200)}). Download hparams.json again.") from None
    return _check_hparams(settings, path)


def _check_reader(reader) -> None:
    if reader not in ("numpy", "tensorflow"):
        raise ValueError(f"reader must be 'numpy' or 'tensorflow', not {_short(reader)}")


def _prime_tokenizer(model_dir: Path) -> None:
    """encoder.json and vocab.bpe are the files tiktoken's "gpt2" encoding loads: cache them."""
    from course_data import prime_tiktoken_cache

    try:
        prime_tiktoken_cache(model_dir)
    except (OSError, ValueError) as e:
        warnings.warn(f"GPT-2's tokenizer files in {model_dir} were not used ({e}); tiktoken will "
                      "download its own copies when it first needs them.", stacklevel=3)


# ----- reading the checkpoint into the lecture's nested dict -----------------------------------

def _expected_shapes(settings) -> dict:
    """{variable name: shape} of OpenAI's GPT-2 checkpoint with these hparams."""
    c, v, t = settings["n_embd"], settings["n_vocab"], settings["n_ctx"]
    shapes = {"model/wte": (v, c), "model/wpe": (t, c), "model/ln_f/g": (c,), "model/ln_f/b": (c,)}
    for i in range(settings["n_layer"]):
        for sub, shape in [("ln_1/g", (c,)), ("ln_1/b", (c,)), ("ln_2/g", (c,)), ("ln_2/b", (c,)),
                           ("attn/c_attn/w", (1, c, 3 * c)), ("attn/c_attn/b", (3 * c,)),
                           ("attn/c_proj/w", (1, c, c)), ("attn/c_proj/b", (c,)),
                           ("mlp/c_fc/w", (1, c, 4 * c)), ("mlp/c_fc/b", (4 * c,)),
                           ("mlp/c_proj/w", (1, 4 * c, c)), ("mlp/c_proj/b", (c,))]:
            shapes[f"model/h{i}/{sub}"] = shape
    return shapes


def _check_variables(found: dict, settings, ckpt_path, dtypes=None) -> None:
    """Compare the checkpoint's {name: shape} (and {name: dtype}, if given) with what hparams.json
    implies; explain mismatches."""
    if "model/wte" not in found:
        sample = ", ".join(sorted(found)[:4]) or "none"
        raise CheckpointError(
            f"{ckpt_path} is not one of OpenAI's GPT-2 checkpoints: it has no variable 'model/wte' "
            f"(its variables include {sample}). This loader reads GPT-2's TensorFlow release; "
            "for a Hugging Face model use GPTModel.from_pretrained.")
    blocks = {m.group(1) for m in map(re.compile(r"model/h(\d+)/").match, found) if m}
    if settings["n_layer"] != len(blocks):  # before listing the n_layer blocks' shapes
        raise CheckpointError(
            f"The checkpoint {ckpt_path} has {len(blocks)} transformer blocks, but its settings "
            f"say n_layer={settings['n_layer']} ({_short(settings, 300)}). The folder mixes files "
            "of different models; fetch all seven files of one size again.")
    not_float = [f"{n} ({dtypes[n]})" for n in sorted(dtypes or {})
                 if n.startswith("model/") and dtypes[n] != 1]  # TensorFlow's DT_FLOAT
    if not_float:
        raise CheckpointError(
            f"The checkpoint {ckpt_path} holds non-float32 GPT-2 variables {not_float[:3]} "
            "(TensorFlow dtype numbers); OpenAI's checkpoints are float32. The index is damaged: "
            "download model.ckpt.index again.")
    want = _expected_shapes(settings)
    missing = [n for n in want if n not in found]
    extra = [n for n in found if n.startswith("model/") and n not in want]
    wrong = [f"{n} is {found[n]}, hparams.json implies {want[n]}"
             for n in want if n in found and tuple(found[n]) != want[n]]
    if missing or extra or wrong:
        details = "; ".join(wrong[:3] + [f"missing {missing[:3]}"] * bool(missing)
                            + [f"unexpected {extra[:3]}"] * bool(extra))
        raise CheckpointError(
            f"The checkpoint {ckpt_path} does not match its hparams.json ({settings}): {details}. "
            "The folder mixes files of different models; fetch all seven files of one size again.")


def load_gpt2_params_from_tf_ckpt(ckpt_path, settings, *, reader="numpy"):
    """Nest the checkpoint's `model/...` variables: wte, wpe, blocks[i][...], g, b (squeezed).

    reader "numpy" (default): read_tf_checkpoint, CRC-checked, arrays memory-mapped from the
    shard; reader "tensorflow": TensorFlow's own checkpoint reader. Both give identical arrays.
    """
    _check_reader(reader)
    settings = _check_hparams(settings)
    if reader == "numpy":
        entries = read_tf_checkpoint_index(ckpt_path)[1]
        names_shapes = {n: e["shape"] for n, e in entries.items()}
        _check_variables(names_shapes, settings, ckpt_path,
                         {n: e["dtype"] for n, e in entries.items()})
        arrays = read_tf_checkpoint(ckpt_path, [n for n in names_shapes if n.startswith("model/")])
    elif reader == "tensorflow":
        arrays = _read_checkpoint_with_tensorflow(ckpt_path)
        _check_variables({n: a.shape for n, a in arrays.items()}, settings, ckpt_path)
    params = {"blocks": [{} for _ in range(settings["n_layer"])]}
    for name, array in arrays.items():
        if not name.startswith("model/"):
            continue
        parts = name.split("/")[1:]  # drop the leading "model/"
        target = params
        if parts[0].startswith("h"):  # "h0", "h1", ...: a transformer block
            target = params["blocks"][int(parts[0][1:])]
            parts = parts[1:]
        elif parts[0] == "ln_f":  # the final norm's g and b sit at the top level
            parts = parts[1:]
        for key in parts[:-1]:
            target = target.setdefault(key, {})
        target[parts[-1]] = np.squeeze(array)  # (1, C, 3C) -> (C, 3C): a view, no copy
    return params


def _read_checkpoint_with_tensorflow(ckpt_path):
    """{variable name: array} through TensorFlow's own checkpoint reader (the lecture's route)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(_check_prefix(ckpt_path)))
        return {name: reader.get_tensor(name)
                for name in sorted(reader.get_variable_to_shape_map())}
    except tf.errors.OpError as e:  # missing, damaged (bad CRC), not a checkpoint...
        raise CheckpointError(
            f"TensorFlow could not read the checkpoint {ckpt_path} ({type(e).__name__}: "
            f"{e.message}). A file is missing or damaged: download the seven files again. "
            "reader='numpy' names the file and tensor at fault." + _prefix_hint(ckpt_path)
        ) from None


# ----- a reader of TensorFlow's checkpoint format, with numpy --------------------------------

# TensorFlow's DataType enum (types.proto) -> numpy dtype, for the types this reader supports.
_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
              9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32,
              23: np.uint64, 8: np.complex64, 18: np.complex128}
_TF_DTYPE_NAMES = {7: "string", 14: "bfloat16", 20: "resource", 21: "variant"}
_TABLE_MAGIC = 0xDB4775248B80FB57  # the last 8 bytes of every LevelDB-style table
_FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the magic number
_CRC_CHUNK = 1 << 23


def _crc32c():
    try:
        import google_crc32c
    except ImportError as e:
        raise ImportError("Checking the checkpoint needs the google-crc32c package: "
                          "pip install google-crc32c") from e
    return google_crc32c


def _unmask(masked: int) -> int:
    """Undo LevelDB's CRC masking: masked = rotate_right(crc, 15) + 0xa282ead8."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _varint(buf, pos, where):
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError(f"{where}: a malformed number (varint); the file is damaged. "
                                  "Download it again.")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf, where):
    """(field number, value) pairs of a serialized protocol buffer message (wire format): an int
    for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1 or wire == 5:
            n = 8 if wire == 1 else 4
            value, pos = bytes(buf[pos:pos + n]), pos + n
        elif wire == 2:
            n, pos = _varint(buf, pos, where)
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise CheckpointError(f"{where}: unsupported protocol buffer wire type {wire}; the "
                                  "file is damaged. Download it again.")
        if pos > len(buf):
            raise CheckpointError(f"{where}: a record runs past its end; the file is damaged. "
                                  "Download it again.")
        yield field, value


def _typed(value, kind, field, where):
    """value, after checking the wire type gave the kind the field needs (int or bytes)."""
    if not isinstance(value, kind):
        raise CheckpointError(f"{where}: field {field} has the wrong protocol buffer wire type; "
                              "the file is damaged. Download it again.")
    return value


def _parse_entry(name, value, where) -> dict:
    """A BundleEntryProto: dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6, slices 7."""
    entry = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc": None,
             "sliced": False}
    for field, v in _proto_fields(value, where):
        if field == 1:
            entry["dtype"] = _typed(v, int, "dtype", where)
        elif field == 2:
            dims = []
            for f2, dim in _proto_fields(_typed(v, bytes, "shape", where), where):
                if f2 == 2:  # TensorShapeProto.dim -> Dim.size (field 1)
                    dim_fields = dict(_proto_fields(_typed(dim, bytes, "shape.dim", where), where))
                    size = _typed(dim_fields.get(1, 0), int, "shape.dim.size", where)
                    dims.append(size - (1 << 64) if size >= 1 << 63 else size)
                elif f2 == 3 and _typed(dim, int, "shape.unknown_rank", where):
                    dims = None  # unknown_rank
            entry["shape"] = tuple(dims) if dims is not None else None
        elif field in (3, 4, 5):
            key = {3: "shard", 4: "offset", 5: "size"}[field]
            entry[key] = _typed(v, int, key, where)
        elif field == 6:
            if not isinstance(v, bytes) or len(v) != 4:
                raise CheckpointError(f"{where}: its crc32c is not 4 bytes; the file is damaged. "
                                      "Download it again.")
            entry["crc"] = struct.unpack("<I", v)[0]
        elif field == 7:
            entry["sliced"] = True
    return entry


def _table_block(data: bytes, handle_buf, where):
    """Entries (key, value) of one table block, after checking its masked CRC32C."""
    offset, pos = _varint(handle_buf, 0, where)
    size, _ = _varint(handle_buf, pos, where)
    if offset + size + 5 > len(data):
        raise CheckpointError(f"{where}: a block lies past the end of the file; the file is "
                              "truncated. Download it again.")
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if _unmask(stored) != _crc32c().value(data[offset:offset + size + 1]):
        raise CheckpointError(f"{where}: a block's CRC32C does not match; the file is corrupted. "
                              "Download it again.")
    if data[offset + size] != 0:
        kind = {1: "Snappy-compressed"}.get(data[offset + size], f"type-{data[offset + size]}")
        raise CheckpointError(f"{where}: a {kind} block, which this reader does not support; "
                              "use reader='tensorflow'.")
    block = data[offset:offset + size]
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0] if size >= 4 else -1
    limit = len(block) - 4 - 4 * n_restarts
    if n_restarts < 0 or limit < 0:
        raise CheckpointError(f"{where}: a block's restart table does not fit in the block; "
                              "the file is damaged. Download it again.")
    pos, key, count = 0, b"", 0
    while pos < limit:  # entry: shared, non_shared, value_length, key delta, value
        shared, pos = _varint(block, pos, where)
        non_shared, pos = _varint(block, pos, where)
        n_value, pos = _varint(block, pos, where)
        if shared > len(key) or pos + non_shared + n_value > limit:
            raise CheckpointError(f"{where}: an entry runs past its block; the file is damaged. "
                                  "Download it again.")
        new_key = key[:shared] + block[pos:pos + non_shared]
        if count and new_key <= key:  # a table's keys are sorted and unique
            raise CheckpointError(f"{where}: its names are out of order; the file is damaged. "
                                  "Download it again.")
        key, pos, count = new_key, pos + non_shared, count + 1
        yield key, block[pos:pos + n_value]
        pos += n_value


def read_tf_checkpoint_index(ckpt_path):
    """(header, {tensor name: entry}) from `<ckpt_path>.index`, TensorFlow's V2 checkpoint index.

    Each entry: dtype (TF enum), shape, shard, offset, size, crc (masked CRC32C), sliced.
    """
    index_path = Path(f"{_check_prefix(ckpt_path)}.index")
    where = index_path.name
    try:
        data = index_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{index_path} is missing; a TensorFlow checkpoint needs it next "
                              "to its .data file(s)." + _prefix_hint(ckpt_path)) from None
    except OSError as e:
        raise CheckpointError(f"{index_path} cannot be read ({type(e).__name__}: {e}).") from None
    if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
        raise CheckpointError(f"{where} is not a TensorFlow checkpoint index (no table footer): "
                              "the file is truncated or of another kind. Download it again.")
    footer = data[len(data) - _FOOTER_SIZE:]
    _, pos = _varint(footer, 0, where)  # skip the metaindex handle (two varints)
    _, pos = _varint(footer, pos, where)
    index_handle = footer[pos:]
    header, entries = None, {}
    for _, handle in _table_block(data, index_handle, where):
        for key, value in _table_block(data, handle, where):
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise CheckpointError(f"{where}: a tensor name is not UTF-8 text "
                                      f"({_short(bytes(key), 60)}); the file is damaged. "
                                      "Download it again.") from None
            if name == "":  # BundleHeaderProto: num_shards 1, endianness 2, version 3
                fields = dict(_proto_fields(value, where))
                version = dict(_proto_fields(_typed(fields.get(3, b""), bytes, "version", where),
                                             where))
                header = {"num_shards": _typed(fields.get(1, 0), int, "num_shards", where),
                          "endianness": _typed(fields.get(2, 0), int, "endianness", where),
                          "min_consumer": _typed(version.get(2, 0), int, "min_consumer", where)}
            else:
                entries[name] = _parse_entry(name, value, f"{where} (tensor {name})")
    if header is None:
        raise CheckpointError(f"{where} has no header entry: not a TensorFlow V2 checkpoint.")
    if header["endianness"] != 0 or sys.byteorder != "little":
        raise CheckpointError(f"{where}: a big-endian checkpoint (or machine), which this reader "
                              "does not support; use reader='tensorflow'.")
    if header["min_consumer"] > 1:
        raise CheckpointError(f"{where} needs checkpoint format version "
                              f"{header['min_consumer']}; this reader knows version 1. "
                              "Use reader='tensorflow'.")
    return header, entries


def read_tf_checkpoint(ckpt_path, names=None, *, check_crc=True) -> dict:
    """{tensor name: numpy array} of a TensorFlow V2 checkpoint, without TensorFlow.

    Arrays are memory-mapped from the .data shard (pages load on first use; writing to an array
    changes only this process's copy). Each tensor's CRC32C is checked against the index.
    """
    if isinstance(names, str) or not (names is None or isinstance(names, (list, tuple))):
        raise TypeError(f"names should be a list of tensor names (or None for all), not "
                        f"{type(names).__name__} {_short(names)}" + (
                            f"; for one tensor write [{names!r}]." if isinstance(names, str)
                            else "."))
    if names is not None and not all(isinstance(n, str) for n in names):
        raise TypeError(f"names should hold tensor names (strings); got {_short(names)}.")
    header, entries = read_tf_checkpoint_index(ckpt_path)
    names = sorted(entries) if names is None else list(names)
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise CheckpointError(f"the checkpoint {Path(str(ckpt_path)).name} has no tensor(s) "
                              f"{unknown[:5]}; it has {len(entries)}, such as "
                              f"{sorted(entries)[:3]} (read_tf_checkpoint_index lists them).")
    crc32c = _crc32c() if check_crc else None
    shards, out = {}, {}
    try:
        for name in sorted(names, key=lambda n: (entries[n]["shard"], entries[n]["offset"])):
            e = entries[name]
            if e["sliced"]:
                raise CheckpointError(f"tensor {name}: a partitioned (sliced) variable, which "
                                      "this reader does not support; use reader='tensorflow'.")
            if e["dtype"] not in _TF_DTYPES:
                kind = _TF_DTYPE_NAMES.get(e["dtype"], f"enum {e['dtype']}")
                raise CheckpointError(f"tensor {name} has TensorFlow dtype {kind}, which this "
                                      "reader does not support; use reader='tensorflow'.")
            dtype = np.dtype(_TF_DTYPES[e["dtype"]])
            if e["shape"] is None or any(d < 0 for d in e["shape"]):
                raise CheckpointError(f"tensor {name} has an unknown shape {e['shape']}.")
            data_path = Path(f"{ckpt_path}.data-{e['shard']:05d}-of-{header['num_shards']:05d}")
            if e["size"] != math.prod(e["shape"]) * dtype.itemsize:
                raise CheckpointError(f"tensor {name}: the index says {e['size']} bytes, but "
                                      f"shape {e['shape']} of {dtype} needs "
                                      f"{math.prod(e['shape']) * dtype.itemsize}; "
                                      f"{Path(f'{ckpt_path}.index').name} is damaged.")
            if e["shard"] not in shards:
                shards[e["shard"]] = _open_shard(data_path)
            handle, mm, length = shards[e["shard"]]
            if e["offset"] + e["size"] > length:
                raise CheckpointError(
                    f"tensor {name} needs bytes {e['offset']:,}-{e['offset'] + e['size']:,} of "
                    f"{data_path.name}, but the file has only {length:,} bytes: it is truncated "
                    "(an interrupted download?). Delete it and download it again.")
            if crc32c is not None and e["crc"] is not None:
                crc, handle_pos, left = 0, e["offset"], e["size"]
                handle.seek(handle_pos)
                while left:
                    chunk = handle.read(min(left, _CRC_CHUNK))
                    if not chunk:
                        raise CheckpointError(f"{data_path.name} ended while reading {name}.")
                    crc, left = crc32c.extend(crc, chunk), left - len(chunk)
                if crc != _unmask(e["crc"]):
                    raise CheckpointError(
                        f"tensor {name} in {data_path.name}: its CRC32C is {crc:08x} but the "
                        f"index recorded {_unmask(e['crc']):08x}, so the file is corrupted. "
                        "Delete it and download it again.")
            count = math.prod(e["shape"])
            if mm is None or count == 0:
                array = np.zeros(e["shape"], dtype)
            else:  # a view of the mapped file: no copy; (n,) -> shape
                array = np.frombuffer(mm, dtype, count, e["offset"]).reshape(e["shape"])
            out[name] = array
    finally:
        for handle, _, _ in shards.values():
            handle.close()  # the mappings stay valid without the file handles
    return {name: out[name] for name in names}


def _check_prefix(ckpt_path) -> str:
    """The checkpoint's prefix as text (".../model.ckpt"), after checking its type."""
    if not isinstance(ckpt_path, (str, os.PathLike)) or isinstance(ckpt_path, bytes):
        raise TypeError(f"ckpt_path should be the checkpoint's prefix, a path such as "
                        f"'models/124M/model.ckpt', not {type(ckpt_path).__name__} "
                        f"{_short(ckpt_path)}.")
    return os.fspath(ckpt_path)


def _prefix_hint(ckpt_path) -> str:
    """What to pass instead when ckpt_path names the folder or one of the files."""
    path = Path(ckpt_path)
    if path.is_dir():
        return (f" {path} is a folder: ckpt_path is the prefix of the files, such as "
                f"{path / 'model.ckpt'}.")
    stem = re.sub(r"\.(index|meta|data-\d{5}-of-\d{5})$", "", str(path))
    if stem != str(path):
        return f" ckpt_path is the prefix of the files, without the ending: {stem}."
    return ""


def _open_shard(path: Path):
    """(file handle, copy-on-write memory map or None when empty, length) of one .data shard."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing; the checkpoint's tensors are stored in "
                              "it. Download it again.") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {e}).") from None
    length = os.fstat(handle.fileno()).st_size
    mm = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if length else None
    return handle, mm, length
