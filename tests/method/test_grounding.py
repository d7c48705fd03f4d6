"""Tests of grounding.py: box conversion and the grounding call against a scripted fake MLLM (demo selection,
demos.py, is tested in test_demos.py).

The fake MLLM answers the GOLD boxes of the demo data, converted to the box format by formulas written here
independently of grounding.py, from the image size it actually received; GMNER F1 = 1.0 then proves the whole
coordinate path (prompt -> sent image size -> answer -> original pixels -> scorer).
"""

import base64
import io
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from hostile import BAD_IMAGES, write_bad_image
from PIL import Image

import demos as sel
import grounding as g
from app.counts import grounding_counts
from data import Box, Dataset, Entity, Sample
from eval import evaluate
from formats import read_dataset
from images import image_part, smart_resize
from llm import Client, ClientConfig
from servers.fake_mllm import FakeServer, reply

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
FORMATS = ["abs", "norm1000", "norm1"]


# ---------------------------------------------------------------- box conversion


@pytest.mark.parametrize("fmt", FORMATS)
def test_box_round_trip_on_a_resized_image(tmp_path, fmt):
    """A 2000x1000 image sent at max_side 1000 is sent at 1000x500; Box(200, 100, 1000, 600) is then
    abs [100, 50, 500, 300], norm1000 [100, 100, 500, 600], norm1 [0.1, 0.1, 0.5, 0.6]."""
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), (90, 120, 30)).save(path)
    _, sent = image_part(str(path), max_side=1000)
    assert sent == (1000, 500)
    box = Box(200, 100, 1000, 600)
    expected = {"abs": [100, 50, 500, 300], "norm1000": [100, 100, 500, 600], "norm1": [0.1, 0.1, 0.5, 0.6]}[
        fmt
    ]
    xyxy = g.to_model(box, (2000, 1000), sent, fmt)
    assert np.allclose(xyxy, expected)
    for orig, snt in [((2000, 1000), sent), ((640, 480), (640, 480)), ((333, 517), (193, 300))]:
        for b in [box, Box(0, 0, 1, 1), Box(12.5, 7.25, 300, 333)]:
            b = Box(min(b.x1, orig[0] - 1), min(b.y1, orig[1] - 1), min(b.x2, orig[0]), min(b.y2, orig[1]))
            back = g.from_model(g.to_model(b, orig, snt, fmt), orig, snt, fmt)
            assert (
                max(abs(back.x1 - b.x1), abs(back.y1 - b.y1), abs(back.x2 - b.x2), abs(back.y2 - b.y2)) < 1.0
            )


@pytest.mark.parametrize(
    "height_width, expected",
    [((480, 640), (476, 644)), ((1000, 1000), (980, 980)), ((20, 30), (56, 84)), ((70, 70), (56, 56))]
    + [((476, 644), (476, 644)), ((504, 1008), (504, 1008))],
)
def test_smart_resize_is_qwen2_vl_rule(height_width, expected):
    """Worked by hand with factor 28, min_pixels 56*56 = 3,136, max_pixels 28*28*1280 = 1,003,520:
    480x640: 480/28 = 17.1 -> 17*28 = 476, 640/28 = 22.9 -> 23*28 = 644; 306,544 pixels, inside the limits.
    1000x1000: 36*28 = 1008, but 1008*1008 = 1,016,064 is over the maximum: beta = sqrt(1e6 / 1,003,520)
    = 0.99825, floor(1000 / 0.99825 / 28) = floor(35.78) = 35 -> 980 on both sides.
    20x30: 28x28 = 784 is under the minimum: beta = sqrt(3,136 / 600) = 2.2862, ceil(20 * 2.2862 / 28)
    = ceil(1.63) = 2 -> 56, ceil(30 * 2.2862 / 28) = ceil(2.45) = 3 -> 84.
    70x70: 70/28 = 2.5 rounds half to even (Python's round, as transformers uses it) -> 2 -> 56; 56x56 =
    3,136 is not under the minimum. Sizes it gives are kept (476x644, 504x1008)."""
    assert smart_resize(*height_width) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_abs_images_are_sent_at_qwen_size_so_its_pixels_are_exact(tmp_path, fmt):
    """A 2000x1000 image capped at max_side 1000 is 1000x500; for abs it is then sent at smart_resize's
    504x1008 (500/28 = 17.9 -> 18, 1000/28 = 35.7 -> 36), the size Qwen2.5-VL sees, so a box it draws in
    its own pixels, [100.8, 50.4, 504, 302.4], is Box(200, 100, 1000, 600) of the original exactly. The
    other formats need no grid: sent at 1000x500."""
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), (90, 120, 30)).save(path)
    shown = g.show(str(path), g.GroundingConfig(box_format=fmt))
    assert shown.orig == (2000, 1000)
    assert (
        shown.sent
        == sent_size(shown.part["image_url"]["url"])
        == ((1008, 504) if fmt == "abs" else (1000, 500))
    )
    if fmt == "abs":
        back = g.from_model([100.8, 50.4, 504, 302.4], shown.orig, shown.sent, fmt)
        assert np.allclose([back.x1, back.y1, back.x2, back.y2], [200, 100, 1000, 600])


def test_from_model_clips_to_the_image_and_rejects_unknown_formats():
    assert g.from_model([-50, 20, 700, 900], (640, 480), (640, 480), "abs") == Box(0, 20, 640, 480)
    with pytest.raises(ValueError, match="box_format"):
        g.to_model(Box(0, 0, 1, 1), (10, 10), (10, 10), "xywh")


def test_boxes_attach_by_name_and_the_rest_of_each_entity_stays():
    """Both occurrences of "USS Nimitz" get its box; a never-grounded type gets none; each entity keeps its
    uncertainty, source and routing (the summary and trace read the tagger's, a porter may read these)."""
    s = Sample("s", ["USS", "Nimitz", "near", "Guam", "and", "USS", "Nimitz"], "x.jpg")
    s.entities = [
        Entity(0, 2, "vessel", uncertainty=0.7, source="mllm", delegated=True),
        Entity(3, 4, "location", uncertainty=0.1, source="tagger", delegated=False),
        Entity(5, 7, "vessel", uncertainty=0.2, source="tagger", delegated=False),
    ]
    box = Box(1, 2, 30, 40)
    out = g.with_boxes(s, {"USS Nimitz": [box], "Guam": [box]}, {"location"})
    assert [e.boxes for e in out.entities] == [[box], [], [box]]
    assert [(e.uncertainty, e.source, e.delegated) for e in out.entities] == [
        (0.7, "mllm", True),
        (0.1, "tagger", False),
        (0.2, "tagger", False),
    ]
    assert s.entities[0].boxes == [] and out.tokens == s.tokens and out.tokens is not s.tokens


# ---------------------------------------------------------------- the grounding call on a fake MLLM


@pytest.fixture
def bag_of_words(monkeypatch):
    """Texts embedded by hashed bag of words instead of the encoder, for the tests whose subject is the call
    and the boxes (what the real encoder does is tested in test_demos.py)."""

    def embed(texts, encoder="", batch_size=64):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for tok in t.lower().split():
                out[i, zlib.crc32(tok.encode()) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    monkeypatch.setattr(sel, "embed_texts", embed)


def sent_size(url: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        return im.size


def images_of(body: dict) -> list[str]:
    return [
        p["image_url"]["url"]
        for m in body["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]


def query_of(body: dict) -> tuple[str, list[dict]]:
    """The text and the listed entities of the LAST user turn (the query)."""
    text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
    m = re.search(r"Text: (.*)\nEntities: (.*)", text, re.S)
    return m.group(1), json.loads(m.group(2))


def in_format(
    b: Box, orig, sent, fmt
):  # independent of grounding.to_model; whole units as a model writes them
    W, H = orig
    if fmt == "abs":
        return [
            round(v) for v in (b.x1 * sent[0] / W, b.y1 * sent[1] / H, b.x2 * sent[0] / W, b.y2 * sent[1] / H)
        ]
    if fmt == "norm1000":
        return [round(v) for v in (b.x1 / W * 1000, b.y1 / H * 1000, b.x2 / W * 1000, b.y2 / H * 1000)]
    return [b.x1 / W, b.y1 / H, b.x2 / W, b.y2 / H]


def gold_handler(data: Dataset, fmt: str):
    by_text = {s.text: s for s in data.samples}

    def handler(body):
        text, listed = query_of(body)
        s = by_text[text]
        sent = sent_size(images_of(body)[-1])
        with Image.open(s.image) as im:
            orig = im.size
        boxes = {s.name(e): [in_format(b, orig, sent, fmt) for b in e.boxes] for e in s.entities}
        return reply(
            {
                "entities": [
                    {"entity": it["entity"], "type": it["type"], "boxes": boxes[it["entity"]]}
                    for it in listed
                ]
            }
        )

    return handler


def ground(samples, labelled, data, client, config=None, k=3):
    """grounding.ground after demos.choose picked the worked examples of `samples` from `labelled`."""
    examples = sel.choose(samples, sel.embed_pool(labelled, sel.DemoConfig(k=k)))
    out, traces = g.ground(samples, examples, data, client, config)
    return out, grounding_counts(out, traces), traces


def unboxed(samples):
    return [
        Sample(s.id, s.tokens, s.image, [Entity(e.start, e.end, e.type, source="tagger") for e in s.entities])
        for s in samples
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_gold_answers_in_every_format_give_gmner_f1_one(fmt, bag_of_words):
    data = read_dataset(DEMO)
    cfg = g.GroundingConfig(box_format=fmt, max_side=300)  # 300 < every demo image: all are resized
    with FakeServer(gold_handler(data, fmt)) as srv:
        out, counts, _ = ground(
            unboxed(data.samples), data.samples, data, Client(ClientConfig(base_url=srv.url)), cfg, k=2
        )
    assert not srv.errors
    assert any(sent_size(images_of(b)[-1]) != Image.open(data.samples[0].image).size for b in srv.requests)
    if fmt == "abs":  # every image is sent at a size Qwen2.5-VL's own resize keeps
        sizes = {sent_size(url) for b in srv.requests for url in images_of(b)}
        assert all(smart_resize(h, w) == (h, w) for w, h in sizes)
    scores = evaluate(data.samples, out)
    assert scores["gmner"]["f1"] == 1.0 and scores["eeg"]["f1"] == 1.0, scores["gmner"]
    assert counts["calls"] == len(srv.requests) == 27 and counts["no_entity"] == 5
    assert counts["boxes"] == sum(len(e.boxes) for s in data.samples for e in s.entities)
    assert counts["degenerate_boxes"] == counts["missing"] == counts["failed_calls"] == 0


def test_request_carries_the_selected_demo_images_then_the_query_image_in_order(bag_of_words):
    data = read_dataset(DEMO)
    cfg = g.GroundingConfig(max_side=200)
    with FakeServer(gold_handler(data, "abs")) as srv:
        out, _, traces = ground(
            unboxed(data.samples), data.samples, data, Client(ClientConfig(base_url=srv.url)), cfg
        )
    asked = [s for s in data.samples if any(e.type != "location" for e in s.entities)]
    chosen = sel.choose(unboxed(asked), sel.embed_pool(data.samples, sel.DemoConfig(k=3)))
    picks = {s.id: [x.sample for x in row] for s, row in zip(asked, chosen)}
    # the trace names the worked examples shown, best first, why they were chosen, and the boxes answered
    assert sorted(traces) == sorted(s.id for s in data.samples)
    for q in asked:
        t = traces[q.id]
        assert t.outcome is g.Outcome.ANSWERED and [x.sample for x in t.examples] == picks[q.id]
        for x in t.examples:
            parts = 0.4 * x.text + 0.2 * x.image + 0.6 * x.entity  # DemoConfig's weights
            assert x.total == pytest.approx(parts) and 0 <= x.text <= 1 and 0 <= x.entity <= 1
        boxed = {q.name(e): e.boxes for e in next(o for o in out if o.id == q.id).entities if e.boxes}
        assert {n: b for n, b in t.boxes.items() if b} == boxed
    assert {t.outcome for sid, t in traces.items() if sid not in picks} == {g.Outcome.NO_ENTITY}

    def url(p):
        return image_part(p, 200, qwen_size=True)[0]["image_url"]["url"]  # abs: sent at Qwen2.5-VL's size

    by_text = {s.text: s for s in data.samples}
    assert len(srv.requests) == len(asked)
    for body in srv.requests:
        q = by_text[query_of(body)[0]]
        demos = picks[q.id]
        assert len(demos) == 3 and q.id not in [d.id for d in demos]
        assert images_of(body) == [url(d.image) for d in demos] + [url(q.image)]
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * 3 + ["user"]
        shown = [m["content"][1]["text"] for m in body["messages"][1::2]]
        assert all(f"Text: {d.text}\n" in t for d, t in zip(demos + [q], shown))
        answer = json.loads(body["messages"][2]["content"])  # the first worked answer: gold boxes as sent
        d0, sent = demos[0], sent_size(images_of(body)[0])
        orig = Image.open(d0.image).size
        want = {
            d0.name(e): [[round(v) for v in in_format(b, orig, sent, "abs")] for b in e.boxes]
            for e in d0.entities
            if e.type != "location"
        }
        assert {it["entity"]: it["boxes"] for it in answer["entities"]} == want


def test_build_request_holds_the_worked_examples_then_the_query_and_the_schema():
    """Two demos (images of 200x100 sent at 100x50) and a query sent at 300x150, box format abs: the gold box
    [20, 10, 60, 50] of demo a is written at half scale, [10, 5, 30, 25]; the location is neither asked nor
    boxed."""

    def part(name):
        return {"type": "image_url", "image_url": {"url": name}}

    a = Sample(
        "a",
        "Leopard 2 near Kiel".split(),
        "a.jpg",
        [Entity(0, 2, "vehicle", [Box(20, 10, 60, 50)]), Entity(3, 4, "location", [Box(0, 0, 9, 9)])],
    )
    b = Sample("b", "A PUMA".split(), "b.jpg", [Entity(1, 2, "vehicle")])
    q = Sample("q", "Boxer seen".split(), "q.jpg", [Entity(0, 1, "vehicle")])
    data = Dataset([a, b, q], ["vehicle", "location"], "", [])
    examples = [
        (a, g.Shown(part("A"), (100, 50), (200, 100))),
        (b, g.Shown(part("B"), (100, 50), (200, 100))),
    ]
    req = g.build_request(
        q,
        {"Boxer": "vehicle"},
        g.Shown(part("Q"), (300, 150), (600, 300)),
        examples,
        data,
        ["location"],
        g.GroundingConfig(),
    )
    assert [m["role"] for m in req["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert (
        images_of(req) == ["A", "B", "Q"]
        and "Image size: 300x150" in req["messages"][-1]["content"][1]["text"]
    )
    assert json.loads(req["messages"][2]["content"]) == {
        "entities": [{"entity": "Leopard 2", "type": "vehicle", "boxes": [[10, 5, 30, 25]]}]
    }
    assert json.loads(req["messages"][4]["content"])["entities"] == [
        {"entity": "PUMA", "type": "vehicle", "boxes": []}
    ]
    items = req["schema"]["properties"]["entities"]["items"]["properties"]
    assert items["entity"]["enum"] == ["Boxer"] and items["boxes"]["items"]["items"]["maximum"] == 300


def box_everything(body):
    """A fake MLLM that puts one box [10, 10, 90, 90] on every entity it is asked about."""
    return reply(
        {
            "entities": [
                {"entity": it["entity"], "type": it["type"], "boxes": [[10, 10, 90, 90]]}
                for it in query_of(body)[1]
            ]
        }
    )


def answered_box(body: dict, image: str) -> Box:
    """box_everything's [10, 10, 90, 90] in pixels of the query image as sent, in pixels of the original."""
    with Image.open(image) as im:
        return g.from_model([10, 10, 90, 90], im.size, sent_size(images_of(body)[-1]), "abs")


def test_never_grounded_types_get_no_question_and_no_box(bag_of_words):
    """Sample a: a vehicle and a location (which arrives with a stale box); only the vehicle is asked and
    boxed. Sample b: only a location -> no call. Sample c: a vehicle but no image -> no call."""
    data = read_dataset(DEMO)
    img = data.samples[0].image
    a = Sample(
        "a",
        "Leopard 2 tanks in Munster".split(),
        img,
        [Entity(0, 2, "vehicle"), Entity(4, 5, "location", [Box(1, 1, 5, 5)])],
    )
    b = Sample("b", "Rain over Munster".split(), img, [Entity(2, 3, "location")])
    c = Sample("c", "Leopard 2 again".split(), None, [Entity(0, 2, "vehicle")])
    with FakeServer(box_everything) as srv:
        out, counts, traces = ground(
            [a, b, c],
            data.samples,
            data,
            Client(ClientConfig(base_url=srv.url)),
            g.GroundingConfig(max_side=10_000),
            k=1,
        )
    assert len(srv.requests) == 1 and not srv.errors
    body = srv.requests[0]
    assert query_of(body)[1] == [{"entity": "Leopard 2", "type": "vehicle"}]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["entities"]["items"]["properties"]["entity"]["enum"] == ["Leopard 2"]
    assert "Entities of type location are never grounded" in body["messages"][0]["content"]
    boxed = answered_box(body, img)
    assert out[0].entities[0].boxes == [boxed] and out[0].entities[1].boxes == []
    assert all(not e.boxes for s in out[1:] for e in s.entities)
    assert counts["no_entity"] == 1 and counts["no_image"] == 1 and counts["calls"] == 1
    assert counts["no_image_entities"] == 1  # c's vehicle, for lack of an image
    assert [(t.outcome, t.asked) for t in traces.values()] == [
        (g.Outcome.ANSWERED, {"Leopard 2": "vehicle"}),
        (g.Outcome.NO_ENTITY, {}),
        (g.Outcome.NO_IMAGE, {"Leopard 2": "vehicle"}),
    ]


def test_never_grounded_default_only_applies_when_the_type_exists(bag_of_words):
    """Twitter-style types (LOC, not location): a LOC entity is asked and boxed like any other."""
    img = read_dataset(DEMO).samples[0].image
    s = Sample("t", "Obama visits Munster".split(), img, [Entity(0, 1, "PER"), Entity(2, 3, "LOC")])
    data = Dataset([s], ["PER", "LOC"], "1. PER: people\n2. LOC: places", [])
    with FakeServer(box_everything) as srv:
        out, counts, _ = ground(
            [s], [s, Sample("d", ["x"], img, [])], data, Client(ClientConfig(base_url=srv.url)), k=1
        )
    assert "never grounded" not in srv.requests[0]["messages"][0]["content"]
    boxed = answered_box(srv.requests[0], img)
    assert [e.boxes for e in out[0].entities] == [[boxed]] * 2 and counts["calls"] == 1


def test_malformed_answers_never_crash_and_are_counted(bag_of_words):
    """parse_answer on every kind of bad answer, then the same answers through the client and a fake
    server."""
    asked = {"Leopard 2": "vehicle", "NATO": "other"}
    orig = sent = (640, 480)
    ok = {"entity": "NATO", "type": "other", "boxes": [[10, 10, 50, 50]]}
    cases = {
        "strings": (
            {"entities": [{"entity": "Leopard 2", "type": "vehicle", "boxes": ["10,10,50,50"]}, ok]},
            {"malformed_boxes": 1, "missing": 0},
        ),
        "nested": (
            {"entities": [{"entity": "Leopard 2", "type": "vehicle", "boxes": [[[1, 2, 3, 4]]]}, ok]},
            {"malformed_boxes": 1},
        ),
        "x2<x1": (
            {"entities": [{"entity": "Leopard 2", "type": "vehicle", "boxes": [[50, 10, 10, 50]]}, ok]},
            {"degenerate_boxes": 1},
        ),
        "off image": (
            {"entities": [{"entity": "Leopard 2", "type": "vehicle", "boxes": [[900, 900, 990, 990]]}, ok]},
            {"degenerate_boxes": 1},
        ),
        "no boxes key": (
            {"entities": [{"entity": "Leopard 2", "type": "vehicle"}, ok]},
            {"bad_items": 1, "missing": 1},
        ),
        "invented": (
            {"entities": [{"entity": "Zeppelin", "type": "aircraft", "boxes": []}, ok]},
            {"invented": 1, "missing": 1},
        ),
        "not JSON": ("I think the tank is on the left.", {"bad_answers": 1, "missing": 0}),
        "wrong shape": ({"boxes": [1, 2]}, {"bad_answers": 1}),
    }
    for name, (content, want) in cases.items():
        found, counts = g.parse_answer(content, asked, orig, sent, "abs")
        assert set(counts) <= set(g.DEFECTS), name
        for k, v in want.items():
            assert counts[k] == v, (name, dict(counts))
        if not name.startswith(("not", "wrong")):
            assert found["NATO"] == [Box(10, 10, 50, 50)] and not found.get("Leopard 2"), name

    # Through the client: answers outside the schema are re-asked and end as failed calls; x2 < x1 fits the
    # schema and is dropped as degenerate; the other samples are grounded as usual.
    data = read_dataset(DEMO)
    queries = [s for s in unboxed(data.samples) if any(e.type != "location" for e in s.entities)][
        : len(cases)
    ]
    script = {q.text: content for q, (content, _) in zip(queries, cases.values())}

    def handler(body):
        text, listed = query_of(body)
        content = script[text]
        if isinstance(content, dict) and "entities" in content:  # aim the bad item at an asked entity
            items = [dict(it) for it in content["entities"]]
            if items[0]["entity"] != "Zeppelin":
                items[0]["entity"] = listed[0]["entity"]
            content = {"entities": items[:1]}
        return reply(content)

    with FakeServer(handler) as srv:
        client = Client(ClientConfig(base_url=srv.url, schema_retries=1, max_retries=0))
        out, counts, traces = ground(queries, data.samples, data, client, k=1)
    assert counts["calls"] == len(cases) and counts["failed_calls"] == len(cases) - 1
    failed = [t for t in traces.values() if t.outcome is g.Outcome.FAILED_CALL]
    assert len(failed) == len(cases) - 1 and all(t.error and not t.boxes for t in failed)
    assert counts["degenerate_boxes"] == 1 and client.usage.reasks == len(cases) - 1
    assert all(not e.boxes for s in out for e in s.entities)


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_unreadable_images_are_counted_and_get_no_box(kind, tmp_path, bag_of_words):
    """An empty, text, truncated or bomb image as a query and as a worked example: no traceback, the query
    makes no call and gets no box, a demo is shown without it; every other sample is grounded as usual."""
    data = read_dataset(DEMO)
    broken = [s for s in data.samples if s.entities][:2]
    for s in broken:
        s.image = str(tmp_path / f"{s.id}.jpg")
        write_bad_image(s.image, kind)
    queries = [s for s in unboxed(data.samples) if s.entities]
    with FakeServer(gold_handler(data, "abs")) as srv:
        out, counts, traces = ground(queries, data.samples, data, Client(ClientConfig(base_url=srv.url)))
    assert not srv.errors
    assert counts["image_errors"] == 2 and counts["calls"] == len(srv.requests) == len(queries) - 2
    assert [traces[s.id].outcome for s in broken] == [g.Outcome.IMAGE_ERROR] * 2
    assert all(s.image in traces[s.id].error for s in broken)
    shown = {x.sample.id for t in traces.values() for x in t.examples}
    assert not shown & {s.id for s in broken}  # a broken demo is not shown, so not listed
    dropped = {i: why for t in traces.values() for i, why in t.dropped.items()}
    assert 0 < len(dropped) <= 2 and set(dropped) <= {s.id for s in broken}  # when some query picks it
    assert all(s.image in why for s in broken for i, why in dropped.items() if i == s.id)
    assert counts["demo_image_errors"] == len(dropped)
    assert all(len(images_of(b)) <= 3 + 1 for b in srv.requests)
    by_id = {s.id: s for s in out}
    assert all(not e.boxes for s in broken for e in by_id[s.id].entities)
    good = [s for s in data.samples if s.entities and s not in broken]
    assert evaluate(good, [by_id[s.id] for s in good])["gmner"]["f1"] == 1.0
