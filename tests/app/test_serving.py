"""app/serving.py against the scripted fake server: the guards of a long run (a time budget per call, the
dead-server cut-off, the answer-size cap), the key scrubbed from messages, the hints for the usual set-up
mistakes, and check_server. Seconds, offline. llm.Client's own behaviour is in tests/method/test_llm*.py."""

import socket
import time

import pytest
from llm_helpers import SCHEMA, ask, script, serving_client
from PIL import Image

from app.serving import ServingConfig, check_server
from data import InvalidSettings
from images import image_part
from llm import ClientConfig, LLMError, text_part
from servers.fake_mllm import FAULTS, FakeServer, error, reply

NO_VISION = "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_settings_are_checked_with_the_clients():
    with pytest.raises(InvalidSettings) as refused:
        ServingConfig(call_budget=0, workers=0)
    assert [field for field, _ in refused.value.problems] == ["workers", "call_budget"]


# ---------------------------------------------------------------- budget, dead server, size cap


def test_call_budget_bounds_a_hung_server_and_dead_after_stops_asking():
    with FakeServer(lambda body: time.sleep(2) or reply("late")) as srv:
        c = serving_client(
            srv.url, read_timeout=0.5, max_retries=10, call_budget=1.2, dead_after=2, workers=1
        )
        out = c.map_chat([{"messages": ask(f"q{i}")} for i in range(5)])
    assert all(isinstance(r, LLMError) for r in out)
    assert "taken as dead" in str(out[-1]) and c.last_error == str(out[-1])
    assert "no answer" in str(out[0]) and "the 1.2 s call budget ran out" in str(out[0])
    assert len(srv.requests) == c.usage.requests <= 2 * 3  # two calls sent, each within its budget
    assert c.usage.failures == 5  # 2 calls x at most 3 tries were sent, not 5 calls x 11 tries


def test_an_answer_resets_the_dead_server_count():
    outs = iter([None, None, "ok", None, None, "ok"])  # None = hang past the read timeout

    def handler(body):
        o = next(outs)
        return reply(o) if o else time.sleep(0.5) or reply("late")

    with FakeServer(handler) as srv:
        c = serving_client(srv.url, read_timeout=0.1, max_retries=0, dead_after=3, workers=1)
        out = c.map_chat([{"messages": ask(f"q{i}")} for i in range(6)])
    assert [isinstance(r, LLMError) for r in out] == [True, True, False, True, True, False]


def test_an_oversized_answer_is_refused_unread_and_never_echoed():
    with FakeServer(lambda body: reply("x" * 3_000_000)) as srv:
        c = serving_client(srv.url, max_answer_bytes=1_000_000)
        with pytest.raises(LLMError, match="more than 1000000 bytes"):
            c.chat(ask("Is it?"), SCHEMA)
    assert len(srv.requests) == 1 and c.usage.reasks == 0  # no re-ask carrying the 3 MB back
    with FakeServer(lambda body: reply({"answer": "yes"})) as srv:  # the cap counts bytes, not a format
        c = serving_client(srv.url, max_answer_bytes=400)
        assert c.chat(ask("Is it?"), SCHEMA).content == {"answer": "yes"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_fault_is_an_llm_error_or_a_retried_success(fault):
    """As for llm.Client (test_llm_faults.py), with the guards on: the huge answer is refused unread."""
    good = reply({"answer": "yes"})
    with FakeServer(lambda body: FAULTS[fault](good)) as srv:
        c = serving_client(srv.url, read_timeout=0.3, schema_retries=1, max_retries=1)
        try:
            r = c.chat(ask("Is it?"), SCHEMA)
        except LLMError as e:
            assert c.usage.failures == 1 and c.last_error == str(e)
            assert fault != "huge" or "more than 2000000 bytes" in str(e)
        else:
            assert fault == "odd_usage" and r.content == {"answer": "yes"}


# ---------------------------------------------------------------- messages: tries, hints, the key


def test_retried_refusals_and_silence_say_how_often_and_what_to_try():
    with FakeServer(script((502, "upstream down", {}))) as srv:
        with pytest.raises(LLMError, match=r"HTTP 502 from .*: upstream down \(3 tries\)$"):
            serving_client(srv.url, max_retries=2).chat(ask("hello"))
    with FakeServer(lambda body: time.sleep(0.3) or reply("never seen")) as srv:
        with pytest.raises(
            LLMError, match=r"no answer from .*timed out.*\(2 tries\)\. Raise --llm-read-timeout"
        ):
            serving_client(srv.url, read_timeout=0.05, max_retries=1).chat(ask("hello"))
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMError, match=r"no answer from .*\(2 tries\)\. Is the server running"):
        serving_client(url, max_retries=1).chat(ask("hello"))


def test_text_only_model_refusing_an_image_is_a_no_vision_error(tmp_path):
    """llama-server answers 500 (a 5xx, so retried like any) when a text-only model is sent an image."""
    path = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(path)
    part, _ = image_part(str(path))
    with FakeServer(script(error(500, NO_VISION, "server_error"))) as srv:
        c = serving_client(srv.url, max_retries=1)
        with pytest.raises(LLMError, match=r"model fake-model at .* has no vision.*--mmproj"):
            c.chat([{"role": "user", "content": [text_part("What is this?"), part]}])
    assert len(srv.requests) == 2 and c.usage.retries == 1


def test_real_server_error_shapes_give_status_and_hints():
    """The error bodies llama-server and vLLM send (modelled by fake_server.error); a 4xx is tried once."""
    context = error(400, "request (9000 tokens) exceeds the available context size (8192 tokens)")
    cases = [
        (context, 400, "do not fit the server's context: start it with a larger one"),
        (error(400, "Failed to load image or audio file"), 400, "Failed to load image"),
        (
            error(404, "The model `nope` does not exist.", "NotFoundError"),
            404,
            r"'nope' not found at .*/models",
        ),
        (error(401, "invalid api key"), 401, r"Check the API key in \$OPENAI_API_KEY"),
        (error(500, "Context size has been exceeded."), 500, "slots share -c"),
    ]
    for answer, status, words in cases:
        with FakeServer(script(answer)) as srv:
            with pytest.raises(LLMError, match=words) as info:
                serving_client(srv.url, model="nope", max_retries=1).chat(ask("hello"))
        assert info.value.status == status and len(srv.requests) == (2 if status >= 500 else 1)


def test_a_cut_answer_says_what_to_raise():
    full = reply('{"answer": "ye', finish_reason="length", completion_tokens=2048)
    with FakeServer(script(full)) as srv:
        with pytest.raises(LLMError, match=r"cut by max_tokens=2048 .*Raise it \(--llm-max-tokens"):
            serving_client(srv.url).chat(ask("hello"), SCHEMA)
    context = reply('{"answer": "ye', finish_reason="length", prompt_tokens=8100, completion_tokens=92)
    with FakeServer(script(context)) as srv:
        with pytest.raises(LLMError, match=r"cut by the server's context .*start it with a larger one"):
            serving_client(srv.url).chat(ask("hello"), SCHEMA)


def test_the_api_key_is_scrubbed_from_every_message(monkeypatch):
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("REFINEG_TEST_KEY", key)

    def handler(body):  # a server that echoes the header in its error body
        return (400, f"bad header {srv.headers[-1]['Authorization']}", {})

    with FakeServer(handler) as srv:
        c = serving_client(srv.url, api_key_env="REFINEG_TEST_KEY")
        with pytest.raises(LLMError) as err:
            c.chat(ask("echo"))
    assert srv.headers[0]["Authorization"] == f"Bearer {key}"
    assert "bad header Bearer ***" in str(err.value) and key not in str(err.value) + c.last_error


# ---------------------------------------------------------------- check_server


def test_check_server_lists_models_and_names_an_unreachable_url():
    with FakeServer(model="served-model") as srv:
        assert check_server(ClientConfig(base_url=srv.url, model="served-model")) == ["served-model"]
        with pytest.warns(UserWarning, match=r"model 'other' is not in the list .*\['served-model'\]"):
            check_server(ClientConfig(base_url=srv.url, model="other"))
    with pytest.raises(
        LLMError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1/models .*Is the server running"
    ):
        check_server(ClientConfig(base_url=f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(LLMError, match="no LLM server configured"):
        check_server(ClientConfig())
