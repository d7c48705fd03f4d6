"""labelling/suggest.py: doubt scores against hand-worked marginals, streaming, diversity, the round trip."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import demos
import formats
import refineg
from data import Entity, Sample
from formats import read_dataset
from images import smart_resize
from labelling import suggest

TAGS = ["O", "B-PER", "I-PER"]
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def sample(sid: str, marginals: list[list[float]], entities: list[Entity]) -> Sample:
    tokens = [f"w{k}" for k in range(len(marginals))]
    return Sample(sid, tokens, None, entities, marginals=np.array(marginals))


def test_entity_doubt_is_the_worst_entity_or_the_missed_score_when_higher():
    s = sample("a", [[0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.6, 0.4, 0.0]], [Entity(0, 2, "PER")])
    s.entities[0].uncertainty = 0.3
    score, why = suggest.doubt(s, TAGS, "entity")
    assert score == pytest.approx(0.4) and "'w2'" in why  # token 2 is outside the entity: 1 - P(O) = 0.4
    s.entities[0].uncertainty = 0.5
    score, why = suggest.doubt(s, TAGS, "entity")
    assert score == 0.5 and "'w0 w1' (PER)" in why


def test_mnlp_is_one_minus_the_geometric_mean_of_the_path_probabilities():
    s = sample("a", [[0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.6, 0.4, 0.0]], [Entity(0, 2, "PER")])
    expected = 1 - (0.8 * 0.7 * 0.6) ** (1 / 3)  # path B-PER I-PER O
    assert suggest.mnlp(s, TAGS) == pytest.approx(expected)


def fake_predict(doubts: dict[str, float], calls: list[int]):
    """tagger.predict's stand-in: one token per sample whose P(O) = 1 - its doubt (a missed-entity score)."""

    def predict(model, samples, **_):
        calls.append(len(samples))
        return [sample(s.id, [[1 - doubts[s.id], doubts[s.id], 0.0]], []) for s in samples]

    return predict


class Model:
    tags = TAGS


def test_pool_scoring_streams_in_chunks_and_keeps_only_the_best(monkeypatch):
    doubts = {f"s{k:02d}": (k * 37 % 23) / 23 for k in range(23)}
    calls: list[int] = []
    monkeypatch.setattr(suggest.tagger, "predict", fake_predict(doubts, calls))
    pool = [Sample(sid, ["x"]) for sid in doubts]
    config = suggest.SuggestConfig(strategy="missed", chunk=5)
    kept = suggest.score_pool(Model(), pool, 4, config)
    assert calls == [5, 5, 5, 5, 3]
    best = sorted(doubts, key=lambda i: -doubts[i])[:4]
    assert [k.sample.id for k in kept] == best
    assert all(
        k.sample.marginals is None for k in kept
    )  # nothing of the size of the pool's marginals is kept


def test_diversity_skips_a_near_duplicate_of_a_chosen_sample(monkeypatch):
    cands = [
        suggest.Suggestion(Sample(i, [i]), score, "") for i, score in (("a", 0.9), ("a2", 0.85), ("b", 0.7))
    ]
    emb = np.array([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0]])  # a2 is almost a; b is different
    monkeypatch.setattr(suggest, "embed_texts", lambda texts, encoder="": emb)
    plain = suggest.diverse(cands, 2, suggest.SuggestConfig(diversity=0.0))
    spread = suggest.diverse(cands, 2, suggest.SuggestConfig(diversity=0.5))
    assert [c.sample.id for c in plain] == ["a", "a2"]
    assert [c.sample.id for c in spread] == ["a", "b"]  # 0.85 - 0.5 * 0.995 < 0.7 - 0


def test_random_strategy_is_seeded_and_never_repeats():
    pool = [Sample(f"p{k}", ["x"]) for k in range(50)]
    one = suggest.suggest(None, pool, 10, suggest.SuggestConfig(strategy="random", seed=3))
    two = suggest.suggest(None, pool, 10, suggest.SuggestConfig(strategy="random", seed=3))
    assert [s.sample.id for s in one] == [s.sample.id for s in two]
    assert len({s.sample.id for s in one}) == 10


def split_demo(tmp_path: Path) -> tuple[Path, Path]:
    """The demo as 20 labelled samples and an unlabelled pool of the other 12 (no entity.json)."""
    texts = json.loads((DEMO / "text.json").read_text())
    labels = json.loads((DEMO / "entity.json").read_text())
    ids = sorted(texts)
    folders = []
    for name, part in (("labelled", ids[:20]), ("pool", ids[20:])):
        folder = tmp_path / name
        (folder / "images").mkdir(parents=True)
        (folder / "text.json").write_text(json.dumps({i: texts[i] for i in part}))
        if name == "labelled":
            (folder / "entity.json").write_text(json.dumps({i: labels.get(i, []) for i in part}))
        shutil.copy(DEMO / "types.txt", folder / "types.txt")
        for i in part:
            for image in (DEMO / "images").glob(f"{i}.*"):
                shutil.copy(image, folder / "images" / image.name)
        folders.append(folder)
    return folders[0], folders[1]


FAST = ["--tagger-epochs", "1", "--tagger-min-steps", "1", "--tagger-self-train-rounds", "0"]


def test_suggest_then_label_then_retrain_round_trip(tmp_path, capsys):
    labelled, pool = split_demo(tmp_path)
    out = tmp_path / "run"
    args = ["--data", str(labelled), "--unlabelled", str(pool), "--suggest", "4", "--out", str(out)]
    assert refineg.main(args + ["--tagger-epochs", "3", "--tagger-self-train-rounds", "0"]) == 0
    ranks = [json.loads(line) for line in (out / "suggested.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in ranks] == [1, 2, 3, 4] and all(r["why"] for r in ranks)
    keys = [r["ranked_by"] for r in ranks]
    assert keys == sorted(keys, reverse=True)  # the greedy key falls down the list; the doubt need not
    assert all(r["ranked_by"] <= r["score"] + 1e-9 for r in ranks)  # the diversity penalty is >= 0
    assert all('"bnd" left null says "not in the image"' in r["boxes"] for r in ranks)
    suggested = read_dataset(out / "suggested")
    pool_ids = {s.id for s in read_dataset(pool).samples}
    assert [s.id for s in suggested.samples] == [r["id"] for r in ranks]
    assert {s.id for s in suggested.samples} <= pool_ids
    assert all(s.image for s in suggested.samples)  # the pool's images travel with the suggestions
    assert suggested.types == read_dataset(labelled).types
    # the tagger that chose learnt every label, so nothing was held out to score, and the run says so
    seen = json.loads((out / "tagger" / "trained_on.json").read_text())
    assert seen["samples"] == 20 and sorted(seen["ids"]) == sorted(
        s.id for s in read_dataset(labelled).samples
    )
    assert json.loads((out / "metrics.json").read_text())["scored"]["samples"] == 0
    printed = capsys.readouterr().out
    assert "nothing scored: with --suggest and no --test" in printed
    assert "chosen by the tagger trained on all 20 labelled samples" in printed
    joined = formats.join([read_dataset(labelled), suggested], ["labelled", "suggested"])
    assert len(joined.samples) == 24


def ranks(out: Path) -> list[tuple[str, float]]:
    """(id, doubt) of each suggestion of a run, best first."""
    rows = [json.loads(line) for line in (out / "suggested.jsonl").read_text().splitlines()]
    return [(r["id"], r["score"]) for r in rows]


def test_the_pool_is_ranked_by_the_tagger_before_it_self_trained_on_the_pool(tmp_path, capsys):
    """A tagger self-trained on the pool is sure of its own pseudo labels there, so it cannot rank the pool.
    Oracle: the same run without self-training (0 rounds) trains the very tagger self-training starts from
    (same seed, same data), so both runs must suggest the same samples with the same doubts; and so must
    that run's chooser/ passed as --tagger, while its self-trained tagger/ is said to be the wrong one."""
    labelled, pool = split_demo(tmp_path)
    base = ["--data", str(labelled), "--unlabelled", str(pool), "--suggest", "4"]
    base += ["--tagger-epochs", "1", "--tagger-min-steps", "1"]
    keep_all = ["--tagger-self-train-rounds", "1", "--tagger-self-train-epochs", "1"]
    keep_all += ["--tagger-self-train-tau", "1", "--tagger-self-train-missed", "1"]
    plain, selftrained = tmp_path / "plain", tmp_path / "self"
    assert refineg.main(base + ["--out", str(plain), "--tagger-self-train-rounds", "0"]) == 0
    assert not (plain / "chooser").exists()  # no self-training: the tagger itself chooses
    assert refineg.main(base + ["--out", str(selftrained), *keep_all]) == 0
    rounds = json.loads((selftrained / "tagger" / "stage.json").read_text())["self_training"]
    assert rounds[-1]["pseudo_sentences"] == 12  # it did learn all 12 pool samples' pseudo labels
    assert ranks(selftrained) == ranks(plain) and any(score > 0 for _, score in ranks(plain))
    assert "before its self-training on the pool (chooser/)" in capsys.readouterr().out
    assert refineg.main(base + ["--out", str(selftrained), *keep_all]) == 0
    assert capsys.readouterr().out.count("reused (same settings and data)") == 2  # the chooser and tagger
    assert ranks(selftrained) == ranks(plain)
    for which, warned in (("tagger", True), ("chooser", False)):
        again = [*base[:6], "--tagger", str(selftrained / which), "--out", str(tmp_path / which)]
        assert refineg.main(again) == 0
        assert ("was self-trained on unlabelled text" in capsys.readouterr().out) == warned
    assert ranks(tmp_path / "chooser") == ranks(plain)


def annotate(suggested: Path, folder: Path) -> Path:
    """The annotator's part: the suggested folder with its entities replaced by the demo's gold."""
    shutil.copytree(suggested, folder)
    ids = json.loads((folder / "text.json").read_text())
    gold = json.loads((DEMO / "entity.json").read_text())
    (folder / "entity.json").write_text(json.dumps({i: gold.get(i, []) for i in ids}))
    return folder


def test_three_rounds_of_the_readme_loop_score_the_same_test_and_never_suggest_twice(tmp_path, capsys):
    labelled, pool = split_demo(tmp_path)
    test = tmp_path / "test"  # a fixed test set: 6 labelled samples moved out of the labelled folder
    shutil.copytree(labelled, test)
    texts = json.loads((labelled / "text.json").read_text())
    entities = json.loads((labelled / "entity.json").read_text())
    held = sorted(texts)[:6]
    for folder, keep in ((labelled, lambda i: i not in held), (test, lambda i: i in held)):
        (folder / "text.json").write_text(json.dumps({i: t for i, t in texts.items() if keep(i)}))
        (folder / "entity.json").write_text(json.dumps({i: e for i, e in entities.items() if keep(i)}))
    data, chosen = ["--data", str(labelled)], set()
    for round_ in (1, 2, 3):
        out = tmp_path / f"round{round_}"
        args = [*data, "--test", str(test), "--unlabelled", str(pool), "--suggest", "4", "--out", str(out)]
        assert refineg.main(args + FAST) == 0
        printed = capsys.readouterr().out
        ids = {json.loads(line)["id"] for line in (out / "suggested.jsonl").read_text().splitlines()}
        assert len(ids) == 4 and not ids & chosen  # the pool keeps the samples labelled: they are left out
        assert (f"{len(chosen)} pool samples are already labelled (left out)" in printed) == bool(chosen)
        chosen |= ids
        scored = json.loads((out / "metrics.json").read_text())["scored"]
        assert scored["samples"] == 6 and scored["test"] == str(test)  # every round on the same 6
        assert json.loads((out / "tagger" / "trained_on.json").read_text())["samples"] == 14 + 4 * (
            round_ - 1
        )
        data += ["--data", str(annotate(out / "suggested", tmp_path / f"labelled{round_}"))]


def test_a_reused_tagger_is_never_scored_on_what_it_learnt(tmp_path, capsys):
    labelled, pool = split_demo(tmp_path)
    out = tmp_path / "run"
    args = ["--data", str(labelled), "--unlabelled", str(pool), "--suggest", "4", "--out", str(out)]
    assert refineg.main(args + FAST) == 0
    again = ["--data", str(labelled), "--tagger", str(out / "tagger"), "--out", str(tmp_path / "again")]
    assert refineg.main(again) == 2  # its hold-out is 6 of the 20 samples it trained on
    assert "was trained on every sample of the held-out split of --data" in capsys.readouterr().err
    mixed = annotate(out / "suggested", tmp_path / "mixed")  # 4 unseen samples, then 3 it learnt from
    texts = json.loads((mixed / "text.json").read_text())
    seen = read_dataset(labelled).samples[:3]
    texts |= {s.id: {"text": " ".join(s.tokens)} for s in seen}
    (mixed / "text.json").write_text(json.dumps(texts))
    gold = json.loads((DEMO / "entity.json").read_text())
    (mixed / "entity.json").write_text(json.dumps({i: gold.get(i, []) for i in texts}))
    for s in seen:
        for image in (labelled / "images").glob(f"{s.id}.*"):
            shutil.copy(image, mixed / "images" / image.name)
    rest = shutil.copytree(labelled, tmp_path / "rest")  # --data without them: a --test in --data is refused
    for name in ("text.json", "entity.json"):
        kept = {i: v for i, v in json.loads((labelled / name).read_text()).items() if i not in texts}
        (rest / name).write_text(json.dumps(kept))
    third = ["--data", str(rest), *again[2:-1], str(tmp_path / "third"), "--test", str(mixed)]
    assert refineg.main(third) == 0
    assert "3 samples of --test" in capsys.readouterr().out
    assert json.loads((tmp_path / "third" / "metrics.json").read_text())["scored"]["samples"] == 4


def test_suggest_ground_needs_suggest_and_an_mllm(capsys):
    with pytest.raises(SystemExit) as stop:
        refineg.main(["--data", str(DEMO), "--suggest-ground"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--suggest-ground: expected --suggest N too" in err
    assert "--suggest-ground: expected an MLLM to draw the boxes (--llm-url URL)" in err


@pytest.mark.parametrize(
    "change, message",
    [
        (["--suggest", "40"], "--suggest 40: the pool (--unlabelled) has only 12 samples"),
        (["--unlabelled", "LABELLED"], "--unlabelled: every pool sample is already in the labelled data"),
        (["--unlabelled", "CLASH"], "--unlabelled: 1 pool ids name another text in the labelled data"),
        (["--unlabelled", "EMPTY"], "--unlabelled: the pool to suggest from is empty"),
    ],
)
def test_a_pool_that_cannot_serve_the_request_is_one_error_line(tmp_path, capsys, change, message):
    labelled, pool = split_demo(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "text.json").write_text("{}")
    shutil.copy(DEMO / "types.txt", empty / "types.txt")
    clash = tmp_path / "clash"  # the pool, one of its ids renamed to a labelled id
    shutil.copytree(pool, clash)
    texts = json.loads((clash / "text.json").read_text())
    moved, text = texts.popitem()
    taken = read_dataset(labelled).samples[0].id
    texts[taken] = text
    for image in (clash / "images").glob(f"{moved}.*"):  # its image moves with it
        image.rename(image.with_stem(taken))
    (clash / "text.json").write_text(json.dumps(texts))
    swap = {"LABELLED": str(labelled), "EMPTY": str(empty), "CLASH": str(clash)}
    args = [
        "--data",
        str(labelled),
        "--unlabelled",
        str(pool),
        "--suggest",
        "4",
        "--out",
        str(tmp_path / "o"),
    ]
    args += [swap.get(a, a) for a in change]
    assert refineg.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1


def test_bad_suggest_settings_are_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as stop:
        refineg.main(["--data", str(DEMO), "--suggest", "3", "--suggest-strategy", "loud"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--unlabelled: expected the pool to suggest from" in err
    assert "--suggest-strategy: expected entity or mnlp or missed or random, got 'loud'" in err


def test_suggest_ground_and_the_grounding_stage_embed_the_worked_examples_once(tmp_path, monkeypatch):
    """With --test, --suggest and --suggest-ground, both the suggestions and the test samples are grounded
    after worked examples chosen from the same labelled samples: they are embedded once in the run."""
    from test_pipeline import oracle

    from servers.fake_mllm import FakeServer

    labelled, pool = split_demo(tmp_path)
    test = tmp_path / "test"
    shutil.copytree(labelled, test)
    for folder, keep in ((labelled, slice(0, 16)), (test, slice(16, 20))):
        for name in ("text.json", "entity.json"):
            records = json.loads((folder / name).read_text())
            (folder / name).write_text(json.dumps(dict(sorted(records.items())[keep])))
    calls = []
    embed_pool = demos.embed_pool
    monkeypatch.setattr(demos, "embed_pool", lambda *args: calls.append(args) or embed_pool(*args))
    args = ["--data", str(labelled), "--test", str(test), "--unlabelled", str(pool), "--suggest", "4"]
    args += ["--out", str(tmp_path / "run"), "--no-synthesize", "--no-refine", "--suggest-ground", *FAST]
    with FakeServer(oracle) as srv:
        assert refineg.main(args + ["--llm-url", srv.url]) == 0
    usage = json.loads((tmp_path / "run" / "usage.json").read_text())["llm"]
    assert usage["suggestion grounding"]["calls"] > 0 and usage["grounding"]["calls"] > 0
    assert len(calls) == 1 and [s.id for s in calls[0][0]] == sorted(
        json.loads((labelled / "text.json").read_text())
    )


def test_suggest_ground_predraws_the_mllm_boxes_and_counts_its_calls(tmp_path, capsys):
    from test_pipeline import gold_boxes, oracle  # the scripted MLLM that answers with the demo's gold boxes

    from servers.fake_mllm import FakeServer

    labelled, pool = split_demo(tmp_path)
    out = tmp_path / "run"
    args = ["--data", str(labelled), "--unlabelled", str(pool), "--suggest", "4", "--out", str(out)]
    args += ["--tagger-epochs", "3", "--tagger-self-train-rounds", "0", "--no-synthesize", "--suggest-ground"]
    with FakeServer(oracle) as srv:
        assert refineg.main(args + ["--llm-url", srv.url]) == 0
    suggested = read_dataset(out / "suggested").samples
    asked = [s for s in suggested if any(e.type != "location" for e in s.entities)]  # location: never boxed
    assert asked, "the tagger found no entity in the suggestions: nothing was grounded"
    calls = json.loads((out / "usage.json").read_text())["llm"]["suggestion grounding"]["calls"]
    assert calls == len(asked)  # one call per suggested sample with an entity (each has an image)
    boxes = gold_boxes()
    for s in asked:
        w, h = Image.open(s.image).size
        sent_h, sent_w = smart_resize(h, w)  # abs: the image went at Qwen2.5-VL's size, its pixels came back
        for e in s.entities:  # each box drawn is the MLLM's answer for that name, in original pixels
            answer = boxes.get((s.text, s.name(e)), [])
            scaled = [
                [b[0] * w / sent_w, b[1] * h / sent_h, b[2] * w / sent_w, b[3] * h / sent_h] for b in answer
            ]
            got = [[b.x1, b.y1, b.x2, b.y2] for b in e.boxes]  # whole pixels, enclosing the answer's box
            assert all(v == int(v) for b in got for v in b)
            assert np.allclose(got, scaled, atol=1.0) if scaled else got == []
            for g, a in zip(got, scaled):
                assert (
                    g[0] <= a[0] + 1e-6
                    and g[1] <= a[1] + 1e-6
                    and g[2] >= a[2] - 1e-6
                    and g[3] >= a[3] - 1e-6
                )
    assert any(e.boxes for s in asked for e in s.entities)  # not only empty answers
    ranks = [json.loads(line) for line in (out / "suggested.jsonl").read_text().splitlines()]
    by_id = {s.id: s for s in suggested}
    for r in ranks:  # what each sample's boxes are, from grounding's trace
        said = "drawn by the MLLM after worked examples" if by_id[r["id"]] in asked else "no entity to box"
        assert r["boxes"].startswith(said)
