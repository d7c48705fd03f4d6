"""app/synthetic.py: the summary counted from hand-built traces and printed, and synthetic.jsonl written and
read back (a span that does not match its name refused, with file and line)."""

import json

import pytest
from test_synth import CLEAN, clean_handler, client, toy

from app.synthetic import format_summary, read_synthetic, summarize, write_synthetic
from data import Entity, Sample
from servers.fake_mllm import FakeServer
from synth import Outcome, SeedTrace, synthesize


def test_the_summary_counts_the_traces():
    """Hand-built traces: 3 seeds, one call failed, 5 items (1 kept, 3 too short, 1 empty); 2 examples per
    reason are kept, in answer order, so the third too_short (seed c) is left out."""
    fennek = Sample("syn-a-0", ["A", "Fennek", "."], None, [Entity(1, 2, "vehicle")])
    traces = [
        SeedTrace(
            "a",
            None,
            [
                Outcome(0, {"text": "A Fennek ."}, None, fennek),
                *[Outcome(j, {"text": f"x{j}"}, "too_short") for j in (1, 2)],
            ],
        ),
        SeedTrace("b", "HTTP 500", []),
        SeedTrace(
            "c", None, [Outcome(0, {"text": "z"}, "too_short"), Outcome(1, {"text": " "}, "empty_text")]
        ),
    ]
    summary = summarize(["vehicle", "vessel"], traces, 2)
    assert summary == {
        "seeds": 3,
        "calls": 3,
        "failed_calls": 1,
        "failed_seeds": ["b"],
        "first_error": "HTTP 500",
        "generated": 5,
        "kept": 1,
        "entity_free_kept": 0,
        "rejected": {"empty_text": 1, "too_short": 3},
        "entities_per_type": {"vehicle": 1, "vessel": 0},
        "rejected_examples": [
            {"seed": "a", "j": 1, "reason": "too_short", "text": "x1"},
            {"seed": "a", "j": 2, "reason": "too_short", "text": "x2"},
            {"seed": "c", "j": 1, "reason": "empty_text", "text": " "},
        ],
    }
    text = format_summary(summary)
    assert "3 calls (1 failed)" in text and "empty_text 1, too_short 3" in text
    assert "failed seeds: b; first error: HTTP 500" in text


def test_write_read_round_trip(tmp_path):
    data = toy()
    with FakeServer(clean_handler) as srv:
        samples, _ = synthesize(data, client(srv.url, tmp_path), CLEAN)
    path = tmp_path / "synthetic.jsonl"
    write_synthetic(samples, path)
    back = read_synthetic(path)
    assert [(s.id, s.tokens, s.entities) for s in back] == [(s.id, s.tokens, s.entities) for s in samples]
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["seed"] == "s1" and first["entities"][0] == {
        "start": 0,
        "end": 2,
        "type": "vessel",
        "name": "USS Nimitz",
    }


def test_read_synthetic_rejects_a_span_that_does_not_match_its_name(tmp_path):
    path = tmp_path / "bad.jsonl"
    rec = {
        "id": "syn-x-0",
        "seed": "x",
        "text": "a b c",
        "tokens": ["a", "b", "c"],
        "entities": [{"start": 0, "end": 1, "type": "vessel", "name": "b"}],
    }
    path.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: entity name 'b'"):
        read_synthetic(path)
