"""llm.py against a real llama-server serving a text-only GGUF: the json_schema request form is one the
real server accepts and constrains, and its refusal of an image becomes the "no vision" error.

    LLAMA_SERVER=/path/llama-server REFINEG_TEST_GGUF=/path/model.gguf python -m pytest -q
    tests/real/test_llm_textserver.py

Skipped (with the reason) when either variable is unset. The model's words are not checked: only
that the answer is valid JSON fitting the schema, and the usage the server reports.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from app.serving import ServingClient, ServingConfig
from client.structured import validate
from images import image_part
from llm import LLMError, text_part

BINARY, GGUF = os.environ.get("LLAMA_SERVER", ""), os.environ.get("REFINEG_TEST_GGUF", "")
pytestmark = [
    pytest.mark.realserver,
    pytest.mark.skipif(
        not (BINARY and GGUF),
        reason="set LLAMA_SERVER (binary) and REFINEG_TEST_GGUF (text-only model) to run",
    ),
]

# Bounded on purpose: under a grammar, an unbounded schema lets a small model write until max_tokens.
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["answer", "count"],
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [
        BINARY,
        "-m",
        GGUF,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-jinja",
        "--chat-template",
        "gemma",
        "-c",
        "2048",
        "-t",
        "2",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:  # /health is 503 while the model loads, 200 when ready
            if proc.poll() is not None:
                pytest.fail(
                    f"llama-server exited with {proc.returncode}; log tail:\n{Path(log).read_text()[-2000:]}"
                )
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server not healthy in 120 s; log tail:\n{Path(log).read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:  # stop exactly the process this fixture started
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(url: str) -> ServingClient:
    """The application's client (its hints name the no-vision case), trying each request once."""
    return ServingClient(
        ServingConfig(
            base_url=url,
            model="test",
            read_timeout=120,
            max_retries=0,
            max_tokens=64,
            schema_retries=0,
            temperature=0.0,
        )
    )


def test_bounded_json_schema_request_gives_valid_json(server_url):
    c = client(server_url)
    r = c.chat(
        [{"role": "user", "content": "Is the sky blue? Answer yes or no, and count to three."}], SCHEMA
    )
    assert validate(r.content, SCHEMA) == []
    assert r.usage["prompt_tokens"] > 0 and r.usage["completion_tokens"] > 0
    assert c.usage.requests == 1 and c.usage.failures == 0


def test_answer_cut_at_max_tokens_is_an_error(server_url):
    c = client(server_url)
    with pytest.raises(LLMError, match=r"cut by max_tokens=3 after 3 tokens \(finish_reason 'length'\)"):
        c.chat([{"role": "user", "content": "Count from 1 to 50, one number per line."}], max_tokens=3)
    assert c.usage.completion_tokens == 3 and c.usage.failures == 1


def test_image_sent_to_a_text_only_model_is_the_no_vision_error(server_url, tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48), (10, 120, 200)).save(path)
    c = client(server_url)
    with pytest.raises(LLMError, match="has no vision"):
        c.chat([{"role": "user", "content": [text_part("What is in the image?"), image_part(str(path))[0]]}])
    assert c.usage.requests == 1 and c.usage.retries == 0
