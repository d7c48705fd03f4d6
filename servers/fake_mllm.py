"""A scripted OpenAI-compatible server for tests and benchmarks (stdlib only).

    with FakeServer(lambda body: reply({"entities": []})) as srv:
        client = Client(ClientConfig(base_url=srv.url))     # srv.url = http://127.0.0.1:PORT/v1
        ...
    srv.requests                                            # the JSON bodies received, in arrival order

`handler(body)` answers each POST /v1/chat/completions: a dict is a 200 JSON
body (build it with `reply`), a tuple `(status, dict | str, headers)` is sent
as given, a `Cut` closes the connection halfway through its body, and an
exception becomes a 500 (also kept in `srv.errors`). It runs in the server's
thread for that request, so it may sleep to simulate a slow or hung server.
GET /v1/models and GET /health answer as vLLM and llama-server do.

`chaos(good, rate, seed)` wraps a handler so that a random share of the
answers is one of the faults in FAULTS (5xx bursts, 429, hangs, cut bodies,
HTML, invalid or off-schema JSON, truncation, deep nesting, odd usage,
non-text content, huge bodies): the chaos test of the whole pipeline.

Left out on purpose: streaming answers (the client never asks for them), TLS, and checking the
API key (the headers are recorded in `srv.headers` for a test to inspect).
"""

import json
import random
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reply(
    content: str | dict | list,
    finish_reason: str = "stop",
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    model: str = "fake-model",
) -> dict:
    """A /chat/completions answer; `content` is JSON-encoded unless it is a string."""
    text = content if isinstance(content, str) else json.dumps(content)
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error(status: int, message: str, kind: str = "invalid_request_error", **extra) -> tuple[int, dict, dict]:
    """An error answer in the shape llama-server sends: {"error": {"code", "message", "type", ...}}.

    Seen on a real server: 400 invalid_request_error (bad base64), 400 exceed_context_size_error
    (with n_prompt_tokens and n_ctx), 404 not_found_error, 500 server_error ("image input is not
    supported" from a text-only model, and client mistakes such as image_url given as a string).
    """
    return status, {"error": {"code": status, "message": message, "type": kind, **extra}}, {}


class Cut:
    """An answer whose connection closes after `keep` bytes of its body (a server dying mid-answer)."""

    def __init__(self, payload: dict | str, keep: int | None = None, status: int = 200):
        self.data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.keep = len(self.data) // 2 if keep is None else keep
        self.status = status


def _with(good: dict, **message) -> dict:
    """`good` with its first message's fields replaced."""
    choice = {**good["choices"][0], "message": {**good["choices"][0]["message"], **message}}
    return {**good, "choices": [choice]}


HANG_SECONDS = 1.0  # a hang lasts this long: set the client's read_timeout below it
DEEP = "[" * 100_000 + "]" * 100_000
# fault name -> the answer that replaces a good one (a 200 JSON body built with `reply`)
FAULTS = {
    "5xx": lambda good: (
        503,
        {"error": {"code": 503, "message": "server overloaded", "type": "unavailable"}},
        {},
    ),
    "429": lambda good: (429, {"error": {"code": 429, "message": "slow down"}}, {"Retry-After": "0"}),
    "hang": lambda good: time.sleep(HANG_SECONDS) or good,
    "cut": lambda good: Cut(good),
    "html": lambda good: (200, "<html><body><h1>502 Bad Gateway</h1></body></html>", {}),
    "invalid_json": lambda good: _with(good, content='{"entities": [{"entity": '),
    "off_schema": lambda good: _with(good, content='{"answer": "I cannot see the image"}'),
    "length": lambda good: {
        **_with(good, content=good["choices"][0]["message"]["content"][:20]),
        "choices": [{**good["choices"][0], "finish_reason": "length"}],
    },
    "deep_content": lambda good: _with(good, content=DEEP),
    "deep_body": lambda good: (200, DEEP, {}),
    "odd_usage": lambda good: {**good, "usage": {"prompt_tokens": "n/a", "completion_tokens": [5]}},
    "object_content": lambda good: _with(good, content={"entities": []}),
    "huge": lambda good: _with(good, content="x" * 3_000_000),
}


def chaos(good, rate: float = 0.5, seed: int = 0, faults: list[str] | None = None):
    """A handler answering like `good`, except that a `rate` share of the requests (seeded) gets a
    fault drawn from `faults` (default all of FAULTS). `handler.used` counts the faults sent."""
    rng, lock, names = random.Random(seed), threading.Lock(), list(faults or FAULTS)
    used = Counter()

    def handler(body: dict):
        with lock:
            fault = rng.choice(names) if rng.random() < rate else None
            used[fault or "none"] += 1
        answer = good(body)
        return FAULTS[fault](answer) if fault else answer

    handler.used = used
    return handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not keep the test process (or server_close) waiting
    request_queue_size = 128  # the default of 5 refuses connections under 16 parallel clients
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        if not isinstance(
            sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)
        ):  # the client gave up: fine
            super().handle_error(request, client_address)


class FakeServer:
    def __init__(self, handler=None, latency: float = 0.0, model: str = "fake-model"):
        self.handler = handler or (lambda body: reply("ok"))
        self.latency = latency  # seconds added before every chat answer (benchmarks)
        self.model = model
        self.requests: list[dict] = []  # POST bodies, in arrival order
        self.headers: list[dict] = []  # their HTTP headers, same order
        self.errors: list[str] = []  # exceptions raised by the handler
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            wbufsize = -1  # headers and body in one send; two sends cost 40 ms (Nagle + delayed ACK)

            def log_message(self, *args):  # quiet
                pass

            def send(self, status: int, payload, headers: dict | None = None) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "text/plain" if isinstance(payload, str) else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self.send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                elif self.path == "/health":
                    self.send(200, {"status": "ok"})
                else:
                    self.send(404, {"error": {"message": f"no route {self.path}", "code": 404}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.send(404, {"error": {"message": f"no route {self.path}", "code": 404}})
                    return
                body = json.loads(raw)
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                if fake.latency:
                    time.sleep(fake.latency)
                try:
                    out = fake.handler(body)
                except Exception as e:  # a test's handler failing is reported, not hidden in a thread
                    fake.errors.append(repr(e))
                    out = (500, {"error": {"message": f"fake server handler raised {e!r}", "code": 500}}, {})
                if isinstance(out, Cut):
                    self.send_response(out.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out.data)))
                    self.end_headers()
                    self.wfile.write(out.data[: out.keep])
                    self.wfile.flush()
                    self.close_connection = True
                elif isinstance(out, tuple):
                    self.send(*out)
                else:
                    self.send(200, out)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
