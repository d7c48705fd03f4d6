"""structured.py: the JSON value in an answer's text, and the JSON-schema subset answers are checked against.

Hand-written cases: each answer shape a server was seen to send (fences, prose around the value,
<think> blocks, a broken value before a good one) and each keyword of the subset, with the exact message.
"""

import pytest

from client.structured import extract_json, validate


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        (" 42 ", 42),
        ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
        ("Sure! Here it is:\n```\n[1, 2]\n```\nHope this helps.", [1, 2]),
        ('The [2] entities are {"x": [1, {"y": 2}]} as requested.', {"x": [1, {"y": 2}]}),
        ('<think>maybe {"a": 0}</think>\n{"a": 1}', {"a": 1}),
        ('Answer: {"bad": } and then {"good": true}.', {"good": True}),
    ],
)
def test_extract_json(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["no json here", '{"a": ', ""])
def test_extract_json_without_json_raises(text):
    with pytest.raises(ValueError, match="no JSON value"):
        extract_json(text)


def test_validate_subset():
    box = {
        "type": "array",
        "items": {"type": "number", "minimum": 0, "maximum": 1000},
        "minItems": 4,
        "maxItems": 4,
    }
    schema = {
        "type": "object",
        "required": ["name", "boxes"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 5},
            "type": {"enum": ["PER", "LOC"]},
            "n": {"type": "integer"},
            "note": {"type": ["string", "null"]},
            "boxes": {"type": "array", "items": box, "maxItems": 2},
        },
    }
    good = {"name": "Obama", "type": "PER", "n": 3, "note": None, "boxes": [[0, 1.5, 10, 1000]]}
    assert validate(good, schema) == []
    assert validate({**good, "n": 3.0}, schema) == []  # JSON Schema: 3.0 is an integer
    assert validate({**good, "n": True}, schema) == ["$.n: expected integer, got true"]
    assert validate({**good, "note": 7}, schema) == ["$.note: expected string or null, got 7"]
    assert validate({**good, "name": "Barack"}, schema) == ["$.name: longer than 5 characters"]
    assert validate({**good, "type": "ORG"}, schema) == ['$.type: "ORG" is not one of ["PER", "LOC"]']
    assert validate({**good, "boxes": [[0, 0, 1]]}, schema) == ["$.boxes[0]: 3 items, at least 4 expected"]
    assert validate({**good, "boxes": [[0, 0, 1, 1001]]}, schema) == [
        "$.boxes[0][3]: 1001 is above the maximum 1000"
    ]
    assert validate({**good, "boxes": [[0, 0, 1, 1]] * 3}, schema) == ["$.boxes: 3 items, at most 2 allowed"]
    assert validate({"boxes": [], "x": 1}, schema) == [
        "$: missing required key 'name'",
        "$: unexpected key 'x'",
    ]
    assert validate([], schema) == ["$: expected object, got []"]
    assert validate(None, {"anyOf": [{"type": "string"}, {"type": "null"}]}) == []
    assert validate(1, {"anyOf": [{"type": "string"}, {"type": "null"}]})[0].startswith(
        "$: fits none of the anyOf"
    )
    with pytest.raises(ValueError, match=r"\['pattern'\] at \$ are not supported"):
        validate("x", {"type": "string", "pattern": "^x$"})
