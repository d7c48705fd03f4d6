"""simulated_mllm.py behind the real refinement and grounding stages, on examples/demo.

Predictions are the demo's gold, perturbed by a fixed rule (right, re-typed, over-long span,
dropped, plus invented entities). With accuracy 1 the simulated MLLM must reach exactly what
an oracle reaches (the GMNER ceiling: each MNER-correct entity gets its gold region); with
accuracy 0 every answer must be wrong (no TP at all where the MLLM decides).
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import demos
import eval as scorer
import grounding
import refinement
import synth
import uncertainty
from app import synthetic
from app.counts import grounding_counts, refinement_counts
from data import Entity, Sample
from formats.ccks import read_ccks
from levers import synth_filters
from llm import Client, ClientConfig
from servers.simulated_mllm import SimConfig, SimulatedMLLM

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


@pytest.fixture(scope="module")
def demo():
    data = read_ccks(DEMO)
    sizes = {}
    for s in data.samples:
        with Image.open(s.image) as im:
            sizes[s.id] = im.size
    return data, sizes


def perturbed(gold: list[Sample]) -> list[Sample]:
    """Entity k of each sample: k % 4 == 0 right, 1 re-typed, 2 one token too long, 3 dropped;
    every third sample also gets an invented entity on its last token when that token is free."""
    out = []
    for n, s in enumerate(gold):
        types = sorted({e.type for g in gold for e in g.entities})
        ents = []
        for k, e in enumerate(s.entities):
            if k % 4 == 0:
                ents.append(Entity(e.start, e.end, e.type))
            elif k % 4 == 1:
                ents.append(Entity(e.start, e.end, next(t for t in types if t != e.type)))
            elif k % 4 == 2 and e.end < len(s.tokens) and not any(g.start == e.end for g in s.entities):
                ents.append(Entity(e.start, e.end + 1, e.type))
        last = len(s.tokens) - 1
        if n % 3 == 0 and not any(e.start <= last < e.end for e in s.entities + ents):
            ents.append(Entity(last, last + 1, types[0]))
        for e in ents:
            e.uncertainty = 1.0
        out.append(Sample(s.id, s.tokens, s.image, sorted(ents, key=lambda e: e.start)))
    return out


def ceiling(gold: list[Sample], pred: list[Sample]) -> dict:
    """The oracle, independent of the server: every entity with a gold span gets that entity's gold boxes
    (so each MNER-correct entity gets its gold region: the GMNER ceiling), others none."""
    oracle = []
    for g, p in zip(gold, pred):
        boxes = {(e.start, e.end): e.boxes for e in g.entities}
        oracle.append(
            replace(p, entities=[replace(e, boxes=list(boxes.get((e.start, e.end), []))) for e in p.entities])
        )
    return scorer.evaluate(gold, oracle)


def run_ground(data, sizes, pred, accuracy: float):
    # the oracle boxes every type; images are sent at most 320 px wide, so boxes are rescaled both ways
    cfg = grounding.GroundingConfig(never_ground=[], max_side=320)
    with SimulatedMLLM(data.samples, sizes, SimConfig(ground_accuracy=accuracy)) as sim:
        examples = demos.choose(pred, demos.embed_pool(data.samples, demos.DemoConfig(k=1)))
        out, traces = grounding.ground(pred, examples, data, Client(ClientConfig(base_url=sim.url)), cfg)
    return out, grounding_counts(out, traces), sim.counts


def test_grounding_at_accuracy_one_reaches_the_ceiling_exactly(demo):
    data, sizes = demo
    pred = perturbed(data.samples)
    out, counts, sim = run_ground(data, sizes, pred, 1.0)
    assert counts["calls"] > 0 and counts["failed_calls"] == 0 and sim["ground_wrong"] == 0
    got, best = scorer.evaluate(data.samples, out), ceiling(data.samples, pred)
    assert best["gmner"]["tp"] == best["mner"]["tp"] > 0
    for task in ("mner", "eeg", "gmner"):
        assert (got[task]["tp"], got[task]["fp"], got[task]["fn"]) == (
            best[task]["tp"],
            best[task]["fp"],
            best[task]["fn"],
        ), task


def test_grounding_at_accuracy_zero_gets_every_region_wrong(demo):
    data, sizes = demo
    pred = perturbed(data.samples)
    out, counts, sim = run_ground(data, sizes, pred, 0.0)
    assert sim["ground_right"] == 0 and sim["ground_wrong"] > 0
    got = scorer.evaluate(data.samples, out)
    assert got["gmner"]["tp"] == 0 and got["eeg"]["tp"] == 0 and got["mner"]["tp"] > 0


@pytest.mark.parametrize("accuracy", [1.0, 0.0])
def test_refinement_right_and_wrong(demo, accuracy):
    """Every entity delegated (tau 0.5 < uncertainty 1). Right: precision 1 and every gold entity that a
    prediction overlaps recovered. Wrong: no right entity survives unchanged, none is recovered."""
    data, sizes = demo
    pred = perturbed(data.samples)
    with SimulatedMLLM(data.samples, sizes, SimConfig(refine_accuracy=accuracy, seed=3)) as sim:
        uncertainty.route(pred, 0.5)
        out, traces = refinement.refine(pred, data, Client(ClientConfig(base_url=sim.url)))
    summary = refinement_counts(traces)
    assert summary["calls"] == sum(1 for s in pred if s.entities) and not summary["failed_call"]
    got = scorer.evaluate(data.samples, out)["mner"]
    overlapped = sum(
        1
        for g, p in zip(data.samples, pred)
        for e in g.entities
        if any(min(e.end, q.end) > max(e.start, q.start) for q in p.entities)
    )
    if accuracy == 1.0:
        assert (got["fp"], got["tp"]) == (0, overlapped)
    else:
        assert got["tp"] == 0 and sim.counts["refine_right"] == 0


def body_of(request: dict) -> dict:
    """The HTTP body a client sends for a stage's request (json_schema mode)."""
    schema = {"name": "answer", "schema": request["schema"]}
    return {
        "messages": request["messages"],
        "response_format": {"type": "json_schema", "json_schema": schema},
    }


@pytest.mark.parametrize("accuracy", [1.0, 0.0])
def test_refinement_reasoning_says_what_gold_says_and_which_answers_are_seeded_errors(demo, accuracy):
    data, sizes = demo
    sample = perturbed(data.samples)[1]  # "USS Nimitz" right, "Mediterranean Sea" re-typed, NATO too long
    uncertainty.route([sample], -1.0)  # every entity delegated
    request = refinement.build_request(sample, data, refinement.RefinementConfig(), None)
    with SimulatedMLLM(data.samples, sizes, SimConfig(refine_accuracy=accuracy)) as sim:
        content = json.loads(sim.answer(body_of(request))["choices"][0]["message"]["content"])
    notes = content["reasoning"].split(" [")[1:]  # the first sentence says what the simulator is
    assert len(notes) == len(sample.entities) == len(content["decisions"]) == 3
    assert notes[0].startswith('1] "USS Nimitz" (vessel): gold says vessel, ')
    assert notes[1].startswith('2] "Mediterranean Sea" (aircraft): gold says location, ')
    assert notes[2].startswith('3] "NATO exercise" (other): gold\'s entity here is "NATO" (other), ')
    seeded = [("one of the seeded errors" in n) for n in notes]
    assert seeded == [accuracy == 0.0] * 3
    if accuracy == 1.0:
        assert [d["action"] for d in content["decisions"]] == ["keep", "change_type", "change_span"]


def synthesis(data, sizes, world: list[Sample], accuracy: float, tmp_path: Path) -> tuple[list[Sample], dict]:
    """synth.synthesize on the demo's seeds, with the default filters, against a simulated MLLM whose gold is
    `world`; its traces counted as the application counts them."""
    config = synth.SynthConfig(per_seed=3)
    with SimulatedMLLM(world, sizes, SimConfig(synth_accuracy=accuracy)) as sim:
        client = Client(ClientConfig(base_url=sim.url, cache_path=str(tmp_path / f"{len(world)}-{accuracy}")))
        kept, traces = synth.synthesize(data, client, config, synth_filters.filters(data, config))
    return kept, synthetic.summarize(data.types, traces, config.rejected_examples)


def test_synthesis_answers_come_from_the_request_alone(demo, tmp_path):
    """The same answers from a simulator that knows the gold (held-out split included) and one that knows
    nothing: the writer cannot leak the gold into the tagger's training data."""
    data, sizes = demo
    with_gold, _ = synthesis(data, sizes, data.samples, 0.8, tmp_path)
    without, _ = synthesis(data, sizes, [], 0.8, tmp_path)
    assert [(s.tokens, s.entities) for s in with_gold] == [(s.tokens, s.entities) for s in without]


def test_synthesis_faults_are_exactly_what_the_checks_reject(demo, tmp_path):
    """At accuracy 1 every written sentence passes synthesis's checks and filters; at 0 each is a fault they
    reject."""
    data, sizes = demo
    kept, summary = synthesis(data, sizes, [], 1.0, tmp_path)
    assert summary["generated"] == 3 * len(data.samples) == len(kept) and summary["rejected"] == {}
    seeds = {s.text for s in data.samples}
    assert not [s for s in kept if s.text in seeds]  # no copy of a seed passes as new
    none, summary = synthesis(data, sizes, [], 0.0, tmp_path)
    assert none == [] and sum(summary["rejected"].values()) == 3 * len(data.samples)
    assert set(summary["rejected"]) == {"seed_copy", "name_not_in_text", "entities_for_entity_free_seed"}
