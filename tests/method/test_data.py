"""data.py: the data model, tokenising, the name rule and tags <-> spans (formats: test_ccks.py,
test_twitter.py)."""

import random

import numpy as np
import pytest

from data import Entity, Sample, find_name, label_names, spans_to_tags, tags_to_spans, tokenize


def test_samples_compare_by_content_not_by_marginals():
    """A predicted Sample carries a (T, K) marginals array; == must compare ids, tokens, image and entities
    (comparing arrays raises "truth value of an array is ambiguous"), and repr must not print the array."""
    a = Sample("1", ["Obama", "spoke"], None, [Entity(0, 1, "PER")], marginals=np.ones((2, 3)))
    b = Sample("1", ["Obama", "spoke"], None, [Entity(0, 1, "PER")], marginals=np.zeros((2, 3)))
    assert a == b
    assert a != Sample("1", ["Obama", "spoke"], None, [Entity(0, 1, "LOC")])
    assert "marginals" not in repr(a)


def test_tokenize_splits_words_from_punctuation():
    assert tokenize("The ship's NH-90, at 10:30.") == [
        "The",
        "ship",
        "'",
        "s",
        "NH",
        "-",
        "90",
        ",",
        "at",
        "10",
        ":",
        "30",
        ".",
    ]
    assert tokenize("  ") == []


def test_find_name_is_case_sensitive_and_token_aligned():
    tokens = tokenize("Tiger tiger Tigers Tiger NH-90")
    assert find_name(tokens, "Tiger") == [(0, 1), (3, 4)]
    assert find_name(tokens, "NH-90") == [(4, 7)]
    assert find_name(tokens, "") == [] and find_name(tokens, "  ") == []
    assert find_name(tokens, "Tige") == [] and find_name(tokens, "iger") == []  # token boundaries


def test_find_name_ignores_whitespace_whatever_the_tokenisation():
    """Twitter-GMNER keeps hyphens inside tokens; tokenize() splits them: both are found, and both
    ways of writing the name find both."""
    twitter = ["Happy", "V-E", "Day", "from", "Jay-Z"]
    ours = tokenize("Happy V-E Day from Jay-Z")  # Happy V - E Day from Jay - Z
    for name in ("V-E Day", "V - E Day", "V-EDay"):
        assert find_name(twitter, name) == [(1, 3)]
        assert find_name(ours, name) == [(1, 5)]
    assert find_name(twitter, "Jay - Z") == [(4, 5)] and find_name(ours, "Jay-Z") == [(6, 9)]
    assert find_name(twitter, "V-E") == [(1, 2)] and find_name(twitter, "V") == []  # not inside a token
    assert find_name(["New", "York", "NewYork"], "New York") == [(0, 2), (2, 3)]


def random_spans(rng: random.Random, n: int, types: list[str]) -> list[Entity]:
    """Non-overlapping entities, some adjacent, with lengths 1..3."""
    out, i = [], 0
    while i < n:
        if rng.random() < 0.4:
            length = min(rng.randint(1, 3), n - i)
            out.append(Entity(i, i + length, rng.choice(types)))
            i += length
        else:
            i += 1
    return out


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_spans_tags_round_trip(scheme):
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(0, 12)
        ents = random_spans(rng, n, ["PER", "LOC"])
        tags = spans_to_tags(n, ents, scheme)
        assert len(tags) == n
        assert tags_to_spans(tags) == [(e.start, e.end, e.type) for e in ents]
        assert spans_to_tags(n, [Entity(s, e, t) for s, e, t in tags_to_spans(tags)], scheme) == tags


def test_tag_schemes_by_hand():
    ents = [Entity(0, 1, "PER"), Entity(1, 4, "LOC")]
    assert spans_to_tags(5, ents, "BIO") == ["B-PER", "B-LOC", "I-LOC", "I-LOC", "O"]
    assert spans_to_tags(5, ents, "BIOES") == ["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"]


def test_conlleval_stray_inside_tags():
    assert tags_to_spans(["O", "I-PER"]) == [(1, 2, "PER")]  # a stray I- starts an entity
    assert tags_to_spans(["B-PER", "I-LOC"]) == [(0, 1, "PER"), (1, 2, "LOC")]  # a type change is two
    assert tags_to_spans(["I-PER", "I-PER", "B-PER"]) == [(0, 2, "PER"), (2, 3, "PER")]
    assert tags_to_spans(["E-PER", "S-LOC", "B-LOC", "E-LOC"]) == [
        (0, 1, "PER"),
        (1, 2, "LOC"),
        (2, 4, "LOC"),
    ]


def test_label_names_longest_first_without_overlap():
    tokens = tokenize("Standing NATO Maritime Group 1 joins NATO drills")
    ents, missing = label_names(
        tokens, [("NATO", "other"), ("Standing NATO Maritime Group 1", "other"), ("UN", "other")]
    )
    assert [(e.start, e.end) for e in ents] == [(0, 5), (6, 7)]
    assert missing == ["UN"]
