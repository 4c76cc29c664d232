"""Tests of notebook 07's LLM-judge client (previous_chapters.py, section 07) against real HTTP
servers on 127.0.0.1 started here: one that speaks Ollama's wire format (GET /api/version; POST
/api/chat streamed as JSON lines, chunked), one that answers garbage, one that errs, one that
hangs, and a closed port."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from previous_chapters import (
    check_if_running,
    format_judge_prompt,
    generate_model_scores,
    ollama_base_url,
    parse_score,
    query_model,
)


class FakeOllama(BaseHTTPRequestHandler):
    """Answers like Ollama. The server's `behaviour` picks the answer to POST /api/chat:
    "ollama" streams server.reply(prompt) in pieces; "garbage" sends HTML; "missing" a 404 error;
    "error" an error line mid-stream; "no_done" a stream without its final line; "hang" sleeps."""

    protocol_version = "HTTP/1.1"  # chunked transfer encoding, as Ollama streams

    def log_message(self, *args):  # keep the test output quiet
        pass

    def send_body(self, status, body, content_type="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, objects, raw_lines=()):
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in [json.dumps(o) + "\n" for o in objects] + list(raw_lines):
            data = line.encode()
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            time.sleep(0.01)  # really a stream: the pieces arrive one by one
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self):
        if self.server.behaviour == "garbage":
            return self.send_body(200, "<html>It works!</html>", "text/html")
        if self.path == "/api/version":
            return self.send_body(200, json.dumps({"version": "0.5.7"}))
        return self.send_body(404, "404 page not found", "text/plain")

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = json.loads(body)
        self.server.requests.append({"path": self.path, "body": request,
                                     "content_type": self.headers["Content-Type"]})
        behaviour = self.server.behaviour
        if behaviour == "garbage":
            return self.send_body(200, "<html>It works!</html>", "text/html")
        if behaviour == "hang":
            time.sleep(3)
            return self.send_body(200, "{}")
        if self.path != "/api/chat":
            return self.send_body(404, "404 page not found", "text/plain")
        model = request["model"]
        if behaviour == "missing":
            return self.send_body(
                404, json.dumps({"error": f'model "{model}" not found, try pulling it first'}))
        reply = self.server.reply(request["messages"][-1]["content"])
        pieces = [reply[i:i + 3] for i in range(0, len(reply), 3)]
        stream = [{"model": model, "created_at": "2024-06-01T12:00:00Z",
                   "message": {"role": "assistant", "content": p}, "done": False} for p in pieces]
        final = {"model": model, "created_at": "2024-06-01T12:00:01Z",
                 "message": {"role": "assistant", "content": ""}, "done": True,
                 "done_reason": "stop", "total_duration": 1234567, "eval_count": len(pieces)}
        if behaviour == "error":
            return self.send_stream(stream[:1] + [{"error": "out of memory"}])
        if behaviour == "no_done":
            return self.send_stream(stream)
        return self.send_stream(stream + [final])


@pytest.fixture
def server():
    """Start a fake Ollama on 127.0.0.1 (a free port), in a thread; stop it afterwards."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    httpd.daemon_threads = True
    httpd.behaviour = "ollama"
    httpd.requests = []
    httpd.reply = lambda prompt: "85"
    httpd.host = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port():
    """The address of a port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


ENTRY = {"instruction": "Name the author of 'Pride and Prejudice'.", "input": "",
         "output": "Jane Austen.", "model_response": "The author is Jane Austen."}


def test_check_if_running(server, closed_port):
    assert check_if_running(server.host) is True
    start = time.time()
    assert check_if_running(closed_port) is False
    assert time.time() - start < 3
    server.behaviour = "garbage"  # answers, but not as Ollama
    assert check_if_running(server.host) is False


def test_query_model_speaks_the_chat_wire_format(server):
    server.reply = lambda prompt: f"You said: {prompt}"
    reply = query_model("What do llamas eat?", model="llama3", host=server.host)
    assert reply == "You said: What do llamas eat?"  # joined from the streamed pieces
    (req,) = server.requests
    assert req["path"] == "/api/chat" and req["content_type"] == "application/json"
    assert req["body"]["model"] == "llama3"
    assert req["body"]["messages"] == [{"role": "user", "content": "What do llamas eat?"}]
    assert req["body"]["stream"] is True
    assert req["body"]["options"]["temperature"] == 0  # the same scores on every run


def test_host_without_scheme(server):
    host = server.host.removeprefix("http://") + "/"
    assert ollama_base_url(host) == server.host
    assert ollama_base_url("0.0.0.0") == "http://0.0.0.0:11434"
    assert ollama_base_url(" http://localhost:11434/ ") == "http://localhost:11434"
    assert ollama_base_url("https://judge.example.org") == "https://judge.example.org"
    assert query_model("hi", host=host) == "85"


def test_a_server_that_is_down(closed_port):
    with pytest.raises(RuntimeError, match="ollama serve") as info:
        query_model("hi", host=closed_port, timeout=2)
    assert "Could not talk to Ollama" in str(info.value)


def test_a_server_that_answers_garbage(server):
    server.behaviour = "garbage"
    with pytest.raises(RuntimeError, match="not one of the JSON lines"):
        query_model("hi", host=server.host)


def test_a_model_that_is_not_pulled(server):
    server.behaviour = "missing"
    with pytest.raises(RuntimeError, match="ollama pull llama3") as info:
        query_model("hi", model="llama3", host=server.host)
    assert "HTTP 404" in str(info.value) and "not found" in str(info.value)


def test_an_error_in_the_stream(server):
    server.behaviour = "error"
    with pytest.raises(RuntimeError, match="out of memory"):
        query_model("hi", host=server.host)


def test_a_stream_that_stops_early(server):
    server.behaviour = "no_done"
    with pytest.raises(RuntimeError, match="done: true"):
        query_model("hi", host=server.host)


def test_a_server_that_hangs_times_out(server):
    server.behaviour = "hang"
    start = time.time()
    with pytest.raises(RuntimeError, match="Timeout"):
        query_model("hi", host=server.host, timeout=0.5)
    assert time.time() - start < 2.5


@pytest.mark.parametrize("reply,score", [
    ("85", 85), (" 85\n", 85), ("Score: 85.", 85), ("85/100", 85), ("I give it 85 / 100.", 85),
    ("90 out of 100", 90), ("0", 0), ("100", 100), ("72.6", 73),
    ("Between 60 and 70.", None), ("I cannot score this.", None), ("", None), ("150", None),
    ("85, maybe 90", None),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


def test_generate_model_scores_end_to_end(server):
    """Three entries; the judge's replies: a clean score, a wordy one, and garbage (None)."""
    replies = {"Jane Austen": "85", "Paris": "Score: 40/100", "blue": "I'd rather not say."}
    server.reply = lambda prompt: next(v for k, v in replies.items() if k in prompt)
    entries = [ENTRY,
               {"instruction": "Capital of France?", "input": "", "output": "Paris.",
                "model_response": "Lyon."},
               {"instruction": "Colour of the sky?", "input": "", "output": "It is blue.",
                "model_response": "Green."}]
    scores = generate_model_scores(entries, "model_response", model="llama3", host=server.host)
    assert scores == [85, 40, None]
    prompts = [r["body"]["messages"][0]["content"] for r in server.requests]
    assert prompts == [format_judge_prompt(e) for e in entries]


def test_the_judge_prompt_holds_everything_it_needs():
    prompt = format_judge_prompt(ENTRY, "model_response")
    for part in (ENTRY["instruction"], ENTRY["output"], ENTRY["model_response"], "0", "100"):
        assert part in prompt
    assert prompt.rstrip().endswith("Reply with the integer score only.")
