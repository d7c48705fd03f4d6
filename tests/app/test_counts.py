"""Tests of app/counts.py: the run's counts, added up from the stages' typed traces (what each stage
decides is tested beside the stage: tests/method/test_refinement.py)."""

import llm
import refinement as ref
from app.counts import refinement_counts
from data import Entity, Sample


def test_refinement_counts_hold_every_outcome_of_the_closed_sets_zero_or_not():
    """Every value of Call, Outcome and Ignored is a key of counts, distinct (no key counts two things),
    there with 0 when nothing happened: a reader never falls back on a default for a missing key."""
    values = [o.value for o in [*ref.Call, *ref.Outcome, *ref.Ignored]]
    zero = refinement_counts({})
    assert len(set(values)) == len(values) and set(values) <= set(zero)
    assert not any(zero.values())
    sample = Sample(
        "m",
        "Two Leopard 2 tanks near Munster .".split(),
        entities=[Entity(1, 2, "vehicle", delegated=True), Entity(5, 6, "location", delegated=False)],
    )
    failed = refinement_counts({"x": ref.merge(sample, llm.LLMError("HTTP 500"), ["vehicle", "location"])[1]})
    one = {
        "samples": 1,
        "entities": 2,
        "delegated": 1,
        "calls": 1,
        "calls_per_sample": 1.0,
        "authors_calls": 1,
    }
    assert failed == zero | one | {"failed_call": 1, "missing": 1, "kept_by_fallback": 1}
