"""Integration tests of llm.py against a real llama.cpp `llama-server` (test infrastructure, not the paper).

The unit tests drive llm.Client with a scripted fake server (fake_server.py); these drive it with the
real thing: llama-server serving a tiny random-weight Qwen2-VL (tests/realserver/make_tiny_qwen2vl.py) with its
vision encoder (mmproj). The answers are noise, so the tests check what a real server decides that a fake one
only imitates: image decoding and the image-token budget, several images in one request (the grounding
request's k+1 = 4 images), JSON-schema constrained decoding, `finish_reason`, error codes and bodies, token
usage, and a server that dies mid-run. Oracles: the server's own counters (/metrics) and token arithmetic.
Then each stage (synth.py, uncertainty.refine, grounding.ground) and refineg.main run end to end on
examples/demo: every answer parsed, validated, merged or counted as rejected/failed, and the counts checked
against the recorded answers and the requests the server received.

    make real-server        # once: builds the server and model into ~/.cache/refineg-realserver (~6 min)
    python -m pytest -q -m realserver tests/test_realserver.py

Without the build every test here is skipped with a reason naming `make real-server`. One server is started
per session on a free loopback port (`-c 16384`: its 4 slots share one KV cache, see CTX)
and stopped by its PID at the end whatever happens; the kill-and-resume test starts and kills its own.
Left out on purpose: answer quality (the weights are random) and streaming (llm.py does not stream).
"""

import atexit
import ctypes
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from PIL import Image, ImageDraw

import ccks
import data
import grounding
import refineg
import synth
import uncertainty
from fake_server import FakeServer
from images import image_part
from llm import Client, ClientConfig, LLMError, check_server, text_part
from structured import validate

CACHE = os.environ.get("REFINEG_REALSERVER_CACHE", os.path.expanduser("~/.cache/refineg-realserver"))
IMAGE_MAX_TOKENS = 256   # --image-max-tokens: caps each image's tokens, so image tests stay cheap on a CPU
# -c: the server's 4 slots share ONE unified KV cache of -c tokens, and when the requests running together
# outgrow it, llama-server fails every one of them with 500 "Context size has been exceeded." (measured: 4 x
# 600-token prompts at -c 2048). A grounding request with k = 3 demos is ~1,900 prompt tokens on the demo (4
# images capped at 256 tokens each), ~2,500 after a re-ask, plus up to 600 answer tokens: 4 at once need
# ~12k. (Idle slots' cached prompts are evicted as needed: only requests in flight count.)
CTX = 16384
# -t: one thread. ggml's threads meet at a spinning barrier per op; when other processes share the cores (other
# tests, other jobs on a CI machine) a descheduled thread stalls the other, and this 20M-parameter model gained
# nothing from a second thread: measured on 2 busy cores, -t 2 made the image tests 5-15x slower than -t 1.
THREADS = 1


def _server_info() -> dict | None:
    """The paths that tests/realserver/build.sh wrote last, or None when the build is missing or incomplete."""
    try:
        with open(os.path.join(CACHE, "server.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if all(os.path.isfile(info.get(k, "")) for k in ("server", "model", "mmproj")) else None


INFO = _server_info()
pytestmark = [pytest.mark.realserver, pytest.mark.skipif(
    INFO is None, reason=f"no real llama-server in {CACHE}: build it with `make real-server`")]


# ---------------------------------------------------------------- starting and stopping servers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when pytest dies, even by SIGKILL (a CI timeout),
    which neither `finally` nor atexit survive. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # 1 = PR_SET_PDEATHSIG


class Server:
    """A llama-server child process on 127.0.0.1:port, logging to log_path."""

    def __init__(self, port: int, log_path: str, ctx: int = CTX):
        self.port, self.log_path = port, log_path
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + "/v1"
        cmd = [INFO["server"], "-m", INFO["model"], "--mmproj", INFO["mmproj"], "--host", "127.0.0.1",
               "--port", str(port), "-c", str(ctx), "-t", str(THREADS), "--image-max-tokens", str(IMAGE_MAX_TOKENS),
               "--alias", "tiny-qwen2vl", "--metrics"]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        atexit.register(self.stop)          # also when pytest exits before the fixture's finally runs
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if requests.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:   # not listening yet, or too busy to answer within 1 s
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
            self.proc.terminate()           # SIGTERM to our own child's PID
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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(_free_port(), str(tmp_path_factory.mktemp("llama") / "server.log"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, str]:
    """Drawn test images: JPEGs of several sizes (one larger than image_part's 1000 px), a PNG with alpha."""
    d = tmp_path_factory.mktemp("images")
    paths = {}
    for name, (w, h), fmt in [("a", (448, 336), "JPEG"), ("b", (336, 448), "JPEG"), ("c", (1600, 1200), "JPEG"),
                              ("d", (400, 300), "PNG"), ("tiny", (112, 112), "JPEG")]:
        rnd = random.Random(name)
        mode = "RGBA" if fmt == "PNG" else "RGB"
        im = Image.new(mode, (w, h), (rnd.randrange(256), 90, 160, 255)[:len(mode)])
        draw = ImageDraw.Draw(im)
        for _ in range(8):
            x, y = rnd.randrange(w), rnd.randrange(h)
            draw.rectangle([x, y, min(w - 1, x + w // 4), min(h - 1, y + h // 4)], fill=(rnd.randrange(256), 200, 40))
        paths[name] = str(d / f"{name}.{fmt.lower()}")
        im.save(paths[name], fmt)
    return paths


def client(url: str, **kw) -> Client:
    """A client that gives up fast: these tests wait on retries, never on a slow answer."""
    settings = {"max_retries": 1, "backoff_base": 0.05, "backoff_cap": 0.2, "read_timeout": 120.0, **kw}
    return Client(ClientConfig(base_url=url, **settings))


def user(text: str, *parts: dict) -> list[dict]:
    return [{"role": "user", "content": [text_part(text), *parts]}]


# A bounded grounding-style answer (what grounding.py asks for): every size is capped, so the grammar
# forces the answer to close within max_tokens even when the model is noise. Kept small: a string's
# maxLength makes llama.cpp's grammar costly per token, and the noise model fills every bound.
BOUNDED = {"type": "object", "additionalProperties": False, "required": ["entities"], "properties": {
    "entities": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "additionalProperties": False, "required": ["name", "boxes"], "properties": {
            "name": {"type": "string", "maxLength": 8},
            "boxes": {"type": "array", "maxItems": 1, "items": {
                "type": "array", "minItems": 4, "maxItems": 4,
                "items": {"type": "integer", "minimum": 0, "maximum": 1000}}}}}}}}
# The smallest answer: the grammar allows only a little whitespace, then one of two strings, then the end.
# Free text is no use here: a noise model never stops by itself, and the client counts a cut answer as an error.
YESNO = {"enum": ["yes", "no"]}
UNBOUNDED = {"type": "object", "required": ["entities"], "properties": {
    "entities": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}}


# ---------------------------------------------------------------- llm.py against the real server

def test_server_is_up_and_answers_to_any_model_name(server):
    """llama-server lists its --alias but serves one model whatever name a request gives: check_server
    only warns about an unlisted name, and the call goes through (vLLM would answer 404)."""
    assert requests.get(server.base + "/health", timeout=5).json() == {"status": "ok"}
    assert check_server(ClientConfig(base_url=server.url)) == ["tiny-qwen2vl"]
    with pytest.warns(UserWarning, match="not in the list"):
        check_server(ClientConfig(base_url=server.url, model="gpt-4o"))
    assert client(server.url, model="gpt-4o").chat(user("Hi?"), schema=YESNO, max_tokens=64).content in ("yes", "no")


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
    """With a bounded schema the server's grammar closes the JSON itself: it parses and fits on the first try."""
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
    srv = Server(_free_port(), str(tmp_path / "server.log"), ctx=1024)
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
    assert c.usage.retries == 0                  # a 400 is not retried
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
    t0 = time.monotonic()
    with pytest.raises(LLMError, match="failed 3 times.*HTTP 500"):
        c.chat(user("Describe.", bad), max_tokens=4)
    assert c.usage.requests == 3 and c.usage.retries == 2 and time.monotonic() - t0 < 5


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
        replies = [c.chat(user("Hello there."), schema=YESNO, max_tokens=64),
                   c.chat(user("Look.", part), schema=YESNO, max_tokens=64),
                   c.chat(user("Look.", part), schema=YESNO, max_tokens=64)]   # a repeat: its prompt is cached
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
    left fail with a clear LLMError after exactly max_retries retries each, within seconds of the kill
    (a refused connection is immediate; the backoff is capped at 0.2 s here); a rerun of the same six calls
    against a restarted server answers the finished ones from the cache and sends only the rest: the new
    server's token counter equals the completion tokens of the new answers alone."""
    port, log, cache = _free_port(), str(tmp_path / "server.log"), str(tmp_path / "llm_cache.jsonl")
    calls = [{"messages": user(f"Is item number {i} red?"), "schema": YESNO, "max_tokens": 64} for i in range(6)]
    srv = Server(port, log)
    try:
        c1 = client(srv.url, cache_path=cache, max_retries=2, connect_timeout=2.0, read_timeout=30.0)

        finished, killed_at = threading.Event(), []

        def kill_after_two_answers(victim: Server) -> None:
            while not finished.is_set():
                if os.path.exists(cache) and sum(1 for _ in open(cache)) >= 2:
                    victim.kill()
                    killed_at.append(time.monotonic())
                    return
                time.sleep(0.005)

        killer = threading.Thread(target=kill_after_two_answers, args=(srv,), daemon=True)
        killer.start()
        first = c1.map_chat(calls, workers=1)
        finished.set()
        killer.join(timeout=10)
        assert killed_at, "all six answers came before the kill"
        seconds_after_kill = time.monotonic() - killed_at[0]
        done = [i for i, r in enumerate(first) if not isinstance(r, LLMError)]
        failed = [r for r in first if isinstance(r, LLMError)]
        assert len(done) >= 2 and failed and len(done) + len(failed) == 6
        assert all("cannot connect" in str(e) and "3 tries" in str(e) for e in failed)
        assert c1.usage.retries == 2 * len(failed) and c1.usage.failures == len(failed)
        assert seconds_after_kill < 10
        assert sum(1 for _ in open(cache)) == len(done)

        srv = Server(port, log)         # restarted on the same port
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


# ---------------------------------------------------------------- the stages end to end on examples/demo
# Each stage runs on the demo against `server` with bounds small enough that the noise model stops: its
# answers are noise, so the oracles are the answers themselves (recorded as the stage received them) and
# the counts a stage must derive from them, never the content. A noise model fills string bounds and
# writes runs of whitespace (the grammar allows ~20 characters between tokens): a cut answer or a re-ask
# is a legitimate, counted outcome; a crash or a count that does not add up is not. llama.cpp's grammar bounds
# integers but not a "number"'s minimum/maximum, so grounding's coordinates can come back as -3333333333333333:
# the client's own validation catches them and re-asks (counted in usage.reasks).

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "demo")
REJECT_REASONS = {"empty_text", "too_short", "too_long", "seed_copy", "duplicate", "entities_for_entity_free_seed",
                  "unknown_type", "generic_name", "type_conflict", "name_not_in_text", "prompt_leak",
                  "known_type_conflict"}      # synth.check's


def record(c: Client) -> list[tuple[dict, object]]:
    """(request, Reply | LLMError) of every call a stage makes through c.map_chat, in order."""
    seen, real = [], c.map_chat

    def map_chat(jobs: list, desc: str = "", workers: int | None = None) -> list:
        jobs = [r() if callable(r) else r for r in jobs]      # lazily built ones (grounding) built here
        replies = real(jobs, desc, workers)
        seen.extend(zip(jobs, replies))
        return replies

    c.map_chat = map_chat
    return seen


def answered(seen: list[tuple[dict, object]]) -> list[tuple[dict, object]]:
    """The calls that produced an answer; each one fits its request's schema (the client checked, we recheck)."""
    ok = [(req, rep) for req, rep in seen if not isinstance(rep, LLMError)]
    for req, rep in ok:
        assert validate(rep.content, req["schema"]) == [], rep.content
    return ok


def accounted(c: Client) -> None:
    """Every HTTP request of a client is a first try, a retry or a re-ask; every failure is an LLMError."""
    u = c.usage
    assert u.requests == u.calls - u.cache_hits + u.retries + u.reasks, u.as_dict()


def test_synthesis_on_demo_seeds(server):
    """Three seeds (three entities, one, none), two sentences each, names and texts bounded: one call per
    seed; every sentence the noise model wrote is kept or rejected for a counted reason; kept ones are
    valid training samples that survive synthetic.jsonl."""
    demo = ccks.read_ccks(DEMO)
    seeds = dataclasses.replace(demo, samples=[demo.samples[i] for i in (0, 3, 5)])
    assert [len(s.entities) for s in seeds.samples] == [3, 1, 0]
    # per answer at most 2 x (160-character text + one 100-character name): 512 tokens fit it with its whitespace
    config = synth.SynthConfig(per_seed=2, max_tokens=16, max_entities=1, answer_tokens=512, type_enum=True)
    c = client(server.url, workers=4)
    seen = record(c)
    samples, summary = synth.synthesize(seeds, c, config)
    ok = answered(seen)
    assert summary["calls"] == summary["seeds"] == c.usage.calls == len(seen) == 3
    assert summary["failed_calls"] == c.usage.failures == len(seen) - len(ok) == len(summary["failed_seeds"])
    assert summary["generated"] == sum(len(rep.content["samples"]) for _, rep in ok) <= 2 * len(ok)
    assert summary["kept"] + sum(summary["rejected"].values()) == summary["generated"]
    assert summary["kept"] == len(samples) and set(summary["rejected"]) <= REJECT_REASONS
    accounted(c)
    for s in samples:
        assert s.id.rsplit("-", 1)[0] in {f"syn-{t.id}" for t in seeds.samples} and s.image is None
        assert config.min_tokens <= len(s.tokens) <= config.max_tokens
        assert all(0 <= e.start < e.end <= len(s.tokens) and e.type in demo.types and e.source == "synth"
                   for e in s.entities)
    assert sum(summary["entities_per_type"].values()) == sum(len(s.entities) for s in samples)
    path = os.path.join(os.path.dirname(server.log_path), "synthetic.jsonl")
    synth.write_synthetic(samples, path)
    back = synth.read_synthetic(path)
    assert [(s.id, s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in back] == \
           [(s.id, s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in samples]



def test_refinement_on_demo_predictions(server):
    """Gold demo entities posing as tagger output, every other one uncertain (score 0.9 > tau 0.5): one call
    per sample with an uncertain entity (with its image); every delegated entity ends decided (keep,
    reject, change_type, change_span) or kept by fallback (missing or invalid decision), exactly as the
    recorded answers say; confident entities come out untouched. allow_add is off, so no marginals."""
    demo = ccks.read_ccks(DEMO)
    pred = []
    for i in (0, 3, 4, 5, 8):          # 001: 3 entities, 004: 1 (made sure), 005: 2, 006: none, 009: 3
        s = demo.samples[i]
        ents = [data.Entity(e.start, e.end, e.type, score=0.1 if i == 3 or j % 2 else 0.9, source="tagger")
                for j, e in enumerate(s.entities)]
        pred.append(dataclasses.replace(s, entities=ents))
    config = uncertainty.UncertaintyConfig(tau=0.5, max_reasoning=40)
    c = client(server.url, workers=4, max_tokens=600)
    seen = record(c)
    out, counts = uncertainty.refine(pred, demo, c, config)
    delegated = [[e for e in s.entities if e.score > 0.5] for s in pred]
    routed = [i for i, d in enumerate(delegated) if d]
    assert [s.id for s in pred if any(e.score > 0.5 for e in s.entities)] == ["001", "005", "009"]
    assert counts["calls"] == len(routed) == len(seen) == c.usage.calls == 3
    assert counts["delegated"] == sum(map(len, delegated)) == 5 and counts.get("text_only_calls", 0) == 0
    assert all(sum(p.get("type") == "image_url" for p in req["messages"][-1]["content"]) == 1 for req, _ in seen)
    assert counts.get("failed_call", 0) == c.usage.failures
    accounted(c)
    # the oracle: the decisions as the server wrote them
    ids = [None if isinstance(rep, LLMError) else [d["id"] for d in rep.content["decisions"]] for _, rep in seen]
    answered(seen)
    distinct = [set() if got is None else {i for i in got if 1 <= i <= len(delegated[k])}
                for got, k in zip(ids, routed)]
    assert counts.get("missing", 0) == sum(len(delegated[k]) - len(d) for d, k in zip(distinct, routed))
    assert counts.get("duplicate_decision", 0) + counts.get("unknown_entity", 0) == \
           sum(len(got) - len(d) for got, d in zip(ids, distinct) if got is not None)
    decided = sum(counts.get(k, 0) for k in ("keep", "reject", "change_type", "change_span"))
    invalid = sum(v for k, v in counts.items() if k.startswith("invalid_"))
    assert decided + invalid == sum(map(len, distinct))
    assert counts.get("kept_by_fallback", 0) == counts.get("missing", 0) + invalid
    assert decided + counts.get("kept_by_fallback", 0) == counts["delegated"]
    for s, new in zip(pred, out):
        assert new.id == s.id and new.image == s.image
        sure = [(e.start, e.end, e.type) for e in s.entities if e.score <= 0.5]
        assert all(any((e.start, e.end, e.type, e.source) == (*k, "tagger") for e in new.entities) for k in sure)
        assert all(e.source in ("tagger", "mllm") and 0 <= e.start < e.end <= len(s.tokens) for e in new.entities)
        spans = sorted((e.start, e.end) for e in new.entities)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))        # merging never makes overlaps
    assert sum(len(s.entities) for s in pred) - sum(len(s.entities) for s in out) == counts.get("reject", 0)
    assert sum(e.source == "mllm" for s in out for e in s.entities) == \
           counts.get("change_type", 0) + counts.get("change_span", 0)


def test_grounding_with_three_demos_on_demo(server):
    """k = 3 worked examples, so every request carries k + 1 = 4 images (about 1,900 prompt tokens on the
    demo). Each box in the recorded answers becomes a box in original pixels inside the image, or is
    counted degenerate; names the answer leaves out are counted missing; location is never asked."""
    demo = ccks.read_ccks(DEMO)
    qi = (0, 18, 24)                     # 001, 019 (5 entities, one location), 025 (Leopard 2 twice)
    queries = [dataclasses.replace(demo.samples[i], entities=[data.Entity(e.start, e.end, e.type, source="tagger")
                                                              for e in demo.samples[i].entities]) for i in qi]
    demos = [s for i, s in enumerate(demo.samples) if i not in qi]
    config = grounding.GroundingConfig(k=3, max_boxes=2)
    c = client(server.url, workers=4, max_tokens=600)
    seen = record(c)
    out, counts = grounding.ground(queries, demos, demo, c, config)
    asked = [{s.name(e) for e in s.entities if e.type != "location"} for s in queries]
    assert counts["calls"] == len(seen) == c.usage.calls == 3 and counts.get("failed_calls", 0) == c.usage.failures
    assert [len(a) for a in asked] == [2, 4, 2]
    for req, _ in seen:
        images = [p for m in req["messages"] if isinstance(m["content"], list) for p in m["content"]
                  if p.get("type") == "image_url"]
        assert len(images) == config.k + 1
    accounted(c)
    ok = answered(seen)
    raw = sum(len(it["boxes"]) for _, rep in ok for it in rep.content["entities"])
    missing = sum(len(a - {it["entity"] for it in rep.content["entities"]})
                  for a, (_, rep) in zip(asked, seen) if not isinstance(rep, LLMError))
    assert counts.get("missing", 0) == missing
    # a name's boxes go to each of its occurrences: count them once per name
    per_name = sum(len(next(e.boxes for e in s.entities if s.name(e) == n)) for s, a in zip(out, asked) for n in a)
    assert per_name + counts.get("degenerate_boxes", 0) + counts.get("malformed_boxes", 0) == raw
    assert counts["boxes"] == sum(len(e.boxes) for s in out for e in s.entities)
    assert counts["entities_grounded"] == sum(1 for s in out for e in s.entities if e.boxes)
    for s in out:
        with Image.open(s.image) as im:
            w, h = im.size
        for e in s.entities:
            assert e.type != "location" or not e.boxes
            assert all(0 <= b.x1 < b.x2 <= w and 0 <= b.y1 < b.y2 <= h and b.x2 - b.x1 >= 1 and b.y2 - b.y1 >= 1
                       for b in e.boxes)
    assert [(e.start, e.end, e.type) for s in out for e in s.entities] == \
           [(e.start, e.end, e.type) for s in queries for e in s.entities]


def test_pipeline_on_demo_then_a_rerun_asks_only_the_failed_calls(server, tmp_path):
    """refineg.main with every stage on, through a recording proxy: it exits 0 and writes predictions for
    every test id; each stage's usage counts exactly the requests the server received for that stage
    (told apart by the answer schema), and the server's own token counters moved by the usage totals.
    The same command again reuses the synthesis and the tagger and answers every call from the cache,
    except the calls that failed (never cached, so a rerun asks them again)."""
    stage_of = {"samples": "synthesis", "decisions": "refinement", "entities": "grounding"}
    sent: list[str] = []

    def forward(body: dict):
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        sent.append(next(stage for key, stage in stage_of.items() if key in props))
        r = requests.post(server.url + "/chat/completions", json=body, timeout=300)
        return r.status_code, r.json(), {}

    out = tmp_path / "run"
    tiny = ["--data", DEMO, "--test-share", "0.2", "--out", str(out), "--tagger-epochs", "1", "--no-tagger-progress",
            "--synth-per-seed", "2", "--synth-seeds", "4", "--synth-max-tokens", "16", "--synth-max-entities", "1",
            "--synth-answer-tokens", "512", "--unc-target-rate", "1.0", "--unc-max-reasoning", "10",
            "--ground-k", "1", "--ground-max-boxes", "2", "--llm-max-tokens", "600", "--llm-max-retries", "1",
            "--llm-backoff-base", "0.05"]
    before = server.metrics()
    with FakeServer(forward) as proxy:
        assert refineg.main([*tiny, "--llm-url", proxy.url]) == 0
        first = len(sent)
        after = server.metrics()
        pred = json.loads((out / "predictions.json").read_text())
        usage = json.loads((out / "usage.json").read_text())["llm"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert refineg.main([*tiny, "--llm-url", proxy.url]) == 0
        again = json.loads((out / "usage.json").read_text())["llm"]
        assert proxy.errors == []
    _, test = refineg.split(ccks.read_ccks(DEMO).samples, 0.2, 0)
    assert sorted(pred) == sorted(s.id for s in test)
    assert metrics["skipped"] == {} and set(usage) == {"synthesis", "refinement", "grounding"}
    for stage, u in usage.items():
        assert u["calls"] == metrics["stages"][stage]["calls"] > 0, stage
        assert u["requests"] == sent[:first].count(stage) == u["calls"] + u["retries"] + u["reasks"], stage
    assert sum(u["completion_tokens"] for u in usage.values()) == \
           after["tokens_predicted_total"] - before["tokens_predicted_total"]
    assert sum(u["prompt_tokens"] for u in usage.values()) == sum(
        after[k] - before[k] for k in ("prompt_tokens_total", "prompt_tokens_cached_total"))
    for s in test:                      # boxes, if the noise model gave any, in the original image
        with Image.open(s.image) as im:
            w, h = im.size
        assert all(r["bnd"] is None or 0 <= r["bnd"]["xmin"] < r["bnd"]["xmax"] <= w and
                   0 <= r["bnd"]["ymin"] < r["bnd"]["ymax"] <= h for r in pred[s.id])
    # the rerun: synthesis reused from synthetic.jsonl (its client makes no call), the rest from the cache
    assert again["synthesis"]["calls"] == 0
    assert again["refinement"]["calls"] == usage["refinement"]["calls"]
    assert again["refinement"]["calls"] - again["refinement"]["cache_hits"] == usage["refinement"]["failures"]
    if usage["refinement"]["failures"] == 0:    # the same refined entities, hence the same grounding requests
        assert again["grounding"]["calls"] == usage["grounding"]["calls"]
        assert again["grounding"]["calls"] - again["grounding"]["cache_hits"] == usage["grounding"]["failures"]
    assert len(sent) - first == sum(u["requests"] for u in again.values())
    if not any(u["failures"] for u in usage.values()):
        assert len(sent) == first
