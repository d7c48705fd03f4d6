"""A real llama.cpp `llama-server` for the realserver tests (test infrastructure, not the paper): the build's
paths, the server's settings, a Server that starts one on a loopback port and stops it by its PID, and a
client that gives up fast. Used by tests/conftest.py (the session's `server`), test_realserver.py and
test_realserver_stages.py.

    make real-server        # once: builds the server and model into ~/.cache/refineg-realserver (~6 min)

Without the build, INFO is None and every test marked with REALSERVER is skipped with a reason naming
`make real-server`.
"""

import atexit
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from app.serving import ServingClient, ServingConfig

CACHE = os.environ.get("REFINEG_REALSERVER_CACHE", os.path.expanduser("~/.cache/refineg-realserver"))
IMAGE_MAX_TOKENS = 256  # --image-max-tokens: caps each image's tokens, so image tests stay cheap on a CPU
# -c: the server's 4 slots share ONE unified KV cache of -c tokens, and when the requests running together
# outgrow it, llama-server fails every one of them with 500 "Context size has been exceeded." (measured: 4 x
# 600-token prompts at -c 2048). A grounding request with k = 3 demos is ~1,900 prompt tokens on the demo (4
# images capped at 256 tokens each), ~2,500 after a re-ask, plus up to 600 answer tokens: 4 at once need
# ~12k. (Idle slots' cached prompts are evicted as needed: only requests in flight count.)
CTX = 16384
# -t: one thread. ggml's threads meet at a spinning barrier per op; when other processes share the cores
# (other
# tests, other jobs on a CI machine) a descheduled thread stalls the other, and this 20M-parameter model
# gained
# nothing from a second thread: measured on 2 busy cores, -t 2 made the image tests 5-15x slower than -t 1.
THREADS = 1


def _server_info() -> dict | None:
    """The paths that tests/realserver/build.sh wrote last, or None when the build is missing or
    incomplete."""
    try:
        with open(os.path.join(CACHE, "server.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if all(os.path.isfile(info.get(k, "")) for k in ("server", "model", "mmproj")) else None


INFO = _server_info()
REALSERVER = [
    pytest.mark.realserver,
    pytest.mark.skipif(
        INFO is None, reason=f"no real llama-server in {CACHE}: build it with `make real-server`"
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when pytest dies, even by SIGKILL (a CI timeout),
    which neither `finally` nor atexit survive. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class Server:
    """A llama-server child process on 127.0.0.1:port, logging to log_path."""

    def __init__(self, port: int, log_path: str, ctx: int = CTX):
        self.port, self.log_path = port, log_path
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + "/v1"
        cmd = [
            INFO["server"],
            "-m",
            INFO["model"],
            "--mmproj",
            INFO["mmproj"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            str(ctx),
            "-t",
            str(THREADS),
            "--image-max-tokens",
            str(IMAGE_MAX_TOKENS),
            "--alias",
            "tiny-qwen2vl",
            "--metrics",
        ]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)  # also when pytest exits before the fixture's finally runs
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if requests.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or too busy to answer within 1 s
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama-server not healthy after 60 s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 15) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM killer would: no goodbye to open connections."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to our own child's PID
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> dict[str, float]:
        """The Prometheus counters of /metrics, without the 'llamacpp:' prefix."""
        out = {}
        for line in requests.get(self.base + "/metrics", timeout=5).text.splitlines():
            if line.startswith("llamacpp:"):
                name, value = line.split()
                out[name.split(":", 1)[1]] = float(value)
        return out


def client(url: str, **kw) -> ServingClient:
    """The application's client (llm.Client and its guards), giving up fast: these tests wait on retries,
    never on a slow answer."""
    settings = {"max_retries": 1, "backoff_base": 0.05, "backoff_cap": 0.2, "read_timeout": 120.0, **kw}
    return ServingClient(ServingConfig(base_url=url, **settings))
