"""refineg.py end to end on examples/demo: without a server, and with a scripted oracle MLLM.

The oracle knows the demo's gold: synthesis gets two sentences per seed, refinement keeps
every delegated entity, grounding answers the gold boxes of the asked names (in `abs`
pixels of the image as sent, which for the demo's <= 640 px images is the original).
"""

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

import data
import llm
import refineg
from fake_server import FakeServer, reply

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"
FAST = ["--tagger-epochs", "3", "--no-tagger-progress"]


def gold_boxes() -> dict[tuple[str, str], list[list[float]]]:
    """(text, name) -> gold boxes, from the demo's own files."""
    gold = data.read_ccks(DEMO)
    out = {}
    for s in gold.samples:
        for e in s.entities:
            out.setdefault((s.text, s.name(e)), [[round(v) for v in (b.x1, b.y1, b.x2, b.y2)] for b in e.boxes])
    return out


def oracle(body: dict) -> dict:
    props = body["response_format"]["json_schema"]["schema"]["properties"]
    last = body["messages"][-1]["content"]
    text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if p["type"] == "text")
    if "samples" in props:          # synthesis: reuse the seed's entities in two new sentences
        names = re.findall(r'^- "(.+)" \((\w+)\)$', text, flags=re.M)
        items = [{"text": f"{pre} {' and '.join(n for n, _ in names) or 'the crew'} {post}",
                  "entities": [{"name": n, "type": t} for n, t in names]}
                 for pre, post in (("Reporters photographed", "during the exercise ."),
                                   ("Yesterday", "took part in a long parade ."))]
        return reply({"samples": items})
    if "decisions" in props:        # refinement: keep every delegated entity
        ids = re.findall(r"^\[(\d+)\] \"(.+)\" \((\w+)\)$", text, flags=re.M)
        return reply({"reasoning": "looks right", "decisions": [
            {"id": int(i), "action": "keep", "span": n, "type": t} for i, n, t in ids]})
    if "entities" in props:         # grounding: the gold boxes of the asked names
        query = re.search(r"^Text: (.*)$", text, flags=re.M).group(1)
        asked = json.loads(re.search(r"^Entities: (.*)$", text, flags=re.M).group(1))
        boxes = gold_boxes()
        return reply({"entities": [{"entity": a["entity"], "type": a["type"],
                                    "boxes": boxes.get((query, a["entity"]), [])} for a in asked]})
    raise AssertionError(f"unexpected request schema {sorted(props)}")


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
    gold = data.read_ccks(DEMO)
    _, test = refineg.split(gold.samples, 0.3, 0)
    assert sorted(pred) == sorted(s.id for s in test)            # every test id, [] for none
    assert all(r["bnd"] is None for recs in pred.values() for r in recs)   # no grounding without a server
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == dict.fromkeys(["synthesis", "refinement", "grounding"], "no MLLM configured")
    assert 0.0 <= metrics["metrics"]["tagger"]["mner"]["f1"] <= 1.0
    assert (out / "tagger" / "weights.pt").is_file() and (out / "config.json").is_file()
    # a rerun reuses the tagger (same settings, same data)
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *FAST]) == 0
    assert "tagger: reused" in capsys.readouterr().out


def test_summary_says_why_each_stage_was_skipped(trained: Path, tmp_path: Path, capsys):
    """An LLM is configured, so "no MLLM configured" would be wrong: each stage names what turned it off."""
    with FakeServer(oracle) as srv:
        assert refineg.main(["--data", str(DEMO), "--out", str(tmp_path), "--tagger", str(trained / "tagger"),
                             "--llm-url", srv.url, "--no-refine", "--no-ground"]) == 0
        assert not [b for b in srv.requests if "messages" in b]      # no chat call at all
    text = capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped"] == {
        "synthesis": f"a trained tagger is reused (--tagger {trained / 'tagger'})",
        "refinement": "turned off by --no-refine", "grounding": "turned off by --no-ground"}
    assert "skipped refinement: turned off by --no-refine" in text and "no MLLM configured" not in text


def test_all_stages_with_fake_server_then_zero_calls(tmp_path: Path):
    with FakeServer(oracle) as srv:
        argv = ["--data", str(DEMO), "--out", str(tmp_path), *FAST, "--llm-url", srv.url, "--llm-model", "fake-model",
                "--unc-target-rate", "1.0", "--synth-per-seed", "2"]
        assert refineg.main(argv) == 0
        first = len(srv.requests)
        assert not srv.errors
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        usage = json.loads((tmp_path / "usage.json").read_text())["llm"]
        assert metrics["skipped"] == {}
        n_seeds = len(data.read_ccks(DEMO).samples) - len(json.loads((tmp_path / "predictions.json").read_text()))
        assert usage["synthesis"]["calls"] == n_seeds
        assert usage["refinement"]["calls"] == metrics["stages"]["refinement"]["calls"] > 0
        assert usage["grounding"]["calls"] > 0
        assert first == sum(u["requests"] for u in usage.values())
        # the oracle boxes every groundable entity the tagger found: EEG counts follow MNER's
        final = metrics["metrics"]["final"]
        assert final["gmner"]["tp"] == final["mner"]["tp"] > 0
        assert (tmp_path / "synthetic.jsonl").is_file()
        # what the filter removed (here: the oracle's repeated sentences), capped per reason, beside the summary
        summary = json.loads((tmp_path / "synthetic.summary.json").read_text())
        rejected = [json.loads(line) for line in (tmp_path / "synthetic.rejected.jsonl").read_text().splitlines()]
        assert "rejected_examples" not in summary and summary["rejected"]
        assert Counter(r["reason"] for r in rejected) == {k: min(v, 20) for k, v in summary["rejected"].items()}
        pred = json.loads((tmp_path / "predictions.json").read_text())
        assert any(r["bnd"] is not None for recs in pred.values() for r in recs)

        assert refineg.main(argv) == 0                      # the same command again: everything reused
        assert len(srv.requests) == first
        usage2 = json.loads((tmp_path / "usage.json").read_text())["llm"]
        assert sum(u["requests"] for u in usage2.values()) == 0
        assert json.loads((tmp_path / "predictions.json").read_text()) == pred


def test_interrupted_run_resumes_without_paying_twice(trained: Path, tmp_path: Path, monkeypatch):
    common = ["--data", str(DEMO), "--tagger", str(trained / "tagger"), "--unc-target-rate", "1.0",
              "--llm-workers", "1"]
    with FakeServer(oracle) as srv:                         # the uninterrupted reference run
        assert refineg.main([*common, "--out", str(tmp_path / "ref"), "--llm-url", srv.url]) == 0
        reference = (tmp_path / "ref" / "predictions.json").read_text()
        usage = json.loads((tmp_path / "ref" / "usage.json").read_text())["llm"]
        assert "synthesis" not in usage                     # a reused tagger needs no synthetic sentences

    real_map = llm.Client.map_chat

    def dies_halfway(self, requests, desc="", workers=None):
        if desc == "grounding":                             # Ctrl-C after half of the grounding calls
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
        after = [body_key(b) for b in srv.requests[len(before):]]
        assert before and after
        assert not set(before) & set(after)                 # no finished answer asked twice
        assert (tmp_path / "run" / "predictions.json").read_text() == reference


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
    assert refineg.main(["--data", str(DEMO), "--out", str(tmp_path / "o"), "--llm-url", "http://127.0.0.1:9/v1",
                         "--llm-max-retries", "0"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err
