"""course_data's download helper against a real HTTP server started here on 127.0.0.1.

Each test starts a small threaded `http.server` on a free port, points `fetch_data` or
`download_file` at it (through their `urls=`/`url` arguments), and shuts it down afterwards. The
server records every request, so a test can say "no request was made" or "the second request
asked for a Range". Nothing here uses the internet; tests on the real data files use the data
mirror ($COURSE_DATA_MIRROR) and are skipped without it.
"""

import gzip
import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile
from pathlib import Path

import pytest

import course_data
from course_data import DataFile, DownloadError, download_file, fetch_data

MIRROR = os.environ.get(course_data.MIRROR_ENV)
needs_mirror = pytest.mark.skipif(
    not (MIRROR and Path(MIRROR, "the-verdict.txt").is_file()),
    reason=f"{course_data.MIRROR_ENV} is not set to a folder with the course's data files",
)

# A toy data file: 300 KB of deterministic bytes, registered as a course data file for one test.
TOY_BYTES = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(300_000 // 32))
TOY_SHA256 = hashlib.sha256(TOY_BYTES).hexdigest()


class _Server:
    """A threaded HTTP server on 127.0.0.1: `routes` maps a path to (mode, bytes)."""

    def __init__(self):
        self.routes = {}
        self.requests = []  # (path, Range header or None), in order
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # seconds a connection may idle: no test can hang on the server

            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                mode, body = server.routes.get(self.path, ("404", b""))
                if mode == "404":
                    self.send_error(404, "Not Found")
                    return
                if mode == "gzip" and "gzip" in self.headers.get("Accept-Encoding", ""):
                    # as many web servers do for text: compress when the client accepts it
                    packed = gzip.compress(body)
                    self.send_response(200)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(packed)))
                    self.end_headers()
                    self.wfile.write(packed)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and mode != "no-range":  # "bytes=N-": serve from byte N on
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if mode == "cut" and len(server.requests) == 1:
                    # promise the whole file, send 40% of it, then close the connection
                    self.wfile.write(body[:len(body) * 2 // 5])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.02}, daemon=True)  # shutdown() waits up to one poll interval
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture
def toy(monkeypatch):
    """Register 'toy.bin' (TOY_BYTES, sha256 pinned) as a course data file for one test."""
    spec = DataFile(name="toy.bin", urls=("http://127.0.0.1:9/toy.bin",), sha256=TOY_SHA256,
                    mirror_paths=("toy.bin",), source="test bytes")
    monkeypatch.setitem(course_data.DATA_FILES, "toy.bin", spec)
    return spec


def closed_port_url(path="/toy.bin"):
    """A URL on 127.0.0.1 where nothing listens: connecting fails at once, as with no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# ----- cache, mirror, download --------------------------------------------------------------

def test_cache_hit_makes_no_request(tmp_path, server, toy):
    (tmp_path / "toy.bin").write_bytes(TOY_BYTES)
    path = fetch_data("toy.bin", data_dir_path=tmp_path, mirror="", urls=[server.url + "/toy.bin"])
    assert path == tmp_path / "toy.bin" and path.read_bytes() == TOY_BYTES
    assert server.requests == []


def test_a_bad_cached_copy_is_replaced_by_a_download(tmp_path, server, toy):
    (tmp_path / "toy.bin").write_bytes(TOY_BYTES[:-1] + b"!")  # one byte wrong
    server.routes["/toy.bin"] = ("ok", TOY_BYTES)
    path = fetch_data("toy.bin", data_dir_path=tmp_path, mirror="", urls=[server.url + "/toy.bin"])
    assert path.read_bytes() == TOY_BYTES
    assert len(server.requests) == 1


def test_mirror_hit_makes_no_request(tmp_path, server, toy):
    mirror = tmp_path / "usb-stick"
    mirror.mkdir()
    (mirror / "toy.bin").write_bytes(TOY_BYTES)
    data = tmp_path / "data"
    path = fetch_data("toy.bin", data_dir_path=data, mirror=mirror, urls=[server.url + "/toy.bin"])
    assert path.read_bytes() == TOY_BYTES
    assert server.requests == []
    assert files_in(data) == ["toy.bin"]  # no temporary files left behind


def test_mirror_from_the_environment_variable(tmp_path, server, toy, monkeypatch):
    mirror = tmp_path / "usb-stick"
    mirror.mkdir()
    (mirror / "toy.bin").write_bytes(TOY_BYTES)
    monkeypatch.setenv(course_data.MIRROR_ENV, str(mirror))
    path = fetch_data("toy.bin", data_dir_path=tmp_path / "data", urls=[server.url + "/toy.bin"])
    assert path.read_bytes() == TOY_BYTES and server.requests == []


def test_a_bad_mirror_copy_falls_back_to_the_download(tmp_path, server, toy):
    mirror = tmp_path / "usb-stick"
    mirror.mkdir()
    (mirror / "toy.bin").write_bytes(TOY_BYTES[:1000])  # truncated copy
    server.routes["/toy.bin"] = ("ok", TOY_BYTES)
    path = fetch_data("toy.bin", data_dir_path=tmp_path / "data", mirror=mirror,
                      urls=[server.url + "/toy.bin"])
    assert path.read_bytes() == TOY_BYTES
    assert server.requests == [("/toy.bin", None)]


def test_download_with_the_right_sha256(tmp_path, server, toy):
    server.routes["/toy.bin"] = ("ok", TOY_BYTES)
    path = fetch_data("toy.bin", data_dir_path=tmp_path, mirror="", urls=[server.url + "/toy.bin"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TOY_SHA256
    assert server.requests == [("/toy.bin", None)]
    assert files_in(tmp_path) == ["toy.bin"]


def test_the_first_url_failing_falls_back_to_the_next(tmp_path, server, toy):
    server.routes["/toy.bin"] = ("ok", TOY_BYTES)
    path = fetch_data("toy.bin", data_dir_path=tmp_path, mirror="",
                      urls=[server.url + "/gone.bin", server.url + "/toy.bin"])
    assert path.read_bytes() == TOY_BYTES
    assert [p for p, _ in server.requests] == ["/gone.bin", "/toy.bin"]


def test_download_file_checks_the_sha256(tmp_path, server):
    server.routes["/big.bin"] = ("ok", TOY_BYTES * 4)  # > 1 MiB: the progress bar is shown
    dest = download_file(server.url + "/big.bin", tmp_path / "big.bin",
                         expected_sha256=hashlib.sha256(TOY_BYTES * 4).hexdigest())
    assert dest.read_bytes() == TOY_BYTES * 4


# ----- what must fail, and how ----------------------------------------------------------------

def test_a_hash_mismatch_is_rejected_and_nothing_is_left(tmp_path, server, toy):
    server.routes["/toy.bin"] = ("ok", TOY_BYTES[:-1] + b"!")  # same size, one byte differs
    with pytest.raises(DownloadError) as err:
        fetch_data("toy.bin", data_dir_path=tmp_path, mirror="", urls=[server.url + "/toy.bin"])
    assert "sha256" in str(err.value) and TOY_SHA256 in str(err.value)
    assert files_in(tmp_path) == []  # neither the file nor a partial copy

    with pytest.raises(DownloadError, match="sha256"):
        download_file(server.url + "/toy.bin", tmp_path / "x.bin", expected_sha256=TOY_SHA256)
    assert files_in(tmp_path) == []


def test_a_cut_connection_leaves_no_complete_looking_file_and_the_next_call_resumes(
        tmp_path, server, toy):
    server.routes["/toy.bin"] = ("cut", TOY_BYTES)
    url = server.url + "/toy.bin"
    with pytest.raises(DownloadError) as err:
        fetch_data("toy.bin", data_dir_path=tmp_path, mirror="", urls=[url])
    assert "toy.bin" in str(err.value) and "resume" in str(err.value)
    assert not (tmp_path / "toy.bin").exists()
    # whatever is left is named as partial and is not the file
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.endswith(".part") for p in leftovers)
    assert all(p.read_bytes() != TOY_BYTES for p in leftovers)
    kept = sum(p.stat().st_size for p in leftovers)
    assert 0 < kept < len(TOY_BYTES)

    path = fetch_data("toy.bin", data_dir_path=tmp_path, mirror="", urls=[url])
    assert path.read_bytes() == TOY_BYTES
    assert server.requests == [("/toy.bin", None), ("/toy.bin", f"bytes={kept}-")]
    assert files_in(tmp_path) == ["toy.bin"]


def test_a_server_that_ignores_range_still_gives_the_right_file(tmp_path, server):
    server.routes["/toy.bin"] = ("no-range", TOY_BYTES)
    dest = tmp_path / "toy.bin"
    (tmp_path / "toy.bin.part").write_bytes(b"stale bytes from another file")
    download_file(server.url + "/toy.bin", dest, expected_sha256=TOY_SHA256)
    assert dest.read_bytes() == TOY_BYTES
    assert server.requests[0][1] is not None  # it asked to resume; the server said 200


def test_a_404_says_which_file_which_url_and_what_to_do(tmp_path, server, toy):
    url = server.url + "/missing/toy.bin"
    with pytest.raises(DownloadError) as err:
        fetch_data("toy.bin", data_dir_path=tmp_path, mirror="", urls=[url])
    msg = str(err.value)
    assert "toy.bin" in msg and url in msg and "404" in msg
    assert "by hand" in msg and course_data.MIRROR_ENV in msg
    assert files_in(tmp_path) == []


def test_no_network_and_no_mirror_gives_a_clear_error(tmp_path, toy, monkeypatch):
    monkeypatch.delenv(course_data.MIRROR_ENV, raising=False)
    url = closed_port_url()
    with pytest.raises(DownloadError) as err:
        fetch_data("toy.bin", data_dir_path=tmp_path, urls=[url])
    msg = str(err.value)
    assert msg.startswith("Could not get toy.bin")
    assert url in msg and "could not be reached" in msg
    assert f"No mirror folder is set ({course_data.MIRROR_ENV})" in msg
    assert "by hand" in msg
    # raised by fetch_data itself, not from deep inside requests/urllib3
    assert err.value.__cause__ is None and err.traceback[-1].name == "fetch_data"
    assert files_in(tmp_path) == []


def test_an_empty_mirror_folder_is_named_in_the_error(tmp_path, toy):
    (tmp_path / "usb-stick").mkdir()
    with pytest.raises(DownloadError, match="holds none of toy.bin"):
        fetch_data("toy.bin", data_dir_path=tmp_path / "data", mirror=tmp_path / "usb-stick",
                   urls=[closed_port_url()])


def test_an_unknown_name_lists_the_data_files(tmp_path):
    with pytest.raises(KeyError, match="the-verdict.txt"):
        fetch_data("the-verdict.text", data_dir_path=tmp_path)


# ----- the real data files, from the mirror -----------------------------------------------------

def spam_lines(data: bytes):
    """(n_lines, n_spam) of the spam file, parsed independently of course_data."""
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == ""  # ends with a newline
    labels = [line.split("\t")[0] for line in lines[:-1]]
    return len(labels), labels.count("spam")


@needs_mirror
def test_the_real_mirror_serves_every_file_without_a_request(tmp_path, server):
    import json

    got = {name: fetch_data(name, data_dir_path=tmp_path, mirror=MIRROR,
                            urls=[server.url + "/" + name])
           for name in course_data.DATA_FILES}
    assert server.requests == []
    text = got["the-verdict.txt"].read_text(encoding="utf-8")
    assert len(text) == 20479 and text.startswith("I HAD always thought Jack Gisburn")
    assert len(json.loads(got["instruction-data.json"].read_text(encoding="utf-8"))) == 1100
    assert spam_lines(got["SMSSpamCollection"].read_bytes()) == (5574, 747)
    encoder = json.loads(got["encoder.json"].read_text(encoding="utf-8"))
    assert len(encoder) == 50257 and encoder["<|endoftext|>"] == 50256
    merges = got["vocab.bpe"].read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and merges[1] == "Ġ t" and len(merges) == 50001
    assert files_in(tmp_path) == sorted(course_data.DATA_FILES)  # flat in data/


# ----- GPT-2's tokenizer files (encoder.json, vocab.bpe) ----------------------------------------

def test_the_tokenizer_files_are_data_files_at_tiktokens_urls_and_hashes():
    """The URLs are OpenAI's, the ones tiktoken loads; the hashes are the ones tiktoken pins."""
    for name in ("encoder.json", "vocab.bpe"):
        spec = course_data.DATA_FILES[name]
        assert spec.urls == ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
                              + name,)
        assert f"gpt2-tokenizer/{name}" in spec.mirror_paths
        assert course_data.TIKTOKEN_GPT2_FILES[name] == (spec.urls[0], spec.sha256)
    assert course_data.DATA_FILES["encoder.json"].sha256 == (
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    assert course_data.DATA_FILES["vocab.bpe"].sha256 == (
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")


@needs_mirror
@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_the_tokenizer_files_from_the_mirror_and_from_a_download(tmp_path, server, name):
    real = Path(MIRROR, "gpt2-tokenizer", name).read_bytes()
    # a mirror that holds the file flat, not under gpt2-tokenizer/
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / name).write_bytes(real)
    path = fetch_data(name, data_dir_path=tmp_path / "a", mirror=tmp_path / "flat",
                      urls=[server.url + "/" + name])
    assert path.read_bytes() == real and server.requests == []
    # no mirror: downloaded, with its pinned sha256 and its structural check
    server.routes["/" + name] = ("ok", real)
    path = fetch_data(name, data_dir_path=tmp_path / "b", mirror="",
                      urls=[server.url + "/" + name])
    assert path.read_bytes() == real and len(server.requests) == 1
    assert files_in(tmp_path / "b") == [name]


@pytest.mark.parametrize("name,bad", [
    ("encoder.json", b'{"!": 0, "<|endoftext|>": 1}'),     # far too few tokens
    ("encoder.json", b"<html>Not here</html>"),             # an error page, not JSON
    ("vocab.bpe", b"#version: 0.2\nt h\n"),                # one merge, not 50,000
])
def test_a_wrong_tokenizer_file_is_refused(tmp_path, name, bad):
    mirror = tmp_path / "mirror" / "gpt2-tokenizer"
    mirror.mkdir(parents=True)
    (mirror / name).write_bytes(bad)
    with pytest.raises(DownloadError) as err:
        fetch_data(name, data_dir_path=tmp_path / "data", mirror=mirror.parent,
                   urls=[closed_port_url("/" + name)])
    assert f"does not look like {name}" in str(err.value)
    assert files_in(tmp_path / "data") == []


@needs_mirror
def test_the_real_verdict_downloads_from_the_server_with_its_pinned_hash(tmp_path, server):
    real = Path(MIRROR, "the-verdict.txt").read_bytes()
    server.routes["/the-verdict.txt"] = ("ok", real)
    path = fetch_data("the-verdict.txt", data_dir_path=tmp_path, mirror="",
                      urls=[server.url + "/the-verdict.txt"])
    assert path.read_bytes() == real


def spam_zip(real: bytes) -> bytes:
    """A zip laid out like UCI's download: the data file plus a readme."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("SMSSpamCollection", real)
        z.writestr("readme", "SMS Spam Collection v.1\n")
    return buf.getvalue()


@needs_mirror
def test_the_spam_data_as_extracted_file_as_zip_and_as_zip_download(tmp_path, server):
    real = next(Path(MIRROR, rel).read_bytes() for rel in
                course_data.DATA_FILES["SMSSpamCollection"].mirror_paths
                if Path(MIRROR, rel).is_file())
    url = server.url + "/sms+spam+collection.zip"
    for layout in ["sms-spam-collection/SMSSpamCollection", "SMSSpamCollection",
                   "sms+spam+collection.zip"]:
        mirror = tmp_path / layout.replace("/", "_") / "mirror"
        (mirror / layout).parent.mkdir(parents=True)
        (mirror / layout).write_bytes(spam_zip(real) if layout.endswith(".zip") else real)
        data = mirror.parent / "data"
        path = fetch_data("SMSSpamCollection", data_dir_path=data, mirror=mirror, urls=[url])
        assert path.read_bytes() == real, layout
        assert files_in(data) == ["SMSSpamCollection"], layout
    assert server.requests == []

    server.routes["/sms+spam+collection.zip"] = ("ok", spam_zip(real))
    data = tmp_path / "downloaded"
    path = fetch_data("SMSSpamCollection", data_dir_path=data, mirror="", urls=[url])
    assert path.read_bytes() == real and len(server.requests) == 1
    assert files_in(data) == ["SMSSpamCollection"]  # the zip itself is not kept


@pytest.mark.parametrize("bad", [
    b"ham\tGo until jurong point\nspam\tFree entry\n",          # far too short
    ("ham\thello\n" * 4827 + "spam\tbuy\n" * 746 + "maybe\tx\n").encode(),  # unknown label
    ("ham,hello\n" * 4827 + "spam,buy\n" * 747).encode(),        # commas, not tabs
])
def test_a_structurally_wrong_spam_file_is_refused(tmp_path, server, bad):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "SMSSpamCollection").write_bytes(bad)
    with pytest.raises(DownloadError) as err:
        fetch_data("SMSSpamCollection", data_dir_path=tmp_path / "data", mirror=mirror,
                   urls=[server.url + "/sms.zip"])
    assert "does not look like SMSSpamCollection" in str(err.value)
    assert "5,574" in str(err.value)
    assert files_in(tmp_path / "data") == []


def test_download_asks_for_the_bytes_themselves_not_a_compressed_stream(server, tmp_path):
    """A server that gzips when allowed: Content-Length would count compressed bytes, and
    resuming by byte offset would be meaningless, so the download must ask for identity."""
    server.routes["/toy.bin"] = ("gzip", TOY_BYTES)
    dest = download_file(server.url + "/toy.bin", tmp_path / "toy.bin",
                         expected_sha256=TOY_SHA256)
    assert dest.read_bytes() == TOY_BYTES
