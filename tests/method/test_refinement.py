"""Tests of refinement.py: merging every kind of malformed answer, respanning a name whatever the
tokenisation, and the refinement stage end to end on the demo data with a fake MLLM (the uncertainty it
routes by is tested in test_uncertainty.py)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hostile import BAD_IMAGES, write_bad_image

import llm
import refinement as ref
import uncertainty as unc
from app.counts import refinement_counts
from crf import tag_names
from data import Entity, Sample, spans_to_tags
from formats.ccks import read_ccks
from servers.fake_mllm import FakeServer, reply

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


# ---------------------------------------------------------------- merging answers

TYPES = ["vehicle", "location", "other"]


def merge_case() -> Sample:
    toks = "Two Leopard 2 tanks near Munster .".split()
    s = Sample(
        "m",
        toks,
        entities=[
            Entity(1, 2, "vehicle", uncertainty=0.7, source="tagger", delegated=True),
            Entity(5, 6, "location", uncertainty=0.01, source="tagger", delegated=False),
        ],
    )
    return s


def merged(s: Sample, answer: object, allow_add: bool = False) -> tuple[Sample, dict, ref.RefinementTrace]:
    """merge's sample and trace, and the counts of that one trace (app/counts.py)."""
    out, trace = ref.merge(s, answer, TYPES, allow_add)
    return out, refinement_counts({s.id: trace}), trace


def decision(action="keep", span="Leopard", typ="vehicle", i=1) -> dict:
    return {"reasoning": "...", "decisions": [{"id": i, "action": action, "span": span, "type": typ}]}


def spans(s: Sample) -> list[tuple]:
    return [(e.start, e.end, e.type, e.source) for e in s.entities]


def test_merge_applies_valid_decisions():
    s = merge_case()
    munster = (5, 6, "location", "tagger")
    cases = {
        "keep": (decision(), [(1, 2, "vehicle", "tagger"), munster]),
        "change_span": (decision("change_span", "Leopard 2"), [(1, 3, "vehicle", "mllm"), munster]),
        "change_type": (decision("change_type", typ="other"), [(1, 2, "other", "mllm"), munster]),
        "reject": (decision("reject"), [munster]),
    }
    for outcome, (answer, want) in cases.items():
        out, c, _ = merged(s, answer)
        assert spans(out) == want and c[outcome] == 1 and c["kept_by_fallback"] == 0, outcome
    assert spans(s) == [(1, 2, "vehicle", "tagger"), munster]  # the input is not mutated


@pytest.mark.parametrize(
    "answer, counter",
    [
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
    ],
)
def test_merge_keeps_the_tagger_prediction_on_a_malformed_answer(answer, counter):
    s = merge_case()
    out, c, _ = merged(s, answer)
    assert spans(out) == spans(s)
    assert c[counter] == 1 and c["kept_by_fallback"] == 1
    assert not any(c[k] for k in ("keep", "change_span", "change_type", "reject"))


def test_merge_traces_each_decision_in_the_order_asked():
    """The reordered case below (rejection applied first) traced in the order the entities were asked:
    entity 1 re-spanned to "Leopard 2", entity 2 rejected; then a failed call keeps both and says why."""
    s = Sample(
        "m",
        "Two Leopard 2 tanks near Munster .".split(),
        entities=[Entity(1, 2, "vehicle", delegated=True), Entity(2, 3, "other", delegated=True)],
    )
    answer = {
        "reasoning": "<b>2</b> is part of the name",
        "decisions": [
            {"id": 1, "action": "change_span", "span": "Leopard 2", "type": "vehicle"},
            {"id": 2, "action": "reject", "span": "2", "type": "other"},
        ],
    }
    _, _, trace = merged(s, answer)
    got = [(d.entity.span, d.outcome, d.result.span if d.result else None) for d in trace.decisions]
    assert got == [((1, 2), "change_span", (1, 3)), ((2, 3), "reject", None)]
    assert (trace.reasoning, trace.failed, trace.added) == ("<b>2</b> is part of the name", "", [])
    _, _, trace = merged(s, llm.LLMError("HTTP 500 after 4 retries"))
    assert [d.outcome for d in trace.decisions] == ["missing", "missing"]
    assert trace.failed == "HTTP 500 after 4 retries" and trace.reasoning == ""


def test_merge_adds_only_when_allowed_and_valid():
    s = merge_case()
    answer = decision() | {
        "added": [
            {"span": "tanks", "type": "vehicle"},
            {"span": "Munster", "type": "location"},
            {"span": "Two", "type": "ship"},
            {"span": "Kiel", "type": "location"},
        ]
    }
    out, c, _ = merged(s, answer, allow_add=True)
    assert (3, 4, "vehicle", "mllm") in spans(out) and len(out.entities) == 3
    assert c["added"] == 1 and c["invalid_added_overlaps_other"] == 1
    assert c["invalid_added_unknown_type"] == 1 and c["invalid_added_span_not_in_text"] == 1
    out, c, _ = merged(s, answer)  # allow_add off: "added" is ignored
    assert spans(out) == spans(s) and c["added"] == 0


def test_a_span_change_takes_a_rejected_entitys_token_and_the_first_of_duplicate_decisions_counts():
    """The answer lists the span change first, the rejection of the entity "2" after it: the rejected
    entity holds no token whatever the order, so "Leopard 2" is placed on it. The second decision for
    entity 2 is counted and ignored."""
    s = Sample(
        "m",
        "Two Leopard 2 tanks near Munster .".split(),
        entities=[
            Entity(1, 2, "vehicle", source="tagger", delegated=True),
            Entity(2, 3, "other", delegated=True),
        ],
    )
    answer = {
        "reasoning": "...",
        "decisions": [
            {"id": 1, "action": "change_span", "span": "Leopard 2", "type": "vehicle"},
            {"id": 2, "action": "reject", "span": "2", "type": "other"},
            {"id": 2, "action": "keep", "span": "2", "type": "other"},
        ],
    }
    out, c, _ = merged(s, answer)
    assert spans(out) == [(1, 3, "vehicle", "mllm")]
    assert (
        c["change_span"] == c["reject"] == c["duplicate_decision"] == 1
        and c["keep"] == c["kept_by_fallback"] == 0
    )


def test_overlaps_are_settled_first_come_first_served_whatever_the_order_of_the_decisions():
    """A hand-worked case of resolve's rule on the tokens a..l. Every entity not rejected holds its tagger
    span; new spans are placed in the order given, each only on free tokens:
      [0,1) a   sure
      [1,2) b   -> "a b": token a is held by the sure entity: refused, b stays (invalid_overlaps_other)
      [2,3) c   -> "c d e": d and e are free: placed
      [5,6) f   -> "e f": e is held by the span placed just before: refused, f stays
      [6,7) g   rejected: g is free
      [7,8) h   -> "g h": placed on the rejected entity's token
      [9,11) j k -> "i j": placed; k, which it gives up, is free again
      added "d": held by "c d e", dropped (invalid_added_overlaps_other); added "k": placed.
    The decisions apply on their own, so listing them in another order changes nothing."""
    s = Sample("o", "a b c d e f g h i j k l".split(), entities=[Entity(0, 1, "location", delegated=False)])
    s.entities += [
        Entity(a, b, "vehicle", delegated=True) for a, b in [(1, 2), (2, 3), (5, 6), (6, 7), (7, 8)]
    ]
    s.entities.append(Entity(9, 11, "vehicle", delegated=True))
    said = [(1, "change_span", "a b"), (2, "change_span", "c d e"), (3, "change_span", "e f")]
    said += [(4, "reject", "g"), (5, "change_span", "g h"), (6, "change_span", "i j")]
    given = [{"id": i, "action": a, "span": span, "type": "vehicle"} for i, a, span in said]
    added = [{"span": "d", "type": "other"}, {"span": "k", "type": "other"}]
    fell_back, moved = ref.Outcome.OVERLAPS_OTHER, ref.Outcome.CHANGE_SPAN
    counted = (
        "change_span",
        "invalid_overlaps_other",
        "kept_by_fallback",
        "added",
        "invalid_added_overlaps_other",
    )
    for order in (given, given[::-1], given[3:] + given[:3]):
        out, c, trace = merged(s, {"reasoning": "", "decisions": order, "added": added}, allow_add=True)
        assert spans(out) == [
            (0, 1, "location", "gold"),
            (1, 2, "vehicle", "gold"),
            (2, 5, "vehicle", "mllm"),
            (5, 6, "vehicle", "gold"),
            (6, 8, "vehicle", "mllm"),
            (8, 10, "vehicle", "mllm"),
            (10, 11, "other", "mllm"),
        ]
        assert [d.outcome for d in trace.decisions] == [
            fell_back,
            moved,
            fell_back,
            ref.Outcome.REJECT,
            moved,
            moved,
        ]
        assert trace.ignored == [ref.Ignored.ADDED_OVERLAPS_OTHER]
        assert [c[k] for k in counted] == [3, 2, 2, 1, 1]


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
        free = [
            t
            for t in range(len(g.tokens))
            if g.tokens[t].isalpha() and not any(e.start <= t < e.end for e in ents)
        ]
        if i % 4 == 0 and ents:
            bad = ents[0] = Entity(
                ents[0].start,
                ents[0].end,
                data.types[(data.types.index(ents[0].type) + 1) % 6],
                source="tagger",
            )
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
            for t, tag in enumerate(
                spans_to_tags(e.end - e.start, [Entity(0, e.end - e.start, e.type)], "BIOES")
            ):
                marg[e.start + t] = 0.0
                marg[e.start + t, tags.index(tag)], marg[e.start + t, 0] = conf, 1 - conf
        preds.append(Sample(g.id, g.tokens, g.image, ents, marginals=marg))
    return preds, data.samples, data


def oracle_mllm(gold: list[Sample], broken_text: str):
    """A fake MLLM that knows the gold labels: it answers every delegated entity correctly, except
    for the sample whose text is `broken_text`, where it answers with invalid JSON."""
    by_text = {g.text: g for g in gold}

    def handler(body: dict) -> dict:
        prompt = next(
            p["text"] for p in body["messages"][1]["content"] if p["type"] == "text"
        )  # the first user turn
        text = re.search(r"^Text: (.*)$", prompt, flags=re.M).group(1)
        if text == broken_text:
            return reply("this is not JSON {")
        g = by_text[text]
        decisions = []
        for i, name, typ in re.findall(r'^\[(\d+)\] "(.*)" \((\w+)\)$', prompt, flags=re.M):
            n = name.split()
            hits = [
                e for e in g.entities if any(g.tokens[k : k + len(n)] == n for k in range(e.start, e.end))
            ]
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
    unc.estimate(preds, tags)
    preds[4].image = None  # a sample without an image: a text-only call
    planted = sum(
        1 for p, g in zip(preds, gold) if spans(p) != [(e.start, e.end, e.type, "tagger") for e in g.entities]
    )
    with FakeServer(oracle_mllm(gold, gold[2].text)) as srv:
        client = llm.Client(
            llm.ClientConfig(base_url=srv.url, model="fake", backoff_base=0.0, max_retries=1, workers=2)
        )
        unc.route(preds, 0.3)
        out, traces = ref.refine(preds, data, client)
        bodies = list(srv.requests)
    counts = refinement_counts(traces)
    assert counts["delegated"] == planted and counts["calls"] == planted >= 20
    # one trace per sample, one decision per delegated entity; the broken answer says why it failed
    asked = {sid: t for sid, t in traces.items() if t.call is not ref.Call.NOT_ASKED}
    assert list(traces) == [p.id for p in preds] and len(asked) == counts["calls"]
    assert sum(len(t.decisions) for t in traces.values()) == planted
    assert [sid for sid, t in traces.items() if t.failed] == [preds[2].id]
    assert traces[preds[2].id].call is ref.Call.FAILED_CALL
    assert {t.reasoning for sid, t in asked.items() if sid != preds[2].id} == {"checked against the image"}
    assert counts["authors_calls"] == sum(1 for p in preds if p.entities) > counts["calls"]
    assert counts["failed_call"] == 1 and counts["bad_answer"] == 0 and counts["kept_by_fallback"] == 1
    assert counts["change_type"] + counts["change_span"] + counts["reject"] == planted - 1
    assert counts["text_only_calls"] == 1
    assert (
        [b for b in bodies if "data:image/jpeg;base64," not in json.dumps(b["messages"])]
        == [b for b in bodies if "no image for this text" in json.dumps(b["messages"])]
        != []
    )
    for i, (p, o, g) in enumerate(zip(preds, out, gold)):
        got = [(e.start, e.end, e.type) for e in o.entities]
        if i == 2:  # the broken answer: the tagger's prediction stands
            assert spans(o) == spans(p)
            continue
        assert got == [(e.start, e.end, e.type) for e in g.entities], g.text
        # confident entities are untouched and stay the tagger's; corrected ones are the MLLM's
        assert all(
            e.source
            == (
                "tagger"
                if (e.start, e.end, e.type) in {(q.start, q.end, q.type) for q in p.entities}
                else "mllm"
            )
            for e in o.entities
        )


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_unreadable_image_makes_a_counted_text_only_call(kind, tmp_path):
    tags = tag_names(read_ccks(DEMO).types, "BIOES")
    preds, gold, data = demo_predictions(tags)
    unc.estimate(preds, tags)
    routed = [p for p in preds if p.entities][:1]
    routed[0].image = str(tmp_path / "bad.jpg")
    write_bad_image(routed[0].image, kind)
    with FakeServer(oracle_mllm(gold, None)) as srv:
        client = llm.Client(llm.ClientConfig(base_url=srv.url, model="fake", max_retries=0))
        unc.route(routed, -1.0)
        out, traces = ref.refine(routed, data, client)
    counts = refinement_counts(traces)
    assert traces[routed[0].id].image_error and traces[routed[0].id].text_only
    assert counts["image_errors"] == counts["text_only_calls"] == counts["calls"] == len(srv.requests) == 1
    assert "no image for this text" in json.dumps(srv.requests[0]["messages"])


def test_respan_finds_names_whatever_the_tokenisation():
    """Twitter tokens keep hyphens ("V-E"); the MLLM may copy the name with or without the spaces."""
    tokens = ["Happy", "V-E", "Day", "from", "Jay", "-", "Z"]
    assert ref.find_span(tokens, "V - E Day", Entity(1, 2, "OTHER")) == ((1, 3), None)
    assert ref.find_span(tokens, "Jay-Z", Entity(4, 5, "PER")) == ((4, 7), None)
    assert ref.find_span(tokens, "Jay-Zed", Entity(4, 5, "PER")) == (None, ref.Outcome.SPAN_NOT_IN_TEXT)
    assert ref.find_span(tokens, "Jay-Z", Entity(0, 1, "PER")) == (None, ref.Outcome.SPAN_NOT_OVERLAPPING)


def test_refine_routes_a_sample_by_its_missed_entity_score_only_with_allow_add():
    """Both samples hold one sure entity (uncertainty 0.01 < tau), so nothing is delegated. On "Leopard" the
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
        samples.append(
            Sample(
                sid, toks, None, [Entity(5, 6, "location", uncertainty=0.01, source="tagger")], marginals=marg
            )
        )
    assert [unc.missed_entity_score(s, tags) for s in samples] == pytest.approx([0.7, 0.1])
    answer = {
        "reasoning": "a tank is named",
        "decisions": [],
        "added": [{"span": "Leopard 2", "type": "vehicle"}],
    }
    unc.route(samples, 0.5)
    on = ref.RefinementConfig(allow_add=True, missed_tau=0.5)
    for config, tags_given, calls in [
        (on, tags, 1),
        (ref.RefinementConfig(missed_tau=0.5), tags, 0),
        (on, None, 0),
    ]:
        with FakeServer(lambda body: reply(answer)) as srv:
            client = llm.Client(llm.ClientConfig(base_url=srv.url, model="fake", max_retries=0))
            out, traces = ref.refine(samples, data, client, config, tags=tags_given)
        counts = refinement_counts(traces)
        assert counts["calls"] == len(srv.requests) == counts["missed_routed"] == calls
        assert counts["delegated"] == 0
        if calls:
            assert "Text: Two Leopard 2 tanks near Munster ." in json.dumps(srv.requests[0]["messages"])
            assert (
                spans(out[0]) == [(1, 3, "vehicle", "mllm"), (5, 6, "location", "tagger")]
                and counts["added"] == 1
            )
        assert spans(out[-1]) == spans(samples[-1]) == [(5, 6, "location", "tagger")]


def test_refine_refuses_samples_never_routed():
    """refine sends what uncertainty.route marked: a porter who skips routing gets an error, not 0 calls."""
    unrouted = Entity(0, 2, "vehicle", uncertainty=0.9, source="tagger")
    samples = [Sample("a", ["Leopard", "2"], None, [unrouted])]
    with FakeServer(lambda body: reply({"reasoning": "", "decisions": []})) as srv:
        client = llm.Client(llm.ClientConfig(base_url=srv.url, model="fake", max_retries=0))
        with pytest.raises(ValueError, match="call uncertainty.route"):
            ref.refine(samples, read_ccks(DEMO), client)
    assert not srv.requests
