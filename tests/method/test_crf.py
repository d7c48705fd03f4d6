"""The CRF of crf.py against brute-force enumeration of every tag sequence (the oracle).

For a row of length n the oracle lists all K**n paths, drops the ones the tag scheme
forbids, scores each as start + emissions + transitions + end with the raw learnt
parameters, and derives log Z, the best path and P(tag_t = k) from that list.
"""

import itertools

import pytest
import torch

from crf import CRF, allowed_moves, tag_names


def oracle(crf: CRF, em: torch.Tensor, n: int, ok) -> tuple[list, torch.Tensor, list, torch.Tensor]:
    """(legal paths, their scores, best path, marginals (n, K)) of one row em (T, K) of length n."""
    start_ok, trans_ok, end_ok = ok
    k = em.shape[1]
    paths = [
        p
        for p in itertools.product(range(k), repeat=n)
        if start_ok[p[0]] and end_ok[p[-1]] and all(trans_ok[a, b] for a, b in zip(p, p[1:]))
    ]
    scores = torch.stack(
        [
            crf.start[p[0]]
            + sum(em[t, p[t]] for t in range(n))
            + sum((crf.trans[a, b] for a, b in zip(p, p[1:])), torch.tensor(0.0, dtype=em.dtype))
            + crf.end[p[-1]]
            for p in paths
        ]
    )
    probs = torch.softmax(scores, 0)
    marg = torch.zeros(n, k, dtype=em.dtype)
    for p, q in zip(paths, probs):
        marg[torch.arange(n), torch.tensor(p)] += q
    return paths, scores, list(paths[int(scores.argmax())]), marg


CASES = [  # (tags or K, scheme): unconstrained K=3 and 4, BIO and BIOES tag sets
    (3, None),
    (4, None),
    (tag_names(["A", "B"], "BIO"), "BIO"),
    (tag_names(["A"], "BIOES"), "BIOES"),
    (tag_names(["A", "B"], "BIOES"), "BIOES"),
]


@pytest.mark.parametrize("tags,scheme", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_crf_matches_brute_force(tags, scheme, seed):
    torch.manual_seed(seed)
    if scheme is None:
        k = tags
        ok = (
            torch.ones(k, dtype=torch.bool),
            torch.ones(k, k, dtype=torch.bool),
            torch.ones(k, dtype=torch.bool),
        )
    else:
        k = len(tags)
        ok = allowed_moves(tags, scheme)
    crf = CRF(k, *ok).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    lengths = [4, 3, 1, 2]  # padding in every row but the first
    em = torch.randn(len(lengths), 4, k, dtype=torch.float64)
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    gold, want_ll, want_best, want_marg = [], [], [], []
    for b, n in enumerate(lengths):
        paths, scores, best, marg = oracle(crf, em[b], n, ok)
        pick = int(torch.randint(len(paths), ()))
        gold.append(list(paths[pick]) + [0] * (4 - n))  # a legal gold path; padding tags are arbitrary
        want_ll.append(scores[pick] - torch.logsumexp(scores, 0))
        want_best.append(best)
        want_marg.append(marg)
    ll = crf.log_likelihood(em, torch.tensor(gold), mask)
    assert torch.allclose(ll, torch.stack(want_ll), atol=1e-8)
    assert crf.viterbi(em, mask) == want_best
    marg = crf.marginals(em, mask)
    for b, n in enumerate(lengths):
        assert torch.allclose(marg[b, :n], want_marg[b], atol=1e-8)
        assert torch.allclose(marg[b, :n].sum(1), torch.ones(n, dtype=torch.float64))
        assert torch.all(marg[b, n:] == 0)


def test_marginals_are_the_gradient_of_log_z():
    """A second oracle on longer rows: d log Z / d emission[t, k] = P(tag_t = k)."""
    torch.manual_seed(3)
    tags = tag_names(["A", "B", "C"], "BIOES")
    crf = CRF(len(tags), *allowed_moves(tags, "BIOES")).double()
    em = torch.randn(3, 12, len(tags), dtype=torch.float64, requires_grad=True)
    mask = torch.arange(12)[None, :] < torch.tensor([12, 7, 1])[:, None]
    zeros = torch.zeros(3, 12, dtype=torch.long)  # all-O gold: log_lik = score(O...) - log Z
    (-crf.log_likelihood(em, zeros, mask)).sum().backward()
    o_part = torch.zeros_like(em)
    o_part[:, :, 0] = mask.double()  # d score(all O) / d em
    assert torch.allclose(em.grad + o_part, crf.marginals(em.detach(), mask), atol=1e-8)


def test_illegal_moves_get_no_mass_and_no_nan():
    tags = tag_names(["A", "B"], "BIO")
    crf = CRF(len(tags), *allowed_moves(tags, "BIO"))
    em = torch.zeros(1, 3, len(tags))
    em[0, :, tags.index("I-A")] = 50.0  # emissions shout I-A everywhere
    mask = torch.ones(1, 3, dtype=torch.bool)
    marg = crf.marginals(em, mask)
    assert marg[0, 0, tags.index("I-A")] == 0  # an entity cannot start with I-
    assert crf.viterbi(em, mask) == [[tags.index("B-A"), tags.index("I-A"), tags.index("I-A")]]
    gold = torch.tensor([[tags.index("B-A"), tags.index("I-A"), tags.index("O")]])
    crf.log_likelihood(em, gold, mask).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in crf.parameters())


def test_allowed_moves_by_hand():
    bio = tag_names(["A", "B"], "BIO")
    start, trans, end = allowed_moves(bio, "BIO")
    ix = bio.index
    assert not start[ix("I-A")] and start[ix("B-A")] and end.all()
    assert not trans[ix("O"), ix("I-A")] and not trans[ix("B-A"), ix("I-B")]
    assert trans[ix("B-A"), ix("I-A")] and trans[ix("I-A"), ix("B-B")] and trans[ix("I-B"), ix("O")]
    bioes = tag_names(["A", "B"], "BIOES")
    start, trans, end = allowed_moves(bioes, "BIOES")
    ix = bioes.index
    assert not start[ix("E-A")] and start[ix("S-A")]
    assert not end[ix("B-A")] and not end[ix("I-A")] and end[ix("E-A")] and end[ix("O")]
    assert not trans[ix("B-A"), ix("O")] and not trans[ix("O"), ix("E-A")] and not trans[ix("I-A"), ix("E-B")]
    assert trans[ix("B-A"), ix("E-A")] and trans[ix("E-A"), ix("S-B")] and trans[ix("S-A"), ix("B-A")]


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda c, em, m, t: c.viterbi(em[:, :, :2], m),
            r"emissions: expected shape \(B, T, 3\), got \(2, 4, 2\)",
        ),
        (lambda c, em, m, t: c.marginals(em[0], m), r"emissions: expected shape \(B, T, 3\), got \(4, 3\)"),
        (
            lambda c, em, m, t: c.marginals(em.long(), m),
            r"emissions: expected a float tensor, got torch.int64",
        ),
        (lambda c, em, m, t: c.viterbi(em, m.long()), r"mask: expected a bool tensor, got torch.int64"),
        (
            lambda c, em, m, t: c.viterbi(em, m[:, :3]),
            r"mask: expected shape \(2, 4\) \(the emissions' B, T\), got \(2, 3\)",
        ),
        (
            lambda c, em, m, t: c.marginals(
                em, torch.tensor([[True, True, True, True], [False, True, True, True]])
            ),
            r"mask: expected every row to start with a token .* got empty row\(s\) \[1\]",
        ),
        (
            lambda c, em, m, t: c.viterbi(
                em, torch.tensor([[True, False, True, False], [True, True, True, True]])
            ),
            r"mask: expected the padding at the end of each row .* in row\(s\) \[0\]",
        ),
        (
            lambda c, em, m, t: c.log_likelihood(em, t[:, :3], m),
            r"tags: expected shape \(2, 4\) .* got \(2, 3\)",
        ),
        (
            lambda c, em, m, t: c.log_likelihood(em, t.int(), m),
            r"tags: expected a long tensor, got torch.int32",
        ),
        (
            lambda c, em, m, t: c.log_likelihood(em, t + 1, m),
            r"tags: expected tag indices in \[0, 3\), got 1..3",
        ),
    ],
)
def test_entry_points_say_what_they_expected_and_got(call, message):
    """Each public CRF method refuses a wrong shape, dtype or mask with an expected-vs-got message (as
    pytorch-crf's _validate does), instead of silently scoring garbage."""
    crf = CRF(3)
    em = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    tags = torch.tensor([[0, 1, 2, 0], [2, 2, 0, 0]])
    with pytest.raises(ValueError, match=message):
        call(crf, em, mask, tags)
    (
        crf.log_likelihood(em, tags, mask),
        crf.marginals(em, mask),
        crf.viterbi(em, mask),
    )  # the valid inputs pass
