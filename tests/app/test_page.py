"""app/page.py: a run's trace.jsonl and report.html against what the run wrote and scored.

A tiny tagger (a 2-layer BERT built here, one step) stands behind refineg.py; its predictions are
replaced by the held-out gold with every third entity dropped (missed), the others sure or unsure
by turn, so the stages have known work: the unsure ones (uncertainty > tau) go to the simulated
MLLM (servers/simulated_mllm.py, accuracy 0.6), which keeps, changes or rejects them and draws
boxes, some wrong. The trace must agree with predictions.json (entities and boxes per sample) and
metrics.json (what was delegated, decided, and the GMNER false negatives); the page must show every
sample (or the N with the most mistakes), escape hostile text, and say SIMULATION when it was one. Its
thumbnails link to the full images, number their boxes as the legend under them says, and keep a gold box
visible under the prediction drawn on it.
"""

import json
import shutil
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from hostile import write_bad_image
from PIL import Image

import data
import eval as scorer
import refineg
from app import page, report
from app.counts import refinement_counts
from data import Box, Entity, Sample
from formats import ccks
from grounding import GroundingTrace, WorkedExample
from grounding import Outcome as Grounded
from refinement import Call, Decision, Outcome, RefinementTrace
from servers.simulated_mllm import SimConfig, SimulatedMLLM

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
TAU = 0.3  # the stand-in's unsure entities (marginal 0.5) are above it, the sure ones (0.95) below


def tiny_encoder(folder: Path) -> str:
    """A random 2-layer BERT with a WordPiece vocabulary of a few words (every other word is [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "of", "tanks", "near", "."]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    special = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    PreTrainedTokenizerFast(tokenizer_object=tok, mask_token="[MASK]", **special).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return str(folder)


def stand_in(model, samples: list[Sample], mc_passes: int = 0) -> list[Sample]:
    """For tagger.predict: each sample's gold entities with entity k dropped when k % 3 == 2, sure
    (marginal 0.95 on its tags) when k % 3 == 0, unsure (0.5) when k % 3 == 1."""
    scheme = "BIOES" if any(t.startswith("S-") for t in model.tags) else "BIO"
    out = []
    for s in samples:
        kept = [(k, e) for k, e in enumerate(s.entities) if k % 3 != 2]
        tags = data.spans_to_tags(len(s.tokens), [e for _, e in kept], scheme)
        sure = np.full(len(tags), 0.95)
        for k, e in kept:
            sure[e.start : e.end] = 0.95 if k % 3 == 0 else 0.5
        m = np.tile(((1 - sure) / (len(model.tags) - 1))[:, None], (1, len(model.tags)))  # (T, K)
        m[np.arange(len(tags)), [model.tags.index(t) for t in tags]] = sure
        ents = [Entity(e.start, e.end, e.type, source="tagger") for _, e in kept]
        out.append(Sample(s.id, s.tokens, s.image, ents, marginals=m))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(a run without MLLM, a run with the simulated MLLM) on the demo's held-out split."""
    root = tmp_path_factory.mktemp("page")
    encoder = tiny_encoder(root / "bert")
    tiny = ["--tagger-encoder", encoder, "--tagger-epochs", "1", "--tagger-min-steps", "1"]
    plain = root / "plain"
    assert refineg.main(["--data", str(DEMO), "--out", str(plain), *tiny, "--no-tagger-progress"]) == 0
    gold = ccks.read_ccks(DEMO).samples
    sizes = {s.id: Image.open(s.image).size for s in gold}
    sim = root / "sim"
    config = SimConfig(refine_accuracy=0.6, ground_accuracy=0.6, seed=2)
    with pytest.MonkeyPatch.context() as mp, SimulatedMLLM(gold, sizes, config) as server:
        mp.setattr(refineg.tagger, "predict", stand_in)
        argv = ["--data", str(DEMO), "--out", str(sim), "--tagger", str(plain / "tagger")]
        argv += ["--llm-url", server.url, "--llm-model", "simulated-mllm", "--unc-tau", str(TAU)]
        assert refineg.main([*argv, "--ground-encoder", encoder, "--ground-k", "2"]) == 0
    return plain, sim


def html_of(out: Path) -> str:
    return (out / "report.html").read_text(encoding="utf-8")


def test_the_trace_agrees_with_predictions_and_metrics(runs):
    """Per sample: one predictions.json record per final entity and box (an entity with no box is one
    record), the same names and labels; over the run: the delegated entities, the decisions and the GMNER
    false negatives that metrics.json counted."""
    _, sim = runs
    trace = page.read_trace(sim / "trace.jsonl")
    pred = json.loads((sim / "predictions.json").read_text())
    metrics = json.loads((sim / "metrics.json").read_text())
    assert [r["id"] for r in trace] == list(pred)
    for r in trace:
        names = Counter((e["name"], e["type"]) for e in r["final"] for _ in e["boxes"] or [None])
        assert names == Counter((x["name"], x["label"]) for x in pred[r["id"]]), r["id"]
        assert sum(len(e["boxes"]) for e in r["final"]) == sum(x["bnd"] is not None for x in pred[r["id"]])
        assert all(e["to_mllm"] == (e["uncertainty"] > TAU) for e in r["tagger"])
        sent = [e for e in r["tagger"] if e["to_mllm"]]
        assert len(sent) == len((r["refinement"] or {"decisions": []})["decisions"])
        assert r["grounding"]["outcome"] in (Grounded.ANSWERED.value, Grounded.NO_ENTITY.value)
        assert all(
            len(r["grounding"]["examples"]) == 2
            for r in trace
            if r["grounding"]["outcome"] == Grounded.ANSWERED.value
        )
    stages = metrics["stages"]
    assert sum(e["to_mllm"] for r in trace for e in r["tagger"]) == stages["uncertainty"]["delegated"] > 0
    decided = Counter(d["decision"] for r in trace if r["refinement"] for d in r["refinement"]["decisions"])
    assert dict(decided) == {k: stages["refinement"][k] for k in decided}
    assert len(decided) >= 2  # the simulated MLLM at 0.6 does not only keep
    wrong = Counter(k for r in trace for k, v in r["mistakes"].items() for _ in v)
    assert (
        wrong["missed"] + wrong["wrong_type"] + wrong["wrong_box"]
        == metrics["metrics"]["final"]["gmner"]["fn"]
    )
    assert wrong["missed"] > 0 and wrong["wrong_box"] > 0
    assert {"trace.jsonl", "report.html"} <= set(metrics["written"])


def test_the_page_shows_every_sample_with_its_boxes_and_says_simulation(runs):
    _, sim = runs
    trace = page.read_trace(sim / "trace.jsonl")
    html = html_of(sim)
    assert "<title>ReFineG run sim (SIMULATION)</title>" in html and '<p class="sim">SIMULATION' in html
    assert html.count('<section class="card">') == len(trace) == 10
    thumbs = sorted((sim / "report").iterdir())
    assert len(thumbs) == sum(1 for r in trace if r["image"]) and html.count('<img src="report/') == len(
        thumbs
    )
    for p in thumbs:
        with Image.open(p) as im:
            assert max(im.size) == page.THUMB_SIDE
    cards = html.split('<section class="card">')[1:]
    for r, c in zip(trace, cards):  # in trace order, one card each, its lines marking each entity once
        fig, body = c.split('<div class="body">')
        assert f"<h3>{r['id']} " in body
        prediction = body.split('<p class="line"><b>prediction</b>')[1].split("</p>")[0]
        gold = body.split('<p class="line"><b>gold</b>')[1].split("</p>")[0]
        assert (prediction.count("<mark "), gold.count("<mark ")) == (len(r["final"]), len(r["gold"]))
        assert body.count("<li>") == page.mistake_count(r)
        figure_says_what_is_drawn(sim, r, fig)
    assert page.BOX_KEY in html and "MLLM reasoning" in html and "Worked examples" in html
    both = '<span class="by p">prediction</span> <span class="by g">gold</span>'
    assert both in html and '<span class="by p">prediction</span></li>' in html  # a wrong box: no gold


def figure_says_what_is_drawn(out: Path, r: dict, fig: str) -> None:
    """A card's figure: its thumbnail links to the original image by a path relative to report.html, its
    legend lists each number drawn once, in order, and the entities without a box are named."""
    href = fig.split('<a href="')[1].split('"')[0]
    assert not href.startswith(("/", "file:")) and (out / unquote(href)).resolve() == Path(r["image"])
    legend = fig.split('<ul class="legend">')[1].split("</ul>")[0] if page.box_keys(r) else ""
    assert legend.count("<li>") == len(page.box_keys(r))
    numbers = [int(li.split("</span>")[0]) for li in legend.split('<li><span class="key">')[1:]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert ("<b>Predicted without a box:</b>" in fig) == any(not e["boxes"] for e in r["final"])
    assert ("<b>Gold without a box:</b>" in fig) == any(not e["boxes"] for e in r["gold"])


def test_box_keys_number_spans_with_a_box_prediction_first():
    """The docstring's example: prediction (0, 1), (3, 5) boxed and (8, 9) not; gold (3, 5), (6, 7)."""
    boxed = {"boxes": [[1, 2, 3, 4]]}
    final = [
        {"start": 0, "end": 1, **boxed},
        {"start": 3, "end": 5, **boxed},
        {"start": 8, "end": 9, "boxes": []},
    ]
    gold = [{"start": 3, "end": 5, **boxed}, {"start": 6, "end": 7, **boxed}]
    assert page.box_keys({"final": final, "gold": gold}) == {(0, 1): 1, (3, 5): 2, (6, 7): 3}
    assert page.box_keys({"final": final, "gold": None}) == {(0, 1): 1, (3, 5): 2}


def test_image_link_is_relative_to_the_report_and_a_file_uri_when_it_cannot_be(tmp_path, monkeypatch):
    image = tmp_path / "data" / 'a b"<x>.jpg'
    out = tmp_path / "runs" / "r1"
    assert page.image_link(str(image), out) == "../../data/a%20b%22%3Cx%3E.jpg"
    monkeypatch.setattr(page.os.path, "relpath", lambda *a: (_ for _ in ()).throw(ValueError("drive")))
    assert page.image_link(str(image), out) == image.as_uri()


def test_a_gold_box_stays_visible_under_the_prediction_drawn_on_it(tmp_path):
    """One entity predicted on exactly its gold box, on a dark grey image: the prediction's solid red edge
    is on the box, gold's green and white dashes just outside it; each carries its number on a filled tag
    (red top-left, green bottom-right) at least 10 px high in white; unkeyed, the names are drawn instead and
    a black band names the predictions without a box."""
    path = tmp_path / "dark.png"
    Image.new("RGB", (400, 300), (40, 40, 40)).save(path)
    box = Box(100, 80, 300, 220)
    pred = Sample("s", ["Leopard", "2", "and", "Puma"], str(path), [Entity(0, 2, "vehicle", [box])])
    gold = Sample("s", pred.tokens, str(path), [Entity(0, 2, "vehicle", [box])])
    img = report.picture(pred, gold, keys={(0, 2): 1})
    px = img.load()
    assert px[100, 150] == report.PRED and px[101, 150] == report.PRED  # the left edge, 2 px
    outside = {px[98, y] for y in range(100, 200)}
    assert outside == {report.GOLD, report.WHITE}  # dashes just outside, both colours
    assert white_rows(img, (100, 80, 130, 110), report.PRED) >= 10  # the top-left tag: the number
    assert white_rows(img, (270, 190, 300, 220), report.GOLD) >= 10  # the bottom-right tag
    pred.entities.append(Entity(3, 4, "vehicle"))
    named = report.picture(pred, gold)
    assert named.load()[200, 299] == (0, 0, 0) and white_rows(named, (0, 260, 400, 300), (0, 0, 0)) >= 10
    assert red_inside(named) > 4 * red_inside(img)  # "Leopard 2 (vehicle)" on a tag much wider than "1"


def red_inside(img: Image.Image) -> int:
    """The red pixels inside the test's box, its edges left out: the prediction's tag."""
    px = img.load()
    return sum(px[x, y] == report.PRED for x in range(102, 298) for y in range(82, 218))


def white_rows(img: Image.Image, area: tuple[int, int, int, int], ground: tuple[int, int, int]) -> int:
    """How many rows of `area` hold white text on `ground`: the height of the tag's text in pixels."""
    x1, y1, x2, y2 = area
    px = img.load()
    rows = [[px[x, y] for x in range(x1, x2)] for y in range(y1, y2)]
    tags = [row for row in rows if ground in row and any(min(p) > 200 for p in row)]
    return len(tags)


def test_without_an_mllm_the_page_shows_the_tagger_and_says_the_stages_were_skipped(runs):
    plain, _ = runs
    html = html_of(plain)
    trace = page.read_trace(plain / "trace.jsonl")
    assert "SIMULATION" not in html and "The MLLM stages were skipped" in html
    assert all(r["refinement"] is None and r["grounding"] is None for r in trace)
    assert not any(e["to_mllm"] for r in trace for e in r["tagger"])
    assert html.count('<section class="card">') == len(trace) and "Grounding did not run" in html


@pytest.mark.parametrize("n", [3, 0])
def test_a_large_run_shows_only_the_samples_with_the_most_mistakes(runs, tmp_path, n):
    _, sim = runs
    for name in ("trace.jsonl", "metrics.json", "usage.json", "config.json"):
        shutil.copy(sim / name, tmp_path / name)
    page.write_page(tmp_path, n)
    html = html_of(tmp_path)
    trace = page.read_trace(tmp_path / "trace.jsonl")
    most = sorted((page.mistake_count(r) for r in trace), reverse=True)[:n]
    assert html.count('<section class="card">') == n and len(list((tmp_path / "report").iterdir())) == n
    shown = [r for r in trace if f"<h3>{r['id']} " in html]
    assert sorted((page.mistake_count(r) for r in shown), reverse=True) == most
    assert f"trace.jsonl holds all {len(trace)}" in html


def test_the_refinement_line_reads_each_count_by_its_key():
    """refinement_counts of one answered call (one entity re-typed, one sure) prints as the line below; the
    line indexes every count it reads, so a key counts no longer gives (renamed, misspelt) is a KeyError,
    never a silent 0."""
    e = Entity(0, 1, "vehicle", delegated=True)
    trace = RefinementTrace(Call.ANSWERED, 2, [Decision(e, Outcome.CHANGE_TYPE, e)], [], [])
    n = {"tau": 0.5, **refinement_counts({"a": trace})}
    assert report.refinement_line(n) == (
        "refinement: 1 of 2 entities delegated (uncertainty > tau 0.5), checked in 1 calls: 0 kept, "
        "1 changed (1 type, 0 span), 0 rejected"
    )
    read = ["tau", "delegated", "entities", "calls", "keep", "change_type", "change_span", "reject", "added"]
    for key in [*read, "kept_by_fallback"]:
        with pytest.raises(KeyError):
            report.refinement_line({k: v for k, v in n.items() if k != key})


HOSTILE = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', "&amp; </table>"]


def test_hostile_text_is_escaped_everywhere(tmp_path):
    """Tokens, types, ids, reasoning, errors and demo ids carrying HTML reach the page only escaped, and
    the trace keeps them verbatim; a broken image gets no thumbnail and breaks nothing."""
    bomb = tmp_path / "bomb.jpg"
    write_bad_image(bomb, "bomb")
    tokens = ["Leopard", *HOSTILE, "."]
    e = Entity(1, 2, "<i>type</i>", uncertainty=0.9, delegated=True)
    tagged = Sample('id"<b>', tokens, str(bomb), [e])
    final = Sample(tagged.id, tokens, str(bomb), [Entity(1, 3, "<i>type</i>", [Box(1, 2, 3, 4)])])
    gold = Sample(tagged.id, tokens, str(bomb), [Entity(0, 1, HOSTILE[1])])
    decided = [Decision(e, Outcome.CHANGE_SPAN, final.entities[0])]
    refined = RefinementTrace(Call.ANSWERED, 1, decided, [], [], HOSTILE[0], HOSTILE[2])
    example = WorkedExample(Sample(HOSTILE[0], ["x"]), 1.0, None, 0.5, 0.7)
    grounded = GroundingTrace(Grounded.FAILED_CALL, {HOSTILE[1]: "x"}, [example], {}, HOSTILE[0])
    traces = {"refinement": {tagged.id: refined}, "grounding": {tagged.id: grounded}}
    page.write_trace(tmp_path, [tagged], [final], [gold], traces)
    page.write_page(tmp_path, 5)
    html = html_of(tmp_path)
    for bad in ["<script", "<img src=x", 'id"<b>', "<i>", "&amp; </table>"]:
        assert bad not in html, bad
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html and "&lt;i&gt;type&lt;/i&gt;" in html
    assert "<h3>id&quot;&lt;b&gt; " in html and "&amp;amp; &lt;/table&gt;" in html
    r = page.read_trace(tmp_path / "trace.jsonl")[0]
    assert r["refinement"]["reasoning"] == HOSTILE[0] and r["tokens"] == tokens and r["image_size"] is None
    assert "no image" in html and not list((tmp_path / "report").iterdir())
    assert [k for k, v in r["mistakes"].items() if v] == ["missed", "spurious"]


def test_report_samples_caps_the_page_of_a_run(runs, tmp_path):
    plain, _ = runs
    argv = ["--data", str(DEMO), "--out", str(tmp_path), "--tagger", str(plain / "tagger")]
    assert refineg.main([*argv, "--report-samples", "2"]) == 0
    assert (
        html_of(tmp_path).count('<section class="card">') == 2
        and len(list((tmp_path / "report").iterdir())) == 2
    )
    assert len(page.read_trace(tmp_path / "trace.jsonl")) == 10  # the trace keeps every sample


def test_mistakes_name_each_gmner_false_negative_and_each_unmatched_prediction():
    """page.mistakes on the hand-worked example of tests/method/test_eval.py, sample by sample: in a, g2 has
    the wrong type (p2 names it) and g3 the wrong box (p3); in b, g4 a box it should not have; in c, p5 names
    nothing. Sample d adds a miss and a duplicate: gold (0,1) PER and (4,5) LOC, predicted (0,1) PER twice ->
    (4,5) missed, the second copy spurious. Per sample, missed + wrong type + wrong box = evaluate's GMNER
    FN."""

    def S(sid: str, entities: list[Entity]) -> Sample:
        return Sample(sid, [f"w{i}" for i in range(10)], None, entities)

    def E(start: int, end: int, typ: str, *boxes: Box) -> Entity:
        return Entity(start, end, typ, list(boxes))

    A = Box(0, 0, 10, 10)
    gold = [
        S("a", [E(0, 2, "PER", A), E(3, 4, "LOC"), E(5, 7, "ORG", Box(20, 20, 40, 40))]),
        S("b", [E(0, 1, "PER")]),
        S("c", []),
        S("d", [E(0, 1, "PER"), E(4, 5, "LOC")]),
    ]
    pred = [
        S("a", [E(0, 2, "PER", A), E(3, 4, "ORG"), E(5, 7, "ORG", Box(30, 30, 50, 50))]),
        S("b", [E(0, 1, "PER", Box(0, 0, 5, 5))]),
        S("c", [E(2, 3, "LOC")]),
        S("d", [E(0, 1, "PER"), E(0, 1, "PER")]),
    ]
    want = [
        {"wrong_type": [(1, 1)], "wrong_box": [(2, 2)]},
        {"wrong_box": [(0, 0)]},
        {"spurious": [(-1, 0)]},
        {"missed": [(1, -1)], "spurious": [(-1, 1)]},
    ]
    for g, p, w in zip(gold, pred, want):
        got = page.mistakes(g, p)
        assert {k: v for k, v in got.items() if v} == w, g.id
        fn = scorer.evaluate([g], [p])["gmner"]["fn"]
        assert len(got["missed"]) + len(got["wrong_type"]) + len(got["wrong_box"]) == fn
