"""The MLLM client of ReFineG: one small HTTP client for any OpenAI-compatible server.

Every call the method makes to the frozen (M)LLM goes through here: data
synthesis in the training stage, the keep/correct/reject questions of the
refinement stage and the box questions of the grounding stage. Input: OpenAI
chat messages (text and images) and optionally a JSON schema. Output: a `Reply`
holding the answer text, or the parsed JSON checked against the schema, plus
token counts. Servers: vLLM (>= 0.12 for `json_schema`), llama.cpp's
`llama-server` (images need `--mmproj`), hosted OpenAI-style APIs.

Beyond a bare POST: validated structured output with bounded re-asks; retries
only where they can help (backoff with jitter, Retry-After); clear errors for
the usual set-up mistakes (no server, wrong model, an image sent to a text-only
model); an append-only JSONL cache, so an interrupted run pays for no answer
twice; threads for concurrency; usage counts.

    python -c "import llm; print(llm.Client(llm.ClientConfig(base_url='http://127.0.0.1:8080/v1'))
               .chat([{'role': 'user', 'content': 'Say hi'}]).content)"

Left out on purpose: streaming, tool calls, several samples per request (`n`),
asyncio, provider-specific APIs, automatic detection of `json_schema` support
(set `structured="json_object"` for servers without it). Images are read and
encoded in images.py, answers parsed and checked in structured.py, the cache
file kept by cache.py.
"""

import hashlib
import json
import os
import random
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import requests
from tqdm import tqdm

from client import cache
from client.structured import SCHEMA_NOTE, content_text, extract_json, preview, validate, with_schema_note
from data import is_number, require_valid, setting

RETRY_STATUS = {408, 409, 429}  # and every 5xx: the same request may well succeed later
# What servers say when a text-only model is sent an image (llama-server without --mmproj, vLLM, OpenAI).
NO_VISION = (
    "image input is not supported",
    "not a multimodal model",
    "at most 0 image",
    "image_url is only supported",
    "does not support image",
)
START_HINT = (
    "Is the server running? Start one (e.g. `vllm serve MODEL` or `llama-server -m MODEL.gguf "
    "--mmproj MMPROJ.gguf`) and point --llm-url (ClientConfig.base_url) at its /v1."
)
NO_SERVER = (
    "no LLM server configured: set ClientConfig.base_url (refineg.py --llm-url), "
    "e.g. http://127.0.0.1:8080/v1"
)


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
    call_budget: float = setting(
        240.0, "seconds one call may spend over all its tries: a hung server costs minutes"
    )
    dead_after: int = setting(
        4, "calls in a row without any answer, after which the rest fail at once; 0 = never"
    )
    max_answer_bytes: int = setting(2_000_000, "a longer HTTP answer is refused unread (a broken server)")
    backoff_base: float = setting(
        1.0, "seconds before the first retry; doubles per retry, times a 0.5-1 jitter"
    )
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
        require_valid(
            self,
            [
                (
                    "base_url",
                    self.base_url == "" or self.base_url.startswith(("http://", "https://")),
                    "a URL starting with http:// or https://, e.g. http://127.0.0.1:8000/v1",
                ),
                ("connect_timeout", self.connect_timeout > 0, "seconds > 0"),
                ("read_timeout", self.read_timeout > 0, "seconds > 0"),
                ("max_retries", self.max_retries >= 0, "0 or more"),
                ("call_budget", self.call_budget > 0, "seconds > 0"),
                ("dead_after", self.dead_after >= 0, "0 (never) or more"),
                ("max_answer_bytes", self.max_answer_bytes >= 1, "at least 1"),
                ("backoff_base", self.backoff_base >= 0, "seconds >= 0"),
                ("backoff_cap", self.backoff_cap >= 0, "seconds >= 0"),
                ("temperature", self.temperature >= 0, "0 or more"),
                ("max_tokens", self.max_tokens >= 1, "at least 1"),
                ("workers", self.workers >= 1, "at least 1"),
                ("structured", self.structured in STRUCTURED, " or ".join(STRUCTURED)),
                ("schema_retries", self.schema_retries >= 0, "0 or more"),
            ],
        )


STRUCTURED = ("json_schema", "json_object")


class LLMError(RuntimeError):
    """A call that failed for good; the message says what happened, where, and what to try."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of the last answer, None when there was none


@dataclass
class Reply:
    content: object  # parsed JSON (dict/list) when a schema was given, else the answer text
    usage: dict  # {"prompt_tokens", "completion_tokens"} of this call, re-asks included (cached: first cost)
    cached: bool  # True: read from the cache file, no HTTP request was made


@dataclass
class Usage:
    calls: int = 0  # chat() calls, cache hits and failures included
    cache_hits: int = 0  # calls answered from the cache file
    requests: int = 0  # HTTP requests sent, retries and re-asks included
    prompt_tokens: int = 0  # as reported by the server, summed over every answered request
    completion_tokens: int = 0
    retries: int = 0  # requests repeated after a timeout, connection error, 408/409/429 or 5xx
    reasks: int = 0  # requests repeated because the answer did not parse or fit the schema
    failures: int = 0  # calls that ended in LLMError
    odd_usage: int = 0  # answers whose usage counts were not numbers (counted as 0 tokens)
    cached_prompt_tokens: int = 0  # what earlier runs paid for the answers read from the cache
    cached_completion_tokens: int = 0
    seconds: float = 0.0  # wall time spent in chat() and map_chat()

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def text_part(text: str) -> dict:
    """A text part of an OpenAI chat message (images.image_part makes the image parts)."""
    return {"type": "text", "text": text}


def cut_reason(tokens: dict, max_tokens: int) -> str:
    """Why an answer with finish_reason "length" stopped. llama-server accepts prompt + max_tokens beyond
    its context and stops when the context is full (vLLM refuses with a 400): fewer tokens than
    max_tokens means the context, not the cap."""
    if tokens["completion_tokens"] >= max_tokens:
        return (
            f"cut at max_tokens={max_tokens}: raise it (--llm-max-tokens; synthesis: --synth-answer-tokens) "
            "or bound the schema (maxItems, maxLength)"
        )
    return (
        f"cut after {tokens['completion_tokens']} tokens by the server's context ({tokens['prompt_tokens']} "
        "prompt tokens): start the server with a larger context (llama-server -c, vLLM --max-model-len) "
        "or send fewer/smaller images"
    )


# ---------------------------------------------------------------- the client


def check_server(config: ClientConfig) -> list[str]:
    """The model names the server lists (GET {base_url}/models): one cheap request before a run spends
    minutes on the tagger. Raises LLMError when the server cannot be reached or refuses the key; a model
    missing from the list is only a warning, since llama-server answers to any model name."""
    if not config.base_url:
        raise LLMError(NO_SERVER)
    url = config.base_url.rstrip("/") + "/models"
    key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    try:
        r = requests.get(
            url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=(config.connect_timeout, 30),
        )
    except requests.RequestException as e:
        raise LLMError(f"cannot reach {url} ({type(e).__name__}). {START_HINT}") from None
    if r.status_code in (401, 403):
        raise LLMError(f"{url} refused the API key (HTTP {r.status_code}): check ${config.api_key_env}")
    try:
        names = [m["id"] for m in r.json()["data"]] if r.status_code == 200 else []
    except (ValueError, KeyError, TypeError):
        names = []  # no usable /models on this server: the first chat call will tell
    if config.model and names and config.model not in names:
        warnings.warn(
            f"model {config.model!r} is not in the list of {url}: {names[:10]} "
            "(llama-server ignores the name; vLLM and hosted APIs will refuse it)",
            stacklevel=2,
        )
    return names


class Client:
    """One client per stage, so `usage` is per stage; clients may share one cache file."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.usage = Usage()
        self._key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""  # never printed
        self._lock = threading.Lock()  # guards usage, the cache dict and the cache file
        self._silent = 0  # calls in a row that got no answer (see dead_after)
        self.last_error = ""  # the message of the latest failed call, for summaries
        self._cache = cache.load(config.cache_path) if config.cache_path else {}
        self._session = requests.Session()  # keep-alive: no TCP handshake per call
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(64, config.workers), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

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
            return self._chat(messages, schema, temperature=temperature, max_tokens=max_tokens)
        finally:
            self._count(seconds=time.perf_counter() - t0)

    def map_chat(
        self, jobs: list[dict | Callable[[], dict | None]], desc: str = "", workers: int | None = None
    ) -> list[Reply | LLMError | None]:
        """chat(**r) for every request r in `jobs`, `workers` at a time (default config.workers), results in
        input order.
        A failed item is its LLMError; the others are kept (and cached as each finishes). An r that is a
        function is called in the worker to build the request, so only the requests in flight are in
        memory (their images are the bulk); when it returns None no call is made and the result is None."""
        t0 = time.perf_counter()
        results = [None] * len(jobs)

        def one(r: dict | Callable[[], dict | None]) -> Reply | LLMError | None:
            r = r() if callable(r) else r
            if r is None:
                return None
            try:
                return self._chat(**r)
            except LLMError as e:  # counted in usage.failures by _chat; the caller decides what to do
                return e

        pool = ThreadPoolExecutor(max_workers=max(1, workers or self.config.workers))
        futures = {pool.submit(one, r): i for i, r in enumerate(jobs)}
        try:
            for f in tqdm(
                as_completed(futures), total=len(futures), desc=desc or "llm", disable=None, leave=False
            ):
                results[futures[f]] = f.result()
        finally:
            # On Ctrl-C: drop the queued requests; the ones in flight still land in the cache, as Python
            # waits for the workers at exit (each request within call_budget seconds, a re-ask gets its
            # own; a second Ctrl-C stops the wait and loses them).
            pool.shutdown(wait=False, cancel_futures=True)
            self._count(seconds=time.perf_counter() - t0)
        return results

    # -- internals

    def _count(self, **inc: float) -> None:
        with self._lock:
            for k, v in inc.items():
                setattr(self.usage, k, getattr(self.usage, k) + v)

    def _error(self, message: str, status: int | None = None) -> LLMError:
        # Error bodies and exception texts could echo a header; a key shorter than 8 characters is a
        # local placeholder (e.g. "x") and scrubbing it would garble the message.
        if len(self._key) >= 8:
            message = message.replace(self._key, "***")
        return LLMError(message, status)

    def _chat(
        self,
        messages: list[dict],
        schema: dict | None = None,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Reply:
        if not (
            isinstance(messages, list)
            and messages
            and all(isinstance(m, dict) and "role" in m for m in messages)
        ):
            raise ValueError(
                f"messages: expected a nonempty list of {{'role', 'content'}} dicts, not {messages!r:.70}"
            )
        self._count(calls=1)
        try:
            if not self.config.base_url:
                raise LLMError(NO_SERVER)
            body = self._body(messages, schema, temperature, max_tokens)
            # The key is the whole request body: model, messages, schema and mode, sampling settings.
            key = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
            hit = self._cache.get(key)
            if hit is not None:
                return self._from_cache(hit)
            reply = self._ask(body, schema)
            self._store(key, body, reply)
            return reply
        except LLMError as e:
            self._count(failures=1)
            self.last_error = str(e)
            raise

    def _body(
        self, messages: list[dict], schema: dict | None, temperature: float | None, max_tokens: int | None
    ) -> dict:
        """The JSON body of POST /chat/completions; the schema goes where the server's mode wants it."""
        cfg = self.config
        body = {
            "messages": messages,
            "stream": False,
            "max_tokens": cfg.max_tokens if max_tokens is None else max_tokens,
            "temperature": cfg.temperature if temperature is None else temperature,
        }
        if cfg.model:
            body["model"] = cfg.model
        if schema is not None and cfg.structured == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        elif schema is not None:
            body["response_format"] = {"type": "json_object"}
            body["messages"] = with_schema_note(messages, SCHEMA_NOTE + json.dumps(schema))
        return body

    def _from_cache(self, hit: str) -> Reply:
        """A cached answer, counting what the run that asked it paid."""
        answer = json.loads(hit)
        paid = answer["usage"] if isinstance(answer["usage"], dict) else {}
        self._count(
            cache_hits=1,
            **{
                f"cached_{k}": v
                for k, v in paid.items()
                if k in ("prompt_tokens", "completion_tokens") and type(v) is int
            },
        )
        return Reply(answer["content"], answer["usage"], cached=True)

    def _ask(self, body: dict, schema: dict | None) -> Reply:
        """POST until the answer parses and fits `schema`, re-asking with the problem up to schema_retries
        times."""
        used = {"prompt_tokens": 0, "completion_tokens": 0}
        messages = body["messages"]
        for attempt in range(self.config.schema_retries + 1):
            if attempt:
                self._count(reasks=1)
            text, tokens = self._answer_text(self._post({**body, "messages": messages}), body["max_tokens"])
            used = {k: used[k] + tokens[k] for k in used}
            if schema is None:
                return Reply(text, used, cached=False)
            try:
                value = extract_json(text)
            except ValueError as e:
                problems = [str(e)]
            else:
                problems = validate(value, schema)  # a ValueError here is the caller's schema: not caught
            if not problems:
                return Reply(value, used, cached=False)
            messages = messages + [
                {"role": "assistant", "content": text},
                {
                    "role": "user",
                    "content": f"That answer is not valid: {'; '.join(problems[:5])}. "
                    "Reply again with only the JSON value, fitting the schema.",
                },
            ]
        raise self._error(
            f"the answer did not fit the schema in {self.config.schema_retries + 1} tries: "
            f"{'; '.join(problems[:5])}; the last one starts {text[:200]!r}"
        )

    def _answer_text(self, data: dict, max_tokens: int) -> tuple[str, dict]:
        """The text of a 200 answer and its token counts (counted in usage); an error for an answer that
        is not an OpenAI chat completion or that was cut short."""
        where = f"unexpected answer from {self.config.base_url}"
        try:
            choice = data["choices"][0]
            text = content_text(choice["message"].get("content"))
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self._error(f"{where}: {preview(data, 300)}") from None
        if text is None:
            raise self._error(
                f"{where}: message.content is neither text nor a list of text parts: "
                f"{preview(choice['message']['content'], 200)}"
            )
        tokens = self._tokens(data.get("usage"))
        self._count(**tokens)
        if finish == "length":
            raise self._error(
                f"the answer was {cut_reason(tokens, max_tokens)} (finish_reason 'length'); "
                f"it starts {text[:200]!r}"
            )
        return text, tokens

    def _tokens(self, usage: object) -> dict:
        """{"prompt_tokens", "completion_tokens"} of an answer; counts that are not whole numbers >= 0
        ("n/a", [5], -1, true) are 0 and the answer is counted in usage.odd_usage."""
        out = {}
        odd = not isinstance(usage, dict | None)
        for k in ("prompt_tokens", "completion_tokens"):
            v = usage.get(k, 0) if isinstance(usage, dict) else 0
            whole = is_number(v) and 0 <= v < 1e15 and v == int(v)
            out[k] = int(v) if whole else 0
            odd = odd or not whole
        self._count(odd_usage=int(odd))
        return out

    def _post(self, body: dict) -> dict:
        """The JSON of a 200 answer to POST /chat/completions, retrying only what a retry can fix,
        within call_budget seconds over all tries."""
        cfg = self.config
        url = cfg.base_url.rstrip("/") + "/chat/completions"
        if self._silent >= cfg.dead_after > 0:
            raise self._error(
                f"{url} gave no answer to {self._silent} calls in a row: taken as dead, this call "
                f"is not sent. {START_HINT}"
            )
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        deadline = time.monotonic() + cfg.call_budget
        tries = 0
        delay = 0.0
        problem = None  # what went wrong with the last try: an exception or "HTTP <status>: <start>"
        status = None  # the HTTP status of the last answer
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                if time.monotonic() + delay >= deadline:
                    break
                self._count(retries=1)
                time.sleep(delay)
            self._count(requests=1)
            tries += 1
            read = max(0.1, min(cfg.read_timeout, deadline - time.monotonic()))
            try:
                with self._session.post(
                    url, json=body, headers=headers, stream=True, timeout=(cfg.connect_timeout, read)
                ) as r:
                    raw = self._read(r, url)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as e:
                problem = e
                delay = self._backoff(attempt, None)
                continue
            self._silent = 0  # an answer, even an error: the server is alive
            if r.status_code == 200:
                return self._json(raw, url)
            problem = self._refusal(r, raw, url)  # raises unless a retry may help
            status = r.status_code
            delay = self._backoff(attempt, r.headers.get("Retry-After"))
        raise self._gave_up(url, tries, problem, status)

    def _json(self, raw: bytes, url: str) -> dict:
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise self._error(
                f"{url} answered 200 with a body that is not JSON (or nested too deep): {raw[:300]!r}"
            ) from None

    def _refusal(self, r: requests.Response, raw: bytes, url: str) -> str:
        """What a non-200 answer says, when a retry may help (408, 409, 429, 5xx); any other raises, with a
        hint for the usual set-up mistakes (no vision, unknown model, a key, the context size)."""
        cfg = self.config
        text = raw.decode("utf-8", "replace")
        start = text[:300]
        low = text.lower()
        if any(p in low for p in NO_VISION):
            raise self._error(
                f"the model {cfg.model or '(server default)'} at {url} has no vision: it refused "
                f"the image (HTTP {r.status_code}: {start}). Serve a vision-language model "
                "(llama-server also needs --mmproj).",
                r.status_code,
            )
        if r.status_code == 404:
            raise self._error(
                f"model {cfg.model!r} not found at {url} (HTTP 404: {start}); check the name "
                f"against GET {cfg.base_url.rstrip('/')}/models and that base_url ends in /v1",
                404,
            )
        if r.status_code in RETRY_STATUS or r.status_code >= 500:
            return f"HTTP {r.status_code}: {start}"
        hint = f" (check the API key in ${cfg.api_key_env})" if r.status_code in (401, 403) else ""
        if "context" in low and r.status_code == 400:  # llama-server: exceed_context_size_error
            hint = (
                " (the prompt does not fit the server's context: start it with a larger context "
                "(llama-server -c, vLLM --max-model-len) or send fewer/smaller images)"
            )
        raise self._error(f"HTTP {r.status_code} from {url}{hint}: {start}", r.status_code)

    def _gave_up(self, url: str, tries: int, problem: object, status: int | None) -> LLMError:
        """The error of a call whose tries all failed; no answer at all counts toward dead_after."""
        cfg = self.config
        if isinstance(problem, (requests.Timeout, requests.ConnectionError)):
            with self._lock:
                self._silent += 1
        if isinstance(problem, requests.Timeout):
            return self._error(
                f"no answer from {url} within {cfg.connect_timeout:g} s (connect) / "
                f"{cfg.read_timeout:g} s (read) in {tries} tries ({cfg.call_budget:g} s budget; "
                f"raise --llm-read-timeout / --llm-call-budget for a slow model): {problem}"
            )
        if isinstance(problem, requests.ConnectionError):
            return self._error(f"cannot connect to {url} in {tries} tries ({problem}). {START_HINT}")
        hint = (
            " The server's context is full: llama-server's slots share -c, so give it workers x (prompt + "
            "answer) tokens or lower --llm-workers."
            if "context size" in str(problem).lower()
            else ""
        )
        return self._error(f"{url} failed {tries} times; the last answer: {problem}.{hint}", status)

    def _read(self, r: requests.Response, url: str) -> bytes:
        """The body, read up to max_answer_bytes: a longer one is refused without reading the rest, so a
        broken server cannot fill the memory (nor be echoed into a re-ask)."""
        cap = self.config.max_answer_bytes
        size = 0
        chunks = []
        for chunk in r.iter_content(1 << 16):
            size += len(chunk)
            if size > cap:
                raise self._error(
                    f"{url} sent an answer of more than {cap} bytes (HTTP {r.status_code}); "
                    "refused unread (raise --llm-max-answer-bytes if it is legitimate)",
                    r.status_code,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before the next try: the server's Retry-After (seconds) if it gave one, else capped
        exponential backoff with jitter, so parallel workers do not retry in lock step."""
        cfg = self.config
        if retry_after and retry_after.replace(".", "", 1).isdigit():  # the HTTP-date form: our own backoff
            return min(float(retry_after), cfg.backoff_cap)
        return min(cfg.backoff_cap, cfg.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)

    def _store(self, key: str, body: dict, reply: Reply) -> None:
        """With a cache file, remember an answer: one appended, flushed line (a kill loses at most that
        line)."""
        if not self.config.cache_path:
            return
        answer = {"content": reply.content, "usage": reply.usage}
        with self._lock:
            self._cache[key] = json.dumps(answer)
            cache.append(self.config.cache_path, key, answer, body)
