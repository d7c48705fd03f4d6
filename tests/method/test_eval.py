"""eval.py against hand-worked counts, one test per scoring rule; its command line, its table and the report's
per-sample mistakes are tested in tests/app/."""

import itertools
import random
from pathlib import Path

import pytest

from data import Box, DataError, Entity, Sample, tokenize
from eval import evaluate, max_matching, region_ok
from formats.ccks import read_ccks
from tagger import span_f1

ROOT = Path(__file__).resolve().parents[2]


DEMO = ROOT / "examples" / "demo"
A, B = Box(0, 0, 10, 10), Box(100, 100, 120, 120)


def S(sid: str, entities: list[Entity], n: int = 10) -> Sample:
    return Sample(sid, [f"w{i}" for i in range(n)], None, entities)


def E(start: int, end: int, typ: str, *boxes: Box) -> Entity:
    return Entity(start, end, typ, list(boxes))


def counts(result: dict, task: str) -> tuple[int, int, int]:
    m = result[task]
    return m["tp"], m["fp"], m["fn"]


def test_hand_worked_example():
    """Three gold samples, five predictions; the expected counts, item by item:

    sample a, gold g1 (0,2) PER [A], g2 (3,4) LOC no box, g3 (5,7) ORG [(20,20,40,40)]
      p1 (0,2) PER [A]                 all right              MNER TP  EEG TP  GMNER TP
      p2 (3,4) ORG no box              type wrong, region ok  MNER FP  EEG TP  GMNER FP   (g2: MNER, GMNER FN)
      p3 (5,7) ORG [(30,30,50,50)]     IoU 100/700 = 0.14     MNER TP  EEG FP  GMNER FP   (g3: EEG, GMNER FN)
    sample b, gold g4 (0,1) PER no box
      p4 (0,1) PER [(0,0,5,5)]         a box for an invisible entity: MNER TP, EEG FP, GMNER FP (g4: EEG,
      GMNER FN)
    sample c, no gold entity
      p5 (2,3) LOC no box              FP everywhere
    MNER  TP 3 FP 2 FN 1: P 3/5, R 3/4, F1 2/3
    EEG   TP 2 FP 3 FN 2: P 2/5, R 2/4, F1 4/9
    GMNER TP 1 FP 4 FN 3: P 1/5, R 1/4, F1 2/9
    """
    gold = [
        S("a", [E(0, 2, "PER", A), E(3, 4, "LOC"), E(5, 7, "ORG", Box(20, 20, 40, 40))]),
        S("b", [E(0, 1, "PER")]),
        S("c", []),
    ]
    pred = [
        S("a", [E(0, 2, "PER", A), E(3, 4, "ORG"), E(5, 7, "ORG", Box(30, 30, 50, 50))]),
        S("b", [E(0, 1, "PER", Box(0, 0, 5, 5))]),
        S("c", [E(2, 3, "LOC")]),
    ]
    r = evaluate(gold, pred)
    assert counts(r, "mner") == (3, 2, 1)
    assert counts(r, "eeg") == (2, 3, 2)
    assert counts(r, "gmner") == (1, 4, 3)
    for task, (p, rec, f1) in {
        "mner": (3 / 5, 3 / 4, 2 / 3),
        "eeg": (2 / 5, 2 / 4, 4 / 9),
        "gmner": (1 / 5, 1 / 4, 2 / 9),
    }.items():
        assert r[task]["p"] == pytest.approx(p) and r[task]["r"] == pytest.approx(rec)
        assert r[task]["f1"] == pytest.approx(f1)
    # per type: MNER and GMNER by the shared type; EEG's TP/FN under the gold type, FP under the
    # predicted type
    per = {t: {k: (v["tp"], v["fp"], v["fn"]) for k, v in r[t]["per_type"].items()} for t in r}
    assert per["mner"] == {"LOC": (0, 1, 1), "ORG": (1, 1, 0), "PER": (2, 0, 0)}
    assert per["eeg"] == {"LOC": (1, 1, 0), "ORG": (0, 1, 1), "PER": (1, 1, 1)}
    assert per["gmner"] == {"LOC": (0, 1, 1), "ORG": (0, 2, 1), "PER": (1, 1, 1)}
    assert span_f1(gold, pred) == pytest.approx(2 / 3)  # the tagger's dev score is the MNER F1 of eval


@pytest.mark.parametrize("match", ["span", "name"])
def test_perfect_prediction_scores_one_everywhere(match):
    data = read_ccks(DEMO).samples
    r = evaluate(data, data, match)
    for task in ("gmner", "mner", "eeg"):
        assert r[task]["fp"] == r[task]["fn"] == 0 and r[task]["tp"] > 0
        assert r[task]["p"] == r[task]["r"] == r[task]["f1"] == 1.0
        assert set(r[task]["per_type"]) == {"vehicle", "aircraft", "vessel", "weapon", "location", "other"}
        assert all(v["f1"] == 1.0 for v in r[task]["per_type"].values())


def eeg_tp(gold_boxes: list[Box], pred_boxes: list[Box]) -> int:
    r = evaluate([S("a", [E(0, 1, "X", *gold_boxes)])], [S("a", [E(0, 1, "X", *pred_boxes)])])
    assert r["eeg"]["tp"] + r["eeg"]["fn"] == 1
    return r["eeg"]["tp"]


def test_iou_exactly_half_counts_and_just_under_does_not():
    assert Box(0, 0, 10, 5).iou(A) == 0.5  # 50 / 100, exact in floating point
    assert eeg_tp([A], [Box(0, 0, 10, 5)]) == 1
    assert eeg_tp([A], [Box(0, 0, 10, 4.99)]) == 0  # 49.9 / 100


def test_ungroundable_against_grounded():
    assert eeg_tp([], []) == 1  # both say "not visible"
    assert eeg_tp([], [A]) == 0  # a box for an invisible entity
    assert eeg_tp([A], []) == 0  # no box for a visible one
    assert region_ok([], []) and not region_ok([], [A]) and not region_ok([A], [])


def test_any_of_several_gold_boxes_counts():
    assert eeg_tp([A, B], [Box(101, 101, 120, 120)]) == 1
    assert eeg_tp([A, B], [Box(50, 50, 60, 60)]) == 0


def test_prediction_with_several_boxes_is_scored_by_its_best():
    assert eeg_tp([B], [Box(300, 300, 310, 310), A, Box(100, 100, 119, 120)]) == 1
    assert eeg_tp([B], [Box(300, 300, 310, 310), A]) == 0


def test_duplicates_in_the_prediction_are_false_positives():
    gold = [S("a", [E(0, 2, "PER", A)])]
    pred = [S("a", [E(0, 2, "PER", A), E(0, 2, "PER", A)])]
    r = evaluate(gold, pred)
    for task in ("gmner", "mner", "eeg"):
        assert counts(r, task) == (1, 1, 0)


def test_false_positives_on_a_sample_without_gold_entities_count():
    gold = [S("a", [E(0, 1, "PER")]), S("b", [])]
    r_clean = evaluate(gold, [S("a", [E(0, 1, "PER")]), S("b", [])])
    r_noisy = evaluate(gold, [S("a", [E(0, 1, "PER")]), S("b", [E(3, 5, "LOC")])])
    assert r_clean["gmner"]["p"] == 1.0
    for task in ("gmner", "mner", "eeg"):
        assert counts(r_noisy, task) == (1, 1, 0) and r_noisy[task]["p"] == 0.5


def test_wrong_type_with_right_span_and_box_counts_for_eeg_only():
    r = evaluate([S("a", [E(0, 2, "PER", A)])], [S("a", [E(0, 2, "ORG", A)])])
    assert counts(r, "eeg") == (1, 0, 0)
    assert counts(r, "mner") == (0, 1, 1)
    assert counts(r, "gmner") == (0, 1, 1)


def test_wrong_span_is_wrong_everywhere():
    r = evaluate([S("a", [E(0, 2, "PER", A)])], [S("a", [E(0, 3, "PER", A)])])
    for task in ("gmner", "mner", "eeg"):
        assert counts(r, task) == (0, 1, 1)


def test_missing_prediction_is_empty_and_unknown_id_is_an_error():
    gold = [S("a", [E(0, 1, "PER")]), S("b", [E(0, 1, "LOC"), E(2, 3, "ORG")])]
    r = evaluate(gold, [S("a", [E(0, 1, "PER")])])
    assert counts(r, "mner") == (1, 0, 2)
    with pytest.raises(DataError, match="'zz'"):
        evaluate(gold, [S("a", []), S("zz", [])])
    with pytest.raises(DataError, match="tokens differ"):
        evaluate(gold, [Sample("a", ["other", "tokens"], None, [E(0, 1, "PER")])])


def named(sid: str, text: str, ents: list[tuple[str, str, list[Box]]]) -> Sample:
    """A sample whose entities are every occurrence of each name (the CCKS rule)."""
    tokens = tokenize(text)
    out = []
    for name, typ, boxes in ents:
        n = len(tokenize(name))
        out += [
            Entity(i, i + n, typ, list(boxes))
            for i in range(len(tokens) - n + 1)
            if tokens[i : i + n] == tokenize(name)
        ]
    return Sample(sid, tokens, None, out)


def test_name_mode_counts_a_repeated_name_once():
    gold = [
        named(
            "a",
            "The Leopard 2 meets another Leopard 2 near Munster.",
            [("Leopard 2", "vehicle", [A]), ("Munster", "location", [])],
        )
    ]
    once = [
        Sample(
            "a",
            tokenize("Leopard 2 in Munster"),
            None,  # other tokens: identity is the name
            [Entity(0, 2, "vehicle", [A]), Entity(3, 4, "location")],
        )
    ]
    r = evaluate(gold, once, match="name")
    for task in ("gmner", "mner", "eeg"):
        assert counts(r, task) == (2, 0, 0)
    # and a prediction naming it twice collapses too (set semantics), with the union of its boxes
    twice = [named("a", gold[0].text, [("Leopard 2", "vehicle", [])])]
    twice[0].entities[1].boxes = [A]
    r = evaluate(gold, twice, match="name")
    assert counts(r, "gmner") == (1, 0, 1) and counts(r, "mner") == (1, 0, 1)
    # span mode on the same data: the second occurrence is a separate gold entity
    assert counts(evaluate(gold, [named("a", gold[0].text, [("Leopard 2", "vehicle", [A])])]), "mner") == (
        2,
        0,
        1,
    )


def test_name_mode_uses_a_maximum_matching():
    """Gold: Tiger/aircraft [C] and Tiger/other [A]. EEG ignores types, so p1 (Tiger/aircraft, boxes A and C)
    fits both gold items and p2 (Tiger/other, box C) fits only the first. Matching p1 first to the first
    (what a greedy scorer does) leaves p2 a FP; the best matching pairs p1-second, p2-first: 2 TP."""
    C = Box(50, 50, 60, 60)
    gold = [named("a", "Tiger", [("Tiger", "aircraft", [C]), ("Tiger", "other", [A])])]
    pred = [named("a", "Tiger", [("Tiger", "aircraft", [A, C]), ("Tiger", "other", [C])])]
    r = evaluate(gold, pred, match="name")
    assert counts(r, "eeg") == (2, 0, 0)
    assert counts(r, "mner") == (2, 0, 0)
    assert counts(r, "gmner") == (1, 1, 1)  # only p1 is right with its type


def test_max_matching_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n_gold, n_pred = rng.randint(0, 4), rng.randint(0, 4)
        cands = [[i for i in range(n_gold) if rng.random() < 0.4] for _ in range(n_pred)]
        owner = max_matching(cands, n_gold)
        assert all(j < 0 or i in cands[j] for i, j in enumerate(owner))
        assert len({j for j in owner if j >= 0}) == sum(j >= 0 for j in owner)  # one gold per prediction
        best = 0  # try every assignment
        for assign in itertools.product(*[c + [None] for c in cands]):
            used = [i for i in assign if i is not None]
            if len(used) == len(set(used)):
                best = max(best, len(used))
        assert sum(j >= 0 for j in owner) == best


TWITTER = ROOT.parent / "shared" / "data" / "twitter-gmner"


def occurrences(tokens: list[str], name: str) -> list[tuple[int, int]]:
    """Brute force: every token span whose concatenation is the name without whitespace."""
    target = "".join(name.split())
    return [
        (i, j)
        for i in range(len(tokens))
        for j in range(i + 1, len(tokens) + 1)
        if "".join(tokens[i:j]) == target
    ]


@pytest.mark.skipif(not (TWITTER / "dev.txt").is_file(), reason="shared Twitter-GMNER data absent")
@pytest.mark.parametrize("split", ["train", "dev"])
def test_twitter_gold_as_ccks_predictions_scores_one(tmp_path, split):
    """Every gold entity of Twitter-GMNER written in the CCKS layout (names whose tokens keep their
    hyphens: "Jay-Z", "F-15C") and read back against the Twitter gold: every record is placed, and
    span mode scores 1.000 on every tweet the layout can express. The layout cannot express a name
    tagged at one occurrence but not at another ("@ CERN : ... CERN researchers"), nor one name with
    two types in one tweet: those tweets are counted (brute force) and left out of the 1.000."""
    from data import find_name
    from formats import read_dataset
    from formats.ccks import read_ccks_predictions, write_ccks

    gold = read_dataset(TWITTER / f"{split}.txt")
    write_ccks(gold.samples, tmp_path / "pred.json")
    pred, unplaced = read_ccks_predictions(tmp_path / "pred.json", gold.samples, gold.types)
    assert unplaced == []
    expressible = []
    for _i, s in enumerate(gold.samples):
        tagged: dict[str, set] = {}
        for e in s.entities:
            tagged.setdefault("".join(s.name(e).split()), set()).add((e.start, e.end, e.type))
        ok = True
        for name, spans in tagged.items():
            found = occurrences(s.tokens, name)
            assert find_name(s.tokens, name) == found
            ok &= len({t for _, _, t in spans}) == 1 and {(a, b) for a, b, _ in spans} == set(found)
        expressible.append(ok)
    assert sum(expressible) > 0.98 * len(gold.samples)  # train: 6,909 of 7,000
    keep = [i for i, ok in enumerate(expressible) if ok]
    result = evaluate([gold.samples[i] for i in keep], [pred[i] for i in keep])
    for task in ("mner", "eeg", "gmner"):
        assert result[task]["f1"] == 1.0, (task, counts(result, task))
