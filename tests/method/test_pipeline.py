"""refineg.py end to end on examples/demo: without a server, and with a scripted oracle MLLM.

The oracle knows the demo's gold: synthesis gets two sentences per seed, refinement keeps
every delegated entity, grounding answers the gold boxes of the asked names (in `abs`
pixels of the image as sent, which for the demo's <= 640 px images is the original).
"""

import dataclasses
import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data
import formats
import llm
import refineg
from app import inputs
from app.cli import RunConfig
from app.score import read_prediction
from formats import ccks
from servers.fake_mllm import FakeServer, chaos, reply

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
FAST = ["--tagger-epochs", "3", "--no-tagger-progress"]


def gold_boxes() -> dict[tuple[str, str], list[list[float]]]:
    """(text, name) -> gold boxes, from the demo's own files."""
    gold = ccks.read_ccks(DEMO)
    out = {}
    for s in gold.samples:
        for e in s.entities:
            out.setdefault(
                (s.text, s.name(e)), [[round(v) for v in (b.x1, b.y1, b.x2, b.y2)] for b in e.boxes]
            )
    return out


def oracle(body: dict) -> dict:
    props = body["response_format"]["json_schema"]["schema"]["properties"]
    last = body["messages"][-1]["content"]
    text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if p["type"] == "text")
    if "samples" in props:  # synthesis: reuse the seed's entities in two new sentences
        names = re.findall(r'^- "(.+)" \((\w+)\)$', text, flags=re.M)
        items = [
            {
                "text": f"{pre} {' and '.join(n for n, _ in names) or 'the crew'} {post}",
                "entities": [{"name": n, "type": t} for n, t in names],
            }
            for pre, post in (
                ("Reporters photographed", "during the exercise ."),
                ("Yesterday", "took part in a long parade ."),
            )
        ]
        return reply({"samples": items})
    if "decisions" in props:  # refinement: keep every delegated entity
        ids = re.findall(r"^\[(\d+)\] \"(.+)\" \((\w+)\)$", text, flags=re.M)
        return reply(
            {
                "reasoning": "looks right",
                "decisions": [{"id": int(i), "action": "keep", "span": n, "type": t} for i, n, t in ids],
            }
        )
    if "entities" in props:  # grounding: the gold boxes of the asked names
        query = re.search(r"^Text: (.*)$", text, flags=re.M).group(1)
        asked = json.loads(re.search(r"^Entities: (.*)$", text, flags=re.M).group(1))
        boxes = gold_boxes()
        return reply(
            {
                "entities": [
                    {"entity": a["entity"], "type": a["type"], "boxes": boxes.get((query, a["entity"]), [])}
                    for a in asked
                ]
            }
        )
    raise AssertionError(f"unexpected request schema {sorted(props)}")


def reuse_tagger(trained: Path, out, *more: str) -> list[str]:
    """refineg.py's arguments for a run on the demo that reuses the tagger trained once for this module."""
    return ["--data", str(DEMO), "--tagger", str(trained / "tagger"), "--out", str(out), *more]


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tagger for the tests that do not exercise training (saves a minute of CPU)."""
    out = tmp_path_factory.mktemp("trained")
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *FAST]) == 0
    return out


def test_demo_without_server(trained: Path, capsys):
    out = trained
    pred = json.loads((out / "predictions.json").read_text())
    gold = ccks.read_ccks(DEMO)
    _, test = inputs.split(gold.samples, 0.3, 0)
    assert sorted(pred) == sorted(s.id for s in test)  # every test id, [] for none
    assert all(r["bnd"] is None for recs in pred.values() for r in recs)  # no grounding without a server
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == dict.fromkeys(["synthesis", "refinement", "grounding"], "no MLLM configured")
    m = metrics["metrics"]["tagger"]["mner"]  # scored against the held-out split's gold, every entity of it
    assert m["tp"] + m["fn"] == sum(len(s.entities) for s in test)
    assert m["f1"] == pytest.approx(2 * m["tp"] / (2 * m["tp"] + m["fp"] + m["fn"]) if m["tp"] else 0.0)
    assert (out / "tagger" / "weights.pt").is_file() and (out / "config.json").is_file()
    # a rerun reuses the tagger (same settings, same data); its summary says what the numbers were computed on
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "tagger: reused" in printed
    assert len(test) == 10 and sum(len(s.entities) for s in test) == 21  # round(0.3 * 32) samples of the demo
    assert (
        "\nscored on 10 held-out samples with 21 gold entities (a seeded 30% of --data; --test DIR scores "
        "another "
        "folder)\n"
    ) in printed and metrics["scored"] == {
        "samples": 10,
        "gold_entities": 21,
        "test": None,
        "test_share": 0.3,
    }
    assert (
        f"     tagger MNER   P {m['p']:.3f}  R {m['r']:.3f}  F1 {m['f1']:.3f}  (tp {m['tp']}, fp {m['fp']}, "
        f"fn {m['fn']})\n"
    ) in printed
    assert "\n  these are the tagger's scores alone: no MLLM refined its entities or drew a box" in printed
    u = metrics["stages"]["uncertainty"]
    assert f"\nuncertainty: {u['delegated']} of {u['entities']} predicted entities above tau (" in printed
    assert "; none sent, refinement was skipped\n" in printed
    assert printed.endswith(  # what this rerun wrote: the reused tagger is not among them
        f"\nwritten in {out}: config.json, predictions.refined.json (before grounding), predictions.json "
        "(final), gold/ (the held-out gold, for python -m app.score), trace.jsonl (every decision per "
        "sample), metrics.json, usage.json, report.html (open it in a browser; thumbnails in report/)\n"
    )


def test_summary_says_why_each_stage_was_skipped(trained: Path, tmp_path: Path, capsys):
    """An LLM is configured, so "no MLLM configured" would be wrong: each stage names what turned it off."""
    with FakeServer(oracle) as srv:
        assert (
            refineg.main(
                [
                    "--data",
                    str(DEMO),
                    "--out",
                    str(tmp_path),
                    "--tagger",
                    str(trained / "tagger"),
                    "--llm-url",
                    srv.url,
                    "--no-refine",
                    "--no-ground",
                ]
            )
            == 0
        )
        assert not [b for b in srv.requests if "messages" in b]  # no chat call at all
    text = capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped"] == {
        "synthesis": f"a trained tagger is reused (--tagger {trained / 'tagger'})",
        "refinement": "turned off by --no-refine",
        "grounding": "turned off by --no-ground",
    }
    assert "skipped refinement: turned off by --no-refine" in text and "no MLLM configured" not in text


def test_all_stages_with_fake_server_then_zero_calls(tmp_path: Path, capsys):
    with FakeServer(oracle) as srv:
        argv = [
            "--data",
            str(DEMO),
            "--out",
            str(tmp_path),
            *FAST,
            "--llm-url",
            srv.url,
            "--llm-model",
            "fake-model",
            "--unc-target-rate",
            "1.0",
            "--synth-per-seed",
            "2",
        ]
        assert refineg.main(argv) == 0
        first = len(srv.requests)
        assert not srv.errors
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        usage = json.loads((tmp_path / "usage.json").read_text())["llm"]
        assert metrics["skipped"] == {}
        n_seeds = len(ccks.read_ccks(DEMO).samples) - len(
            json.loads((tmp_path / "predictions.json").read_text())
        )
        assert usage["synthesis"]["calls"] == n_seeds
        assert usage["refinement"]["calls"] == metrics["stages"]["refinement"]["calls"] > 0
        stages = metrics["stages"]  # tau is chosen once, before refinement, and handed to it
        assert (stages["refinement"]["tau"], stages["refinement"]["delegated"]) == (
            stages["uncertainty"]["tau"],
            stages["uncertainty"]["delegated"],
        )
        assert usage["grounding"]["calls"] > 0
        assert first == sum(u["requests"] for u in usage.values())
        # the oracle boxes every groundable entity the tagger found: EEG counts follow MNER's
        final = metrics["metrics"]["final"]
        assert final["gmner"]["tp"] == final["mner"]["tp"] > 0
        assert (tmp_path / "synthetic.jsonl").is_file()
        # what the filter removed (here: the oracle's repeated sentences), capped per reason, beside the
        # summary
        summary = json.loads((tmp_path / "synthetic.summary.json").read_text())
        rejected = [
            json.loads(line) for line in (tmp_path / "synthetic.rejected.jsonl").read_text().splitlines()
        ]
        assert "rejected_examples" not in summary and summary["rejected"]
        assert Counter(r["reason"] for r in rejected) == {
            k: min(v, 20) for k, v in summary["rejected"].items()
        }
        pred = json.loads((tmp_path / "predictions.json").read_text())
        assert any(r["bnd"] is not None for recs in pred.values() for r in recs)
        assert capsys.readouterr().out.endswith(
            f"\nwritten in {tmp_path}: config.json, synthetic.jsonl, synthetic.summary.json, "
            "synthetic.rejected.jsonl, tagger/, predictions.refined.json (before grounding), "
            "predictions.json (final), gold/ (the held-out gold, for python -m app.score), trace.jsonl "
            "(every decision per sample), metrics.json, usage.json, llm_cache.jsonl (appended), report.html "
            "(open it in a browser; thumbnails in report/)\n"
        )

        assert refineg.main(argv) == 0  # the same command again: everything reused
        assert len(srv.requests) == first
        usage2 = json.loads((tmp_path / "usage.json").read_text())["llm"]
        assert sum(u["requests"] for u in usage2.values()) == 0
        written = capsys.readouterr().out.split("\nwritten in ")[1]  # reused and cached: not written again
        assert "tagger/" not in written and "synthetic" not in written and "llm_cache" not in written
        assert json.loads((tmp_path / "predictions.json").read_text()) == pred


def test_interrupted_run_resumes_without_paying_twice(trained: Path, tmp_path: Path, monkeypatch):
    common = [
        "--data",
        str(DEMO),
        "--tagger",
        str(trained / "tagger"),
        "--unc-target-rate",
        "1.0",
        "--llm-workers",
        "1",
    ]
    with FakeServer(oracle) as srv:  # the uninterrupted reference run
        assert refineg.main([*common, "--out", str(tmp_path / "ref"), "--llm-url", srv.url]) == 0
        reference = (tmp_path / "ref" / "predictions.json").read_text()
        usage = json.loads((tmp_path / "ref" / "usage.json").read_text())["llm"]
        assert "synthesis" not in usage  # a reused tagger needs no synthetic sentences

    real_map = llm.Client.map_chat

    def dies_halfway(self, requests, desc="", workers=None):
        if desc == "grounding":  # Ctrl-C after half of the grounding calls
            real_map(self, requests[: len(requests) // 2], desc, workers)
            raise KeyboardInterrupt
        return real_map(self, requests, desc, workers)

    with FakeServer(oracle) as srv:
        out = ["--out", str(tmp_path / "run"), "--llm-url", srv.url]
        monkeypatch.setattr(llm.Client, "map_chat", dies_halfway)
        assert refineg.main([*common, *out]) == 130
        assert not (tmp_path / "run" / "predictions.json").exists()
        before = [body_key(b) for b in srv.requests]
        monkeypatch.setattr(llm.Client, "map_chat", real_map)
        assert refineg.main([*common, *out]) == 0
        after = [body_key(b) for b in srv.requests[len(before) :]]
        assert before and after
        assert not set(before) & set(after)  # no finished answer asked twice
        assert (tmp_path / "run" / "predictions.json").read_text() == reference


def test_a_run_failing_on_its_inputs_writes_nothing(trained: Path, tmp_path: Path, capsys):
    """Bad --data, --unlabelled or --test: one error line naming the flag, exit 2, and nothing written: a
    finished run directory keeps the config.json of its predictions, a new one is not even made."""
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    nope = str(tmp_path / "nope")
    for bad in (["--data", nope], ["--unlabelled", nope], ["--test", nope]):
        argv = ["--data", str(DEMO), *bad, "--seed", "7", *FAST]
        for out in (trained, tmp_path / "new"):
            assert refineg.main([*argv, "--out", str(out)]) == 2
            assert capsys.readouterr().err == f"error: {bad[0]} {nope}: no such file or folder\n"
        assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before
        assert not (tmp_path / "new").exists()


def test_actionable_errors(tmp_path: Path, capsys):
    assert refineg.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "text.json").write_text("{}")
    (empty / "types.txt").write_text("1. vehicle: tanks\n")
    assert refineg.main(["--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty dataset" in capsys.readouterr().err
    # a port nobody listens on: the error names the URL and says how to start a server
    assert (
        refineg.main(
            [
                "--data",
                str(DEMO),
                "--out",
                str(tmp_path / "o"),
                "--llm-url",
                "http://127.0.0.1:9/v1",
                "--llm-max-retries",
                "0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err


# ---------------------------------------------------------------- failures (issue 13)


def test_a_grounding_crash_keeps_the_refined_predictions_and_names_stage_and_sample(
    trained, tmp_path, monkeypatch, capsys
):
    def crash(samples, *args, **kw):
        for s in samples:
            if s.entities:
                raise ZeroDivisionError("boom")

    monkeypatch.setattr(refineg.grounding, "ground", crash)
    with FakeServer(oracle) as srv:
        code = refineg.main(
            reuse_tagger(trained, str(tmp_path), "--llm-url", srv.url, "--unc-target-rate", "1.0")
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert re.match(
        r"error: the grounding stage failed on sample '\w+': ZeroDivisionError: boom\. Kept in .*"
        r"config\.json, predictions\.refined\.json, metrics\.json, usage\.json, llm_cache\.jsonl\. "
        r"Traceback in .*error\.log",
        err[0],
    ), err[0]
    refined = json.loads((tmp_path / "predictions.refined.json").read_text())
    assert len(refined) == len(json.loads((trained / "predictions.json").read_text()))
    assert (
        not (tmp_path / "predictions.json").exists()
        and "ZeroDivisionError" in (tmp_path / "error.log").read_text()
    )
    assert json.loads((tmp_path / "usage.json").read_text())["llm"]["refinement"]["calls"] > 0


def test_every_call_failing_ends_the_run_non_zero(trained, tmp_path, capsys):
    with FakeServer(lambda body: (401, {"error": {"message": "invalid api key"}}, {})) as srv:
        code = refineg.main(
            reuse_tagger(trained, str(tmp_path), "--llm-url", srv.url, "--unc-target-rate", "1.0")
        )
    err = capsys.readouterr().err
    assert code == 2 and "every one of the" in err and "refinement calls failed" in err and "HTTP 401" in err
    assert (tmp_path / "predictions.refined.json").is_file()  # the tagger's predictions are kept


def test_usage_counts_this_process_and_all_runs(trained, tmp_path):
    argv = reuse_tagger(trained, str(tmp_path), "--unc-target-rate", "1.0")
    with FakeServer(oracle) as srv:
        assert refineg.main([*argv, "--llm-url", srv.url]) == 0
        first = json.loads((tmp_path / "usage.json").read_text())
        assert refineg.main([*argv, "--llm-url", srv.url]) == 0  # everything from the cache
        second = json.loads((tmp_path / "usage.json").read_text())
    for stage in ("refinement", "grounding"):
        assert first["llm"][stage]["prompt_tokens"] > 0 and second["llm"][stage]["prompt_tokens"] == 0
        assert (
            second["all_runs"][stage]
            == first["all_runs"][stage]
            == {k: first["llm"][stage][k] for k in ("prompt_tokens", "completion_tokens")}
        )


def test_unlabelled_test_folder_is_predicted_and_drawn(trained: Path, tmp_path: Path, capsys):
    """The real prediction path: --test names another folder without entity.json. Every sample of it is
    predicted, nothing is scored (there is no gold), and --viz draws N pictures the size of the originals."""
    test = tmp_path / "test"
    test.mkdir()
    for name in ("text.json", "types.txt"):
        (test / name).write_bytes((DEMO / name).read_bytes())
    (test / "images").symlink_to(DEMO / "images")
    out = tmp_path / "run"
    assert (
        refineg.main(
            [
                "--data",
                str(DEMO),
                "--test",
                str(test),
                "--out",
                str(out),
                "--tagger",
                str(trained / "tagger"),
                "--viz",
                "3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"\nnot scored: the 32 samples of --test {test} have no gold (no entity.json)\n" in printed
    assert "scores alone" not in printed  # nothing was scored, so no line about whose scores
    ids = sorted(json.loads((DEMO / "text.json").read_text(encoding="utf-8-sig")))
    assert sorted(json.loads((out / "predictions.json").read_text())) == ids
    assert json.loads((out / "metrics.json").read_text())["metrics"] == {}
    drawn = sorted((out / "viz").glob("*.jpg"))
    assert len(drawn) == 3
    for p in drawn:
        with Image.open(p) as got, Image.open(DEMO / "images" / p.name) as orig:
            assert got.size == orig.size


def test_test_folder_with_other_types_warns(tmp_path, capsys):
    test = tmp_path / "test"
    test.mkdir()
    (test / "text.json").write_text(json.dumps({"x1": {"text": "A Leopard 2 drives."}}))
    (test / "types.txt").write_text("1. vehicle: tanks\n2. ship: boats\n")
    inputs.read_inputs(RunConfig(data=[str(DEMO)], test=str(test)))
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if line.startswith("warning:")] == [
        f"warning: --test {test}: types.txt lists ['vehicle', 'ship'], the labelled data "
        "['vehicle', 'aircraft', 'vessel', 'weapon', 'location', 'other']: the labelled data's types and "
        "descriptions are used"
    ]


def test_test_folder_sharing_no_type_is_an_error(tmp_path):
    test = tmp_path / "test"
    test.mkdir()
    (test / "text.json").write_text(json.dumps({"x1": {"text": "A Leopard 2 drives."}}))
    (test / "types.txt").write_text("1. PER: people\n2. ORG: organisations\n")
    with pytest.raises(data.DataError, match=r"--test .*share none with the labelled data"):
        inputs.read_inputs(RunConfig(data=[str(DEMO)], test=str(test)))


def without_reasks(body: dict) -> dict:
    """The request as first asked: the client's re-asks append (its answer, a note) to the messages."""
    messages = body["messages"]
    while messages[-1]["role"] == "user" and str(messages[-1]["content"]).startswith(
        "That answer is not valid"
    ):
        messages = messages[:-2]
    return {**body, "messages": messages}


def gold_tagger(model, samples: list[data.Sample], mc_passes: int = 0) -> list[data.Sample]:
    """A stand-in for tagger.predict: the demo's gold entities with marginals 0.7 on their tags."""
    gold = {s.id: s for s in ccks.read_ccks(DEMO).samples}
    scheme = "BIOES" if any(t.startswith("S-") for t in model.tags) else "BIO"
    out = []
    for s in samples:
        tags = data.spans_to_tags(len(s.tokens), gold[s.id].entities, scheme)
        m = np.full((len(tags), len(model.tags)), 0.3 / (len(model.tags) - 1))
        m[np.arange(len(tags)), [model.tags.index(t) for t in tags]] = 0.7
        out.append(
            data.Sample(
                s.id,
                s.tokens,
                s.image,
                [data.Entity(e.start, e.end, e.type, source="tagger") for e in gold[s.id].entities],
                marginals=m,
            )
        )
    return out


def test_chaos_server_run_finishes_counts_every_failure_and_writes_valid_predictions(
    trained, tmp_path, capsys, monkeypatch
):
    """Refinement and grounding of all 32 demo samples against a server answering half of the requests with a
    random fault (FAULTS of fake_server): the run finishes, each failure is counted, the predictions are
    valid.
    The tagger predicts the gold entities, so that every sample with an entity makes calls."""
    monkeypatch.setattr(refineg.tagger, "predict", gold_tagger)
    older = shutil.copytree(trained / "tagger", tmp_path / "older-tagger")  # saved without a record of its
    (older / "trained_on.json").unlink()  # training data: every demo sample is predicted, so each makes calls
    handler = chaos(lambda body: oracle(without_reasks(body)), rate=0.5, seed=13)
    with FakeServer(handler) as srv:
        code = refineg.main(
            [
                "--data",
                str(other_copy(DEMO, tmp_path / "data")),
                "--test",
                str(DEMO),
                "--tagger",
                str(older),
                "--out",
                str(tmp_path),
                "--llm-url",
                srv.url,
                "--unc-target-rate",
                "1.0",
                "--llm-read-timeout",
                "0.5",
                "--llm-backoff-base",
                "0.01",
                "--llm-backoff-cap",
                "0.05",
                "--llm-max-retries",
                "2",
                "--llm-schema-retries",
                "1",
                "--llm-dead-after",
                "0",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0 and not srv.errors
    assert len(handler.used) >= 10, handler.used  # most kinds of fault were sent
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    usage = json.loads((tmp_path / "usage.json").read_text())["llm"]
    stages = metrics["stages"]
    assert usage["refinement"]["calls"] >= 10 and usage["grounding"]["calls"] >= 10
    assert stages["refinement"]["failed_call"] == usage["refinement"]["failures"]
    assert stages["grounding"].get("failed_calls", 0) == usage["grounding"]["failures"]
    assert sum(u["failures"] for u in usage.values()) > 0
    assert sum(u["odd_usage"] for u in usage.values()) == handler.used["odd_usage"] > 0  # each one counted
    assert sum(u["requests"] for u in usage.values()) == len(srv.requests)
    if any(u["failures"] > 0.1 * u["calls"] for u in usage.values()):
        assert "== ReFineG summary: WARNING" in out
    n_gold = sum(len(s.entities) for s in ccks.read_ccks(DEMO).samples)
    assert f"\nscored on 32 samples of --test {DEMO} with {n_gold} gold entities\n" in out
    # predictions.json is valid: every id, names in the text, boxes inside the image
    gold = {s.id: s for s in ccks.read_ccks(DEMO).samples}
    pred = json.loads((tmp_path / "predictions.json").read_text())
    test = list(gold.values())
    assert sorted(pred) == sorted(gold)
    for sid, recs in pred.items():
        with Image.open(gold[sid].image) as im:
            w, h = im.size
        for r in recs:
            assert data.find_name(gold[sid].tokens, r["name"]) and r["label"] in ccks.read_ccks(DEMO).types
            b = r["bnd"]
            assert b is None or 0 <= b["xmin"] < b["xmax"] <= w and 0 <= b["ymin"] < b["ymax"] <= h
    _, unplaced = ccks.read_ccks_predictions(tmp_path / "predictions.json", test, ccks.read_ccks(DEMO).types)
    assert unplaced == []  # the scorer reads every record back onto its text


def other_copy(folder: Path, to: Path) -> Path:
    """The CCKS folder's samples as other samples (other ids, a word more): labelled data that shares no
    sample with a --test of `folder` (refineg refuses a scored --test that overlaps --data)."""
    texts = json.loads((folder / "text.json").read_text(encoding="utf-8-sig"))
    entities = json.loads((folder / "entity.json").read_text(encoding="utf-8-sig"))
    (to / "images").mkdir(parents=True)
    for sid in texts:
        (to / "images" / f"d{sid}.jpg").symlink_to(folder / "images" / f"{sid}.jpg")
    (to / "text.json").write_text(
        json.dumps({f"d{k}": {"text": v["text"] + " here"} for k, v in texts.items()})
    )
    (to / "entity.json").write_text(json.dumps({f"d{k}": v for k, v in entities.items()}))
    shutil.copyfile(folder / "types.txt", to / "types.txt")
    return to


def tiny_twitter(folder: Path, images: bool) -> Path:
    """Eight tweets in the Twitter-GMNER layout (txt + xml/), with gray images in images/ or none."""
    from PIL import Image

    folder.mkdir(parents=True)
    (folder / "xml").mkdir()
    lines = []
    for i in range(8):
        lines += [f"IMGID:{i}", "Jay-Z\tB-PER", "visits\tO", "New\tB-LOC", "York\tI-LOC", f"day{i}\tO", ""]
        (folder / "xml" / f"{i}.xml").write_text(
            "<annotation><size><width>64</width><height>48</height></size><object><name>Jay-Z</name>"
            "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
        )
        if images:
            (folder / "images").mkdir(exist_ok=True)
            Image.new("RGB", (64, 48), (128, 128, 128)).save(folder / "images" / f"{i}.jpg")
    (folder / "t.txt").write_text("\n".join(lines) + "\n")
    return folder / "t.txt"


def test_no_image_at_all_stops_before_the_first_call(tmp_path: Path, capsys):
    txt = tiny_twitter(tmp_path / "tw", images=False)
    with FakeServer(oracle) as srv:
        argv = [
            "--data",
            str(txt),
            "--out",
            str(tmp_path / "o"),
            *FAST,
            "--llm-url",
            srv.url,
            "--llm-model",
            "fake-model",
        ]
        assert refineg.main(argv) == 2
        assert srv.requests == []
    err = capsys.readouterr().err
    assert "none of the 2 samples to predict has an image" in err and "--images DIR" in err


def test_twitter_data_gets_twitter_predictions_that_eval_reads(tmp_path: Path, capsys):
    txt = tiny_twitter(tmp_path / "tw", images=True)
    out = tmp_path / "o"
    assert refineg.main(["--data", str(txt), "--out", str(out), *FAST, "--test-share", "0.5"]) == 0
    assert (out / "predictions.txt").is_file() and (out / "xml").is_dir()
    import eval as scorer

    gold = formats.read_dataset(txt)
    pred_twitter, _ = read_prediction(str(out / "predictions.txt"), gold)
    ids = {s.id for s in pred_twitter}
    pred_ccks = [s for s in read_prediction(str(out / "predictions.json"), gold)[0] if s.id in ids]
    assert len(ids) == 4
    test = [s for s in gold.samples if s.id in ids]
    saved = json.loads((out / "metrics.json").read_text())["metrics"]["final"]
    assert scorer.evaluate(test, pred_twitter)["mner"]["f1"] == saved["mner"]["f1"]
    assert scorer.evaluate(test, pred_twitter) == scorer.evaluate(test, pred_ccks)

    # one predicted tweet loses its image: its entities are counted as ungroundable for lack of it
    lost = sorted(ids)[0]
    (tmp_path / "tw" / "images" / f"{lost}.jpg").unlink()
    with FakeServer(oracle) as srv:
        capsys.readouterr()
        assert (
            refineg.main(
                [
                    "--data",
                    str(txt),
                    "--out",
                    str(out),
                    *FAST,
                    "--test-share",
                    "0.5",
                    "--no-synthesize",
                    "--llm-url",
                    srv.url,
                    "--llm-model",
                    "fake-model",
                ]
            )
            == 0
        )
    printed = capsys.readouterr().out
    assert "tagger: reused" in printed and "images: 3 of 4 samples to predict have one (1 missing" in printed
    assert (
        "grounding: 2 entities stayed ungroundable for lack of an image (1 samples without image" in printed
    )
    assert (
        "\nscored on 4 held-out samples with 8 gold entities (a seeded 50% of --data" in printed
    )  # 2 per tweet
    assert "scores alone" not in printed and "none sent" not in printed  # refinement and grounding ran


def test_the_pipeline_returns_data_and_writes_and_prints_nothing(
    trained: Path, tmp_path, monkeypatch, capsys
):
    """A porter's call: refineg.pipeline on data in memory, with its own client, writes no file, prints
    nothing, and returns what the command line scored and recorded for the same tagger and data."""
    from app.cli import Settings
    from app.store import load

    labelled, train, target, _ = inputs.read_inputs(RunConfig(data=[str(DEMO)]))  # the run's own split
    test = target.samples
    monkeypatch.chdir(tmp_path)
    with FakeServer(oracle) as srv:
        settings = Settings(
            run=RunConfig(data=[str(DEMO)]), llm=llm.ClientConfig(base_url=srv.url, cache_path="")
        )
        client = llm.Client(settings.llm)
        given = refineg.Inputs(
            dataclasses.replace(labelled, samples=train), test, test, [], load(str(trained / "tagger"))
        )
        capsys.readouterr()
        result = refineg.pipeline(given, settings, {"refinement": client, "grounding": client})
    assert capsys.readouterr().out == "" and list(tmp_path.iterdir()) == []
    assert result.refinement is not None and result.grounding is not None and result.synthetic == []
    assert result.scores["tagger"] == json.loads((trained / "metrics.json").read_text())["metrics"]["tagger"]
    assert set(result.scores) == {"tagger", "refinement", "final"}
    assert all(e.delegated is not None for s in result.tagged for e in s.entities)
