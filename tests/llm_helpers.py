"""What the client tests share: a client with tiny timeouts, a one-message conversation, a scripted
handler for fake_server.FakeServer and a yes/no answer schema. Used by test_llm.py and test_llm_faults.py."""

from llm import Client, ClientConfig

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def client(url: str, **kw) -> Client:
    """Tiny timeouts and backoff: every retry path runs in milliseconds."""
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
    return Client(ClientConfig(**cfg))


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def script(*outs):
    """A handler giving `outs` in order, then repeating the last one."""
    outs, n = list(outs), [0]

    def handler(body):
        n[0] += 1
        return outs[min(n[0], len(outs)) - 1]

    return handler
