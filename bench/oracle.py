"""What a perfect corrector would reach: analysis against gold that the method itself never sees.

`wrong_flags` marks the predicted entities that are not exact gold matches, `corrector_f1_curve`
is the F1 after the first k delegated entities are fixed, and `f1_rule` picks tau on labelled dev
data from that curve (the method picks it by a label-free target rate: uncertainty.choose_threshold).
"""

import numpy as np

from data import Sample
from eval import prf
from uncertainty import tau_for, uncertainties


def check_aligned(pred: list[Sample], gold: list[Sample]) -> None:
    if len(pred) != len(gold) or any(p.id != g.id for p, g in zip(pred, gold, strict=False)):
        raise ValueError(
            f"expected predictions and gold for the same samples in the same order, "
            f"got {len(pred)} and {len(gold)} samples"
        )


def wrong_flags(pred: list[Sample], gold: list[Sample]) -> list[bool]:
    """Per predicted entity (flat, sample order): not an exact (span, type) match of a gold entity."""
    check_aligned(pred, gold)
    wrong = []
    for ps, gs in zip(pred, gold, strict=True):
        right = {(g.start, g.end, g.type) for g in gs.entities}
        wrong += [(e.start, e.end, e.type) not in right for e in ps.entities]
    return wrong


def corrector_f1_curve(pred: list[Sample], gold: list[Sample], order: list[int]) -> list[float]:
    """MNER F1 after a perfect corrector fixed the first k delegated entities, for k = 0..len(order).

    `order` indexes the flat predicted entities. A wrong delegated entity is replaced by the
    gold entity it overlaps most (if that one is still free), else removed; a right one stays.
    """
    check_aligned(pred, gold)
    flat = [(i, e) for i, s in enumerate(pred) for e in s.entities]
    wrong = wrong_flags(pred, gold)
    tp = len(wrong) - sum(wrong)
    fp = sum(wrong)
    fn = sum(len(g.entities) for g in gold) - tp
    used = set()  # gold entities already given to a replacement
    curve = [prf({"tp": tp, "fp": fp, "fn": fn})["f1"]]
    for j in order:
        i, e = flat[j]
        if wrong[j]:
            fp -= 1
            over = [
                (min(e.end, g.end) - max(e.start, g.start), k)
                for k, g in enumerate(gold[i].entities)
                if min(e.end, g.end) > max(e.start, g.start) and (i, k) not in used
            ]
            if over:
                used.add((i, max(over)[1]))
                tp += 1
                fn -= 1
        curve.append(prf({"tp": tp, "fp": fp, "fn": fn})["f1"])
    return curve


def f1_rule(pred: list[Sample], gold: list[Sample], gain: float = 0.9) -> tuple[float, str]:
    """The labelled alternative to a target rate: the fewest delegations (most uncertain first) that reach
    `gain` of the F1 gain a perfect corrector would make on labelled dev samples."""
    desc = sorted(uncertainties(pred), reverse=True)
    if not desc:
        return 1.0, "no predicted entity: nothing to delegate"
    curve = corrector_f1_curve(pred, gold, list(np.argsort([-x for x in uncertainties(pred)], kind="stable")))
    goal = curve[0] + gain * (curve[-1] - curve[0])
    k = next(k for k, f in enumerate(curve) if f >= goal - 1e-12)
    tau = tau_for(desc, k)
    return tau, (
        f"tau = {tau:.4f}: fewest delegations ({k}/{len(desc)}) reaching {gain:.0%} of the F1 "
        f"gain of a perfect corrector on {len(gold)} labelled samples (upper bound: F1 {curve[0]:.3f} -> "
        f"{curve[k]:.3f}; all delegated {curve[-1]:.3f})"
    )
