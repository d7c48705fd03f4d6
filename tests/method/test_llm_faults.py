"""llm.py against the scripted fake server when things go wrong: retries (urllib3's Retry, counted in
usage), timeouts, error messages naming the URL, status and cause, and hostile answers (the chaos server's
faults, deep nesting, odd usage). Seconds, offline. The client's normal path is in test_llm.py; the
application's guards (call budget, dead server, size cap, key scrubbing, hints) in
tests/app/test_serving.py."""

import socket
import time

import pytest
from llm_helpers import SCHEMA, ask, client, script

from client.structured import extract_json
from llm import Client, ClientConfig, LLMError
from servers.fake_mllm import DEEP, FAULTS, FakeServer, reply


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
        c = client(srv.url, max_retries=2)
        with pytest.raises(
            LLMError, match=r"HTTP 502 from http://127\.0\.0\.1:\d+/v1/chat/completions: upstream down"
        ):
            c.chat(ask("hello"))
    assert len(srv.requests) == c.usage.requests == 3 and c.usage.retries == 2


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
        c = client(srv.url, read_timeout=0.05, max_retries=1)
        with pytest.raises(
            LLMError, match=r"no answer from http://127\.0\.0\.1:\d+/v1/chat/completions, .*timed out"
        ):
            c.chat(ask("hello"))
    assert len(srv.requests) == c.usage.requests == 2 and c.usage.retries == 1


def test_retry_after_is_honoured_and_capped(monkeypatch):
    waits = []  # urllib3's sleeps between tries, recorded instead of timed (the machine is shared)
    monkeypatch.setattr(time, "sleep", waits.append)
    with FakeServer(script((429, "slow down", {"Retry-After": "3"}), reply("ok"))) as srv:
        assert client(srv.url, backoff_cap=5.0).chat(ask("hello")).content == "ok"
    assert waits == [3]
    with FakeServer(script((429, "slow down", {"Retry-After": "100"}), reply("ok"))) as srv:
        assert client(srv.url, backoff_cap=0.05).chat(ask("hello")).content == "ok"
    assert waits == [3, 0.05]  # backoff_cap bounds every wait
    for after in ("soon", "0.3"):  # not a number of seconds nor an HTTP date: the backoff instead
        with FakeServer(script((503, "busy", {"Retry-After": after}), reply("ok"))) as srv:
            assert client(srv.url).chat(ask("hello")).content == "ok"
    assert waits == [3, 0.05]  # a first retry's backoff is 0: urllib3 does not sleep for it


def test_backoff_grows_is_capped_and_jittered(monkeypatch):
    """Retry n >= 2 waits backoff_base * 2^(n-1) plus up to backoff_base of jitter (urllib3's formula), never
    more than backoff_cap; the first retry goes at once."""
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    with FakeServer(script(*[(503, "busy", {})] * 4, reply("ok"))) as srv:
        assert (
            client(srv.url, max_retries=4, backoff_base=1.0, backoff_cap=5.0).chat(ask("hi")).content == "ok"
        )
    assert len(waits) == 3 and 2 <= waits[0] <= 3 and 4 <= waits[1] <= 5 and waits[2] == 5


def test_connection_refused_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    c = client(url, max_retries=1)
    with pytest.raises(
        LLMError, match=r"no answer from http://127\.0\.0\.1:\d+/v1/chat/completions, .*refused"
    ) as err:
        c.chat(ask("hello"))
    assert (
        err.value.status is None and c.usage.requests == 2 and c.usage.retries == 1 and c.usage.failures == 1
    )


def test_no_base_url_is_a_clear_error():
    with pytest.raises(LLMError, match="no LLM server configured"):
        Client(ClientConfig()).chat(ask("hello"))


def test_finish_reason_length_is_an_error_not_a_result():
    with FakeServer(script(reply('{"answer": "ye', finish_reason="length", completion_tokens=2048))) as srv:
        with pytest.raises(
            LLMError, match=r"cut by max_tokens=2048 after 2048 tokens \(finish_reason 'length'\)"
        ):
            client(srv.url).chat(ask("hello"), SCHEMA)
    assert len(srv.requests) == 1


def test_length_before_max_tokens_blames_the_context():
    """llama-server accepts prompt + max_tokens beyond its context and stops when the context is full
    (found on the real server): 200, finish_reason length, fewer tokens than max_tokens."""
    answer = reply('{"answer": "ye', finish_reason="length", prompt_tokens=8100, completion_tokens=92)
    with FakeServer(script(answer)) as srv:
        with pytest.raises(
            LLMError, match=r"cut by the server's context \(8100 prompt tokens\) after 92 tokens"
        ):
            client(srv.url).chat(ask("hello"), SCHEMA)
    assert len(srv.requests) == 1


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
    transient = {"5xx", "429", "hang"}  # a body cut short after its headers is not retried (urllib3)
    if fault in transient:
        with FakeServer(script(FAULTS[fault](good), good)) as srv:
            assert client(srv.url, read_timeout=0.3).chat(ask("Is it?"), SCHEMA).content == {"answer": "yes"}


def test_deep_nesting_as_content_or_body_is_no_recursion_error():
    for out in (reply(DEEP), (200, DEEP, {})):
        with FakeServer(lambda body: out) as srv:  # noqa: B023
            with pytest.raises(LLMError, match="not fit the schema|not with JSON"):
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
