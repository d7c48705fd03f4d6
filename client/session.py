"""The HTTP session of the MLLM client: requests with urllib3's `Retry`, for llm.py.

A try that fails before its answer's headers arrive (refused, reset, timed out) or gets a status in
RETRY_STATUS is sent again, up to ClientConfig.max_retries times, waiting by capped exponential backoff
with jitter, or as long as the server's Retry-After says (whole seconds or an HTTP date; capped too).
Input: the retry settings and a function told of each retry before it is sent; output: a keep-alive
`requests.Session`.

    python -c "from client.session import session; print(session(4, 1.0, 30.0, 4, print).adapters)"

Left out on purpose: retrying a body cut short after its headers (urllib3 retries up to the headers), and
any retry loop of our own.
"""

from collections.abc import Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

RETRY_STATUS = {408, 409, 429, *range(500, 600)}  # the same request may well succeed later


class Retries(Retry):
    """urllib3's Retry, telling `on_retry` of each retry before it is sent (llm.Client counts them)."""

    def __init__(self, *args, on_retry: Callable[[Retry], None] = lambda retry: None, **kw):
        super().__init__(*args, **kw)
        self.on_retry = on_retry

    def new(self, **kw) -> "Retries":  # urllib3 makes a new Retry for every retry: pass the callback on
        return super().new(on_retry=self.on_retry, **kw)

    def increment(self, *args, **kw) -> "Retries":
        retry = super().increment(*args, **kw)  # raises MaxRetryError when no try is left
        self.on_retry(retry)
        return retry

    def parse_retry_after(self, retry_after: str) -> float:
        """The header's seconds; one that is neither whole seconds nor an HTTP date is none (a server's
        answer is untrusted): the backoff applies."""
        try:
            return super().parse_retry_after(retry_after)
        except InvalidHeader:
            return 0.0


def session(
    max_retries: int, backoff_base: float, backoff_cap: float, workers: int, on_retry: Callable[[Retry], None]
) -> requests.Session:
    """A session whose POSTs are tried up to 1 + max_retries times: retry n >= 2 waits backoff_base *
    2^(n-1) plus up to backoff_base of jitter (the first goes at once), never longer than backoff_cap."""
    retry = Retries(
        total=max_retries,
        allowed_methods={"POST"},  # not retried by default: a chat request changes nothing on the server
        status_forcelist=RETRY_STATUS,
        raise_on_status=False,  # the last refusal comes back, to be reported with its body
        backoff_factor=backoff_base,
        backoff_jitter=backoff_base,  # so parallel workers do not retry in lock step
        backoff_max=backoff_cap,
        retry_after_max=backoff_cap,
        on_retry=on_retry,
    )
    s = requests.Session()  # keep-alive: no TCP handshake per call
    adapter = HTTPAdapter(pool_maxsize=max(64, workers), max_retries=retry)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
