"""llm.py against the scripted fake server on its normal path: structured output, images, the cache (also
across a killed run), concurrency, the API key and usage counts. Seconds, offline. Errors, retries and
hostile answers are in test_llm_faults.py."""

import base64
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from llm_helpers import SCHEMA, ask, client, script
from PIL import Image

import llm
from client.structured import validate
from images import image_part
from llm import LLMError, text_part
from servers.fake_mllm import FakeServer, reply

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- structured output


def test_json_schema_request_form_and_explicit_sampling():
    with FakeServer(script(reply({"answer": "yes"}))) as srv:
        r = client(srv.url).chat(ask("Is it?"), SCHEMA)
    body = srv.requests[0]
    assert r.content == {"answer": "yes"}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
    }
    assert body["temperature"] == 0.0 and body["stream"] is False and body["model"] == "fake-model"
    assert body["messages"] == ask("Is it?")


def test_json_object_fallback_puts_the_schema_in_the_prompt():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [text_part("Is it?")]},
    ]
    with FakeServer(script(reply('Sure:\n```json\n{"answer": "no"}\n```'))) as srv:
        r = client(srv.url, structured="json_object").chat(messages, SCHEMA)
    body = srv.requests[0]
    assert r.content == {"answer": "no"}
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == messages[0] and body["messages"][1]["content"][0] == text_part("Is it?")
    assert json.dumps(SCHEMA) in body["messages"][1]["content"][1]["text"]
    assert len(messages[1]["content"]) == 1  # the caller's messages are not modified


def test_invalid_json_is_reasked_with_a_note_then_reported(tmp_path):
    with FakeServer(script(reply("I think the answer is yes."))) as srv:
        c = client(srv.url, schema_retries=2, cache_path=str(tmp_path / "cache.jsonl"))
        with pytest.raises(LLMError, match=r"did not fit the schema in 3 tries: no JSON value"):
            c.chat(ask("Is it?"), SCHEMA)
    assert len(srv.requests) == 3
    second = srv.requests[1]["messages"]
    assert second[:1] == ask("Is it?")
    assert second[1] == {"role": "assistant", "content": "I think the answer is yes."}
    assert second[2]["role"] == "user" and "not valid: no JSON value" in second[2]["content"]
    assert c.usage.reasks == 2 and c.usage.failures == 1
    assert not (tmp_path / "cache.jsonl").exists()  # failures are never cached


def test_schema_violation_is_reasked_and_the_corrected_answer_kept():
    with FakeServer(script(reply({"answer": "maybe", "why": "unsure"}), reply({"answer": "no"}))) as srv:
        c = client(srv.url)
        r = c.chat(ask("Is it?"), SCHEMA)
    note = srv.requests[1]["messages"][-1]["content"]
    assert r.content == {"answer": "no"} and len(srv.requests) == 2
    assert '$.answer: "maybe" is not one of ["yes", "no"]' in note and "$: unexpected key 'why'" in note
    assert r.usage == {"prompt_tokens": 20, "completion_tokens": 10}  # the re-ask is paid for too


# ---------------------------------------------------------------- images


def decode(url: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    im = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True)))
    im.load()
    return im


@pytest.mark.parametrize(
    "size, fmt, mode, max_side, expected",
    [
        ((1600, 900), "JPEG", "RGB", 1000, (1000, 562)),  # 900 * 1000 / 1600 = 562.5, rounds to even
        ((900, 1600), "PNG", "RGB", 1000, (562, 1000)),
        ((640, 480), "PNG", "RGBA", 1000, (640, 480)),  # never upscaled
        ((300, 200), "GIF", "P", 150, (150, 100)),
    ],
)
def test_image_part_is_a_jpeg_data_url_of_the_size_it_reports(tmp_path, size, fmt, mode, max_side, expected):
    path = tmp_path / f"img.{fmt.lower()}"
    im = Image.new("RGB", size, (30, 120, 200)).convert(mode)
    if mode == "RGBA":
        im.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))  # left half fully transparent
    im.save(path, format=fmt)
    part, sent = image_part(str(path), max_side=max_side)
    assert part["type"] == "image_url" and sent == expected
    with FakeServer() as srv:  # and it arrives as sent
        client(srv.url).chat([{"role": "user", "content": [text_part("What?"), part]}])
    got = decode(srv.requests[0]["messages"][0]["content"][1]["image_url"]["url"])
    assert got.format == "JPEG" and got.mode == "RGB" and got.size == expected
    if mode == "RGBA":  # transparent pixels become white, the opaque ones keep their colour
        assert min(got.getpixel((10, 10))) > 245
        assert max(abs(a - b) for a, b in zip(got.getpixel((600, 400)), (30, 120, 200))) < 8


# ---------------------------------------------------------------- cache


def test_identical_call_is_a_cache_hit_without_a_request(tmp_path):
    cache = str(tmp_path / "cache.jsonl")
    with FakeServer(lambda body: reply({"answer": "yes"})) as srv:
        c = client(srv.url, cache_path=cache)
        first = c.chat(ask("Is it?"), SCHEMA)
        first.content["answer"] = "mutated by the caller"
        second = c.chat(ask("Is it?"), SCHEMA)
        assert len(srv.requests) == 1
        assert second.cached and not first.cached and second.content == {"answer": "yes"}
        assert (
            second.usage == first.usage == {"prompt_tokens": 10, "completion_tokens": 5}
        )  # what it cost once
        c.chat(ask("Is it?"), SCHEMA, temperature=0.7)  # other sampling settings: a different request
        c.chat(ask("Is it?"))  # no schema: a different request
        assert len(srv.requests) == 3
        again = client(srv.url, cache_path=cache)  # a new run reads the file
        assert again.chat(ask("Is it?"), SCHEMA).cached and len(srv.requests) == 3
    assert c.usage.cache_hits == 1 and again.usage.as_dict()["requests"] == 0
    assert (again.usage.cached_prompt_tokens, again.usage.cached_completion_tokens) == (10, 5)  # paid by `c`


def test_cache_file_is_readable_and_images_are_elided(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (50, 40)).save(path)
    part, _ = image_part(str(path))
    cache = tmp_path / "cache.jsonl"
    with FakeServer() as srv:
        client(srv.url, cache_path=str(cache)).chat([{"role": "user", "content": [text_part("What?"), part]}])
    record = json.loads(cache.read_text())
    url = record["request"]["messages"][0]["content"][1]["image_url"]["url"]
    assert record["content"] == "ok" and url.startswith(f"<{len(part['image_url']['url'])} chars, sha256 ")


def test_torn_last_line_is_ignored_and_the_next_record_starts_on_a_new_line(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with FakeServer(lambda body: reply("answer to " + body["messages"][0]["content"])) as srv:
        c = client(srv.url, cache_path=str(cache))
        c.chat(ask("a"))
        c.chat(ask("b"))
        with open(cache, "ab") as f:
            f.write(b'{"key": "0123", "content": "answer to c, cut o')  # killed mid-write
        with pytest.warns(UserWarning, match=r"ignored 1 unreadable line\(s\) \[3\]"):
            c2 = client(srv.url, cache_path=str(cache))
        assert [c2.chat(ask(q)).content for q in "abc"] == ["answer to a", "answer to b", "answer to c"]
        assert len(srv.requests) == 3
        with pytest.warns(UserWarning, match=r"\[3\]"):
            c3 = client(srv.url, cache_path=str(cache))
        assert all(c3.chat(ask(q)).cached for q in "abc") and len(srv.requests) == 3


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import llm
c = llm.Client(llm.ClientConfig(base_url=sys.argv[2], model="fake-model", cache_path=sys.argv[3], workers=1))
c.map_chat([{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(10)])
"""


def test_a_killed_run_keeps_its_answers_and_a_rerun_asks_only_for_the_rest(tmp_path):
    cache = tmp_path / "cache.jsonl"
    child, started = {}, threading.Event()

    def handler(body):
        q = body["messages"][0]["content"]
        if q == "q5" and "proc" in child:  # the first run dies (SIGKILL) while waiting for this answer
            started.wait(5)
            child["proc"].kill()
            child.pop("proc")
        return reply("a" + q[1:])

    with FakeServer(handler) as srv:
        child["proc"] = proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), srv.url, str(cache)])
        started.set()
        assert proc.wait(timeout=20) != 0
        assert [b["messages"][0]["content"] for b in srv.requests] == [f"q{i}" for i in range(6)]
        assert len(cache.read_text().splitlines()) == 5
        c = client(srv.url, cache_path=str(cache))
        out = c.map_chat([{"messages": ask(f"q{i}")} for i in range(10)])
    assert [r.content for r in out] == [f"a{i}" for i in range(10)]
    assert [r.cached for r in out] == [True] * 5 + [False] * 5
    assert sorted(b["messages"][0]["content"] for b in srv.requests[6:]) == [f"q{i}" for i in range(5, 10)]
    assert c.usage.cache_hits == 5 and c.usage.requests == 5


def test_ctrl_c_in_map_chat_drops_queued_requests_and_keeps_finished_answers(tmp_path, monkeypatch):
    def interrupted(iterable, **kw):  # Ctrl-C arrives in the main thread after the first answer
        for x in iterable:
            yield x
            raise KeyboardInterrupt

    monkeypatch.setattr(llm, "tqdm", interrupted)
    cache = tmp_path / "cache.jsonl"
    with FakeServer(lambda body: time.sleep(0.05) or reply("a")) as srv:
        c = client(srv.url, cache_path=str(cache), workers=2)
        with pytest.raises(KeyboardInterrupt):
            c.map_chat([{"messages": ask(f"q{i}")} for i in range(20)])
        time.sleep(0.2)  # let the requests in flight land
        sent = len(srv.requests)
    assert 1 <= sent <= 4  # the queued ones were never sent
    assert len(cache.read_text().splitlines()) == sent


# ---------------------------------------------------------------- concurrency, key, usage


def test_map_chat_keeps_order_and_one_failure_loses_nothing(tmp_path):
    def handler(body):
        i = int(body["messages"][0]["content"][1:])
        time.sleep((8 - i) * 0.01)  # later items finish first
        return (400, "no such thing", {}) if i == 3 else reply(f"a{i}")

    cache = tmp_path / "cache.jsonl"
    with FakeServer(handler) as srv:
        c = client(srv.url, cache_path=str(cache))
        out = c.map_chat([{"messages": ask(f"q{i}")} for i in range(8)], desc="test")
    assert [r.content if not isinstance(r, LLMError) else "ERR" for r in out] == [
        "a0",
        "a1",
        "a2",
        "ERR",
        "a4",
        "a5",
        "a6",
        "a7",
    ]
    assert "HTTP 400" in str(out[3]) and c.usage.failures == 1 and c.usage.calls == 8
    assert len(cache.read_text().splitlines()) == 7


def test_map_chat_runs_requests_in_parallel():
    # every request waits at a barrier until all 8 are in the server at once: serial requests would break it
    # (a 500 after 10 s), so the answers prove the concurrency without timing anything
    barrier = threading.Barrier(8, timeout=10)

    def all_at_once(body: dict) -> dict:
        barrier.wait()
        return reply("ok")

    with FakeServer(all_at_once) as srv:
        c = client(srv.url, max_retries=0)
        out = c.map_chat([{"messages": ask(f"q{i}")} for i in range(8)], workers=8)
    assert [r.content for r in out] == ["ok"] * 8 and len(srv.requests) == 8


def test_api_key_is_a_bearer_header_and_never_written(tmp_path, monkeypatch):
    """The key goes in the header and nowhere else; scrubbing it from error messages is the application's
    client's (tests/app/test_serving.py)."""
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("REFINEG_TEST_KEY", key)
    cache = tmp_path / "cache.jsonl"
    with FakeServer(lambda body: reply("fine")) as srv:
        c = client(srv.url, api_key_env="REFINEG_TEST_KEY", cache_path=str(cache))
        assert c.chat(ask("hello")).content == "fine"
        monkeypatch.delenv("REFINEG_TEST_KEY")
        client(srv.url).chat(ask("no key"))
    assert srv.headers[0]["Authorization"] == f"Bearer {key}" and "Authorization" not in srv.headers[1]
    assert key not in cache.read_text() and key not in repr(c.usage)


def test_usage_counts():
    outs = {
        "retry": [(503, "busy", {}), reply("r", prompt_tokens=7, completion_tokens=3)],
        "reask": [
            reply({"answer": "maybe"}, prompt_tokens=11, completion_tokens=2),
            reply({"answer": "yes"}, prompt_tokens=13, completion_tokens=2),
        ],
        "fail": [(400, "no", {})],
    }

    def handler(body):
        return outs[body["messages"][0]["content"]].pop(0)

    with FakeServer(handler) as srv:
        c = client(srv.url, cache_path=None)
        c.chat(ask("retry"))
        c.chat(ask("reask"), SCHEMA)
        with pytest.raises(LLMError):
            c.chat(ask("fail"))
    u = c.usage.as_dict()
    del u["seconds"]  # present (KeyError otherwise); its value is wall time, bench.py's business
    assert u == {
        "calls": 3,
        "cache_hits": 0,
        "requests": 5,
        "prompt_tokens": 31,
        "completion_tokens": 7,
        "retries": 1,
        "reasks": 1,
        "failures": 1,
        "odd_usage": 0,
        "cached_prompt_tokens": 0,
        "cached_completion_tokens": 0,
    }
    assert len(srv.requests) == 5


# ---------------------------------------------------------------- the Chat protocol


def test_a_chat_of_ones_own_is_all_a_stage_needs():
    """llm.Chat is the whole client interface of the stages: a stand-in with map_chat alone (no HTTP, no
    llm.Client; the shape docs/porting.md shows) drives synthesis, and its LLMError costs only its seed."""
    from test_synth import item, toy

    from synth import SynthConfig, synthesize

    asked = []

    class MyServing:
        def map_chat(self, jobs, desc=""):
            requests = [job() if callable(job) else job for job in jobs]
            return [None if r is None else self.answer(r) for r in requests]

        def answer(self, request):
            asked.append(request)
            if len(asked) > 1:  # the second seed's call fails for good
                return LLMError("the serving is down")
            content = {
                "samples": [item("The USS Nimitz docked at Norfolk on Monday .", ("USS Nimitz", "vessel"))]
            }
            assert validate(content, request["schema"]) == []
            return llm.Reply(content, usage={}, cached=False)

    samples, _ = synthesize(toy(), MyServing(), SynthConfig(per_seed=1))
    assert [r["messages"][0]["role"] for r in asked] == ["system", "system"]
    assert [s.text for s in samples] == ["The USS Nimitz docked at Norfolk on Monday ."]
    assert [(samples[0].name(e), e.type) for e in samples[0].entities] == [("USS Nimitz", "vessel")]
