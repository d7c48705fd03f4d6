"""Tests of bench/uncertainty.py's analysis against gold (which the method itself never sees): the wrong
entities, the F1 a perfect corrector would reach after k delegations, and the F1 rule that picks tau
from that curve on labelled dev data (the method picks tau by a label-free target rate:
test_uncertainty.py)."""

import pytest

from bench.uncertainty import corrector_f1_curve, f1_rule, wrong_flags
from data import Entity, Sample


def f1_case() -> tuple[list[Sample], list[Sample]]:
    """Gold PER [0,1), LOC [2,4), ORG [5,6). Predicted: PER [0,1) right (0.1), LOC [2,3) too short (0.8),
    PER [5,6) wrong type (0.6), ORG [1,2) spurious (0.2). Fixing them in uncertainty order:
    tp/fp/fn 1/3/2 -> 2/2/1 -> 3/1/0 -> 3/0/0 -> 3/0/0, F1 = 2/7, 4/7, 6/7, 1, 1."""
    toks = list("abcdef")
    gold = Sample("g", toks, entities=[Entity(0, 1, "PER"), Entity(2, 4, "LOC"), Entity(5, 6, "ORG")])
    pred = Sample(
        "g",
        toks,
        entities=[
            Entity(0, 1, "PER", uncertainty=0.1),
            Entity(1, 2, "ORG", uncertainty=0.2),
            Entity(2, 3, "LOC", uncertainty=0.8),
            Entity(5, 6, "PER", uncertainty=0.6),
        ],
    )
    return [pred], [gold]


def test_corrector_f1_curve_and_the_f1_rule():
    pred, gold = f1_case()
    assert wrong_flags(pred, gold) == [False, True, True, True]
    order = [2, 3, 1, 0]
    assert corrector_f1_curve(pred, gold, order) == pytest.approx([2 / 7, 4 / 7, 6 / 7, 1, 1])
    # gain 0.9: goal 2/7 + 0.9 * 5/7 = 6.5/7 -> 3 delegations -> tau between 0.2 and 0.1
    tau, how = f1_rule(pred, gold, gain=0.9)
    assert tau == pytest.approx(0.15) and "3/4" in how and "upper bound" in how
    tau, _ = f1_rule(pred, gold, gain=0.5)
    assert tau == pytest.approx(0.4)
