"""Integration tests of llm.py against a real llama.cpp `llama-server` (test infrastructure, not the paper).

The unit tests drive llm.Client with a scripted fake server (fake_server.py); these drive it with the
real thing: llama-server serving a tiny random-weight Qwen2-VL (tests/realserver/make_tiny_qwen2vl.py)
with its
vision encoder (mmproj). The answers are noise, so the tests check what a real server decides that a fake one
only imitates: image decoding and the image-token budget, several images in one request (the grounding
request's k+1 = 4 images), JSON-schema constrained decoding, `finish_reason`, error codes and bodies, token
usage, and a server that dies mid-run. Oracles: the server's own counters (/metrics) and token arithmetic.
Each stage and the whole pipeline against the same server: test_realserver_stages.py.

    make real-server        # once: builds the server and model into ~/.cache/refineg-realserver (~6 min)
    python -m pytest -q -m realserver tests/real/test_realserver.py tests/real/test_realserver_stages.py

Without the build every test here is skipped with a reason naming `make real-server`. One server is started
per session on a free loopback port (`-c 16384`: its 4 slots share one KV cache, see llama_server.CTX)
and stopped by its PID at the end whatever happens (the `server` fixture in conftest.py); the context and
kill-and-resume tests start and stop their own.
Left out on purpose: answer quality (the weights are random) and streaming (llm.py does not stream).
"""

import os
import random
import threading
import time

import pytest
import requests
from llama_server import CTX, IMAGE_MAX_TOKENS, REALSERVER, Server, client, free_port
from PIL import Image, ImageDraw
from urllib3.exceptions import ReadTimeoutError

from app.serving import check_server
from client.structured import validate
from images import image_part
from llm import ClientConfig, LLMError, text_part
from servers.fake_mllm import FakeServer

pytestmark = REALSERVER


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, str]:
    """Drawn test images: JPEGs of several sizes (one larger than image_part's 1000 px), a PNG with alpha."""
    d = tmp_path_factory.mktemp("images")
    paths = {}
    for name, (w, h), fmt in [
        ("a", (448, 336), "JPEG"),
        ("b", (336, 448), "JPEG"),
        ("c", (1600, 1200), "JPEG"),
        ("d", (400, 300), "PNG"),
        ("tiny", (112, 112), "JPEG"),
    ]:
        rnd = random.Random(name)
        mode = "RGBA" if fmt == "PNG" else "RGB"
        im = Image.new(mode, (w, h), (rnd.randrange(256), 90, 160, 255)[: len(mode)])
        draw = ImageDraw.Draw(im)
        for _ in range(8):
            x, y = rnd.randrange(w), rnd.randrange(h)
            draw.rectangle(
                [x, y, min(w - 1, x + w // 4), min(h - 1, y + h // 4)], fill=(rnd.randrange(256), 200, 40)
            )
        paths[name] = str(d / f"{name}.{fmt.lower()}")
        im.save(paths[name], fmt)
    return paths


def user(text: str, *parts: dict) -> list[dict]:
    return [{"role": "user", "content": [text_part(text), *parts]}]


# A bounded grounding-style answer (what grounding.py asks for): every size is capped, so the grammar
# forces the answer to close within max_tokens even when the model is noise. Kept small: a string's
# maxLength makes llama.cpp's grammar costly per token, and the noise model fills every bound.
BOUNDED = {
    "type": "object",
    "additionalProperties": False,
    "required": ["entities"],
    "properties": {
        "entities": {
            "type": "array",
            "maxItems": 2,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "boxes"],
                "properties": {
                    "name": {"type": "string", "maxLength": 8},
                    "boxes": {
                        "type": "array",
                        "maxItems": 1,
                        "items": {
                            "type": "array",
                            "minItems": 4,
                            "maxItems": 4,
                            "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                        },
                    },
                },
            },
        }
    },
}
# The smallest answer: the grammar allows only a little whitespace, then one of two strings, then the end.
# Free text is no use here: a noise model never stops by itself, and the client counts a cut answer as an
# error.
YESNO = {"enum": ["yes", "no"]}
UNBOUNDED = {
    "type": "object",
    "required": ["entities"],
    "properties": {
        "entities": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}
    },
}


# ---------------------------------------------------------------- llm.py against the real server


def test_server_is_up_and_answers_to_any_model_name(server):
    """llama-server lists its --alias but serves one model whatever name a request gives: check_server
    only warns about an unlisted name, and the call goes through (vLLM would answer 404)."""
    assert requests.get(server.base + "/health", timeout=5).json() == {"status": "ok"}
    assert check_server(ClientConfig(base_url=server.url)) == ["tiny-qwen2vl"]
    with pytest.warns(UserWarning, match="not in the list"):
        check_server(ClientConfig(base_url=server.url, model="gpt-4o"))
    assert client(server.url, model="gpt-4o").chat(user("Hi?"), schema=YESNO, max_tokens=64).content in (
        "yes",
        "no",
    )


def test_one_image_costs_its_tokens(server, images):
    """The image reaches the model: its prompt costs its merged patches (+2 for vision start/end) over the
    text-only prompt. 448x336 px -> (448/28) x (336/28) = 16 x 12 = 192 tokens (under the 256 cap);
    112x112 -> 4 x 4 = 16 tokens."""
    c = client(server.url)
    text = c.chat(user("Is there a dog?"), schema=YESNO, max_tokens=64)
    assert text.content in ("yes", "no") and not text.cached
    for name, n_image in (("a", 192), ("tiny", 16)):
        part, sent = image_part(images[name])
        r = c.chat(user("Is there a dog?", part), schema=YESNO, max_tokens=64)
        assert r.content in ("yes", "no")
        assert r.usage["prompt_tokens"] - text.usage["prompt_tokens"] == n_image + 2, (name, sent)
    assert c.usage.failures == 0 and c.usage.retries == 0 and c.usage.reasks == 0


def test_four_images_in_one_request(server, images):
    """The grounding request's shape (k = 3 demos + the query, each with its image) fits and is answered.
    Tokens per image (+2 markers each): 448x336 and 336x448 -> 16 x 12 = 192; 400x300 -> 392x308 = 14 x 11
    = 154; image_part scales 1600x1200 to 1000x750, about 36 x 27 = 972 tokens, which --image-max-tokens
    caps (the server's own resize gives 234)."""
    parts, sizes = zip(*(image_part(images[n]) for n in ("a", "b", "c", "d")))
    assert sizes == ((448, 336), (336, 448), (1000, 750), (400, 300))
    c = client(server.url)
    text_only = c.chat(user("Are they alike?"), schema=YESNO, max_tokens=64).usage["prompt_tokens"]
    r = c.chat(user("Are they alike?", *parts), schema=YESNO, max_tokens=64)
    assert r.content in ("yes", "no")
    image_tokens = r.usage["prompt_tokens"] - text_only
    uncapped = (192 + 2) + (192 + 2) + (154 + 2)
    assert uncapped + 2 + 128 <= image_tokens <= uncapped + 2 + IMAGE_MAX_TOKENS


def test_bounded_schema_answer_parses(server, images):
    """With a bounded schema the server's grammar closes the JSON itself: it parses and fits on the first
    try."""
    c = client(server.url)
    part, _ = image_part(images["a"])
    r = c.chat(user("List the entities with boxes.", part), schema=BOUNDED, max_tokens=400)
    assert isinstance(r.content, dict) and validate(r.content, BOUNDED) == []
    assert c.usage.reasks == 0 and c.usage.failures == 0


def test_answer_cut_at_max_tokens_is_an_error(server):
    """The shortest answer that fits, {"entities":[]}, is 5 Qwen2 tokens, so max_tokens=4 always cuts it:
    finish_reason 'length', which the client turns into an LLMError (a cut JSON is never a result),
    counted once, not re-asked, with the tokens the server spent all the same."""
    c = client(server.url)
    with pytest.raises(LLMError, match="finish_reason 'length'"):
        c.chat(user("List the entities."), schema=UNBOUNDED, max_tokens=4)
    assert c.usage.failures == 1 and c.usage.reasks == 0 and c.usage.requests == 1
    assert c.usage.completion_tokens == 4


def test_context_filling_up_is_a_cut_answer_not_a_400(tmp_path):
    """Unlike vLLM, llama-server accepts prompt + max_tokens > n_ctx: it generates until the context is
    full and answers 200 with finish_reason 'length' and fewer tokens than max_tokens. (Its own server
    with -c 1024, so the long prompt is cheap.)"""
    srv = Server(free_port(), str(tmp_path / "server.log"), ctx=1024)
    try:
        c = client(srv.url)
        with pytest.raises(LLMError, match="finish_reason 'length'"):
            c.chat(user("word " * 990), max_tokens=500)
    finally:
        srv.stop()
    assert c.usage.retries == 0 and c.usage.failures == 1
    assert c.usage.prompt_tokens + c.usage.completion_tokens == 1024 and c.usage.completion_tokens < 500


def test_json_object_mode_reasks_with_the_image_on_the_real_server(server, images):
    """structured="json_object": the schema goes in the prompt and the server only guarantees some JSON
    object, so the client validates and re-asks (the conversation grows by the bad answer and the
    problem, the image still in it). Either outcome is fine; what it must not be is a crash or a 4xx."""
    c = client(server.url, structured="json_object")
    part, _ = image_part(images["tiny"])
    try:
        r = c.chat(user("List the entities with boxes.", part), schema=BOUNDED, max_tokens=200)
        assert validate(r.content, BOUNDED) == []
    except LLMError as e:
        assert "did not fit the schema in 3 tries" in str(e) and c.usage.reasks == 2
    assert c.usage.requests == 1 + c.usage.reasks and c.usage.retries == 0


def test_corrupt_image_is_a_clear_400(server):
    c = client(server.url, max_retries=3)
    bad = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,!!!not-base64@@"}}
    with pytest.raises(LLMError, match="HTTP 400.*Failed to load image"):
        c.chat(user("Describe.", bad), max_tokens=4)
    assert c.usage.retries == 0  # a 400 is not retried
    assert requests.get(server.base + "/health", timeout=5).status_code == 200


def test_context_overflow_is_a_clear_400(server):
    c = client(server.url, max_retries=3)
    with pytest.raises(LLMError, match="HTTP 400.*exceeds the available context size"):
        c.chat(user("word " * (CTX + 500)), max_tokens=4)
    assert c.usage.retries == 0 and c.usage.failures == 1


def test_server_500_for_a_client_mistake_ends_after_bounded_retries(server):
    """llama-server answers some malformed requests with 500 (here an image_url given as a bare string,
    which it reads as bad base64); the client retries 5xx, so it must give up after max_retries."""
    c = client(server.url, max_retries=2)
    bad = {"type": "image_url", "image_url": "data:image/jpeg;base64,AAAA"}
    with pytest.raises(LLMError, match=r"HTTP 500 from .*\(3 tries\)"):
        c.chat(user("Describe.", bad), max_tokens=4)
    assert c.usage.requests == 3 and c.usage.retries == 2  # bounded by counts, not by the clock


def test_usage_matches_what_the_server_reports(server, images):
    """Through a recording proxy: each Reply.usage equals the usage of the server's own answer, the client's
    totals are their sums, and the server's counters moved by exactly as much (prompt tokens it evaluated
    plus those it reused from its prompt cache; tokens it generated)."""
    answers = []

    def forward(body: dict):
        r = requests.post(server.url + "/chat/completions", json=body, timeout=120)
        answers.append(r.json())
        return r.status_code, r.json(), {}

    part, _ = image_part(images["tiny"])
    before = server.metrics()
    with FakeServer(forward) as proxy:
        c = client(proxy.url)
        replies = [
            c.chat(user("Hello there."), schema=YESNO, max_tokens=64),
            c.chat(user("Look.", part), schema=YESNO, max_tokens=64),
            c.chat(user("Look.", part), schema=YESNO, max_tokens=64),
        ]  # a repeat: its prompt is cached
    after = server.metrics()
    assert len(answers) == 3 and proxy.errors == []
    for reply, answer in zip(replies, answers):
        assert reply.usage == {k: answer["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
    prompt, completion = (sum(a["usage"][k] for a in answers) for k in ("prompt_tokens", "completion_tokens"))
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.requests) == (prompt, completion, 3)
    evaluated = after["prompt_tokens_total"] - before["prompt_tokens_total"]
    reused = after["prompt_tokens_cached_total"] - before["prompt_tokens_cached_total"]
    assert evaluated + reused == prompt and reused >= answers[1]["usage"]["prompt_tokens"] - 1
    assert after["tokens_predicted_total"] - before["tokens_predicted_total"] == completion
    # what the client sent: the OpenAI nested json_schema form, temperature always set
    assert proxy.requests[2]["response_format"]["json_schema"]["schema"] == YESNO
    assert all(b["temperature"] == 0.0 and b["stream"] is False for b in proxy.requests)


# ---------------------------------------------------------------- a server that dies mid-run


def test_killed_server_fails_boundedly_and_a_rerun_resumes_from_the_cache(tmp_path):
    """Six calls, one at a time; the server is SIGKILLed once two answers are in the cache file. The calls
    left fail with a clear LLMError after exactly max_retries retries each, and no try waits for a timeout,
    so they end within seconds of the kill (a refused or reset connection is immediate; the backoff is capped
    at 0.2 s here): checked by what each retried try ended in, not by a clock; a rerun of the same six calls
    against a restarted server answers the finished ones from the cache and sends only the rest: the new
    server's token counter equals the completion tokens of the new answers alone."""
    port, log, cache = free_port(), str(tmp_path / "server.log"), str(tmp_path / "llm_cache.jsonl")
    calls = [
        {"messages": user(f"Is item number {i} red?"), "schema": YESNO, "max_tokens": 64} for i in range(6)
    ]
    srv = Server(port, log)
    try:
        c1 = client(srv.url, cache_path=cache, max_retries=2, connect_timeout=2.0, read_timeout=30.0)
        retry = c1._session.get_adapter(srv.url).max_retries  # urllib3 Retry: what each retried try ended in
        errors, counted = [], retry.on_retry

        def recorded(r):
            errors.append(r.history[-1].error)
            counted(r)

        retry.on_retry = recorded
        finished, killed = threading.Event(), threading.Event()

        def kill_after_two_answers(victim: Server) -> None:
            while not finished.is_set():
                if os.path.exists(cache) and sum(1 for _ in open(cache)) >= 2:
                    victim.kill()
                    killed.set()
                    return
                time.sleep(0.005)

        killer = threading.Thread(target=kill_after_two_answers, args=(srv,), daemon=True)
        killer.start()
        first = c1.map_chat(calls, workers=1)
        finished.set()
        killer.join(timeout=10)
        assert killed.is_set(), "all six answers came before the kill"
        done = [i for i, r in enumerate(first) if not isinstance(r, LLMError)]
        failed = [r for r in first if isinstance(r, LLMError)]
        assert len(done) >= 2 and failed and len(done) + len(failed) == 6
        assert all("no answer" in str(e) and "(3 tries)" in str(e) for e in failed)
        assert all("Is the server running" in str(e) for e in failed)
        assert c1.usage.retries == 2 * len(failed) == len(errors) and c1.usage.failures == len(failed)
        assert c1.usage.requests == len(done) + 3 * len(failed)
        assert not any(isinstance(e, ReadTimeoutError) for e in errors)  # none waited out read_timeout=30 s
        assert sum(1 for _ in open(cache)) == len(done)

        srv = Server(port, log)  # restarted on the same port
        c2 = client(srv.url, cache_path=cache)
        second = c2.map_chat(calls, workers=1)
        assert all(not isinstance(r, LLMError) for r in second)
        assert [i for i, r in enumerate(second) if r.cached] == done
        assert [second[i].content for i in done] == [first[i].content for i in done]
        assert (c2.usage.cache_hits, c2.usage.requests) == (len(done), 6 - len(done))
        new_tokens = sum(r.usage["completion_tokens"] for r in second if not r.cached)
        assert srv.metrics()["tokens_predicted_total"] == new_tokens
    finally:
        srv.stop()
