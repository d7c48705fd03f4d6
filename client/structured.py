"""Reading an MLLM's answer: its text and token counts, the JSON value in it, and the schema check.

Every stage of ReFineG asks the MLLM for JSON fitting a schema (synthesised sentences, refinement
decisions, boxes). Servers with `json_schema` output get the schema in the request; others get it in
the prompt (`with_schema_note`). Either way the answer is untrusted: `answer_text` takes the text out of a
chat completion (a ValueError for anything else), `token_counts` its usage, `extract_json` finds the JSON
value in the text, `validate` lists how it breaks the schema, and llm.py re-asks with that list.

    python -c "from client.structured import validate; print(validate([1, 'a'], {'items': {'type': 'null'}}))"

Left out on purpose: the rest of JSON Schema ($ref, patterns, formats, oneOf/allOf); an unsupported
keyword raises ValueError instead of being ignored.
"""

import json
import re

from data import is_number

SCHEMA_NOTE = "Answer with one JSON value (no prose, no code fences) that fits this JSON schema:\n"


def content_text(content: object) -> str | None:
    """The answer text of message.content: a string, null (""), or a list of text parts (the OpenAI
    content-part form, joined); anything else is None (the caller reports it)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def answer_text(data: object) -> tuple[str, str | None]:
    """The answer text of an OpenAI chat completion and its finish_reason; a ValueError saying what is
    wrong for anything else."""
    try:
        choice = data["choices"][0]
        text = content_text(choice["message"].get("content"))
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError(preview(data, 300)) from None
    if text is None:
        content = preview(choice["message"]["content"], 200)
        raise ValueError(f"message.content is neither text nor a list of text parts: {content}")
    return text, finish


def token_counts(usage: object) -> tuple[dict, bool]:
    """{"prompt_tokens", "completion_tokens"} of an answer's usage, and whether it was odd: counts that
    are not whole numbers >= 0 ("n/a", [5], -1, true) are 0."""
    counts = {}
    odd = not isinstance(usage, dict | None)
    for k in ("prompt_tokens", "completion_tokens"):
        v = usage.get(k, 0) if isinstance(usage, dict) else 0
        whole = is_number(v) and 0 <= v < 1e15 and v == int(v)
        counts[k] = int(v) if whole else 0
        odd = odd or not whole
    return counts, odd


def with_schema_note(messages: list[dict], note: str) -> list[dict]:
    """The messages with `note` appended to the last user message (some chat templates drop system turns)."""
    messages = list(messages)
    i = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if i is None:
        return messages + [{"role": "user", "content": note}]
    c = messages[i]["content"]
    messages[i] = {
        **messages[i],
        "content": c + "\n\n" + note if isinstance(c, str) else [*c, {"type": "text", "text": note}],
    }
    return messages


FENCE_RE = re.compile(r"```[A-Za-z]*\s*\n?(.*?)```", re.S)
THINK_RE = re.compile(r"<think>.*?</think>", re.S)  # reasoning models served without a reasoning parser
OPEN_RE = re.compile(r"[\[{]")


def extract_json(text: str) -> object:
    """The JSON value in a free-text answer: the whole text, else a fenced block, else the longest
    value starting at a '{' or '[' in the prose (so "the [2] entities: {...}" gives the object).
    Nesting deeper than Python's recursion limit ends the search (RecursionError is caught: every
    '[' of "[[[[..." would fail the same way, and trying them all takes minutes)."""
    text = THINK_RE.sub("", text).strip()
    for candidate in [text] + FENCE_RE.findall(text):
        try:
            return json.loads(candidate)
        except (json.JSONDecodeError, RecursionError):
            pass
    decoder = json.JSONDecoder()
    best = None  # (value, length) of the longest JSON value found in the prose
    m = OPEN_RE.search(text)
    while m:
        try:
            value, end = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            m = OPEN_RE.search(text, m.start() + 1)
            continue
        except RecursionError:
            break
        if best is None or end - m.start() > best[1]:
            best = (value, end - m.start())
        m = OPEN_RE.search(text, end)
    if best is None:
        raise ValueError(f"no JSON value in the answer {text[:200]!r}")
    return best[0]


# The keywords `validate` knows (description and title are notes): any other raises.
SCHEMA_KEYS = set(
    "type properties required additionalProperties items minItems maxItems enum minLength maxLength "
    "minimum maximum anyOf description title".split()
)
PY_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: object, t: str) -> bool:
    if t == "integer":  # JSON Schema counts 3.0 as an integer; bool is never a number
        whole = isinstance(value, float) and value.is_integer()
        return whole or isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t not in PY_TYPES:
        raise ValueError(f"schema type {t!r} is not one of {sorted(PY_TYPES) + ['integer', 'number']}")
    return isinstance(value, PY_TYPES[t])


def preview(value: object, n: int) -> str:
    """The start of a value's JSON for a message; a value too deep to print is named by its type."""
    try:
        return json.dumps(value)[:n]
    except (RecursionError, TypeError, ValueError):
        return f"<{type(value).__name__} nested too deep to print>"


def validate(value: object, schema: dict, path: str = "$") -> list[str]:
    """The ways `value` breaks `schema` ([] = it fits), for the JSON-schema subset the prompts use.
    An unsupported keyword raises ValueError: silently ignoring it would let bad answers through."""
    unknown = set(schema) - SCHEMA_KEYS
    if unknown:
        raise ValueError(
            f"schema keyword(s) {sorted(unknown)} at {path} are not supported by structured.validate"
        )
    if "anyOf" in schema:
        tries = [validate(value, s, path) for s in schema["anyOf"]]
        if all(tries):
            return [f"{path}: fits none of the anyOf choices ({'; '.join(t[0] for t in tries)})"]
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_is_type(value, t) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {preview(value, 60)}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {preview(value, 60)} is not one of {json.dumps(schema['enum'])}"]
    if isinstance(value, list):
        return _array_errors(value, schema, path)
    if isinstance(value, dict):
        return _object_errors(value, schema, path)
    return _bound_errors(value, schema, path)


def _bound_errors(value: object, schema: dict, path: str) -> list[str]:
    """minLength / maxLength of a string, minimum / maximum of a number."""
    errors = []
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    return errors


def _array_errors(value: list, schema: dict, path: str) -> list[str]:
    errors = []
    if len(value) < schema.get("minItems", 0):
        errors.append(f"{path}: {len(value)} items, at least {schema['minItems']} expected")
    if len(value) > schema.get("maxItems", len(value)):
        errors.append(f"{path}: {len(value)} items, at most {schema['maxItems']} allowed")
    for i, v in enumerate(value if "items" in schema else []):
        errors += validate(v, schema["items"], f"{path}[{i}]")
    return errors


def _object_errors(value: dict, schema: dict, path: str) -> list[str]:
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    errors = [f"{path}: missing required key {k!r}" for k in schema.get("required", []) if k not in value]
    for k, v in value.items():
        if k in props:
            errors += validate(v, props[k], f"{path}.{k}")
        elif extra is False:
            errors.append(f"{path}: unexpected key {k!r}")
        elif isinstance(extra, dict):
            errors += validate(v, extra, f"{path}.{k}")
    return errors
