"""The run directory of refineg.py: what each stage costs and leaves behind, and how a rerun resumes.

refineg.py only says which stage runs; a `Run` keeps the rest: which stage is running (for the error
line), its wall time, its own MLLM client (so usage.json counts each stage apart), what it counted,
what was skipped and why, what was scored and which files were written. Every file of the stages
is written by `atomic` (to a temporary name, then renamed), so Ctrl-C never leaves half of one; the
exceptions: llm_cache.jsonl is appended to, a line per answer (client/cache.py), and the --viz
pictures and error.log are plain writes. Synthesis and the tagger leave a
fingerprint of their settings and inputs (`fingerprint`) that lets a rerun reuse them; the later
stages run again, their answers from the cache.

    python refineg.py --data examples/demo --out runs/demo-tagger    # twice: the second run reuses the tagger

Left out on purpose: locking (two runs into one directory is a user error), and any cleanup of
old run directories.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import llm
from app.serving import ServingClient, ServingConfig
from formats import ccks

NO_LLM = "no MLLM configured"
FLAGS = {"synthesis": "--no-synthesize", "refinement": "--no-refine", "grounding": "--no-ground"}


class SettingsError(ValueError):
    """Settings the run cannot work with (an --out it cannot write or resume); the message names the flag."""


def fingerprint(*parts: object) -> str:
    """A short digest of settings and inputs: a finished stage is reused only when it matches."""

    def plain(o: object) -> object:
        return dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)

    blob = json.dumps(parts, sort_keys=True, default=plain)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (a file or a folder); it replaces `path` only when the
    block finishes, so an interrupted write leaves the old file or none, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    remove(tmp)
    yield tmp
    if tmp.is_dir():
        remove(path)
    tmp.replace(path)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def write_json(path: Path, obj: object) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str), encoding="utf-8")


def read_stamp(path: Path, key: str) -> dict | None:
    """The JSON a finished stage left at `path`, when its fingerprint is `key`; else None."""
    done = read_json(path)
    return done if done.get("key") == key else None


class Run:
    """The bookkeeping of one run, kept out of the pipeline: refineg.py asks, this records."""

    def __init__(self, out: Path, client_config: ServingConfig):
        self.out = out
        cache = client_config.cache_path or str(out / "llm_cache.jsonl")
        self.client_config = dataclasses.replace(client_config, cache_path=cache)
        self.current = "start"  # the running stage, named in the error line
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, dict] = {}  # stage -> what it counted
        self.traces: dict[str, dict] = {}  # stage -> {sample id: what it decided} (trace.jsonl is made of it)
        self.skipped: dict[str, str] = {}  # stage -> why it did not run
        self.clients: dict[str, ServingClient] = {}  # one per stage that calls the MLLM
        self.metrics: dict[str, dict] = {}  # stage -> scores
        self.scope: dict = {}  # what was scored: samples, gold entities, --test, the hold-out share
        self.written: list[str] = []  # files written so far, in order, relative to out (folders end in /)
        self.mllm: dict = {}  # what served the MLLM calls: model, simulated, accuracy (served_model)
        self.finished = False  # every stage ran: a later run in `out` keeps these records in previous/

    def start(self, settings: dict) -> None:
        """The run directory and its config.json, made once the inputs have been read: a run that fails on
        its inputs writes nothing. The records of an earlier run go first (set_aside), so that the folder
        never mixes two runs' records, whatever stage fails."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            set_aside(self.out)
            write_json(self.out / "config.json", settings)
        except OSError as err:
            raise SettingsError(f"--out {self.out}: cannot write the run there ({err})") from None
        self.written.append("config.json")

    def finish(self) -> None:
        """Every stage ran: metrics.json says so; the earlier run kept in previous/ is no longer needed."""
        self.finished = True
        self.save()
        remove(self.out / PREVIOUS)

    @property
    def uses_llm(self) -> bool:
        return bool(self.client_config.base_url)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Name the running stage and add its wall time to `seconds`."""
        self.current = name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def wants(self, name: str, turned_on: bool) -> bool:
        """Whether an MLLM stage runs: an MLLM is configured and its flag is on; else the skip is recorded."""
        if self.uses_llm and turned_on:
            return True
        self.skip(name, f"turned off by {FLAGS[name]}" if self.uses_llm else NO_LLM)
        return False

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why

    def client(self, name: str) -> ServingClient:
        """A new MLLM client for stage `name`; all of a run's clients share one answer cache file."""
        self.clients[name] = ServingClient(self.client_config)
        return self.clients[name]

    def check_calls(self, name: str, kept: str = "") -> None:
        """Raise LLMError when every call of a stage failed (a refused key, a dead model): the run must not
        end with exit 0 and a summary that looks normal. `kept` says what the files then hold."""
        client = self.clients.get(name)
        u = client.usage if client else None
        if u and u.calls and u.failures == u.calls:
            held = f" ({kept})" if kept else ""
            raise llm.LLMError(
                f"every one of the {u.calls} {name} calls failed{held}; the last error: {client.last_error}"
            )

    def write_predictions(self, samples: list, name: str) -> None:
        with atomic(self.out / name) as tmp:
            ccks.write_ccks(samples, tmp)
        self.written.append(name)

    def usage(self) -> dict:
        return {stage: c.usage.as_dict() for stage, c in self.clients.items()}

    def save(self) -> None:
        """metrics.json and usage.json: what was scored and counted, what the MLLM cost, the times, and
        which MLLM answered (a simulated one is said in both files)."""
        write_json(
            self.out / "metrics.json",
            {
                "finished": self.finished,
                "mllm": self.mllm or None,
                "metrics": self.metrics,
                "scored": self.scope,
                "stages": self.notes,
                "skipped": self.skipped,
                "written": self.written,
            },
        )
        usage = self.usage()
        write_json(
            self.out / "usage.json",
            {"mllm": self.mllm or None, "llm": usage, "all_runs": all_runs(usage), "seconds": self.seconds},
        )
        cache = [self.cache_name()] if self.answered() else []  # appended to, not replaced
        self.written += [name for name in ["metrics.json", "usage.json", *cache] if name not in self.written]

    def answered(self) -> bool:
        """Whether this run appended to the cache file: a call that was neither a hit nor a failure."""
        return any(c.usage.calls > c.usage.cache_hits + c.usage.failures for c in self.clients.values())

    def cache_name(self) -> str:
        """The answer cache as the summary names it: relative to out when it lies there."""
        cache = Path(self.client_config.cache_path)
        return cache.name if cache.parent == self.out else str(cache)


# What one run writes into its folder, apart from the caches that later runs reuse by their fingerprints
# (synthetic*.json*, chooser/, tagger/) or append to (llm_cache.jsonl).
RECORDS = [
    *("config.json", "metrics.json", "usage.json", "trace.jsonl", "report.html", "report", "error.log"),
    *("predictions.json", "predictions.refined.json", "predictions.txt", "xml", "predictions.conll"),
    *("gold", "gold.conll", "suggested", "suggested.jsonl", "labelstudio", "viz"),
]
REUSED = ["synthetic.jsonl", "synthetic.summary.json", "synthetic.rejected.jsonl", "chooser", "tagger"]
PREVIOUS = "previous"  # OUT/previous/: the finished run that the running one replaces, until it finishes


def set_aside(out: Path) -> None:
    """Before a run writes into `out` where refineg.py ran before: a finished run moves whole into
    out/previous/ (its reusable files as hard links, so they stay in out too) and stays there until the new
    run finishes; the records of a run that did not finish are removed (a rerun replays its MLLM answers
    from the cache). Only the names of RECORDS move, config.json last, so an interrupted move is redone."""
    config = read_json(out / "config.json")
    if not {"run", "llm"} <= config.keys():  # no run of refineg.py's: nothing here is a record
        return
    edited = changed_after(out)
    if edited:
        raise SettingsError(
            f"--out {out}: {len(edited)} files in the earlier run's folders were changed after it ended, "
            f"e.g. {edited[:3]} (an annotator's work?): move them out of {out}, or pass another --out"
        )
    metrics = out / "metrics.json"
    finished = metrics.is_file() and read_json(metrics).get("finished", True)  # older runs did not say
    names = [n for n in RECORDS if n != "config.json"] + ["config.json"]
    if finished:
        remove(out / PREVIOUS)
        (out / PREVIOUS).mkdir()
        for name in REUSED:
            if (out / name).exists():
                link_copy(out / name, out / PREVIOUS / name)
        for name in names:
            if (out / name).exists():
                (out / name).replace(out / PREVIOUS / name)
    for name in names:
        remove(out / name)


def changed_after(out: Path) -> list[str]:
    """Files in the record folders of `out` (suggested/, labelstudio/, ...) newer than the run's last
    metrics.json: edited or added after the run, so not the run's to move or remove."""
    metrics = out / "metrics.json"
    if not metrics.is_file():
        return []
    ended = metrics.stat().st_mtime
    folders = [out / name for name in RECORDS if (out / name).is_dir()]
    return [
        str(p) for d in folders for p in sorted(d.rglob("*")) if p.is_file() and p.stat().st_mtime > ended
    ]


def link_copy(src: Path, dst: Path) -> None:
    """A copy of a file or folder made of hard links (no bytes copied); a plain copy where links fail."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link)
    else:
        link(str(src), str(dst))


def read_json(path: Path) -> dict:
    """A JSON object from `path`; {} when it is missing or is not one."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


# The model-id prefix of servers/simulated_mllm.py (answers derived from gold): a run against such a server
# records that its MLLM was simulated, judged from the server's own /models answer, never from a flag.
SIMULATED = "simulated-mllm"


def simulated(mllm: object) -> bool:
    """Whether a run's MLLM was simulated, from the record served_model made of what the server listed
    (metrics.json's "mllm"): the one test the summary, the first line and the page ask."""
    return isinstance(mllm, dict) and bool(mllm.get("simulated"))


def served_model(model: str, names: list[str]) -> dict:
    """Which MLLM a run talks to, from --llm-model and the names the server lists (serving.check_server).

    A server that lists a `simulated-mllm...` model answers from gold (servers/simulated_mllm.py): the run
    is marked simulated from the server's own answer, so no flag can be forgotten, and its accuracy is read
    from the name: ("", ["simulated-mllm-acc0.80"]) -> {"model": "simulated-mllm-acc0.80", "listed": [...],
    "simulated": True, "accuracy": 0.8}. `model` is None when neither says it (several models listed).
    """
    name = model or (names[0] if len(names) == 1 else None)
    sims = [n for n in names if n.startswith(SIMULATED)]
    out = {"model": name, "listed": names[:10], "simulated": bool(sims)}
    if sims:
        acc = re.search(r"-acc(\d+(?:\.\d+)?)$", sims[0])
        out["accuracy"] = float(acc.group(1)) if acc else None  # None: accuracies per stage, in the name
    return out


def all_runs(usage: dict) -> dict:
    """Tokens per stage counting cached answers at what the earlier run that asked them paid."""
    keys = ("prompt_tokens", "completion_tokens")
    return {stage: {k: u[k] + u[f"cached_{k}"] for k in keys} for stage, u in usage.items()}
