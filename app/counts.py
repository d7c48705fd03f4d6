"""The run's counts, each from the stage's typed traces: what the summary prints and metrics.json keeps.

A stage returns its samples and a trace per sample id and never counts for others (STYLE.md rule 4); the
application sums the traces up here. Input: a stage's output samples and traces. Output: {key: count}.

    python -m pytest -q tests/app/test_report.py   # the counts of hand-built traces, and the line they print

Left out on purpose: scores (eval.py), calls and tokens (the client's usage).
"""

from collections import Counter

from data import Sample
from grounding import DEFECTS, GroundingTrace, Outcome


def grounding_counts(grounded: list[Sample], traces: dict[str, GroundingTrace]) -> dict[str, int]:
    """What the grounding stage did, summed from its traces and its output samples: metrics.json's
    "grounding" entry and the summary's line read these keys."""
    outcomes = Counter(t.outcome for t in traces.values())
    defects = sum((Counter(t.defects) for t in traces.values()), Counter())
    no_image = [(s, traces[s.id].asked) for s in grounded if traces[s.id].outcome is Outcome.NO_IMAGE]
    return {
        "samples": len(grounded),
        "calls": outcomes[Outcome.ANSWERED] + outcomes[Outcome.FAILED_CALL],
        "failed_calls": outcomes[Outcome.FAILED_CALL],
        "image_errors": outcomes[Outcome.IMAGE_ERROR],
        "no_image": outcomes[Outcome.NO_IMAGE],
        "no_image_entities": sum(1 for s, asked in no_image for e in s.entities if s.name(e) in asked),
        "no_entity": outcomes[Outcome.NO_ENTITY],
        "demo_image_errors": len({i for t in traces.values() for i in t.dropped}),
        **{k: defects[k] for k in DEFECTS},
        "entities_grounded": sum(1 for s in grounded for e in s.entities if e.boxes),
        "boxes": sum(len(e.boxes) for s in grounded for e in s.entities),
    }
