"""The MLLM client of ReFineG: one small HTTP client for any OpenAI-compatible server.

Every call of synthesis, refinement and grounding to the frozen (M)LLM goes through here. Input: OpenAI
chat messages (text and images) and optionally a JSON schema; output: a `Reply` holding the answer text,
or its JSON checked against the schema. The stages call one method, `map_chat` (the `Chat` protocol: a
porter with their own serving implements just that).

    python -c "import llm; print(llm.Client(llm.ClientConfig(base_url='http://127.0.0.1:8080/v1'))
               .chat([{'role': 'user', 'content': 'Say hi'}]).content)"

Left out on purpose: streaming, tool calls, `n` > 1, asyncio, detecting `json_schema` support. The parts
are in client/ (answers read and checked, the cache file, urllib3's retries, the usage counts); the
application's client (app/serving.py) adds a time budget per call, a dead-server cut-off, an answer-size
cap and hints.
"""

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Protocol

import requests
from tqdm import tqdm
from urllib3.util.retry import Retry

from client import cache
from client.session import session
from client.structured import SCHEMA_NOTE, answer_text, extract_json, token_counts, validate, with_schema_note
from client.usage import Usage
from data import require_valid, setting

REASK = "Reply again with only the JSON value, fitting the schema."


@dataclass
class ClientConfig:
    base_url: str = setting(
        "", 'an OpenAI-compatible /v1 URL, e.g. http://127.0.0.1:8000/v1; "" = no LLM', main=True
    )
    model: str = setting(
        "", 'the served model name; "" = not sent (llama-server serves one model)', main=True
    )
    api_key_env: str = setting(
        "OPENAI_API_KEY", "environment variable holding the key; unset is fine locally"
    )
    connect_timeout: float = setting(10.0, "seconds to open a connection")
    read_timeout: float = setting(
        120.0, "seconds of silence before a try fails (raise it for slow local models)"
    )
    max_retries: int = setting(4, "extra tries after a timeout, connection error, 408/409/429 or 5xx")
    backoff_base: float = setting(1.0, "seconds: retry n >= 2 waits base * 2^(n-1) + up to base of jitter")
    backoff_cap: float = setting(30.0, "seconds: no wait is longer, Retry-After included")
    temperature: float = setting(
        0.0, "always sent: server defaults differ (vLLM takes the model's, often 0.7)"
    )
    max_tokens: int = setting(2048, "a longer answer is an error (truncated JSON), never a result")
    workers: int = setting(
        4, "parallel requests in map_chat; match the server's slots (llama-server -np)", main=True
    )
    cache_path: str | None = setting(
        None, "JSONL of finished answers; None = none (refineg.py: OUT/llm_cache.jsonl)"
    )
    structured: str = setting(
        "json_schema", "json_schema (vLLM >= 0.12, llama-server) | json_object (in prompt)"
    )
    schema_retries: int = setting(
        2, "re-asks, with the error, when an answer does not parse or fit the schema"
    )

    def __post_init__(self):
        require_valid(self, client_rules(self))


def client_rules(c: ClientConfig) -> list[tuple[str, bool, str]]:
    """What the settings must be, as (field, holds, what is expected)."""
    url_ok = c.base_url == "" or c.base_url.startswith(("http://", "https://"))
    return [
        ("base_url", url_ok, "a URL starting with http:// or https://, e.g. http://127.0.0.1:8000/v1"),
        ("connect_timeout", c.connect_timeout > 0, "seconds > 0"),
        ("read_timeout", c.read_timeout > 0, "seconds > 0"),
        ("max_retries", c.max_retries >= 0, "0 or more"),
        ("backoff_base", c.backoff_base >= 0, "seconds >= 0"),
        ("backoff_cap", c.backoff_cap >= 0, "seconds >= 0"),
        ("temperature", c.temperature >= 0, "0 or more"),
        ("max_tokens", c.max_tokens >= 1, "at least 1"),
        ("workers", c.workers >= 1, "at least 1"),
        ("structured", c.structured in ("json_schema", "json_object"), "json_schema or json_object"),
        ("schema_retries", c.schema_retries >= 0, "0 or more"),
    ]


class LLMError(RuntimeError):
    """A call that failed for good; the message says what happened and where."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of the last answer, None when none came


@dataclass
class Reply:
    content: object  # parsed JSON (dict/list) when a schema was given, else the answer text
    usage: dict  # {"prompt_tokens", "completion_tokens"} of this call, re-asks included (cached: first cost)
    cached: bool  # True: read from the cache file, no HTTP request was made


Job = dict | Callable[[], dict | None]  # chat()'s keyword arguments, or a function that builds them
Answer = Reply | LLMError | None  # what map_chat gives for a job (None: its function built no request)


class Chat(Protocol):
    """The client the stages call, all of it. `map_chat` answers every job, in the jobs' order: a Reply
    whose content fits the request's schema, the call's LLMError (the stage counts it and falls back), or
    None for a job that built no request. A request is {"messages", "schema", "temperature",
    "max_tokens"}, the last three optional; `desc` names a progress bar."""

    def map_chat(self, jobs: list[Job], desc: str = "") -> list[Answer]: ...


def closed(props: dict) -> dict:
    """A JSON-schema object of exactly these properties, each required: what the stages' answer schemas are
    built of (`additionalProperties: false` keeps a structured-output server from adding keys)."""
    return {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}


def text_part(text: str) -> dict:
    """A text part of an OpenAI chat message (images.image_part makes the image parts)."""
    return {"type": "text", "text": text}


class Client:
    """One client per stage, so `usage` is per stage; clients may share one cache file."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.usage = Usage()
        self._key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""  # never printed
        self._cache = cache.Cache(config.cache_path)
        c = config
        self._session = session(c.max_retries, c.backoff_base, c.backoff_cap, c.workers, self._on_retry)

    def chat(
        self,
        messages: list[dict],
        schema: dict | None = None,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Reply:
        """One answer. Raises LLMError when the server fails for good or the answer never fits `schema`."""
        t0 = time.perf_counter()
        try:
            return self._chat(messages, schema, temperature, max_tokens)
        finally:
            self.usage.add(seconds=time.perf_counter() - t0)

    def map_chat(self, jobs: list[Job], desc: str = "", workers: int | None = None) -> list[Answer]:
        """The Chat protocol: every job answered, `workers` at a time (default config.workers), in order;
        each answer is cached as it comes. A job that is a function builds its request in the worker, so
        only the requests in flight are in memory (their images are the bulk)."""
        t0 = time.perf_counter()
        results = [None] * len(jobs)

        def one(job: Job) -> Answer:
            request = job() if callable(job) else job
            try:
                return None if request is None else self._chat(**request)
            except LLMError as e:  # counted in usage.failures by _chat; the stage decides what to do
                return e

        pool = ThreadPoolExecutor(max_workers=workers or self.config.workers)
        futures = {pool.submit(one, job): i for i, job in enumerate(jobs)}
        try:
            bar = tqdm(as_completed(futures), total=len(jobs), desc=desc or "llm", disable=None, leave=False)
            for f in bar:
                results[futures[f]] = f.result()
        finally:
            # On Ctrl-C: drop the queued requests; the ones in flight still land in the cache, as Python
            # waits for the workers at exit (a second Ctrl-C stops the wait and loses them).
            pool.shutdown(wait=False, cancel_futures=True)
            self.usage.add(seconds=time.perf_counter() - t0)
        return results

    def _chat(self, messages, schema=None, temperature=None, max_tokens=None) -> Reply:
        """One call (chat()'s arguments): from the cache, else asked (and cached)."""
        ok = isinstance(messages, list) and all(isinstance(m, dict) and "role" in m for m in messages)
        if not (ok and messages):
            raise ValueError(f"messages: expected a list of role/content dicts, got {messages!r:.60}")
        self.usage.add(calls=1)
        try:
            if not self.config.base_url:
                raise LLMError("no LLM server configured: set ClientConfig.base_url (refineg.py --llm-url)")
            body = self._body(messages, schema, temperature, max_tokens)
            hit = self._cache.get(body)  # keyed by the whole body: model, messages, schema, sampling
            if hit is None:
                reply = self._ask(body, schema)
                self._cache.put(body, {"content": reply.content, "usage": reply.usage})
                return reply
            paid = token_counts(hit["usage"])[0]  # what the run that asked it paid
            self.usage.add(cache_hits=1, **{f"cached_{k}": v for k, v in paid.items()})
            return Reply(hit["content"], hit["usage"], cached=True)
        except LLMError:
            self.usage.add(failures=1)
            raise

    def _body(self, messages, schema, temperature, max_tokens) -> dict:
        """The JSON body of POST /chat/completions: the schema goes in the request (json_schema) or, for
        servers without that, in the last user message (json_object)."""
        cfg = self.config
        body = {"messages": messages, "stream": False}
        body["max_tokens"] = cfg.max_tokens if max_tokens is None else max_tokens
        body["temperature"] = cfg.temperature if temperature is None else temperature
        if cfg.model:
            body["model"] = cfg.model
        if schema is not None and cfg.structured == "json_schema":
            spec = {"name": "answer", "schema": schema, "strict": True}
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif schema is not None:
            body["response_format"] = {"type": "json_object"}
            body["messages"] = with_schema_note(messages, SCHEMA_NOTE + json.dumps(schema))
        return body

    def _ask(self, body: dict, schema: dict | None) -> Reply:
        """POST until the answer parses and fits `schema`, re-asking with the problems up to schema_retries
        times (the conversation grows by the bad answer and a note)."""
        used = {"prompt_tokens": 0, "completion_tokens": 0}
        messages = body["messages"]
        for attempt in range(self.config.schema_retries + 1):
            if attempt:
                self.usage.add(reasks=1)
            text, tokens = self._answer(self._post({**body, "messages": messages}), body["max_tokens"])
            used = {k: used[k] + tokens[k] for k in used}
            if schema is None:
                return Reply(text, used, cached=False)
            try:
                value = extract_json(text)
                problems = validate(value, schema)  # a bad schema raises ValueError too: the caller's bug
            except ValueError as e:
                problems = [str(e)]
            if not problems:
                return Reply(value, used, cached=False)
            note = f"That answer is not valid: {'; '.join(problems[:5])}. {REASK}"
            messages = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": note}]
        why = "; ".join(problems[:5])
        raise self._error(
            f"the answer did not fit the schema in {attempt + 1} tries: {why}; {text[:200]!r}", 200
        )

    def _post(self, body: dict) -> dict:
        """The JSON of a 200 answer to POST /chat/completions (the session retries what a retry can fix)."""
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        timeout = (self.config.connect_timeout, self.config.read_timeout)
        self.usage.add(requests=1)
        try:
            with self._session.post(url, json=body, headers=headers, timeout=timeout, stream=True) as r:
                raw = self._read(r, url)
        except requests.RequestException as e:
            why = getattr(e.args[0], "reason", e) if e.args else e  # urllib3's last error
            raise self._error(f"no answer from {url}, retries included: {why}") from None
        if r.status_code != 200:
            text = raw[:300].decode(errors="replace")
            raise self._error(f"HTTP {r.status_code} from {url}: {text}", r.status_code)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            raise self._error(f"{url} answered 200, not with JSON: {raw[:300]!r}", 200) from None

    def _answer(self, data: object, max_tokens: int) -> tuple[str, dict]:
        """Text and token counts (counted) of a chat completion; an error for anything else or a cut one."""
        try:
            text, finish = answer_text(data)
        except ValueError as e:
            raise self._error(f"unexpected answer from {self.config.base_url}: {e}", 200) from None
        tokens, odd = token_counts(data.get("usage"))
        self.usage.add(odd_usage=int(odd), **tokens)
        if finish == "length":  # llama-server also stops so when its context is full, short of max_tokens
            n = tokens["completion_tokens"]
            context = f"the server's context ({tokens['prompt_tokens']} prompt tokens)"
            by = f"max_tokens={max_tokens}" if n >= max_tokens else context
            raise self._error(f"the answer was cut by {by} after {n} tokens (finish_reason 'length')", 200)
        return text, tokens

    # What the application's client (app/serving.py) extends: reading a body, a retry, making an error.

    def _read(self, r: requests.Response, url: str) -> bytes:
        return r.content

    def _on_retry(self, retry: Retry) -> None:
        self.usage.add(retries=1, requests=1)

    def _error(self, message: str, status: int | None = None) -> LLMError:
        return LLMError(message, status)
