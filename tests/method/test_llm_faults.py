"""llm.py against the scripted fake server when things go wrong: retries, timeouts, error messages naming
the URL, status and cause, and hostile answers (the chaos server's faults, deep nesting, odd usage, oversized
bodies, a hung server). Seconds, offline. The client's normal path is in test_llm.py."""

import socket
import time

import pytest
from llm_helpers import SCHEMA, ask, client, script
from PIL import Image

import llm
from client.structured import extract_json
from images import image_part
from llm import Client, ClientConfig, LLMError, check_server, text_part
from servers.fake_mllm import DEEP, FAULTS, FakeServer, error, reply

NO_VISION_BODY = {
    "error": {
        "code": 500,
        "type": "server_error",  # llama-server without --mmproj, verbatim
        "message": "image input is not supported - hint: if this is unexpected, "
        "you may need to provide the mmproj",
    }
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- retries and errors


def test_503_then_200_is_retried():
    with FakeServer(script((503, {"error": {"message": "busy"}}, {}), reply("hi"))) as srv:
        c = client(srv.url)
        r = c.chat(ask("hello"))
    assert r.content == "hi" and not r.cached and len(srv.requests) == 2 and c.usage.retries == 1


def test_400_is_not_retried_and_reports_status_and_body():
    with FakeServer(script((400, "bad request: messages[0] has no content", {}))) as srv:
        c = client(srv.url)
        with pytest.raises(LLMError, match=r"HTTP 400 .*bad request: messages\[0\] has no content"):
            c.chat(ask("hello"))
    assert len(srv.requests) == 1 and c.usage.retries == 0 and c.usage.failures == 1


def test_5xx_until_the_last_try_is_an_error_with_details():
    with FakeServer(script((502, "upstream down", {}))) as srv:
        with pytest.raises(LLMError, match=r"failed 3 times.*HTTP 502: upstream down"):
            client(srv.url, max_retries=2).chat(ask("hello"))
    assert len(srv.requests) == 3


def test_hung_response_times_out_and_is_retried():
    def handler(body):
        if len(srv.requests) == 1:
            time.sleep(0.6)  # longer than the read timeout: the client must give up and retry
        return reply("late but fine")

    with FakeServer(handler) as srv:
        c = client(srv.url, read_timeout=0.1)
        r = c.chat(ask("hello"))
    assert r.content == "late but fine" and len(srv.requests) == 2 and c.usage.retries == 1


def test_timeout_on_every_try_names_the_url():
    with FakeServer(lambda body: time.sleep(0.3) or reply("never seen")) as srv:
        with pytest.raises(
            LLMError, match=r"no answer from http://127\.0\.0\.1:\d+/v1/chat/completions .* 2 tries"
        ):
            client(srv.url, read_timeout=0.05, max_retries=1).chat(ask("hello"))


def test_retry_after_is_honoured_and_capped(monkeypatch):
    waits = []  # the client's sleeps between tries, recorded instead of timed (the machine is shared)
    monkeypatch.setattr(llm.time, "sleep", waits.append)
    with FakeServer(script((429, "slow down", {"Retry-After": "0.3"}), reply("ok"))) as srv:
        assert client(srv.url, backoff_cap=5.0).chat(ask("hello")).content == "ok"
    assert waits == [0.3]
    with FakeServer(script((429, "slow down", {"Retry-After": "100"}), reply("ok"))) as srv:
        assert client(srv.url, backoff_cap=0.05).chat(ask("hello")).content == "ok"
    assert waits == [0.3, 0.05]  # backoff_cap bounds every wait


def test_connection_refused_names_the_url_and_hints_to_start_a_server():
    url = f"http://127.0.0.1:{free_port()}/v1"
    c = client(url, max_retries=1)
    with pytest.raises(
        LLMError,
        match=r"cannot connect to http://127\.0\.0\.1:\d+/v1/chat/completions in 2 tries.*"
        r"Is the server running",
    ):
        c.chat(ask("hello"))
    assert c.usage.requests == 2 and c.usage.failures == 1


def test_check_server_lists_models_and_names_an_unreachable_url():
    with FakeServer(model="served-model") as srv:
        assert check_server(ClientConfig(base_url=srv.url, model="served-model")) == ["served-model"]
        with pytest.warns(UserWarning, match=r"model 'other' is not in the list .*\['served-model'\]"):
            check_server(ClientConfig(base_url=srv.url, model="other"))
    with pytest.raises(
        LLMError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1/models .*Is the server running"
    ):
        check_server(ClientConfig(base_url=f"http://127.0.0.1:{free_port()}/v1"))


def test_no_base_url_is_a_clear_error():
    with pytest.raises(LLMError, match="no LLM server configured"):
        Client(ClientConfig()).chat(ask("hello"))


def test_text_only_model_refusing_an_image_is_a_no_vision_error_without_retries(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(path)
    part, _ = image_part(str(path))
    with FakeServer(script((500, NO_VISION_BODY, {}))) as srv:
        c = client(srv.url)
        with pytest.raises(LLMError, match=r"model fake-model at .* has no vision.*--mmproj"):
            c.chat([{"role": "user", "content": [text_part("What is this?"), part]}])
    assert len(srv.requests) == 1 and c.usage.retries == 0


def test_unknown_model_names_the_model():
    body = {
        "object": "error",
        "message": "The model `nope` does not exist.",
        "type": "NotFoundError",
        "code": 404,
    }
    with FakeServer(script((404, body, {}))) as srv:
        with pytest.raises(LLMError, match=r"model 'nope' not found at .*/models"):
            client(srv.url, model="nope").chat(ask("hello"))
    assert len(srv.requests) == 1


def test_finish_reason_length_is_an_error_not_a_result():
    with FakeServer(script(reply('{"answer": "ye', finish_reason="length", completion_tokens=2048))) as srv:
        with pytest.raises(LLMError, match=r"cut at max_tokens=2048: .*\(finish_reason 'length'\)"):
            client(srv.url).chat(ask("hello"), SCHEMA)
    assert len(srv.requests) == 1


def test_length_before_max_tokens_blames_the_context():
    """llama-server accepts prompt + max_tokens beyond its context and stops when the context is full
    (found on the real server): 200, finish_reason length, fewer tokens than max_tokens."""
    answer = reply('{"answer": "ye', finish_reason="length", prompt_tokens=8100, completion_tokens=92)
    with FakeServer(script(answer)) as srv:
        with pytest.raises(
            LLMError, match=r"cut after 92 tokens by the server's context \(8100 prompt tokens\)"
        ):
            client(srv.url).chat(ask("hello"), SCHEMA)
    assert len(srv.requests) == 1


def test_real_server_error_shapes_give_status_and_hints():
    """The error bodies llama-server sends (modelled by fake_server.error), each one try."""
    cases = [
        (
            error(
                400,
                "request (9000 tokens) exceeds the available context size (8192 tokens)",
                "exceed_context_size_error",
                n_prompt_tokens=9000,
                n_ctx=8192,
            ),
            400,
            "larger context",
        ),
        (error(400, "Failed to load image or audio file"), 400, "Failed to load image"),
        (error(404, "Model not found", "not_found_error"), 404, "not found"),
        (
            error(
                500,
                "image input is not supported - hint: if this is unexpected, you may need to provide "
                "the mmproj",
                "server_error",
            ),
            500,
            "has no vision",
        ),
    ]
    for answer, status, words in cases:
        with FakeServer(script(answer)) as srv:
            with pytest.raises(LLMError, match=words) as info:
                client(srv.url).chat(ask("hello"))
        assert info.value.status == status and len(srv.requests) == 1


# ---------------------------------------------------------------- hostile answers (issue 13)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_fault_is_an_llm_error_or_a_retried_success(fault):
    """Each fault of the chaos server on every try ends in LLMError (counted), never another exception;
    the transient ones followed by a good answer are retried into a success."""
    good = reply({"answer": "yes"})
    with FakeServer(lambda body: FAULTS[fault](good)) as srv:
        c = client(srv.url, read_timeout=0.3, schema_retries=1, max_retries=1)
        try:
            r = c.chat(ask("Is it?"), SCHEMA)
        except LLMError:
            assert c.usage.failures == 1
        else:  # only answers whose fault is outside what the client needs
            assert fault == "odd_usage" and r.content == {"answer": "yes"} and c.usage.odd_usage == 1
    transient = {"5xx", "429", "hang", "cut"}
    if fault in transient:
        with FakeServer(script(FAULTS[fault](good), good)) as srv:
            assert client(srv.url, read_timeout=0.3).chat(ask("Is it?"), SCHEMA).content == {"answer": "yes"}


def test_deep_nesting_as_content_or_body_is_no_recursion_error():
    for out in (reply(DEEP), (200, DEEP, {})):
        with FakeServer(lambda body: out) as srv:  # noqa: B023
            with pytest.raises(LLMError, match="not fit the schema|not JSON"):
                client(srv.url, schema_retries=0).chat(ask("Is it?"), SCHEMA)
    assert isinstance(extract_json("[[1]] " + DEEP), list)  # a value before the deep part is still found


def test_odd_usage_counts_zero_tokens_and_is_counted():
    odd = {**reply("hi"), "usage": {"prompt_tokens": "n/a", "completion_tokens": [5]}}
    for usage in (
        {"prompt_tokens": "n/a", "completion_tokens": [5]},
        [1, 2],
        {"prompt_tokens": -3},
        {"prompt_tokens": True},
        {"prompt_tokens": float("inf")},
    ):
        with FakeServer(lambda body: {**odd, "usage": usage}) as srv:  # noqa: B023
            c = client(srv.url)
            r = c.chat(ask("hello"))
        assert r.content == "hi" and c.usage.odd_usage == 1 and c.usage.prompt_tokens == 0
    with FakeServer(lambda body: {**odd, "usage": {"prompt_tokens": 7.0}}) as srv:  # 7.0 is a count
        c = client(srv.url)
        assert c.chat(ask("hello")).usage == {"prompt_tokens": 7, "completion_tokens": 0}
        assert c.usage.odd_usage == 0


def test_content_as_text_parts_is_joined_and_other_shapes_are_errors():
    parts = reply("")
    parts["choices"][0]["message"]["content"] = [
        {"type": "text", "text": '{"answer": '},
        {"type": "text", "text": '"no"}'},
    ]
    with FakeServer(lambda body: parts) as srv:
        assert client(srv.url).chat(ask("Is it?"), SCHEMA).content == {"answer": "no"}
    for content in ({"answer": "no"}, 42, ["no"]):
        bad = reply("")
        bad["choices"][0]["message"]["content"] = content
        with FakeServer(lambda body: bad) as srv:  # noqa: B023
            with pytest.raises(LLMError, match="neither text nor a list of text parts"):
                client(srv.url).chat(ask("Is it?"), SCHEMA)


def test_an_oversized_answer_is_refused_unread_and_never_echoed():
    with FakeServer(lambda body: reply("x" * 3_000_000)) as srv:
        c = client(srv.url, max_answer_bytes=1_000_000)
        with pytest.raises(LLMError, match="more than 1000000 bytes"):
            c.chat(ask("Is it?"), SCHEMA)
    assert len(srv.requests) == 1 and c.usage.reasks == 0  # no re-ask carrying the 3 MB back
    with FakeServer(lambda body: reply({"answer": "yes"})) as srv:  # the cap counts bytes, not a format
        assert client(srv.url, max_answer_bytes=400).chat(ask("Is it?"), SCHEMA).content == {"answer": "yes"}


def test_call_budget_bounds_a_hung_server_and_dead_after_stops_asking():
    with FakeServer(lambda body: time.sleep(2) or reply("late")) as srv:
        c = client(srv.url, read_timeout=0.5, max_retries=10, call_budget=1.2, dead_after=2, workers=1)
        out = c.map_chat([{"messages": ask(f"q{i}")} for i in range(5)])
    assert all(isinstance(r, LLMError) for r in out)
    assert "taken as dead" in str(out[-1]) and "no answer" in str(out[0])
    assert len(srv.requests) == c.usage.requests <= 2 * 3  # two calls sent, each within its budget
    assert c.usage.failures == 5  # 2 calls x at most 3 tries were sent, not 5 calls x 11 tries


def test_an_answer_resets_the_dead_server_count():
    outs = iter([None, None, "ok", None, None, "ok"])  # None = hang past the read timeout

    def handler(body):
        o = next(outs)
        return reply(o) if o else time.sleep(0.5) or reply("late")

    with FakeServer(handler) as srv:
        c = client(srv.url, read_timeout=0.1, max_retries=0, dead_after=3, workers=1)
        out = c.map_chat([{"messages": ask(f"q{i}")} for i in range(6)])
    assert [isinstance(r, LLMError) for r in out] == [True, True, False, True, True, False]
