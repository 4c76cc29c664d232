"""Course data: download, verify and cache the data sets; use GPT-2's tokenizer offline.

Every notebook gets its data through `fetch_data(name)`, which
  1. returns the copy under `data/` if it is there and passes its check;
  2. else copies it from a local mirror folder, if the environment variable COURSE_DATA_MIRROR
     names one (an offline classroom's USB stick; CI points it at a folder of real copies);
  3. else downloads it from its canonical URL (then any fallback URL).
Whatever it gets is verified (sha256 where the exact bytes are known, a structural check besides)
before it is moved into place, so a partial or corrupted file never passes for a good one.

The data files are the course's texts and data sets, and GPT-2's tokenizer files encoder.json
and vocab.bpe (notebook 01 reads them into its own BPE loop).

`download_file` is the one downloader of the course; gpt_download3.py uses it for GPT-2's weights.
`get_gpt2_tokenizer()` returns tiktoken's "gpt2" encoding, priming tiktoken's cache from local
copies of encoder.json and vocab.bpe when the mirror holds them (see `prime_tiktoken_cache`).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DownloadError", "UnknownDataFileError", "DataFile", "DATA_FILES", "MIRROR_ENV", "data_dir",
    "download_file", "fetch_data", "sha256_of", "TIKTOKEN_GPT2_FILES", "tiktoken_cache_dir",
    "prime_tiktoken_cache", "get_gpt2_tokenizer",
]

MIRROR_ENV = "COURSE_DATA_MIRROR"  # a folder that holds copies of the course's files
DATA_DIR_ENV = "COURSE_DATA_DIR"  # where downloads are cached (default: data/ in the repository)
CHUNK = 1 << 20  # bytes read per step when hashing; the progress bar shows from this size on
NET_CHUNK = 1 << 16  # bytes read per step when downloading (a cut connection loses < this)


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its check; the message says what to do."""


class UnknownDataFileError(ValueError, KeyError):
    """fetch_data was asked for a name that is not a course data file (a KeyError too, as
    earlier versions raised)."""

    def __str__(self):  # KeyError's own str() would put the message in quotes
        return str(self.args[0]) if self.args else ""


# ----- checking what a learner passes in -------------------------------------------------------

def _short(value, limit=120) -> str:
    """repr(value), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _path_arg(value, what) -> Path:
    """Path(value), after checking it is a path: an int would be taken for a file descriptor."""
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise TypeError(f"{what} should be a path (a str or pathlib.Path), not "
                        f"{type(value).__name__} {_short(value)}.")
    return Path(value)


def _folder_arg(value, what) -> Path:
    """_path_arg, and not an existing file (a folder that does not exist yet is fine)."""
    path = _path_arg(value, what)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder: pass a folder (it is created "
                         "if needed).")
    return path


def _check_url(url, what="url") -> str:
    if not isinstance(url, str) or not re.match(r"https?://[^/\s]", url):
        raise ValueError(f"{what} should be an http:// or https:// URL, not {_short(url)}.")
    return url


def _url_list(urls) -> tuple:
    """urls (a list or tuple of http(s) URLs), checked, as a tuple."""
    if isinstance(urls, (str, bytes)) or not isinstance(urls, (list, tuple)):
        raise TypeError(f"urls should be a list of URLs, not {type(urls).__name__} "
                        f"{_short(urls)}" + (f"; for one URL write [{urls!r}]."
                                             if isinstance(urls, str) else "."))
    return tuple(_check_url(u, "each of urls") for u in urls)


def data_dir() -> Path:
    """The folder that caches the course's data: $COURSE_DATA_DIR, else the repository's data/."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    here = Path(__file__).resolve().parent
    if (here / "pyproject.toml").exists():  # running from the repository (editable install)
        return here / "data"
    return Path.cwd() / "data"


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, as a hex string (read in chunks, so large files are fine)."""
    path = _path_arg(path, "path")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; sha256_of needs a file.")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; sha256_of needs an existing file.")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_hint(dest: Path, urls, mirror: bool = True) -> str:
    first = urls[0] if urls else "its source"
    return (
        f"To place it by hand: download {first} in a browser and save it as {dest}"
        + (f", or set {MIRROR_ENV} to a folder that holds a copy." if mirror else ".")
    )


def _root_cause(e: BaseException) -> BaseException:
    """The innermost error behind a requests error (e.g. "Name or service not known")."""
    for _ in range(10):
        reason = getattr(e, "reason", None)
        arg = e.args[0] if e.args and isinstance(e.args[0], BaseException) else None
        inner = next((x for x in (reason, e.__cause__, e.__context__, arg)
                      if isinstance(x, BaseException) and x is not e), None)
        if inner is None:
            break
        e = inner
    return e


def download_file(url: str, dest, *, expected_sha256: str | None = None,
                  expected_size: int | None = None, desc: str | None = None,
                  timeout: float = 30.0, resume: bool = True, manual_hint: bool = True) -> Path:
    """Download `url` to `dest` atomically, with a progress bar; return `dest`.

    Bytes go to `dest.part` first (a later call resumes it with an HTTP Range request); only
    after the size and sha256 checks pass is it renamed to `dest`. Raises DownloadError, whose
    message ends with how to place the file by hand (unless manual_hint=False); TypeError or
    ValueError, before any request, for arguments that cannot work.
    """
    import requests  # imported here so that importing this module stays cheap
    from tqdm import tqdm  # text bar on stdout: reads the same live and in a saved notebook

    _check_url(url)
    dest = _path_arg(dest, "dest")
    if dest.is_dir() or not dest.name:
        raise ValueError(f"dest {dest} is a folder; give the path of the file to write, such as "
                         f"{dest / url.rstrip('/').rsplit('/', 1)[-1]}.")
    _folder_arg(dest.parent, "the folder of dest")
    if expected_sha256 is not None:
        if not isinstance(expected_sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}",
                                                                    expected_sha256):
            raise ValueError(f"expected_sha256 should be 64 hexadecimal digits (a sha256), not "
                             f"{_short(expected_sha256)}.")
        expected_sha256 = expected_sha256.lower()
    if expected_size is not None and (isinstance(expected_size, bool)
                                      or not isinstance(expected_size, int)):
        raise TypeError(f"expected_size should be a number of bytes (an int), not "
                        f"{type(expected_size).__name__} {_short(expected_size)}.")
    if expected_size is not None and expected_size < 0:
        raise ValueError(f"expected_size should be 0 or more bytes, not {expected_size}.")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout should be a number of seconds, not {_short(timeout)}.")
    if not 0 < timeout <= 86_400:  # longer waits overflow the socket layer's clock
        raise ValueError(f"timeout should be a positive number of seconds, at most 86400 (a "
                         f"day; it bounds each wait for the server, not the download), not "
                         f"{timeout}.")
    if desc is not None and not isinstance(desc, str):
        raise TypeError(f"desc should be a short text (or None), not {_short(desc)}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if (resume and part.exists()) else 0
    if expected_size is not None and have >= expected_size:  # not a proper prefix of the file
        have = 0
    # The bytes themselves, not a gzip stream: sizes, sha256 and Range offsets refer to them.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    name = desc or dest.name  # for messages
    hint = " " + _manual_hint(dest, [url], mirror=False) if manual_hint else ""
    received, answered = 0, False  # bytes received by this call; did the server answer?
    try:
        with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
            answered = True
            resumed = (have > 0 and r.status_code == 206
                       and r.headers.get("Content-Range", "").startswith(f"bytes {have}-"))
            if have and not resumed and r.status_code in (206, 416):
                r.close()  # the server cannot continue where the last call stopped: restart
                part.unlink(missing_ok=True)
                return download_file(url, dest, expected_sha256=expected_sha256,
                                     expected_size=expected_size, desc=desc,
                                     timeout=timeout, resume=False, manual_hint=manual_hint)
            if r.status_code != 200 and not resumed:
                why = ", so the file is not at that address" if r.status_code == 404 else ""
                raise DownloadError(
                    f"Downloading {name} failed: {url} answered HTTP {r.status_code} "
                    f"({r.reason}){why}." + hint
                )
            if not resumed:
                have = 0  # a full answer (the server may ignore Range): start the file afresh
            length = r.headers.get("Content-Length")
            total = have + int(length) if length is not None else expected_size
            with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc or dest.name, disable=total is not None and total < CHUNK,
                file=sys.stdout, mininterval=1.0,
            ) as bar:
                for chunk in r.iter_content(chunk_size=NET_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except DownloadError:
        raise
    except requests.RequestException as e:
        if answered:
            kept = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"Downloading {name} from {url} broke off after {received:,} bytes "
                f"({type(e).__name__}). The {kept:,} bytes received so far are kept in "
                f"{part.name}; call again to resume from there."
            ) from e
        cause = _root_cause(e)
        raise DownloadError(
            f"Could not download {name}: {url} could not be reached "
            f"({type(cause).__name__}: {cause}). Check the network connection." + hint
        ) from e
    size = part.stat().st_size
    want = expected_size if expected_size is not None else total
    if want is not None and size > want:
        part.unlink()
        raise DownloadError(f"Downloading {url} gave {size:,} bytes, more than the expected "
                            f"{want:,}; they were deleted. Try again.")
    if want is not None and size < want:
        raise DownloadError(
            f"Downloading {name} from {url} stopped early: got {size:,} of {want:,} bytes "
            f"(kept in {part.name}; call again to resume from there)."
        )
    if expected_sha256 is not None:
        got = sha256_of(part)
        if got != expected_sha256:
            part.unlink()
            raise DownloadError(
                f"{url} gave bytes whose sha256 is {got}, not the expected {expected_sha256}; "
                "they were deleted, nothing was saved. Try again later." + hint
            )
    os.replace(part, dest)
    return dest


# ----- the course's data sets ------------------------------------------------------------------

def _check_spam_tsv(path: Path) -> None:
    """Structure of the SMS Spam Collection: 5,574 lines `label<TAB>text`, 747 of them spam."""
    lines = path.read_text(encoding="utf-8").splitlines()
    labels = [line.split("\t", 1)[0] for line in lines]
    bad = [i + 1 for i, line in enumerate(lines) if line.count("\t") != 1
           or labels[i] not in ("ham", "spam")]
    n_spam = labels.count("spam")
    if bad or len(lines) != 5574 or n_spam != 747:
        raise ValueError(
            f"expected 5,574 lines 'ham|spam<TAB>text' with 747 spam; found {len(lines):,} lines, "
            f"{n_spam} spam, {len(bad)} malformed (first at line {bad[0] if bad else '-'})"
        )


def _check_instruction_json(path: Path) -> None:
    import json
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or len(data) != 1100:
        raise ValueError("expected a JSON list of 1,100 entries")


def _check_gpt2_encoder(path: Path) -> None:
    """GPT-2's vocabulary: a JSON object of 50,257 tokens, <|endoftext|> the last id."""
    import json
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or len(data) != 50257 or data.get("<|endoftext|>") != 50256:
        raise ValueError("expected a JSON object of 50,257 tokens with <|endoftext|> = 50256")


def _check_gpt2_merges(path: Path) -> None:
    """GPT-2's merges: a '#version' line, then 50,000 lines 'first second'."""
    lines = path.read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines[1:] if line]
    if not lines or not lines[0].startswith("#version") or len(merges) != 50000 or any(
            line.count(" ") != 1 for line in merges):
        raise ValueError("expected a '#version' line and 50,000 merge lines 'first second'")


@dataclass(frozen=True)
class DataFile:
    """One data file of the course: where it comes from and how it is checked."""
    name: str                    # file name under data/
    urls: tuple                  # canonical URL first, then fallbacks
    sha256: str | None           # of the file as stored under data/
    mirror_paths: tuple          # where a mirror folder may hold it (relative paths)
    source: str                  # for messages and data/README.md
    zip_member: str | None = None  # the URLs serve a zip; this member is the file
    check: Callable | None = None  # structural check: raises ValueError


DATA_FILES = {
    "the-verdict.txt": DataFile(
        name="the-verdict.txt",
        urls=("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
              "ch02/01_main-chapter-code/the-verdict.txt",),
        sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
        mirror_paths=("the-verdict.txt",),
        source="Edith Wharton, 'The Verdict' (1908), public domain",
    ),
    "instruction-data.json": DataFile(
        name="instruction-data.json",
        urls=("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
              "ch07/01_main-chapter-code/instruction-data.json",),
        sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
        mirror_paths=("instruction-data.json",),
        source="1,100 Alpaca-style instructions, rasbt/LLMs-from-scratch (Apache-2.0)",
        check=_check_instruction_json,
    ),
    "SMSSpamCollection": DataFile(
        name="SMSSpamCollection",
        urls=("https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
              "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"),
        sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
        mirror_paths=("sms-spam-collection/SMSSpamCollection", "SMSSpamCollection",
                      "sms+spam+collection.zip", "smsspamcollection.zip"),
        source="SMS Spam Collection v.1, UCI ML Repository (CC BY 4.0)",
        zip_member="SMSSpamCollection",
        check=_check_spam_tsv,
    ),
    # GPT-2's tokenizer files, for the BPE merge loop of notebook 01 (tiktoken reads the same
    # two files from the same URLs and pins the same sha256; see TIKTOKEN_GPT2_FILES)
    "encoder.json": DataFile(
        name="encoder.json",
        urls=("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",),
        sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        mirror_paths=("gpt2-tokenizer/encoder.json", "encoder.json"),
        source="OpenAI's GPT-2 BPE vocabulary (token -> id), published with GPT-2",
        check=_check_gpt2_encoder,
    ),
    "vocab.bpe": DataFile(
        name="vocab.bpe",
        urls=("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",),
        sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        mirror_paths=("gpt2-tokenizer/vocab.bpe", "vocab.bpe"),
        source="OpenAI's GPT-2 BPE merges, published with GPT-2",
        check=_check_gpt2_merges,
    ),
}


def _verify(spec: DataFile, path: Path) -> str | None:
    """None if `path` is the good file, else what is wrong with it."""
    if spec.check is not None:  # first, as its message says more than a hash can
        try:
            spec.check(path)
        except (ValueError, RecursionError) as e:  # ValueError: JSON and UTF-8 errors too
            return f"it does not look like {spec.name}: {_short(str(e), 300)}"
    if spec.sha256 is not None:
        got = sha256_of(path)
        if got != spec.sha256:
            return f"its sha256 is {got}, not {spec.sha256}"
    return None


def _extract_member(zip_path: Path, member: str, out: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as z:
            names = [n for n in z.namelist() if Path(n).name == member]
            if not names:
                raise ValueError(f"the zip has no member {member!r} (it has {z.namelist()})")
            with z.open(names[0]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    # What a damaged zip raises: BadZipFile (a bad CRC too), zlib.error (a damaged deflate
    # stream), EOFError (a cut one), NotImplementedError (an unknown compression method),
    # RuntimeError (an encrypted member), struct.error and OverflowError (damaged headers).
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError,
            RuntimeError, struct.error, OverflowError) as e:
        raise ValueError(f"not a valid zip file ({type(e).__name__}: {e})") from None


def _install(spec: DataFile, candidate: Path, dest: Path, origin: str) -> str | None:
    """Verify `candidate` (a copy or zip) and move the good file to `dest`; else say why not."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staged = Path(tmp) / spec.name
        try:
            if spec.zip_member and zipfile.is_zipfile(candidate):
                _extract_member(candidate, spec.zip_member, staged)
            else:
                shutil.copyfile(candidate, staged)
        except (OSError, ValueError) as e:
            return f"{origin}: {e}"
        problem = _verify(spec, staged)
        if problem:
            return f"{origin}: {problem}"
        os.replace(staged, dest)
    return None


def fetch_data(name: str, *, data_dir_path=None, mirror=None, urls=None) -> Path:
    """Return the path of a verified copy of data file `name` (see DATA_FILES); fetch it if needed.

    Looks in data/ first, then in the mirror folder ($COURSE_DATA_MIRROR), then downloads.
    Raises DownloadError with what was tried and how to place the file by hand; TypeError or
    ValueError (UnknownDataFileError for a name not in DATA_FILES) for arguments that cannot work.
    """
    if not isinstance(name, str):
        raise TypeError(f"name should be the name of a course data file (a string), one of "
                        f"{list(DATA_FILES)}; not {type(name).__name__} {_short(name)}.")
    if name not in DATA_FILES:
        close = difflib.get_close_matches(name.lower(), [n.lower() for n in DATA_FILES], 1, 0.6)
        guess = next((n for n in DATA_FILES if close and n.lower() == close[0]), None)
        raise UnknownDataFileError(
            f"unknown data file {name!r}; the course's data files: {list(DATA_FILES)}"
            + (f". Did you mean {guess!r}?" if guess else ""))
    spec = DATA_FILES[name]
    if data_dir_path is not None:
        folder = _folder_arg(data_dir_path, "data_dir_path")
    else:
        folder = _folder_arg(data_dir(), f"the data folder (${DATA_DIR_ENV} or data/)")
    if mirror is not None and mirror != "":
        _path_arg(mirror, "mirror")
    urls = _url_list(urls) if urls is not None else spec.urls
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / spec.name
    if dest.is_dir():
        raise ValueError(f"{dest} is a folder, where the data file {spec.name} belongs: move it "
                         "away and call again.")
    problems = []
    if dest.exists():
        problem = _verify(spec, dest)
        if problem is None:
            return dest
        problems.append(f"the copy in {dest}: {problem} (it will be replaced)")
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if mirror:
        candidates = [Path(mirror) / rel for rel in spec.mirror_paths]
        for candidate in candidates:
            if candidate.is_file():
                problem = _install(spec, candidate, dest, f"mirror copy {candidate}")
                if problem is None:
                    return dest
                problems.append(problem)
        if not Path(mirror).is_dir():
            problems.append(f"the mirror folder {mirror} ({MIRROR_ENV}) "
                            + ("is a file, not a folder" if Path(mirror).exists()
                               else "does not exist"))
        elif not any(c.is_file() for c in candidates):
            problems.append(f"the mirror folder {mirror} ({MIRROR_ENV}) holds none of "
                            f"{', '.join(spec.mirror_paths)}")
    for url in urls:
        download_to = folder / (spec.name + (".zip" if spec.zip_member else ".download"))
        try:
            download_file(url, download_to, desc=spec.name, manual_hint=False,
                          expected_sha256=None if spec.zip_member else spec.sha256)
        except DownloadError as e:
            problems.append(str(e))
            continue
        problem = _install(spec, download_to, dest, f"download from {url}")
        download_to.unlink(missing_ok=True)
        if problem is None:
            return dest
        problems.append(problem)
    tried = "\n  - ".join(problems) or "nothing could be tried"
    raise DownloadError(
        f"Could not get {spec.name} ({spec.source}).\n  - {tried}\n"
        + (f"No mirror folder is set ({MIRROR_ENV}).\n" if not mirror else "")
        + _manual_hint(dest, urls)
    )


# ----- GPT-2's tokenizer offline ----------------------------------------------------------------

# The files tiktoken's "gpt2" encoding loads, the URLs it loads them from, and the sha256 it pins.
# They are course data files too (DATA_FILES), so both lists share one URL and hash.
TIKTOKEN_GPT2_FILES = {name: (DATA_FILES[name].urls[0], DATA_FILES[name].sha256)
                       for name in ("vocab.bpe", "encoder.json")}


def tiktoken_cache_dir() -> Path:
    """The folder tiktoken reads cached files from (the same rule as tiktoken/load.py)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def prime_tiktoken_cache(folder) -> Path:
    """Copy `folder`'s encoder.json and vocab.bpe into tiktoken's cache; return the cache folder.

    tiktoken names each cached file by the sha1 of its URL and checks the sha256 it pins, so the
    files are checked here first: a wrong file is refused with a clear error, never cached.
    """
    folder, cache = _path_arg(folder, "folder"), tiktoken_cache_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the folder that holds GPT-2's "
                                "encoder.json and vocab.bpe (any GPT-2 model folder).")
    if cache.exists() and not cache.is_dir():
        raise ValueError(f"tiktoken's cache folder {cache} ($TIKTOKEN_CACHE_DIR) is a file: "
                         "point TIKTOKEN_CACHE_DIR at a folder.")
    for fname, (_, sha) in TIKTOKEN_GPT2_FILES.items():  # check both before caching either
        src = folder / fname
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing; GPT-2's tokenizer needs {fname} there.")
        if sha256_of(src) != sha:
            raise ValueError(
                f"{src} is not GPT-2's {fname}: its sha256 differs from the one tiktoken pins. "
                f"Replace it with a good copy (from any GPT-2 model folder, or {MIRROR_ENV})."
            )
    cache.mkdir(parents=True, exist_ok=True)
    for fname, (url, sha) in TIKTOKEN_GPT2_FILES.items():
        src = folder / fname
        target = cache / hashlib.sha1(url.encode()).hexdigest()
        if not (target.exists() and sha256_of(target) == sha):
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
    return cache


def get_gpt2_tokenizer():
    """tiktoken's "gpt2" encoding; offline too when the mirror holds gpt2-tokenizer/ files."""
    import tiktoken

    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        for sub in ("gpt2-tokenizer", "."):
            if all((Path(mirror) / sub / f).is_file() for f in TIKTOKEN_GPT2_FILES):
                prime_tiktoken_cache(Path(mirror) / sub)
                break
    try:
        return tiktoken.get_encoding("gpt2")
    except OSError as e:  # requests' errors are OSErrors too
        cause = _root_cause(e)
        raise DownloadError(
            "tiktoken could not download GPT-2's tokenizer files (encoder.json, vocab.bpe): "
            f"{type(cause).__name__}: {cause}. Connect to the network, or set {MIRROR_ENV} to a "
            "folder that holds gpt2-tokenizer/encoder.json and gpt2-tokenizer/vocab.bpe (every "
            "GPT-2 model folder has both files; course_data.prime_tiktoken_cache(folder) uses "
            "one directly)."
        ) from None

