"""Pretraining data: a folder of .txt files -> GPT-2 token ids on disk, and batches read back.

`prepare_corpus(folder, out_dir)` tokenizes every `*.txt` file under `folder` (each file one
document, `<|endoftext|>` between documents) and writes `train.bin` and `val.bin`: the ids as
little-endian uint16, back to back, which `np.memmap` maps without reading (a corpus larger than
memory works), plus `meta.json` (tokenizer, counts). Files are read in chunks of a few MB, cut
where tokenization is unaffected, and written as they are tokenized, to a temporary file renamed
into place at the end.

`TokenWindows` reads such a file as windows of `context_length + 1` tokens (input and target
shifted by one), in an order shuffled once per epoch by a seed: the sample number alone says
which window comes next, so a checkpoint's data position is one integer. Used by pretraining.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from input_checks import check_int, first_existing, shape_of

__all__ = ["DTYPE", "prepare_corpus", "read_meta", "TokenWindows"]

DTYPE = np.dtype("<u2")  # uint16, little-endian: GPT-2's 50,257 ids fit (at most 65,536)
CHUNK_BYTES = 4 << 20  # bytes read and tokenized at a time
SEED_MAX = 2**32 - 1  # a window order's seed: seed * 1_000_003 + epoch fits torch's 64 bits


def _path(value, name) -> Path:
    """`value` (a str or os.PathLike) as a Path; TypeError for anything else."""
    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str)
                                                     and not value.strip()):
        raise TypeError(f"{name} must be a path (a str or pathlib.Path), not {shape_of(value)}")
    return Path(value)


def _check_tokenizer(tokenizer) -> None:
    """A tiktoken-like tokenizer: n_vocab and eot_token (whole numbers), of at most 65,536 ids
    (train.bin stores uint16), and encode_ordinary."""
    what = ("tokenizer must be a tiktoken Encoding (encode_ordinary, n_vocab, eot_token), such as "
            f"course_data.get_gpt2_tokenizer(), not {shape_of(tokenizer)}")
    n_vocab, eot = getattr(tokenizer, "n_vocab", None), getattr(tokenizer, "eot_token", None)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n_vocab, eot)):
        raise TypeError(what)
    if n_vocab > np.iinfo(DTYPE).max + 1:
        raise ValueError(f"the tokenizer has {n_vocab:,} ids, more than uint16 holds "
                         f"(65,536): train.bin stores uint16. Use GPT-2's tokenizer, or change "
                         f"pretraining_data.DTYPE to uint32 (twice the disk).")
    if not 0 <= eot < n_vocab or not callable(getattr(tokenizer, "encode_ordinary", None)):
        raise TypeError(what)


def _safe(byte: int) -> bool:
    """An ASCII character that is not whitespace (the bytes around a safe cut)."""
    return byte < 0x80 and not chr(byte).isspace()


def _text_chunks(path: Path, chunk_bytes: int | None = None):
    """Yield a file's text in pieces of about chunk_bytes, each cut before a space that sits
    between two ASCII non-space characters ("a| b"): GPT-2's pre-tokenizer splits there in any
    case (" b..." starts a piece of its own), so the pieces tokenize exactly as the whole text
    (tests/test_pretraining_script.py checks this against tiktoken on the whole text). Raises
    ValueError naming the file and the byte offset of a non-UTF-8 byte."""
    offset, rest, chunk_bytes = 0, b"", chunk_bytes or CHUNK_BYTES
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            data = rest + block
            cut = len(data)
            if block:  # not at the end yet: cut before the last safe space (none: read more)
                cut = 0
                pos = data.rfind(b" ", 1, len(data) - 1)
                while pos > 0:
                    if _safe(data[pos - 1]) and _safe(data[pos + 1]):
                        cut = pos
                        break
                    pos = data.rfind(b" ", 1, pos)
            piece, rest = data[:cut], data[cut:]
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path} is not UTF-8 text: byte 0x{piece[e.start]:02x} at offset "
                    f"{offset + e.start} ({e.reason}). Convert it to UTF-8 (for example "
                    f"`iconv -f latin1 -t utf-8 in.txt > out.txt`) or move it out of the folder."
                ) from None
            offset += len(piece)
            if text:
                yield text
            if not block:
                return


def prepare_corpus(folder, out_dir, val_fraction=0.1, tokenizer=None, progress=True) -> dict:
    """Tokenize every *.txt file under `folder` (sorted by path; each one document, with the
    tokenizer's end-of-text id between documents) into out_dir/train.bin and val.bin; the last
    `val_fraction` of the tokens is the validation split. Returns the summary in meta.json."""
    from tqdm import tqdm

    folder, out_dir = _path(folder, "folder"), _path(out_dir, "out_dir")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a number between 0 and 1, not "
                        f"{shape_of(val_fraction)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if tokenizer is None:
        from course_data import get_gpt2_tokenizer

        tokenizer = get_gpt2_tokenizer()
    _check_tokenizer(tokenizer)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the folder that holds .txt files.")
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise ValueError(f"{folder} holds no .txt files (searched its subfolders too); put the "
                         "texts there as UTF-8 .txt files, one document per file.")
    parent = first_existing(out_dir)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"out_dir {out_dir}: {parent} is a file, not a folder; choose "
                         "a folder for train.bin, val.bin and meta.json.")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_train, tmp_val = out_dir / "train.bin.tmp", out_dir / "val.bin.tmp"
    total_bytes = sum(p.stat().st_size for p in files)
    n_tokens, documents = 0, 0
    try:
        with open(tmp_train, "wb") as out, tqdm(total=total_bytes, unit="B", unit_scale=True,
                                                desc="tokenizing", disable=not progress,
                                                file=sys.stdout) as bar:
            for path in files:
                if documents:  # <|endoftext|> between documents
                    out.write(np.array([tokenizer.eot_token], DTYPE).tobytes())
                    n_tokens += 1
                for text in _text_chunks(path):
                    # encode_ordinary: a literal "<|endoftext|>" in a text stays plain text
                    ids = np.array(tokenizer.encode_ordinary(text), dtype=DTYPE)
                    out.write(ids.tobytes())
                    n_tokens += len(ids)
                    bar.update(len(text.encode("utf-8")))
                documents += 1
            out.flush()
            os.fsync(out.fileno())
        n_val = int(round(n_tokens * val_fraction))
        n_train = n_tokens - n_val
        if n_train < 2 or n_val < 2:
            raise ValueError(f"{folder}: {n_tokens} tokens are too few to split into training "
                             f"and validation parts of 2 or more tokens each; add text.")
        # the validation split is the file's tail: copy it out, then cut the training file
        ids = np.memmap(tmp_train, dtype=DTYPE, mode="r")
        with open(tmp_val, "wb") as out:
            for start in range(n_train, n_tokens, CHUNK_BYTES):
                out.write(ids[start:min(start + CHUNK_BYTES, n_tokens)].tobytes())
            out.flush()
            os.fsync(out.fileno())
        del ids
        os.truncate(tmp_train, n_train * DTYPE.itemsize)
        os.replace(tmp_train, out_dir / "train.bin")
        os.replace(tmp_val, out_dir / "val.bin")
    finally:
        for tmp in (tmp_train, tmp_val):
            tmp.unlink(missing_ok=True)
    meta = {"tokenizer": getattr(tokenizer, "name", "?"), "vocab_size": tokenizer.n_vocab,
            "eot_token": tokenizer.eot_token, "dtype": DTYPE.str, "documents": documents,
            "bytes": total_bytes, "tokens": n_tokens, "train_tokens": n_train,
            "val_tokens": n_val}
    tmp_meta = out_dir / "meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(tmp_meta, out_dir / "meta.json")
    return meta


def read_meta(data_dir) -> dict:
    """meta.json of a prepared folder; a missing one (a folder prepared elsewhere) means GPT-2.
    ValueError, naming the file, for a meta.json that is damaged, lacks what the training reads,
    or disagrees with the token files beside it (their size in tokens)."""
    data_dir = _path(data_dir, "data_dir")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} is not a folder; pass the folder that "
                                "scripts/prepare_data.py wrote (train.bin, val.bin, meta.json).")
    path = data_dir / "meta.json"
    if not path.is_file():
        return {"vocab_size": 50257, "eot_token": 50256, "dtype": DTYPE.str}
    again = "Prepare the folder again with scripts/prepare_data.py."
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f", line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__}{where}): damaged or "
                         f"not prepare_corpus's meta.json. {again}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds {shape_of(meta)}, not prepare_corpus's summary (a JSON "
                         f"object). {again}")
    for key, low in (("vocab_size", 1), ("eot_token", 0)):
        if key not in meta:
            raise ValueError(f"{path} lacks {key!r}. {again}")
        try:
            check_int(meta[key], f"{path}: {key}", minimum=low)
        except TypeError as e:
            raise ValueError(f"{e}. {again}") from None
    if meta["eot_token"] >= meta["vocab_size"]:
        raise ValueError(f"{path}: eot_token {meta['eot_token']} is not an id of its vocabulary "
                         f"of {meta['vocab_size']}. {again}")
    if meta.get("dtype", DTYPE.str) != DTYPE.str:
        raise ValueError(f"{path}: the token files hold {meta['dtype']!r}, but this code reads "
                         f"{DTYPE.str!r} (little-endian uint16). {again}")
    for split in ("train", "val"):
        count, file = meta.get(f"{split}_tokens"), data_dir / f"{split}.bin"
        if count is None or not file.is_file():
            continue
        size = file.stat().st_size
        if isinstance(count, bool) or not isinstance(count, int) or count * DTYPE.itemsize != size:
            raise ValueError(f"{path} says {file.name} holds {count!r} tokens, but the file has "
                             f"{size:,} bytes ({size / DTYPE.itemsize:,.1f} tokens): one of them "
                             f"is from another run, or cut short. {again}")
    return meta


class TokenWindows:
    """The token ids of a .bin file as `len(self)` windows of context_length + 1 tokens, starting
    every context_length tokens. Sample number i (counted over all epochs) is window
    perm_e[i % len] of epoch e = i // len, perm_e a permutation seeded by (seed, e);
    shuffle=False keeps file order (the fixed validation sample)."""

    def __init__(self, path, context_length: int, seed: int = 0, shuffle: bool = True):
        path = _path(path, "path")
        context_length = check_int(context_length, "context_length", minimum=1)
        seed = check_int(seed, "seed", minimum=0, maximum=SEED_MAX)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False, not {shape_of(shuffle)}")
        if path.is_dir():
            raise ValueError(f"{path} is a folder; TokenWindows reads one token file, such as "
                             f"{path / 'train.bin'}.")
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; make it with scripts/prepare_data.py.")
        if path.stat().st_size % DTYPE.itemsize:
            raise ValueError(f"{path} has an odd number of bytes: it is not a uint16 token file "
                             "(or was cut short). Prepare it again with scripts/prepare_data.py.")
        self.path, self.context_length = path, context_length
        num_tokens = path.stat().st_size // DTYPE.itemsize
        self.num_windows = (num_tokens - 1) // context_length
        if self.num_windows < 1:  # (checked before mapping: an empty file cannot be mapped)
            raise ValueError(f"{path} holds {num_tokens} tokens, fewer than one window of "
                             f"context_length + 1 = {context_length + 1}; use more text or a "
                             "shorter --context-length.")
        self.ids = np.memmap(path, dtype=DTYPE, mode="r")
        self.seed, self.shuffle, self._perm = seed, shuffle, (None, None)

    def __len__(self):
        return self.num_windows

    def window_start(self, sample: int) -> int:
        """The first token of sample number `sample`."""
        sample = check_int(sample, "sample", minimum=0, maximum=2**62)
        epoch, i = divmod(sample, self.num_windows)
        if not self.shuffle:
            return i * self.context_length
        if self._perm[0] != epoch:  # one permutation per epoch, kept while that epoch lasts
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.num_windows, generator=gen))
        return int(self._perm[1][i]) * self.context_length

    def batch(self, first_sample: int, batch_size: int):
        """Samples first_sample .. first_sample + batch_size - 1 as (inputs, targets), (B, T)
        int64 tensors each, targets the inputs shifted by one token."""
        first_sample = check_int(first_sample, "first_sample", minimum=0, maximum=2**62)
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        rows = [self.ids[s:s + self.context_length + 1]
                for s in map(self.window_start, range(first_sample, first_sample + batch_size))]
        xy = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T + 1)
        return xy[:, :-1], xy[:, 1:]
