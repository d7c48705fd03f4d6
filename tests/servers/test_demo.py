"""The whole method on a laptop: servers/demo.py runs examples/demo through every stage against the
simulated MLLM, and the run says it was simulated (from the server's own model id); the stand-in server as
a command (python -m servers.simulated_mllm); no server thread or port is left behind, whatever happens."""

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

import llm
import refineg
from app.report import simulation_lines
from app.rundir import Run, served_model
from app.serving import ServingConfig, check_server
from servers import demo
from servers.simulated_mllm import SimConfig, model_id

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
FAST = ["--tagger-epochs", "1", "--tagger-min-steps", "0", "--no-tagger-progress"]  # 6 training steps


def refused(url: str) -> bool:
    """Whether nothing listens at the URL's port any more."""
    try:
        socket.create_connection(("127.0.0.1", urlparse(url).port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def new_threads(before: set[threading.Thread]) -> list[str]:
    """The names of the non-daemon threads started since `before` that still run (the server's are)."""
    return [t.name for t in set(threading.enumerate()) - before if not t.daemon]


def test_the_demo_runs_every_stage_and_the_run_says_its_mllm_was_simulated(tmp_path, capsys):
    before = set(threading.enumerate())
    assert demo.main(["--data", str(DEMO), "--out", str(tmp_path), *FAST]) == 0
    printed = capsys.readouterr().out
    url = re.search(r"serves (http://\S+);", printed).group(1)
    assert new_threads(before) == [] and refused(url)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    usage = json.loads((tmp_path / "usage.json").read_text())
    mllm = {"model": "simulated-mllm-acc0.80", "listed": ["simulated-mllm-acc0.80"], "simulated": True}
    assert metrics["mllm"] == usage["mllm"] == {**mllm, "accuracy": 0.8}
    assert metrics["skipped"] == {} and set(metrics["metrics"]) == {"tagger", "refinement", "final"}
    stages = metrics["stages"]
    assert stages["synthesis"]["generated"] == 3 * 22  # --synth-per-seed 3 for each of the 22 training seeds
    summary = printed[printed.index("== ReFineG summary") :].splitlines()
    assert summary[1] == (
        "SIMULATION: the MLLM's answers were derived from the gold, right 80% of the time; "
        "these scores are not a model's"
    )
    # each MLLM stage said what it did in one line, with the counts the run recorded
    r, g = stages["refinement"], stages["grounding"]
    line = re.search(
        r"^refinement: (\d+) of (\d+) .* (\d+) calls: (\d+) kept, (\d+) changed .* (\d+) rejected",
        printed,
        re.M,
    )
    assert [int(x) for x in line.groups()[:3]] == [r["delegated"], r["entities"], r["calls"]]
    assert sum(int(x) for x in line.groups()[3:]) + r.get("kept_by_fallback", 0) == r["delegated"]
    line = re.search(
        r"^grounding: (\d+) of 10 samples asked in (\d+) calls, (\d+) boxes drawn", printed, re.M
    )
    assert [int(x) for x in line.groups()] == [g["calls"], g["calls"], g["boxes"]]


def within(seconds: float, fn, *args) -> dict:
    """{"value": fn(*args)} or {"error": what it raised}; fails when it has not ended after `seconds` (a
    server waiting on a connection would hang the test instead)."""
    ended = {}

    def call() -> None:
        try:
            ended["value"] = fn(*args)
        except BaseException as err:  # handed to the test, which checks it
            ended["error"] = err

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__module__}.{fn.__name__} still runs after {seconds} s"
    return ended


@pytest.mark.parametrize("ending", ["returns", "raises", "ctrl-c"])
def test_the_demo_stops_its_server_whatever_happens(monkeypatch, tmp_path, ending):
    """The run is replaced by one that leaves a keep-alive connection open (as a run's clients do) and then
    ends in each way; the server's threads and port must be gone after."""
    seen = {}

    def run(argv: list[str]) -> int:
        seen["url"] = argv[argv.index("--llm-url") + 1]
        seen["session"] = requests.Session()  # not closed: its connection stays open on the server
        assert (
            seen["session"].get(seen["url"] + "/models").json()["data"][0]["id"] == "simulated-mllm-acc0.80"
        )
        seen["threads"] = len(threading.enumerate())
        if ending == "raises":
            raise RuntimeError("a bug in the run")
        if ending == "ctrl-c":
            raise KeyboardInterrupt
        return 0

    monkeypatch.setattr(refineg, "main", run)
    before = set(threading.enumerate())
    ended = within(60, demo.main, ["--data", str(DEMO), "--out", str(tmp_path)])
    if ending == "raises":
        assert isinstance(ended.get("error"), RuntimeError)
    else:
        assert ended == {"value": {"returns": 0, "ctrl-c": 130}[ending]}
    assert seen["threads"] >= len(before) + 2  # the server and the thread of the open connection ran
    assert new_threads(before) == [] and refused(seen["url"])
    seen["session"].close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_the_stand_in_names_itself_and_stops_cleanly_on_ctrl_c_or_kill(stop):
    cmd = [sys.executable, "-m", "servers.simulated_mllm", "--gold", str(DEMO), "--accuracy", "0.8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        url = re.search(r"serving (http://127\.0\.0\.1:\d+/v1) ", first).group(1)
        assert check_server(llm.ClientConfig(base_url=url)) == ["simulated-mllm-acc0.80"]
        session = requests.Session()  # a connection kept open must not hold the server up
        assert session.get(url + "/models").status_code == 200
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and err == "" and out.strip() == "stopped after 0 answers"
    assert refused(url)
    session.close()


def test_the_stand_ins_errors_are_one_line_and_exit_2():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = [
        (
            ["--gold", str(DEMO), "--accuracy", "1.5"],
            "error: --accuracy: expected a probability in [0, 1], got 1.5",
        ),
        (["--gold", str(DEMO / "nope")], "error: --gold: expected a labelled dataset that exists"),
        (["--gold", str(DEMO), "--port", str(port)], f"error: --port {port}: cannot listen there ("),
    ]
    try:
        for flags, said in cases:
            done = subprocess.run(
                [sys.executable, "-m", "servers.simulated_mllm", *flags],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 2 and done.stderr.startswith(said) and done.stderr.count("\n") == 1, (
                flags
            )
    finally:
        taken.close()


def test_simulation_is_read_from_the_servers_own_model_id(tmp_path):
    assert served_model("", [model_id(SimConfig(0.3, 0.3, 0.3))]) == {
        "model": "simulated-mllm-acc0.30",
        "listed": ["simulated-mllm-acc0.30"],
        "simulated": True,
        "accuracy": 0.3,
    }
    mixed = model_id(SimConfig(0.8, 0.6, 1.0))
    assert mixed == "simulated-mllm-refine0.80-ground0.60-synth1.00"
    assert served_model("", [mixed])["accuracy"] is None  # accuracies per stage: the name says them
    qwen = "Qwen/Qwen2.5-VL-7B-Instruct"
    assert served_model(qwen, [qwen]) == {"model": qwen, "listed": [qwen], "simulated": False}
    assert served_model("", ["a", "b"])["model"] is None  # several models and none named: unknown
    run = Run(tmp_path, ServingConfig())
    run.mllm = served_model(qwen, [qwen])
    assert simulation_lines(run) == []
    run.mllm = served_model("", [mixed])
    assert simulation_lines(run)[0].startswith(
        "SIMULATION: the MLLM's answers were derived from the gold, right as often as its name says "
        "(simulated-mllm-refine0.80-ground0.60-synth1.00)"
    )
