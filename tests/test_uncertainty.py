"""Tests of uncertainty.py: the uncertainty against brute-force CRF marginals, routing, the threshold,
merging every kind of malformed answer, and the refinement end to end on the demo data with a fake MLLM."""

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import llm
import uncertainty as unc
from crf import CRF, allowed_moves, tag_names
from ccks import read_ccks
from data import Entity, Sample, spans_to_tags
from fake_server import FakeServer, reply
from tests.hostile import BAD_IMAGES, write_bad_image

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"


# ---------------------------------------------------------------- uncertainty vs brute force

def brute_force(crf: CRF, em: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """Every tag sequence of length T and its probability, from the CRF's scores by enumeration."""
    start, trans, end = (x.detach().double().numpy() for x in crf.scores())
    T, K = em.shape
    seqs = list(itertools.product(range(K), repeat=T))
    logp = np.array([start[y[0]] + em[np.arange(T), y].sum() + sum(trans[y[t - 1], y[t]] for t in range(1, T))
                     + end[y[-1]] for y in seqs])
    p = np.exp(logp - logp.max())
    return seqs, p / p.sum()


def oracle_uncertainty(seqs, p, tags, e: Entity, scheme: str) -> float:
    """max(span, type uncertainty), each probability summed over whole tag sequences."""
    pred = spans_to_tags(e.end - e.start, [Entity(0, e.end - e.start, e.type)], scheme)
    prob = lambda cond: sum(pi for y, pi in zip(seqs, p) if cond(y))   # noqa: E731
    p_role = [prob(lambda y: tags[y[e.start + i]][0] == r[0]) for i, r in enumerate(pred)]
    if e.end < len(seqs[0]):
        p_role.append(1 - prob(lambda y: tags[y[e.end]][0] in "IE"))
    p_type = [prob(lambda y: tags[y[t]][2:] == e.type) for t in range(e.start, e.end)]
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
    unc.score([s], tags)
    for e in ents:
        assert e.score == pytest.approx(oracle_uncertainty(seqs, p, tags, e, scheme), abs=1e-9)
    assert 0 < min(e.score for e in ents) and max(e.score for e in ents) < 1
    # missed-entity score: no token is outside an entity here; drop the last entity to free token 3
    s.entities = ents[:2]
    assert unc.missed_entity_score(s, tags) == pytest.approx(sum(pi for y, pi in zip(seqs, p) if y[3] != 0))


def test_mc_dropout_score_is_normalised_span_entropy():
    K = 4
    marg = np.array([[1.0, 0, 0, 0], [0.25] * 4, [0.5, 0.5, 0, 0]])
    s = Sample("x", ["a", "b", "c"], entities=[Entity(0, 1, "PER"), Entity(1, 2, "PER"), Entity(1, 3, "PER")],
               marginals=marg)
    unc.score([s], ["O", "B-PER", "I-PER", "B-LOC"], unc.UncertaintyConfig(method="mc_dropout"))
    assert [e.score for e in s.entities] == pytest.approx([0.0, 1.0, (1 + np.log(2) / np.log(K)) / 2], abs=1e-6)


def test_score_rejects_missing_marginals_and_unknown_method():
    s = Sample("x", ["a"], entities=[Entity(0, 1, "PER")])
    with pytest.raises(ValueError, match="marginals"):
        unc.score([s], ["O", "B-PER", "I-PER"])
    with pytest.raises(ValueError, match="method"):
        unc.score([s], ["O"], unc.UncertaintyConfig(method="entropy"))


# ---------------------------------------------------------------- routing and the threshold

def scored(*rows: list[float]) -> list[Sample]:
    return [Sample(str(i), ["w"] * 8, entities=[Entity(j, j + 1, "PER", score=x) for j, x in enumerate(r)])
            for i, r in enumerate(rows)]


def test_route_sends_exactly_the_entities_above_tau():
    samples = scored([0.1, 0.5, 0.3], [0.3, 0.9], [])
    out = unc.route(samples, 0.3)
    assert [[e.score for e in r] for r in out] == [[0.5], [0.9], []]   # 0.3 itself stays: strictly above
    assert out[0][0] is samples[0].entities[1]
    with pytest.raises(ValueError, match="score"):
        unc.route([Sample("x", ["a"], entities=[Entity(0, 1, "PER")])], 0.5)


def test_choose_threshold_hits_a_target_rate():
    scores = [0.05, 0.9, 0.4, 0.7, 0.2, 0.65, 0.1, 0.3, 0.8, 0.5]
    samples = scored(scores[:4], scores[4:])
    tau, how = unc.choose_threshold(samples, None, unc.UncertaintyConfig(target_rate=0.3))
    above = sorted(x for x in scores if x > tau)
    assert above == [0.7, 0.8, 0.9] and "30.0%" in how and "no labels" in how
    # ties cannot be split: never more than the target
    tau, how = unc.choose_threshold(scored([0.9, 0.5, 0.5, 0.1]), None, unc.UncertaintyConfig(target_rate=0.5))
    assert tau == 0.5 and "25.0%" in how
    assert unc.choose_threshold(samples, None, unc.UncertaintyConfig(tau=0.42))[0] == 0.42


def f1_case() -> tuple[list[Sample], list[Sample]]:
    """Gold PER [0,1), LOC [2,4), ORG [5,6). Predicted: PER [0,1) right (0.1), LOC [2,3) too short (0.8),
    PER [5,6) wrong type (0.6), ORG [1,2) spurious (0.2). Fixing them in score order:
    tp/fp/fn 1/3/2 -> 2/2/1 -> 3/1/0 -> 3/0/0 -> 3/0/0, F1 = 2/7, 4/7, 6/7, 1, 1."""
    toks = list("abcdef")
    gold = Sample("g", toks, entities=[Entity(0, 1, "PER"), Entity(2, 4, "LOC"), Entity(5, 6, "ORG")])
    pred = Sample("g", toks, entities=[Entity(0, 1, "PER", score=0.1), Entity(1, 2, "ORG", score=0.2),
                                       Entity(2, 3, "LOC", score=0.8), Entity(5, 6, "PER", score=0.6)])
    return [pred], [gold]


def test_corrector_f1_curve_and_the_f1_rule():
    pred, gold = f1_case()
    assert unc.wrong_flags(pred, gold) == [False, True, True, True]
    order = [2, 3, 1, 0]
    assert unc.corrector_f1_curve(pred, gold, order) == pytest.approx([2 / 7, 4 / 7, 6 / 7, 1, 1])
    # gain 0.9: goal 2/7 + 0.9 * 5/7 = 6.5/7 -> 3 delegations -> tau between 0.2 and 0.1
    tau, how = unc.choose_threshold(pred, gold, unc.UncertaintyConfig(target_rate=None, target_gain=0.9))
    assert tau == pytest.approx(0.15) and "3/4" in how and "upper bound" in how
    tau, _ = unc.choose_threshold(pred, gold, unc.UncertaintyConfig(target_rate=None, target_gain=0.5))
    assert tau == pytest.approx(0.4)
    with pytest.raises(ValueError, match="gold"):
        unc.choose_threshold(pred, None, unc.UncertaintyConfig(target_rate=None))


# ---------------------------------------------------------------- merging answers

TYPES = ["vehicle", "location", "other"]


def merge_case() -> tuple[Sample, list[Entity]]:
    toks = "Two Leopard 2 tanks near Munster .".split()
    s = Sample("m", toks, entities=[Entity(1, 2, "vehicle", score=0.7, source="tagger"),
                                    Entity(5, 6, "location", score=0.01, source="tagger")])
    return s, [s.entities[0]]


def decision(action="keep", span="Leopard", typ="vehicle", i=1) -> dict:
    return {"reasoning": "...", "decisions": [{"id": i, "action": action, "span": span, "type": typ}]}


def spans(s: Sample) -> list[tuple]:
    return [(e.start, e.end, e.type, e.source) for e in s.entities]


def test_merge_applies_valid_decisions():
    s, u = merge_case()
    munster = (5, 6, "location", "tagger")
    cases = {"keep": (decision(), [(1, 2, "vehicle", "tagger"), munster]),
             "change_span": (decision("change_span", "Leopard 2"), [(1, 3, "vehicle", "mllm"), munster]),
             "change_type": (decision("change_type", typ="other"), [(1, 2, "other", "mllm"), munster]),
             "reject": (decision("reject"), [munster])}
    for outcome, (answer, want) in cases.items():
        out, c = unc.merge(s, u, answer, TYPES)
        assert spans(out) == want and c[outcome] == 1 and c["kept_by_fallback"] == 0, outcome
    assert spans(s) == [(1, 2, "vehicle", "tagger"), munster]      # the input is not mutated


@pytest.mark.parametrize("answer, counter", [
    (decision("change_type", typ="tank"), "invalid_unknown_type"),
    (decision("change_span", "Leopard 3"), "invalid_span_not_in_text"),
    (decision("change_span", ""), "invalid_span_not_in_text"),
    (decision("change_span", "tanks"), "invalid_span_not_overlapping"),
    (decision("change_span", "Leopard 2 tanks near Munster"), "invalid_overlaps_other"),
    (decision("delete"), "invalid_unknown_action"),
    (decision(i=7), "unknown_entity"),
    ({"reasoning": "x", "decisions": ["keep"]}, "unknown_entity"),
    ({"reasoning": "x", "decisions": []}, "missing"),
    ({}, "bad_answer"),
    ("", "bad_answer"),
    ([{"id": 1, "action": "reject"}], "bad_answer"),
    (llm.LLMError("invalid JSON after 2 retries"), "failed_call"),
])
def test_merge_keeps_the_tagger_prediction_on_a_malformed_answer(answer, counter):
    s, u = merge_case()
    out, c = unc.merge(s, u, answer, TYPES)
    assert spans(out) == spans(s)
    assert c[counter] == 1 and c["kept_by_fallback"] == 1
    assert not any(c[k] for k in ("keep", "change_span", "change_type", "reject"))


def test_merge_adds_only_when_allowed_and_valid():
    s, u = merge_case()
    answer = decision() | {"added": [{"span": "tanks", "type": "vehicle"}, {"span": "Munster", "type": "location"},
                                     {"span": "Two", "type": "ship"}, {"span": "Kiel", "type": "location"}]}
    out, c = unc.merge(s, u, answer, TYPES, allow_add=True)
    assert (3, 4, "vehicle", "mllm") in spans(out) and len(out.entities) == 3
    assert c["added"] == 1 and c["invalid_added_overlaps_other"] == 1
    assert c["invalid_added_unknown_type"] == 1 and c["invalid_added_span_not_in_text"] == 1
    out, c = unc.merge(s, u, answer, TYPES)              # allow_add off: "added" is ignored
    assert spans(out) == spans(s) and c["added"] == 0


def test_merge_rejects_before_span_changes_and_takes_the_first_of_duplicate_decisions():
    """The answer lists the span change first; applied in that order, "Leopard 2" would overlap the entity
    "2" (invalid_overlaps_other). Rejections go first, so the span change takes the freed token. The second
    decision for entity 2 is counted and ignored."""
    s = Sample("m", "Two Leopard 2 tanks near Munster .".split(),
               entities=[Entity(1, 2, "vehicle", score=0.7, source="tagger"), Entity(2, 3, "other", score=0.7)])
    answer = {"reasoning": "...", "decisions": [
        {"id": 1, "action": "change_span", "span": "Leopard 2", "type": "vehicle"},
        {"id": 2, "action": "reject", "span": "2", "type": "other"},
        {"id": 2, "action": "keep", "span": "2", "type": "other"}]}
    out, c = unc.merge(s, list(s.entities), answer, TYPES)
    assert spans(out) == [(1, 3, "vehicle", "mllm")]
    assert c["change_span"] == c["reject"] == c["duplicate_decision"] == 1 and c["keep"] == c["kept_by_fallback"] == 0


# ---------------------------------------------------------------- end to end with a fake MLLM

def demo_predictions(tags: list[str]) -> tuple[list[Sample], list[Sample], object]:
    """Hand-made tagger output on the demo data: gold entities with one planted error in every sample
    i % 4 in (0, 1, 2) (wrong type / too short or spurious / spurious), marginals 0.98 on the predicted
    tags, 0.55 on the planted error's tags (rest on O). Sample 2 is the one the fake MLLM breaks."""
    data = read_ccks(DEMO)
    preds = []
    for i, g in enumerate(data.samples):
        ents = [Entity(e.start, e.end, e.type, source="tagger") for e in g.entities]
        bad = None
        free = [t for t in range(len(g.tokens))
                if g.tokens[t].isalpha() and not any(e.start <= t < e.end for e in ents)]
        if i % 4 == 0 and ents:
            bad = ents[0] = Entity(ents[0].start, ents[0].end, data.types[(data.types.index(ents[0].type) + 1) % 6],
                                   source="tagger")
        elif i % 4 == 1 and any(e.end - e.start > 1 for e in ents):
            k = next(k for k, e in enumerate(ents) if e.end - e.start > 1)
            bad = ents[k] = Entity(ents[k].start, ents[k].end - 1, ents[k].type, source="tagger")
        elif i % 4 in (1, 2) and free:
            bad = Entity(free[0], free[0] + 1, "other", source="tagger")
            ents = sorted(ents + [bad], key=lambda e: e.start)
        marg = np.zeros((len(g.tokens), len(tags)))
        marg[:, 0] = 1.0
        for e in ents:
            conf = 0.55 if e is bad else 0.98
            for t, tag in enumerate(spans_to_tags(e.end - e.start, [Entity(0, e.end - e.start, e.type)], "BIOES")):
                marg[e.start + t] = 0.0
                marg[e.start + t, tags.index(tag)], marg[e.start + t, 0] = conf, 1 - conf
        preds.append(Sample(g.id, g.tokens, g.image, ents, marginals=marg))
    return preds, data.samples, data


def oracle_mllm(gold: list[Sample], broken_text: str):
    """A fake MLLM that knows the gold labels: it answers every delegated entity correctly, except
    for the sample whose text is `broken_text`, where it answers with invalid JSON."""
    by_text = {g.text: g for g in gold}

    def handler(body: dict) -> dict:
        prompt = next(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")   # the first user turn
        text = re.search(r"^Text: (.*)$", prompt, flags=re.M).group(1)
        if text == broken_text:
            return reply("this is not JSON {")
        g = by_text[text]
        decisions = []
        for i, name, typ in re.findall(r'^\[(\d+)\] "(.*)" \((\w+)\)$', prompt, flags=re.M):
            n = name.split()
            hits = [e for e in g.entities if any(g.tokens[k:k + len(n)] == n for k in range(e.start, e.end))]
            d = {"id": int(i), "action": "reject", "span": name, "type": typ}
            if hits and g.name(hits[0]) != name:
                d.update(action="change_span", span=g.name(hits[0]), type=hits[0].type)
            elif hits and hits[0].type != typ:
                d.update(action="change_type", type=hits[0].type)
            elif hits:
                d["action"] = "keep"
            decisions.append(d)
        return reply({"reasoning": "checked against the image", "decisions": decisions})
    return handler


def test_refine_end_to_end_on_the_demo_data():
    tags = tag_names(read_ccks(DEMO).types, "BIOES")
    preds, gold, data = demo_predictions(tags)
    unc.score(preds, tags)
    preds[4].image = None                                   # a sample without an image: a text-only call
    planted = sum(1 for p, g in zip(preds, gold)
                  if spans(p) != [(e.start, e.end, e.type, "tagger") for e in g.entities])
    with FakeServer(oracle_mllm(gold, gold[2].text)) as srv:
        client = llm.Client(llm.ClientConfig(base_url=srv.url, model="fake", backoff_base=0.0, max_retries=1,
                                             workers=2))
        out, counts = unc.refine(preds, data, client, unc.UncertaintyConfig(tau=0.3))
        bodies = list(srv.requests)
    assert counts["delegated"] == planted and counts["calls"] == planted >= 20
    assert counts["authors_calls"] == sum(1 for p in preds if p.entities) > counts["calls"]
    assert counts["failed_call"] == 1 and counts["kept_by_fallback"] == 1
    assert counts["change_type"] + counts["change_span"] + counts["reject"] == planted - 1
    assert counts["text_only_calls"] == 1
    assert [b for b in bodies if "data:image/jpeg;base64," not in json.dumps(b["messages"])] == \
        [b for b in bodies if "no image for this text" in json.dumps(b["messages"])] != []
    for i, (p, o, g) in enumerate(zip(preds, out, gold)):
        got = [(e.start, e.end, e.type) for e in o.entities]
        if i == 2:          # the broken answer: the tagger's prediction stands
            assert spans(o) == spans(p)
            continue
        assert got == [(e.start, e.end, e.type) for e in g.entities], g.text
        # confident entities are untouched and stay the tagger's; corrected ones are the MLLM's
        assert all(e.source == ("tagger" if (e.start, e.end, e.type) in {(q.start, q.end, q.type) for q in p.entities}
                                else "mllm") for e in o.entities)


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_unreadable_image_makes_a_counted_text_only_call(kind, tmp_path):
    tags = tag_names(read_ccks(DEMO).types, "BIOES")
    preds, gold, data = demo_predictions(tags)
    unc.score(preds, tags)
    routed = [p for p in preds if p.entities][:1]
    routed[0].image = str(tmp_path / "bad.jpg")
    write_bad_image(routed[0].image, kind)
    with FakeServer(oracle_mllm(gold, None)) as srv:
        client = llm.Client(llm.ClientConfig(base_url=srv.url, model="fake", max_retries=0))
        out, counts = unc.refine(routed, data, client, unc.UncertaintyConfig(tau=-1.0))
    assert counts["image_errors"] == counts["text_only_calls"] == counts["calls"] == len(srv.requests) == 1
    assert "no image for this text" in json.dumps(srv.requests[0]["messages"])
def test_respan_finds_names_whatever_the_tokenisation():
    """Twitter tokens keep hyphens ("V-E"); the MLLM may copy the name with or without the spaces."""
    from uncertainty import _find_span
    tokens = ["Happy", "V-E", "Day", "from", "Jay", "-", "Z"]
    free = np.zeros(len(tokens), dtype=bool)
    assert _find_span(tokens, "V - E Day", Entity(1, 2, "OTHER"), free) == ((1, 3), "")
    assert _find_span(tokens, "Jay-Z", None, free) == ((4, 7), "")
    assert _find_span(tokens, "Jay-Zed", None, free) == (None, "span_not_in_text")


def test_refine_routes_a_sample_by_its_missed_entity_score_only_with_allow_add():
    """Both samples hold one sure entity (score 0.01 < tau), so nothing is delegated. On "Leopard" the
    tagger gives P(O) = 0.3 in sample "hi" (missed-entity score 0.7 > missed_tau 0.5) and 0.9 in "lo"
    (0.1): with allow_add and the tags, "hi" alone is sent, and the addition the MLLM names is merged;
    without allow_add (or without tags) no call is made."""
    data = read_ccks(DEMO)
    tags = tag_names(data.types, "BIOES")
    toks = "Two Leopard 2 tanks near Munster .".split()
    samples = []
    for sid, p_o in (("hi", 0.3), ("lo", 0.9)):
        marg = np.zeros((len(toks), len(tags)))
        marg[:, tags.index("O")] = 1.0
        marg[1, tags.index("O")], marg[1, tags.index("B-vehicle")] = p_o, 1.0 - p_o
        marg[5, tags.index("O")], marg[5, tags.index("S-location")] = 0.0, 1.0
        samples.append(Sample(sid, toks, None, [Entity(5, 6, "location", score=0.01, source="tagger")], marginals=marg))
    assert [unc.missed_entity_score(s, tags) for s in samples] == pytest.approx([0.7, 0.1])
    answer = {"reasoning": "a tank is named", "decisions": [], "added": [{"span": "Leopard 2", "type": "vehicle"}]}
    on = unc.UncertaintyConfig(tau=0.5, allow_add=True, missed_tau=0.5)
    for config, tags_given, calls in [(on, tags, 1), (unc.UncertaintyConfig(tau=0.5, missed_tau=0.5), tags, 0),
                                      (on, None, 0)]:
        with FakeServer(lambda body: reply(answer)) as srv:
            client = llm.Client(llm.ClientConfig(base_url=srv.url, model="fake", max_retries=0))
            out, counts = unc.refine(samples, data, client, config, tags=tags_given)
        assert counts["calls"] == len(srv.requests) == counts.get("missed_routed", 0) == calls
        assert counts["delegated"] == 0
        if calls:
            assert "Text: Two Leopard 2 tanks near Munster ." in json.dumps(srv.requests[0]["messages"])
            assert spans(out[0]) == [(1, 3, "vehicle", "mllm"), (5, 6, "location", "tagger")] and counts["added"] == 1
        assert spans(out[-1]) == spans(samples[-1]) == [(5, 6, "location", "tagger")]
