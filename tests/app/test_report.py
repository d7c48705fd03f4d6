"""Tests of app/report.py's grounding lines: every number they print is read from app/counts.py's
grounding_counts, by the keys it gives (a renamed key fails here instead of printing 0)."""

from app import report
from app.counts import grounding_counts
from data import Box, Entity, Sample
from grounding import GroundingTrace, Outcome


def test_grounding_line_prints_the_counts_of_hand_built_traces():
    """a: answered, 2 boxes on "Leopard 2" (both its mentions) and none on "NATO"; b: no image, its
    vehicle and its location (never grounded, not asked); c: its image unreadable; d: the call failed;
    e: nothing to ask. Asked 3 of 5 (a, c, d), in 2 calls (a, d); 4 boxes on 2 entities; 7 - 2 = 5 entities
    without a box, 1 of them a location."""
    box = Box(1, 1, 9, 9)
    tokens = "Leopard 2 and Leopard 2 with NATO".split()
    a = Sample(
        "a", tokens, "a.jpg", [Entity(0, 2, "vehicle", [box, box]), Entity(3, 5, "vehicle", [box, box])]
    )
    a.entities.append(Entity(6, 7, "other"))
    b = Sample("b", ["Boxer", "in", "Kiel"], None, [Entity(0, 1, "vehicle"), Entity(2, 3, "location")])
    c = Sample("c", ["Puma"], "c.jpg", [Entity(0, 1, "vehicle")])
    d = Sample("d", ["Tiger"], "d.jpg", [Entity(0, 1, "aircraft")])
    e = Sample("e", ["rain"], "e.jpg", [])
    traces = {
        "a": GroundingTrace(
            Outcome.ANSWERED,
            {"Leopard 2": "vehicle", "NATO": "other"},
            [],
            {"Leopard 2": [box, box], "NATO": []},
            defects={"degenerate_boxes": 1, "missing": 0},
        ),
        "b": GroundingTrace(Outcome.NO_IMAGE, {"Boxer": "vehicle"}, [], {}),
        "c": GroundingTrace(Outcome.IMAGE_ERROR, {"Puma": "vehicle"}, [], {}, "cannot read image c.jpg"),
        "d": GroundingTrace(
            Outcome.FAILED_CALL, {"Tiger": "aircraft"}, [], {}, "HTTP 500", dropped={"x": "?"}
        ),
        "e": GroundingTrace(Outcome.NO_ENTITY, {}, [], {}),
    }
    n = grounding_counts([a, b, c, d, e], traces)
    assert n == {
        "samples": 5,
        "calls": 2,
        "failed_calls": 1,
        "image_errors": 1,
        "no_image": 1,
        "no_image_entities": 1,
        "no_entity": 1,
        "demo_image_errors": 1,
        "bad_answers": 0,
        "bad_items": 0,
        "invented": 0,
        "malformed_boxes": 0,
        "degenerate_boxes": 1,
        "missing": 0,
        "entities_grounded": 2,
        "boxes": 4,
    }
    assert report.grounding_line(n, [a, b, c, d, e], ["location"]) == (
        "grounding: 3 of 5 samples asked in 2 calls, 4 boxes drawn on 2 entities; 5 of 7 entities left "
        "without a box (1 of them location, a type never grounded)"
    )
    assert report.image_lines(traces) == [
        "grounding: cannot read image c.jpg; no box for its sample",
        "grounding: ?; not shown as a worked example",
    ]
