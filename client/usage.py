"""What the MLLM client spent: calls, cache hits, HTTP requests, tokens, retries, re-asks and failures.

llm.Client counts each call here as it happens, from all the worker threads of map_chat at once; the
application writes `as_dict()` to usage.json per stage, and the page and the summary read it there.

    python -c "from client.usage import Usage; u = Usage(); u.add(calls=1); print(u.as_dict())"

Left out on purpose: prices (they depend on the provider) and per-call records (llm_cache.jsonl holds
each answer with its token counts).
"""

import threading
from dataclasses import asdict, dataclass


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

    def __post_init__(self):
        self._lock = threading.Lock()  # map_chat's workers count at once; not a field: asdict skips it

    def add(self, **inc: float) -> None:
        """Add to the named counts: add(calls=1, prompt_tokens=7)."""
        with self._lock:
            for k, v in inc.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}
