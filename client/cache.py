"""The answer cache of the MLLM client: an append-only JSONL file, one finished answer per line.

An interrupted run pays for no answer twice: every answered call is appended (and flushed) as it
finishes, keyed by the SHA-256 of the whole request body, and the next run reads the file back. The
file is meant to be read by a person: image data URLs are replaced by their length and digest.
Input/output: the cache path; `Cache` gets and puts the answer to a request body (thread-safe, under its
`key`), `load` reads the file, `append` writes one line.

    python -c "from client import cache; print(len(cache.load('runs/demo/llm_cache.jsonl')))"

Left out on purpose: eviction and compaction (a run's answers are few; delete the file to start afresh).
"""

import hashlib
import json
import os
import threading
import warnings


class Cache:
    """The answers of earlier calls, key -> {"content", "usage"}; with no path, nothing is kept."""

    def __init__(self, path: str | None):
        self.path = path
        self._answers = load(path) if path else {}
        self._lock = threading.Lock()  # guards the dict and the file

    def get(self, body: dict) -> dict | None:
        """A fresh copy of the answer to the request `body` (a caller may change what it gets), or None."""
        hit = self._answers.get(key(body))
        return None if hit is None else json.loads(hit)

    def put(self, body: dict, answer: dict) -> None:
        """Remember `answer` to the request `body`; with a path, as one appended line."""
        if not self.path:
            return
        digest = key(body)  # hashed once: a body with images is large
        with self._lock:
            self._answers[digest] = json.dumps(answer)
            append(self.path, digest, answer, body)


def key(body: dict) -> str:
    """The SHA-256 of the whole request body: model, messages, schema and mode, sampling settings."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def load(path: str) -> dict[str, str]:
    """key -> the JSON of {"content", "usage"}. A line that does not parse (a run killed mid-write) is
    skipped and reported. Answers are kept as JSON text so no caller can mutate a cached answer."""
    cache = {}
    bad = []  # line numbers that do not parse
    if not os.path.exists(path):
        return cache
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                cache[record["key"]] = json.dumps({"content": record["content"], "usage": record["usage"]})
            except (json.JSONDecodeError, KeyError, TypeError):
                if line.strip():
                    bad.append(n)
    if bad:
        warnings.warn(
            f"{path}: ignored {len(bad)} unreadable line(s) {bad[:5]} (a run killed mid-write?)", stacklevel=2
        )
    return cache


def elide(part: dict) -> dict:
    """A message part for the cache file: a data URL becomes its digest, so the file stays readable."""
    url = part.get("image_url", {}).get("url", "") if part.get("type") == "image_url" else ""
    if not url.startswith("data:"):
        return part
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return {**part, "image_url": {"url": f"<{len(url)} chars, sha256 {digest}>"}}


def append(path: str, key: str, answer: dict, body: dict) -> None:
    """One appended, flushed line {"key", "content", "usage", "request"} (a kill loses at most that line).
    Not thread-safe on its own: the client calls it under its lock."""
    messages = [
        {**m, "content": [elide(p) for p in m["content"]]} if isinstance(m.get("content"), list) else m
        for m in body["messages"]
    ]
    line = json.dumps({"key": key, **answer, "request": {**body, "messages": messages}}, ensure_ascii=False)
    line += "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn last line: start ours on a fresh line
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
