"""Tests of uncertainty.py: the uncertainty against brute-force CRF marginals, routing and the threshold
(the refinement that follows: test_refinement.py; the F1 analysis against gold: test_bench_uncertainty.py)."""

import itertools

import numpy as np
import pytest
import torch

import uncertainty as unc
from crf import CRF, allowed_moves, tag_names
from data import Entity, Sample, spans_to_tags

# ---------------------------------------------------------------- uncertainty vs brute force


def brute_force(crf: CRF, em: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """Every tag sequence of length T and its probability, from the CRF's scores by enumeration."""
    start, trans, end = (x.detach().double().numpy() for x in crf.scores())
    T, K = em.shape
    seqs = list(itertools.product(range(K), repeat=T))
    logp = np.array(
        [
            start[y[0]]
            + em[np.arange(T), y].sum()
            + sum(trans[y[t - 1], y[t]] for t in range(1, T))
            + end[y[-1]]
            for y in seqs
        ]
    )
    p = np.exp(logp - logp.max())
    return seqs, p / p.sum()


def oracle_uncertainty(seqs, p, tags, e: Entity, scheme: str) -> float:
    """max(span, type uncertainty), each probability summed over whole tag sequences."""
    pred = spans_to_tags(e.end - e.start, [Entity(0, e.end - e.start, e.type)], scheme)
    prob = lambda cond: sum(pi for y, pi in zip(seqs, p) if cond(y))  # noqa: E731
    p_role = [prob(lambda y: tags[y[e.start + i]][0] == r[0]) for i, r in enumerate(pred)]  # noqa: B023
    if e.end < len(seqs[0]):
        p_role.append(1 - prob(lambda y: tags[y[e.end]][0] in "IE"))
    p_type = [prob(lambda y: tags[y[t]][2:] == e.type) for t in range(e.start, e.end)]  # noqa: B023
    return max(1 - np.mean(p_role), 1 - np.mean(p_type))


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_marginal_uncertainty_equals_brute_force(scheme):
    torch.manual_seed(0)
    tags = tag_names(["PER", "LOC"], scheme)
    T, K = 4, len(tags)
    # BIO: no constraints, so every sequence has mass; BIOES: the tagger's legal moves only
    crf = CRF(K) if scheme == "BIO" else CRF(K, *allowed_moves(tags, scheme))
    with torch.no_grad():
        for prm in (crf.start, crf.trans, crf.end):
            prm.copy_(torch.randn_like(prm))
    em = torch.randn(1, T, K, dtype=torch.float64)
    marg = crf.double().marginals(em, torch.ones(1, T, dtype=torch.bool))[0].detach().numpy()
    seqs, p = brute_force(crf, em[0].numpy())
    ents = [Entity(0, 2, "PER"), Entity(2, 3, "LOC"), Entity(3, 4, "PER")]
    s = Sample("x", ["a", "b", "c", "d"], entities=ents, marginals=marg)
    unc.estimate([s], tags)
    for e in ents:
        assert e.uncertainty == pytest.approx(oracle_uncertainty(seqs, p, tags, e, scheme), abs=1e-9)
    assert 0 < min(e.uncertainty for e in ents) and max(e.uncertainty for e in ents) < 1
    # missed-entity score: no token is outside an entity here; drop the last entity to free token 3
    s.entities = ents[:2]
    assert unc.missed_entity_score(s, tags) == pytest.approx(sum(pi for y, pi in zip(seqs, p) if y[3] != 0))


def test_mc_dropout_uncertainty_is_normalised_span_entropy():
    K = 4
    marg = np.array([[1.0, 0, 0, 0], [0.25] * 4, [0.5, 0.5, 0, 0]])
    s = Sample(
        "x",
        ["a", "b", "c"],
        entities=[Entity(0, 1, "PER"), Entity(1, 2, "PER"), Entity(1, 3, "PER")],
        marginals=marg,
    )
    unc.estimate([s], ["O", "B-PER", "I-PER", "B-LOC"], unc.UncertaintyConfig(method="mc_dropout"))
    assert [e.uncertainty for e in s.entities] == pytest.approx(
        [0.0, 1.0, (1 + np.log(2) / np.log(K)) / 2], abs=1e-6
    )


def test_estimate_rejects_missing_marginals_and_unknown_method():
    s = Sample("x", ["a"], entities=[Entity(0, 1, "PER")])
    with pytest.raises(ValueError, match="marginals"):
        unc.estimate([s], ["O", "B-PER", "I-PER"])
    with pytest.raises(ValueError, match="method"):
        unc.estimate([s], ["O"], unc.UncertaintyConfig(method="entropy"))


# ---------------------------------------------------------------- routing and the threshold


def scored(*rows: list[float]) -> list[Sample]:
    return [
        Sample(str(i), ["w"] * 8, entities=[Entity(j, j + 1, "PER", uncertainty=x) for j, x in enumerate(r)])
        for i, r in enumerate(rows)
    ]


def test_route_marks_exactly_the_entities_above_tau():
    samples = scored([0.1, 0.5, 0.3], [0.3, 0.9], [])
    unc.route(samples, 0.3)
    assert [[e.delegated for e in s.entities] for s in samples] == [[False, True, False], [False, True], []]
    out = [unc.delegated(s) for s in samples]
    assert [[e.uncertainty for e in r] for r in out] == [[0.5], [0.9], []]  # 0.3 itself stays: strictly above
    assert out[0][0] is samples[0].entities[1]
    unc.route(samples, 0.05)  # routed again with another tau: every mark is decided anew
    assert [len(unc.delegated(s)) for s in samples] == [3, 2, 0]
    with pytest.raises(ValueError, match="no uncertainty"):
        unc.route([Sample("x", ["a"], entities=[Entity(0, 1, "PER")])], 0.5)


def test_delegated_refuses_a_sample_never_routed():
    with pytest.raises(ValueError, match="sample 0: an entity was never routed"):
        unc.delegated(scored([0.9])[0])
    assert unc.delegated(Sample("x", ["a"])) == []  # no entity: nothing to route, nothing to send


def test_choose_threshold_hits_a_target_rate():
    scores = [0.05, 0.9, 0.4, 0.7, 0.2, 0.65, 0.1, 0.3, 0.8, 0.5]
    samples = scored(scores[:4], scores[4:])
    tau, how = unc.choose_threshold(samples, unc.UncertaintyConfig(target_rate=0.3))
    above = sorted(x for x in scores if x > tau)
    assert above == [0.7, 0.8, 0.9] and "30.0%" in how and "no labels" in how
    # ties cannot be split: never more than the target
    tau, how = unc.choose_threshold(scored([0.9, 0.5, 0.5, 0.1]), unc.UncertaintyConfig(target_rate=0.5))
    assert tau == 0.5 and "25.0%" in how
    assert unc.choose_threshold(samples, unc.UncertaintyConfig(tau=0.42))[0] == 0.42
    # neither a fixed tau nor a target rate: no label-free rule can choose tau (the F1 rule on labelled dev
    # data is analysis only: test_bench_uncertainty.py)
    with pytest.raises(ValueError, match="target_rate"):
        unc.choose_threshold(samples, unc.UncertaintyConfig(target_rate=None))
