"""The run's counts, each from the stage's typed traces: what the summary prints and metrics.json keeps.

A stage returns its samples and a trace per sample id and never counts for others (STYLE.md rule 4); the
application adds the traces up here (synthesis's: app/synthetic.py). Every key is always there, 0 included,
so reading one that is not (renamed, misspelt) fails instead of reading 0.

    python -m pytest -q tests/app/test_counts.py tests/app/test_report.py   # hand-built traces, their lines

Left out on purpose: scores (eval.py), calls and tokens (the client's usage).
"""

from collections import Counter

import grounding
import refinement
from data import Sample


def grounding_counts(grounded: list[Sample], traces: dict[str, grounding.GroundingTrace]) -> dict[str, int]:
    """What the grounding stage did, summed from its traces and its output samples: metrics.json's
    "grounding" entry and the summary's line read these keys."""
    outcomes = Counter(t.outcome for t in traces.values())
    defects = sum((Counter(t.defects) for t in traces.values()), Counter())
    no_image = [
        (s, traces[s.id].asked) for s in grounded if traces[s.id].outcome is grounding.Outcome.NO_IMAGE
    ]
    return {
        "samples": len(grounded),
        "calls": outcomes[grounding.Outcome.ANSWERED] + outcomes[grounding.Outcome.FAILED_CALL],
        "failed_calls": outcomes[grounding.Outcome.FAILED_CALL],
        "image_errors": outcomes[grounding.Outcome.IMAGE_ERROR],
        "no_image": outcomes[grounding.Outcome.NO_IMAGE],
        "no_image_entities": sum(1 for s, asked in no_image for e in s.entities if s.name(e) in asked),
        "no_entity": outcomes[grounding.Outcome.NO_ENTITY],
        "demo_image_errors": len({i for t in traces.values() for i in t.dropped}),
        **{k: defects[k] for k in grounding.DEFECTS},
        "entities_grounded": sum(1 for s in grounded for e in s.entities if e.boxes),
        "boxes": sum(len(e.boxes) for s in grounded for e in s.entities),
    }


def refinement_counts(traces: dict[str, refinement.RefinementTrace]) -> dict[str, int | float]:
    """The refinement stage's numbers, from its traces alone. Besides the totals: one key per Call, Outcome
    and Ignored value; kept_by_fallback (the Outcomes that are no action); added."""
    ts = list(traces.values())
    asked = [t for t in ts if t.call is not refinement.Call.NOT_ASKED]
    decided = [d.outcome for t in ts for d in t.decisions]
    tally = Counter([t.call for t in ts] + decided + [x for t in ts for x in t.ignored])
    return {
        "samples": len(ts),
        "entities": sum(t.entities for t in ts),
        "delegated": len(decided),
        "calls": len(asked),
        "calls_per_sample": len(asked) / max(len(ts), 1),
        "authors_calls": sum(1 for t in ts if t.entities),
        "missed_routed": sum(1 for t in asked if not t.decisions),
        "image_errors": sum(1 for t in asked if t.image_error),
        "text_only_calls": sum(1 for t in asked if t.text_only),
        **{o.value: tally[o] for o in [*refinement.Call, *refinement.Outcome, *refinement.Ignored]},
        "kept_by_fallback": sum(1 for o in decided if o.value not in refinement.ACTIONS),
        "added": sum(len(t.added) for t in ts),
    }
