"""What the client tests share: a client with tiny timeouts (llm.Client, or the application's
ServingClient), a one-message conversation, a scripted handler for fake_server.FakeServer and a yes/no
answer schema. Used by test_llm.py, test_llm_faults.py and tests/app/test_serving.py."""

from app.serving import ServingClient, ServingConfig
from llm import Client, ClientConfig

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def client(url: str, **kw) -> Client:
    """Tiny timeouts and backoff: every retry path runs in milliseconds."""
    return Client(ClientConfig(**settings(url, **kw)))


def serving_client(url: str, **kw) -> ServingClient:
    """The application's client with the same settings (and its own: call_budget, dead_after, ...)."""
    return ServingClient(ServingConfig(**settings(url, **kw)))


def settings(url: str, **kw) -> dict:
    cfg = {
        "base_url": url,
        "model": "fake-model",
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "max_retries": 2,
        "backoff_base": 0.001,
        "backoff_cap": 0.01,
        "workers": 4,
    }
    cfg.update(kw)
    return cfg


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def script(*outs):
    """A handler giving `outs` in order, then repeating the last one."""
    outs, n = list(outs), [0]

    def handler(body):
        n[0] += 1
        return outs[min(n[0], len(outs)) - 1]

    return handler
