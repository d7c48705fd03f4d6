"""The run's counts, each from the stage's typed traces: the summary prints them, metrics.json keeps them.

A stage never counts for others (STYLE.md rule 4): it returns a typed trace per sample, and the functions
here add those up. Every key is always there, 0 included, so reading one that is not (renamed, misspelt)
fails instead of reading 0.
"""

from collections import Counter

from refinement import ACTIONS, Call, Ignored, Outcome, RefinementTrace


def refinement_counts(traces: dict[str, RefinementTrace]) -> dict[str, int | float]:
    """The refinement stage's numbers, from its traces alone. Besides the totals: one key per Call, Outcome
    and Ignored value; kept_by_fallback (the Outcomes that are no action); added."""
    ts = list(traces.values())
    asked = [t for t in ts if t.call is not Call.NOT_ASKED]
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
        **{o.value: tally[o] for o in [*Call, *Outcome, *Ignored]},
        "kept_by_fallback": sum(1 for o in decided if o.value not in ACTIONS),
        "added": sum(len(t.added) for t in ts),
    }
