"""app/score.py, the scorer's command line, end to end: files in, the table and --json out, one error line
and exit code 2 for a bad input, unplaceable predictions counted as false positives. And the scores the
run shows (the summary's tasks, report.html's table), which take eval's own names for tasks and columns."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval as scorer
from app import page, report
from app.score import main
from data import Entity, Sample
from formats.ccks import read_ccks

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.score", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_cli_end_to_end(tmp_path):
    gold = tmp_path / "demo"
    shutil.copytree(DEMO, gold)
    out = run_cli("--gold", str(gold), "--pred", str(gold), "--json", str(tmp_path / "m.json"))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
    for task in ("GMNER", "MNER", "EEG"):
        assert rows[task][:3] == ["1.000", "1.000", "1.000"]
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["gmner"]["f1"] == 1.0 and saved["match"] == "span" and saved["samples"] == 32

    # a prediction file: one sample dropped (empty prediction), one box moved far away
    labels = json.loads((gold / "entity.json").read_text())
    first_boxed = next(sid for sid, recs in labels.items() if len(recs) == 1 and recs[0]["bnd"])
    dropped = next(sid for sid, recs in labels.items() if len(recs) == 2)
    labels[first_boxed][0]["bnd"] = {"xmin": 0, "ymin": 0, "xmax": 1, "ymax": 1}
    del labels[dropped]
    (tmp_path / "pred.json").write_text(json.dumps(labels))
    out = run_cli(
        "--gold", str(gold), "--pred", str(tmp_path / "pred.json"), "--json", str(tmp_path / "m2.json")
    )
    assert out.returncode == 0, out.stderr
    assert f"warning: 1 of 32 gold samples have no prediction in {tmp_path / 'pred.json'}" in out.stderr
    m = json.loads((tmp_path / "m2.json").read_text())
    samples = {s.id: s for s in read_ccks(gold).samples}
    total, nd = sum(len(s.entities) for s in samples.values()), len(samples[dropped].entities)
    assert len(samples[first_boxed].entities) == 1 and nd > 0
    assert (m["mner"]["tp"], m["mner"]["fp"], m["mner"]["fn"]) == (total - nd, 0, nd)
    assert (m["gmner"]["tp"], m["gmner"]["fp"], m["gmner"]["fn"]) == (total - nd - 1, 1, nd + 1)
    assert (m["eeg"]["tp"], m["eeg"]["fp"], m["eeg"]["fn"]) == (total - nd - 1, 1, nd + 1)

    labels["no-such-id"] = []
    (tmp_path / "bad.json").write_text(json.dumps(labels))
    out = run_cli("--gold", str(gold), "--pred", str(tmp_path / "bad.json"))
    assert out.returncode != 0 and "no-such-id" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pred", "{tmp}/nope.json"], "error: --pred {tmp}/nope.json: no such file or folder"),
        (["--pred", "{demo}", "--json", "{tmp}/no/m.json"], "error: --json {tmp}/no/m.json: its folder"),
        (["--pred", "{demo}", "--json", "{tmp}"], "error: --json {tmp}: is a folder"),
    ],
)
def test_a_missing_input_or_json_folder_is_one_error_line_before_anything_runs(
    tmp_path, capsys, args, message
):
    """No traceback, exit code 2, one line naming the flag and the path, and no score printed."""
    argv = ["--gold", str(DEMO), *(a.format(tmp=tmp_path, demo=DEMO) for a in args)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(message.format(tmp=tmp_path)), err


def test_unplaceable_predictions_are_false_positives_not_errors(tmp_path):
    """An invented name and a label outside the gold types are each one FP in every task,
    reported in one warning line; the same records in a gold file are still refused."""
    gold = tmp_path / "demo"
    shutil.copytree(DEMO, gold)
    labels = json.loads((gold / "entity.json").read_text())
    sid = next(iter(labels))
    labels[sid] = labels[sid] + [
        {"name": "Zorblax Prime", "label": labels[sid][0]["label"], "bnd": None},
        {"name": "Zorblax Prime", "label": labels[sid][0]["label"], "bnd": None},  # once
        {"name": labels[sid][0]["name"], "label": "spaceship", "bnd": None},
    ]
    (tmp_path / "pred.json").write_text(json.dumps(labels))
    out = run_cli(
        "--gold", str(gold), "--pred", str(tmp_path / "pred.json"), "--json", str(tmp_path / "m.json")
    )
    assert out.returncode == 0, out.stderr
    warning = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "2 predicted records" in warning[0] and "Zorblax Prime" in warning[0]
    m = json.loads((tmp_path / "m.json").read_text())
    total = sum(len(s.entities) for s in read_ccks(gold).samples)
    for task in ("mner", "eeg", "gmner"):
        assert (m[task]["tp"], m[task]["fp"], m[task]["fn"]) == (total, 2, 0)
    assert m["mner"]["per_type"]["spaceship"]["fp"] == 1 and m["unplaced_predictions"] == 2
    (gold / "entity.json").write_text(json.dumps(labels))
    out = run_cli("--gold", str(gold), "--pred", str(tmp_path / "pred.json"))
    assert out.returncode != 0 and "Traceback" not in out.stderr


def test_the_summary_and_the_page_show_each_task_eval_scores_in_the_order_the_stages_earn_it():
    """One gold entity predicted right: each task scores 1 of 1, one row per task, text before boxes."""
    gold = [Sample("1", ["Paris", "is", "nice"], None, [Entity(0, 1, "LOC")])]
    assert report.TASKS == ["mner", "eeg", "gmner"] and set(report.TASKS) == set(scorer.TASKS)
    html = page.scores_table({"final": scorer.evaluate(gold, gold)}, {})
    head = "".join(f"<th>{h}</th>" for h in ("stage", "task", "P", "R", "F1", "TP", "FP", "FN"))
    row = "<td>1.000</td><td>1.000</td><td>1.000</td><td>1</td><td>0</td><td>0</td></tr>"
    rows = [f"<tr><td>final</td><td>{task}</td>{row}" for task in ("MNER", "EEG", "GMNER")]
    assert html == "<h2>Scores</h2><table><tr>" + head + "</tr>" + "".join(rows) + "</table>"
