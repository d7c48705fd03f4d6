"""The MLLM client of a long run against a server that may fail: llm.Client plus the application's guards.

llm.py is the client a student reads; a run of hours against a real server needs more, and gets it here:
a time budget per call (a hung server costs minutes, not hours), a cut-off once the server has given no
answer to several calls in a row (the rest fail at once), a cap on an answer's size (a broken server
cannot fill the memory), the API key scrubbed from every message, and hints for the usual set-up mistakes
(no server, a wrong model name or key, an image sent to a text-only model, a full context). `check_server`
asks the server for its models once, before a run spends minutes on the tagger. Run.client (rundir.py)
builds one ServingClient per stage.

    python refineg.py --data examples/demo --llm-url http://127.0.0.1:8080/v1 --llm-dead-after 2

Left out on purpose: circuit breakers that reopen, rate limiting of our own (the server's 429 and
Retry-After are honoured by llm.py's retries), and failing over to another server.
"""

import os
import threading
import time
import warnings
from dataclasses import dataclass

import requests
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

import llm
from data import require_valid, setting

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
NO_SERVER = "no LLM server configured: set --llm-url (ClientConfig.base_url), e.g. http://127.0.0.1:8080/v1"
SLOW_HINT = "Raise --llm-read-timeout / --llm-call-budget for a slow model."
NO_VISION_HINT = (
    "The model {model} at {base} has no vision: serve a vision-language model (llama-server also needs "
    "--mmproj)."
)
NOT_FOUND_HINT = (
    "Model {model!r} not found at {base}: check the name against GET {base}/models and that base_url ends "
    "in /v1."
)
MAX_TOKENS_HINT = (
    "Raise it (--llm-max-tokens; synthesis: --synth-answer-tokens) or bound the schema (maxItems, maxLength)."
)
CONTEXT_HINT = (
    "The prompt and answer do not fit the server's context: start it with a larger one (llama-server -c, "
    "vLLM --max-model-len) or send fewer/smaller images."
)
SLOTS_HINT = (
    "The server's context is full: llama-server's slots share -c, so give it workers x (prompt + answer) "
    "tokens or lower --llm-workers."
)


@dataclass
class ServingConfig(llm.ClientConfig):
    call_budget: float = setting(
        240.0, "seconds after which a call retries no more: a hung server costs minutes"
    )
    dead_after: int = setting(
        4, "calls in a row without any answer, after which the rest fail at once; 0 = never"
    )
    max_answer_bytes: int = setting(2_000_000, "a longer HTTP answer is refused unread (a broken server)")

    def __post_init__(self):
        require_valid(self, serving_rules(self))


def serving_rules(c: ServingConfig) -> list[tuple[str, bool, str]]:
    """What the settings must be, llm.ClientConfig's included, as (field, holds, what is expected)."""
    rules = [
        ("call_budget", c.call_budget > 0, "seconds > 0"),
        ("dead_after", c.dead_after >= 0, "0 (never) or more"),
        ("max_answer_bytes", c.max_answer_bytes >= 1, "at least 1"),
    ]
    return llm.client_rules(c) + rules


def check_server(config: llm.ClientConfig) -> list[str]:
    """The model names the server lists (GET {base_url}/models): one cheap request before a run spends
    minutes on the tagger. Raises LLMError when the server cannot be reached or refuses the key; a model
    missing from the list is only a warning, since llama-server answers to any model name."""
    if not config.base_url:
        raise llm.LLMError(NO_SERVER)
    url = config.base_url.rstrip("/") + "/models"
    key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = requests.get(url, headers=headers, timeout=(config.connect_timeout, 30))
    except requests.RequestException as e:
        raise llm.LLMError(f"cannot reach {url} ({type(e).__name__}). {START_HINT}") from None
    if r.status_code in (401, 403):
        raise llm.LLMError(f"{url} refused the API key (HTTP {r.status_code}): check ${config.api_key_env}")
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


def hint(message: str, status: int | None, config: llm.ClientConfig) -> str:
    """What to try, for an error `message` (status None: no answer came), judged by what the server said."""
    low = message.lower()
    base = config.base_url.rstrip("/")
    if status is None:
        return SLOW_HINT if "timed out" in low else START_HINT
    if any(p in low for p in NO_VISION):
        return NO_VISION_HINT.format(model=config.model or "(server default)", base=base)
    if status == 404:
        return NOT_FOUND_HINT.format(model=config.model, base=base)
    if status in (401, 403):
        return f"Check the API key in ${config.api_key_env}."
    if "cut by max_tokens" in low:
        return MAX_TOKENS_HINT
    if "cut by the server's context" in low or status == 400 and "context" in low:
        return CONTEXT_HINT
    if status >= 500 and "context size" in low:
        return SLOTS_HINT
    return ""


class ServingClient(llm.Client):
    """llm.Client with a time budget per call, a dead-server cut-off, an answer-size cap, the key scrubbed
    from messages and hints; `last_error` keeps the latest failure's message for the summary."""

    def __init__(self, config: ServingConfig):
        super().__init__(config)
        self.last_error = ""
        self._silent = 0  # calls in a row that got no answer (see dead_after)
        self._lock = threading.Lock()  # guards _silent
        self._call = threading.local()  # the call this thread is making: its deadline and tries

    def _post(self, body: dict) -> dict:
        """llm.Client._post, unless the server is taken as dead; no answer counts toward dead_after."""
        cfg = self.config
        if self._silent >= cfg.dead_after > 0:
            dead = f"taken as dead, this call is not sent. {START_HINT}"
            self.last_error = f"{cfg.base_url} gave no answer to {self._silent} calls in a row: {dead}"
            raise llm.LLMError(self.last_error)
        self._call.deadline = time.monotonic() + cfg.call_budget
        self._call.tries = 1
        self._call.spent = False
        try:
            return super()._post(body)
        except llm.LLMError as e:
            if e.status is None:
                with self._lock:
                    self._silent += 1
            raise

    def _on_retry(self, retry: Retry) -> None:
        """No retry once the call's budget would run out during its backoff (a Retry-After wait is not
        foreseen: it is capped by backoff_cap)."""
        if time.monotonic() + retry.get_backoff_time() >= self._call.deadline:
            self._call.spent = True
            last = retry.history[-1]
            raise MaxRetryError(None, last.url, last.error)  # as if the retries had run out
        self._call.tries += 1
        super()._on_retry(retry)

    def _read(self, r: requests.Response, url: str) -> bytes:
        """The body, read up to max_answer_bytes: a longer one is refused without reading the rest, so a
        broken server cannot fill the memory (nor be echoed into a re-ask)."""
        self._silent = 0  # an answer, even an error: the server is alive
        cap = self.config.max_answer_bytes
        size = 0
        chunks = []
        for chunk in r.iter_content(1 << 16):
            size += len(chunk)
            if size > cap:
                why = "refused unread (raise --llm-max-answer-bytes if it is legitimate)"
                too_long = f"{url} sent an answer of more than {cap} bytes (HTTP {r.status_code})"
                raise self._error(f"{too_long}; {why}", r.status_code)
            chunks.append(chunk)
        return b"".join(chunks)

    def _error(self, message: str, status: int | None = None) -> llm.LLMError:
        """The error with its tries (when retried), a hint, and the key scrubbed; kept as last_error."""
        if status != 200 and getattr(self._call, "tries", 1) > 1:  # set by _post in this thread
            spent = f"; the {self.config.call_budget:g} s call budget ran out" if self._call.spent else ""
            message += f" ({self._call.tries} tries{spent})"
        advice = hint(message, status, self.config)
        message = f"{message}. {advice}" if advice else message
        # Error bodies and exception texts could echo a header; a key shorter than 8 characters is a
        # local placeholder (e.g. "x") and scrubbing it would garble the message.
        if len(self._key) >= 8:
            message = message.replace(self._key, "***")
        self.last_error = message
        return llm.LLMError(message, status)
