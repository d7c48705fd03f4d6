"""Each MLLM stage (synth.py, refinement.refine, grounding.ground) and refineg.main end to end on
examples/demo
against a real llama.cpp `llama-server` serving a tiny random-weight Qwen2-VL (test infrastructure, not the
paper): every answer parsed, validated, merged or counted as rejected/failed, and the counts checked against
the recorded answers and the requests the server received. The client against the same server:
test_realserver.py.

    make real-server        # once: builds the server and model into ~/.cache/refineg-realserver (~6 min)
    python -m pytest -q -m realserver tests/real/test_realserver_stages.py

Without the build every test here is skipped with a reason naming `make real-server`. The tests share the
session's one server (the `server` fixture in conftest.py) with test_realserver.py.
Left out on purpose: answer quality (the weights are random).
"""

import dataclasses
import json
import os
from typing import get_args

import requests
from llama_server import REALSERVER, client
from PIL import Image

import data
import demos as sel
import grounding
import refineg
import refinement
import synth
import uncertainty
from app import inputs, synthetic
from app.counts import grounding_counts, refinement_counts
from client.structured import validate
from formats import ccks
from levers import synth_filters
from llm import Client, LLMError
from servers.fake_mllm import FakeServer

pytestmark = REALSERVER


# ---------------------------------------------------------------- the stages end to end on examples/demo
# Each stage runs on the demo against `server` with bounds small enough that the noise model stops: its
# answers are noise, so the oracles are the answers themselves (recorded as the stage received them) and
# the counts a stage must derive from them, never the content. A noise model fills string bounds and
# writes runs of whitespace (the grammar allows ~20 characters between tokens): a cut answer or a re-ask
# is a legitimate, counted outcome; a crash or a count that does not add up is not. llama.cpp's grammar bounds
# integers but not a "number"'s minimum/maximum, so grounding's coordinates can come back as
# -3333333333333333:
# the client's own validation catches them and re-asks (counted in usage.reasks).

DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples", "demo"
)
REJECT_REASONS = {*get_args(synth.Reason), *get_args(synth_filters.Reason)}


def record(c: Client) -> list[tuple[dict, object]]:
    """(request, Reply | LLMError) of every call a stage makes through c.map_chat, in order."""
    seen, real = [], c.map_chat

    def map_chat(jobs: list, desc: str = "", workers: int | None = None) -> list:
        jobs = [r() if callable(r) else r for r in jobs]  # lazily built ones (grounding) built here
        replies = real(jobs, desc, workers)
        seen.extend(zip(jobs, replies))
        return replies

    c.map_chat = map_chat
    return seen


def answered(seen: list[tuple[dict, object]]) -> list[tuple[dict, object]]:
    """The calls that produced an answer; each one fits its request's schema (the client checked, we
    recheck)."""
    ok = [(req, rep) for req, rep in seen if not isinstance(rep, LLMError)]
    for req, rep in ok:
        assert validate(rep.content, req["schema"]) == [], rep.content
    return ok


def accounted(c: Client) -> None:
    """Every HTTP request of a client is a first try, a retry or a re-ask; every failure is an LLMError."""
    u = c.usage
    assert u.requests == u.calls - u.cache_hits + u.retries + u.reasks, u.as_dict()


def test_synthesis_on_demo_seeds(server):
    """Three seeds (three entities, one, none), two sentences each, names and texts bounded: one call per
    seed; every sentence the noise model wrote is kept or rejected for a counted reason; kept ones are
    valid training samples that survive synthetic.jsonl."""
    demo = ccks.read_ccks(DEMO)
    seeds = dataclasses.replace(demo, samples=[demo.samples[i] for i in (0, 3, 5)])
    assert [len(s.entities) for s in seeds.samples] == [3, 1, 0]
    # per answer at most 2 x (160-character text + one 100-character name): 512 tokens fit it with its
    # whitespace
    config = synth.SynthConfig(per_seed=2, max_tokens=16, max_entities=1, answer_tokens=512, type_enum=True)
    c = client(server.url, workers=4)
    seen = record(c)
    samples, traces = synth.synthesize(seeds, c, config, synth_filters.filters(seeds, config))
    summary = synthetic.summarize(seeds.types, traces, config.rejected_examples)
    ok = answered(seen)
    assert summary["calls"] == summary["seeds"] == c.usage.calls == len(seen) == 3
    assert summary["failed_calls"] == c.usage.failures == len(seen) - len(ok) == len(summary["failed_seeds"])
    assert summary["generated"] == sum(len(rep.content["samples"]) for _, rep in ok) <= 2 * len(ok)
    assert summary["kept"] + sum(summary["rejected"].values()) == summary["generated"]
    assert summary["kept"] == len(samples) and set(summary["rejected"]) <= REJECT_REASONS
    accounted(c)
    for s in samples:
        assert s.id.rsplit("-", 1)[0] in {f"syn-{t.id}" for t in seeds.samples} and s.image is None
        assert config.min_tokens <= len(s.tokens) <= config.max_tokens
        assert all(
            0 <= e.start < e.end <= len(s.tokens) and e.type in demo.types and e.source == "synth"
            for e in s.entities
        )
    assert sum(summary["entities_per_type"].values()) == sum(len(s.entities) for s in samples)
    path = os.path.join(os.path.dirname(server.log_path), "synthetic.jsonl")
    synthetic.write_synthetic(samples, path)
    back = synthetic.read_synthetic(path)
    assert [(s.id, s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in back] == [
        (s.id, s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in samples
    ]


def test_refinement_on_demo_predictions(server):
    """Gold demo entities posing as tagger output, every other one uncertain (uncertainty 0.9 > tau 0.5):
    one call
    per sample with an uncertain entity (with its image); every delegated entity ends decided (keep,
    reject, change_type, change_span) or kept by fallback (missing or invalid decision), exactly as the
    recorded answers say; confident entities come out untouched. allow_add is off, so no marginals."""
    demo = ccks.read_ccks(DEMO)
    pred = []
    for i in (0, 3, 4, 5, 8):  # 001: 3 entities, 004: 1 (made sure), 005: 2, 006: none, 009: 3
        s = demo.samples[i]
        ents = [
            data.Entity(e.start, e.end, e.type, uncertainty=0.1 if i == 3 or j % 2 else 0.9, source="tagger")
            for j, e in enumerate(s.entities)
        ]
        pred.append(dataclasses.replace(s, entities=ents))
    config = refinement.RefinementConfig(max_reasoning=40)
    c = client(server.url, workers=4, max_tokens=600)
    seen = record(c)
    uncertainty.route(pred, 0.5)
    out, traces = refinement.refine(pred, demo, c, config)
    counts = refinement_counts(traces)
    delegated = [[e for e in s.entities if e.uncertainty > 0.5] for s in pred]
    routed = [i for i, d in enumerate(delegated) if d]
    assert [s.id for s in pred if any(e.uncertainty > 0.5 for e in s.entities)] == ["001", "005", "009"]
    assert counts["calls"] == len(routed) == len(seen) == c.usage.calls == 3
    assert counts["delegated"] == sum(map(len, delegated)) == 5 and counts.get("text_only_calls", 0) == 0
    assert all(
        sum(p.get("type") == "image_url" for p in req["messages"][-1]["content"]) == 1 for req, _ in seen
    )
    assert counts.get("failed_call", 0) == c.usage.failures
    accounted(c)
    # the oracle: the decisions as the server wrote them
    ids = [
        None if isinstance(rep, LLMError) else [d["id"] for d in rep.content["decisions"]] for _, rep in seen
    ]
    answered(seen)
    distinct = [
        set() if got is None else {i for i in got if 1 <= i <= len(delegated[k])}
        for got, k in zip(ids, routed)
    ]
    assert counts.get("missing", 0) == sum(len(delegated[k]) - len(d) for d, k in zip(distinct, routed))
    assert counts.get("duplicate_decision", 0) + counts.get("unknown_entity", 0) == sum(
        len(got) - len(d) for got, d in zip(ids, distinct) if got is not None
    )
    decided = sum(counts.get(k, 0) for k in ("keep", "reject", "change_type", "change_span"))
    invalid = sum(v for k, v in counts.items() if k.startswith("invalid_"))
    assert decided + invalid == sum(map(len, distinct))
    assert counts.get("kept_by_fallback", 0) == counts.get("missing", 0) + invalid
    assert decided + counts.get("kept_by_fallback", 0) == counts["delegated"]
    for s, new in zip(pred, out):
        assert new.id == s.id and new.image == s.image
        sure = [(e.start, e.end, e.type) for e in s.entities if e.uncertainty <= 0.5]
        assert all(
            any((e.start, e.end, e.type, e.source) == (*k, "tagger") for e in new.entities) for k in sure
        )
        assert all(
            e.source in ("tagger", "mllm") and 0 <= e.start < e.end <= len(s.tokens) for e in new.entities
        )
        spans = sorted((e.start, e.end) for e in new.entities)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # merging never makes overlaps
    assert sum(len(s.entities) for s in pred) - sum(len(s.entities) for s in out) == counts.get("reject", 0)
    assert sum(e.source == "mllm" for s in out for e in s.entities) == counts.get(
        "change_type", 0
    ) + counts.get("change_span", 0)


def test_grounding_with_three_demos_on_demo(server):
    """k = 3 worked examples, so every request carries k + 1 = 4 images (about 1,900 prompt tokens on the
    demo). Each box in the recorded answers becomes a box in original pixels inside the image, or is
    counted degenerate; names the answer leaves out are counted missing; location is never asked."""
    demo = ccks.read_ccks(DEMO)
    qi = (0, 18, 24)  # 001, 019 (5 entities, one location), 025 (Leopard 2 twice)
    queries = [
        dataclasses.replace(
            demo.samples[i],
            entities=[data.Entity(e.start, e.end, e.type, source="tagger") for e in demo.samples[i].entities],
        )
        for i in qi
    ]
    demos = [s for i, s in enumerate(demo.samples) if i not in qi]
    config, selection = grounding.GroundingConfig(max_boxes=2), sel.DemoConfig(k=3)
    c = client(server.url, workers=4, max_tokens=600)
    seen = record(c)
    out, traces = grounding.ground(
        queries, sel.choose(queries, sel.embed_pool(demos, selection)), demo, c, config
    )
    counts = grounding_counts(out, traces)
    asked = [{s.name(e) for e in s.entities if e.type != "location"} for s in queries]
    assert counts["calls"] == len(seen) == c.usage.calls == 3 and counts["failed_calls"] == c.usage.failures
    assert [len(a) for a in asked] == [2, 4, 2]
    for req, _ in seen:
        images = [
            p
            for m in req["messages"]
            if isinstance(m["content"], list)
            for p in m["content"]
            if p.get("type") == "image_url"
        ]
        assert len(images) == selection.k + 1
    accounted(c)
    ok = answered(seen)
    raw = sum(len(it["boxes"]) for _, rep in ok for it in rep.content["entities"])
    missing = sum(
        len(a - {it["entity"] for it in rep.content["entities"]})
        for a, (_, rep) in zip(asked, seen)
        if not isinstance(rep, LLMError)
    )
    assert counts["missing"] == missing
    # a name's boxes go to each of its occurrences: count them once per name
    per_name = sum(
        len(next(e.boxes for e in s.entities if s.name(e) == n)) for s, a in zip(out, asked) for n in a
    )
    assert per_name + counts["degenerate_boxes"] + counts["malformed_boxes"] == raw
    assert counts["boxes"] == sum(len(e.boxes) for s in out for e in s.entities)
    assert counts["entities_grounded"] == sum(1 for s in out for e in s.entities if e.boxes)
    for s in out:
        with Image.open(s.image) as im:
            w, h = im.size
        for e in s.entities:
            assert e.type != "location" or not e.boxes
            assert all(
                0 <= b.x1 < b.x2 <= w and 0 <= b.y1 < b.y2 <= h and b.x2 - b.x1 >= 1 and b.y2 - b.y1 >= 1
                for b in e.boxes
            )
    assert [(e.start, e.end, e.type) for s in out for e in s.entities] == [
        (e.start, e.end, e.type) for s in queries for e in s.entities
    ]


def test_pipeline_on_demo_then_a_rerun_asks_only_the_failed_calls(server, tmp_path):
    """refineg.main with every stage on, through a recording proxy: it exits 0 and writes predictions for
    every test id; each stage's usage counts exactly the requests the server received for that stage
    (told apart by the answer schema), and the server's own token counters moved by the usage totals.
    The same command again reuses the synthesis and the tagger and answers every call from the cache,
    except the calls that failed (never cached, so a rerun asks them again)."""
    stage_of = {"samples": "synthesis", "decisions": "refinement", "entities": "grounding"}
    sent: list[str] = []

    def forward(body: dict):
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        sent.append(next(stage for key, stage in stage_of.items() if key in props))
        r = requests.post(server.url + "/chat/completions", json=body, timeout=300)
        return r.status_code, r.json(), {}

    out = tmp_path / "run"
    tiny = [
        "--data",
        DEMO,
        "--test-share",
        "0.2",
        "--out",
        str(out),
        "--tagger-epochs",
        "1",
        "--no-tagger-progress",
        "--synth-per-seed",
        "2",
        "--synth-seeds",
        "4",
        "--synth-max-tokens",
        "16",
        "--synth-max-entities",
        "1",
        "--synth-answer-tokens",
        "512",
        "--unc-target-rate",
        "1.0",
        "--refine-max-reasoning",
        "10",
        "--ground-k",
        "1",
        "--ground-max-boxes",
        "2",
        "--llm-max-tokens",
        "600",
        "--llm-max-retries",
        "1",
        "--llm-backoff-base",
        "0.05",
    ]
    before = server.metrics()
    with FakeServer(forward) as proxy:
        assert refineg.main([*tiny, "--llm-url", proxy.url]) == 0
        first = len(sent)
        after = server.metrics()
        pred = json.loads((out / "predictions.json").read_text())
        usage = json.loads((out / "usage.json").read_text())["llm"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert refineg.main([*tiny, "--llm-url", proxy.url]) == 0
        again = json.loads((out / "usage.json").read_text())["llm"]
        assert proxy.errors == []
    _, test = inputs.split(ccks.read_ccks(DEMO).samples, 0.2, 0)
    assert sorted(pred) == sorted(s.id for s in test)
    assert metrics["skipped"] == {} and set(usage) == {"synthesis", "refinement", "grounding"}
    for stage, u in usage.items():
        assert u["calls"] == metrics["stages"][stage]["calls"] > 0, stage
        assert u["requests"] == sent[:first].count(stage) == u["calls"] + u["retries"] + u["reasks"], stage
    assert (
        sum(u["completion_tokens"] for u in usage.values())
        == after["tokens_predicted_total"] - before["tokens_predicted_total"]
    )
    assert sum(u["prompt_tokens"] for u in usage.values()) == sum(
        after[k] - before[k] for k in ("prompt_tokens_total", "prompt_tokens_cached_total")
    )
    for s in test:  # boxes, if the noise model gave any, in the original image
        with Image.open(s.image) as im:
            w, h = im.size
        assert all(
            r["bnd"] is None
            or 0 <= r["bnd"]["xmin"] < r["bnd"]["xmax"] <= w
            and 0 <= r["bnd"]["ymin"] < r["bnd"]["ymax"] <= h
            for r in pred[s.id]
        )
    # the rerun: synthesis reused from synthetic.jsonl (its client makes no call), the rest from the cache
    assert again["synthesis"]["calls"] == 0
    assert again["refinement"]["calls"] == usage["refinement"]["calls"]
    assert again["refinement"]["calls"] - again["refinement"]["cache_hits"] == usage["refinement"]["failures"]
    if usage["refinement"]["failures"] == 0:  # the same refined entities, hence the same grounding requests
        assert again["grounding"]["calls"] == usage["grounding"]["calls"]
        assert (
            again["grounding"]["calls"] - again["grounding"]["cache_hits"] == usage["grounding"]["failures"]
        )
    assert len(sent) - first == sum(u["requests"] for u in again.values())
    if not any(u["failures"] for u in usage.values()):
        assert len(sent) == first
