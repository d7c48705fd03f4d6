"""`python -m bench synth`: the synthesis stage (synth.py) with a real small LLM, and what its sentences do
to the tagger.

The paper's synthesis asks a strong LLM (the authors used qwen-max) for new labelled sentences; a user porting
the method often has only a small local one. This measures that case on this machine:
  1. llama-server (tests/realserver/build.sh builds it) serves the text-only Qwen2.5-Coder-0.5B-Instruct
     Q4_K_M GGUF that the same script downloads, one thread per slot, two slots, niced;
  2. synth.synthesize runs on the CCKS training seeds (gold 100-399, in file order) until the time budget is
     spent: calls, tokens/s, sentences asked / returned / kept, rejections by reason, with the basic checks
     (`strict=False`) and with the type-knowledge checks (the default) on the SAME answers (the cache);
  3. label precision of the kept entities whose name is known (seeds, type descriptions), against that
     knowledge (1.0 after the checks by construction) and against held-out gold 0-99 the filter never saw;
  4. the tagger (CCKS protocol of ../shared/data/ccks/README.md, as `python -m bench tagger`) trained on
     gold only, gold + these sentences, gold + the authors' qwen-max sentences (synthetic.conll); 3 seeds.

    python -m bench synth                   # 15 min of generation + ~60 min of training on loaded 2 cores
    python -m bench synth --quick           # 6 seeds, 1 tagger seed: a smoke run, numbers not comparable
    python -m bench synth --synth-seeds 22  # the seeds of an earlier run only: every answer from the cache

The LLM's answers are cached in runs/bench_synth/llm_cache.jsonl: a rerun pays no call twice and can extend
the run to more seeds. Skips with a one-line reason when the server build or the data is absent.
Left out on purpose: the old schema without minItems (it would need a second generation run).
"""

import dataclasses
import hashlib
import json
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

import bench
from bench import tagger as bench_tagger

CACHE = Path(os.environ.get("REFINEG_REALSERVER_CACHE", Path.home() / ".cache" / "refineg-realserver"))
GGUF = CACHE / "dl" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
OUT = Path(__file__).resolve().parent.parent / "runs" / "bench_synth"
MODEL = "qwen2.5-coder-0.5b-instruct"  # the --alias the server lists
SLOTS = 2  # -np; one thread each (-t 1): on shared cores two threads per slot stall


def start_server(binary: str, port: int, log: Path) -> subprocess.Popen:
    """llama-server on loopback, niced; returns once /health says the model is loaded."""
    import requests

    cmd = [
        "nice",
        "-n",
        "10",
        binary,
        "-m",
        str(GGUF),
        "--alias",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(SLOTS),
        "-t",
        "1",
        "-c",
        str(SLOTS * 4096),
    ]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"llama-server did not come up; log: {log}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ccks_seeds():
    """(seeds = gold 100-399 with the CCKS types and descriptions, held-out test = gold 0-99)."""
    from data import Dataset
    from formats.ccks import read_types
    from formats.twitter import read_conll

    gold = read_conll(bench.CCKS / "gold.conll").samples
    types, text, generic = read_types(bench.CCKS / "types.txt")
    return Dataset(gold[100:], types, text, generic), gold[:100]


def generate(seeds, config, minutes: float, max_seeds: int) -> tuple[int, dict, float]:
    """Ask for seeds in file order, SLOTS at a time, until `minutes` are spent; (seeds done, usage, wall
    s)."""
    import synth
    from app.serving import check_server
    from llm import Client, ClientConfig

    info = json.loads((CACHE / "server.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_server(info["server"], port, OUT / "server.log")
    try:
        cfg = ClientConfig(
            base_url=f"http://127.0.0.1:{port}/v1",
            model=MODEL,
            workers=SLOTS,
            read_timeout=900,
            cache_path=str(OUT / "llm_cache.jsonl"),
            max_retries=1,
        )
        check_server(cfg)
        client = Client(cfg)
        done, t0 = 0, time.perf_counter()
        while done < min(max_seeds, len(seeds.samples)) and time.perf_counter() - t0 < minutes * 60:
            chunk = seeds.samples[done : done + SLOTS]
            client.map_chat([synth.build_request(s, seeds, config) for s in chunk], desc=f"synth {done}")
            done += len(chunk)
        return done, client.usage.as_dict(), time.perf_counter() - t0
    finally:  # stop exactly the server started here
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def knowledge(seeds, config) -> dict[str, set[str]]:
    from levers import synth_filters

    return synth_filters.build_rules(seeds, dataclasses.replace(config, strict=True)).known


def precision(samples, known: dict[str, set[str]]) -> tuple[int, int]:
    """(entities whose name is in `known`, of which the type is one `known` gives)."""
    from levers.synth_filters import name_key

    hits = [
        e.type in known[name_key(s.name(e))]
        for s in samples
        for e in s.entities
        if name_key(s.name(e)) in known
    ]
    return len(hits), sum(hits)


def leak_filter(synthetic: list, seeds: list, test: list) -> list:
    """The CCKS protocol: drop sentences containing an entity string (lower-cased) of the test gold that no
    training gold has (the same rule as bench.py's tagger section)."""

    def names(samples):
        return {tuple(t.lower() for t in s.tokens[e.start : e.end]) for s in samples for e in s.entities}

    leak = names(test) - names(seeds)
    keep = []
    for s in synthetic:
        low = [t.lower() for t in s.tokens]
        if not any(low[i : i + len(n)] == list(n) for n in leak for i in range(len(low) - len(n) + 1)):
            keep.append(s)
    return keep


def train_and_score(train: list, test: list, types: list[str], config: dict) -> tuple[float, bool]:
    """MNER F1 on `test` of a tagger trained on `train`; (F1, True) when an earlier run of this bench on this
    machine already measured this exact data and config (runs/bench_synth/tagger_f1.json)."""
    import tagger as tg
    from eval import evaluate

    blob = json.dumps(
        [
            config,
            types,
            [(s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in train],
            [s.tokens for s in test],
        ]
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    path = OUT / "tagger_f1.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    if key in done:
        return done[key]["f1"], True
    # One torch thread: on 2 cores shared with other jobs, two threads spin at each op's barrier (this run's
    # gold-only training took over 15 minutes at 2 threads, against about 1 minute on an idle machine).
    model, _ = tg.train_tagger(train, types, tg.TaggerConfig(progress=False, threads=1, **config))
    f1 = evaluate(test, tg.predict(model, test, batch_size=64))["mner"]["f1"]
    done = json.loads(path.read_text()) if path.is_file() else {}
    done[key] = {"sentences": len(train), "config": config, "f1": f1}
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(done, indent=1))
    return f1, False


def tagger_table(settings: list, test: list, types: list[str], tagger_seeds: list[int]) -> None:
    """Short trainings (under 10,000 sentence passes: gold only, gold + ours) for every seed first, then the
    long ones (the authors' 14k sentences, 20,000 passes): a run cut short still compares like with like."""

    def passes(train: list, cfg: dict) -> int:
        return cfg["epochs"] * min(len(train), cfg.get("epoch_size", 2000) or len(train))

    jobs = sorted(
        ((seed, k) for seed in tagger_seeds for k in range(len(settings))),
        key=lambda j: (passes(*settings[j[1]][1:]) >= 10_000, j[0], j[1]),
    )
    f1 = {}
    for seed, k in jobs:
        what, train, cfg = settings[k]
        t0 = time.perf_counter()
        f1[what, seed] = train_and_score(train, test, types, {**cfg, "seed": seed})
        print(
            f"  {what}, seed {seed}: F1 {f1[what, seed][0]:.3f}"
            f"{' (earlier run)' if f1[what, seed][1] else f' ({time.perf_counter() - t0:.0f} s)'}",
            flush=True,
        )
    print(
        f"\ntagger on CCKS (test = gold 0-99, {sum(len(s.entities) for s in test)} entities), MNER F1 by "
        f"tagger seed; * = measured by an earlier run of this bench (same data and settings)"
    )
    print(
        f"{'train data':<58} {'epochs':>6} "
        + " ".join(f"{'seed ' + str(s):>7}" for s in tagger_seeds)
        + f" {'mean':>7}"
    )
    for what, _, cfg in settings:
        runs = [f1[what, s] for s in tagger_seeds]
        print(
            f"{what:<58} {cfg['epochs']:>6} "
            + " ".join(f"{f:>6.3f}{'*' if old else ' '}" for f, old in runs)
            + f" {statistics.mean(f for f, _ in runs):>7.3f}"
        )


def baselines(quick: bool, epochs: int | None) -> tuple[list, list, list[str]]:
    """The two settings without our sentences: gold only, gold + the authors' synthetic (as `python -m bench
    tagger`)."""
    seeds, test = ccks_seeds()
    authors, _, _, types, note = bench_tagger._tagger_data("ccks", quick)
    return (
        [
            ("gold only", seeds.samples, {"epochs": epochs or 20}),
            (f"{note} (authors, qwen-max)", authors, {"epochs": epochs or 10}),
        ],
        test,
        types,
    )


def bench_synth(args) -> None:
    import synth
    from app import synthetic
    from levers import synth_filters

    if not bench.have(bench.CCKS):
        return
    if not (CACHE / "server.json").is_file() or not GGUF.is_file():
        print(
            f"skipped: no llama-server build or {GGUF.name} in {CACHE} (build them with `make real-server`)"
        )
        return
    minutes, max_seeds = (3.0, 6) if args.quick else (15.0, 300)
    max_seeds = args.synth_seeds or max_seeds
    tagger_seeds = [0] if args.quick else [0, 1, 2]
    print(
        "command: python -m bench synth"
        + (" --quick" if args.quick else "")
        + (f" --synth-seeds {args.synth_seeds}" if args.synth_seeds else "")
    )
    seeds, test = ccks_seeds()
    config = synth.SynthConfig(per_seed=10, answer_tokens=2048)
    n, usage, wall = generate(seeds, config, minutes, max_seeds)
    print(
        f"\nLLM: {GGUF.name} behind llama-server (-np {SLOTS} -t 1, nice 10), {n} seeds (gold 100-{99 + n}) "
        f"in {wall / 60:.1f} min (budget {minutes:.0f}), {config.per_seed} sentences asked per seed"
    )
    print(
        f"calls {usage['calls']} ({usage['cache_hits']} from the cache), requests {usage['requests']}, "
        f"re-asks {usage['reasks']}, retries {usage['retries']}, failures {usage['failures']}; "
        f"tokens: {usage['prompt_tokens']} prompt, {usage['completion_tokens']} completion"
    )
    if usage["requests"]:
        print(
            f"throughput: {usage['completion_tokens'] / wall:.1f} completion tokens/s over both slots "
            f"({(usage['prompt_tokens'] + usage['completion_tokens']) / wall:.1f} prompt + completion "
            "tokens/s)"
        )

    from llm import Client, ClientConfig

    offline = Client(
        ClientConfig(
            base_url="http://127.0.0.1:9/v1",
            model=MODEL,
            cache_path=str(OUT / "llm_cache.jsonl"),
            max_retries=0,
            schema_retries=0,
        )
    )  # every answer from the cache: no server needed
    known = knowledge(seeds, config)
    held = {}
    for s in test:  # held-out knowledge: gold 0-99 names the seeds do not have
        for e in s.entities:
            held.setdefault(synth_filters.name_key(s.name(e)), set()).add(e.type)
    held = {k: v for k, v in held.items() if k not in known}
    rows = {}
    for label, strict in (
        ("basic checks (strict=False)", False),
        ("+ type-knowledge checks (default)", True),
    ):
        cfg = dataclasses.replace(config, seeds=n, strict=strict)
        kept, traces = synth.synthesize(seeds, offline, cfg, synth_filters.filters(seeds, cfg))
        summary = synthetic.summarize(seeds.types, traces, cfg.rejected_examples)
        rows[label] = (kept, summary)
        k_known, k_right = precision(kept, known)
        h_known, h_right = precision(kept, held)
        ents = sum(len(s.entities) for s in kept)
        print(
            f"\n{label}: asked {n * config.per_seed}, returned {summary['generated']}, kept "
            f"{summary['kept']} "
            f"({summary['entity_free_kept']} entity-free), {ents} entities, failed calls "
            f"{summary['failed_calls']}"
        )
        print("  rejected: " + (", ".join(f"{k} {v}" for k, v in summary["rejected"].items()) or "none"))
        print(
            f"  label precision, names known from seeds + descriptions: {k_right}/{k_known}"
            f"{f' = {k_right / k_known:.3f}' if k_known else ''}; names known only from held-out gold 0-99: "
            f"{h_right}/{h_known}{f' = {h_right / h_known:.3f}' if h_known else ''}"
        )
        synthetic.write_rejected(summary["rejected_examples"], OUT / f"rejected_strict_{strict}.jsonl")
    mine = rows["+ type-knowledge checks (default)"][0]
    synthetic.write_synthetic(mine, OUT / "synthetic.jsonl")

    # the tagger: CCKS protocol; our sentences pass the same test-leak filter as the authors'
    settings, test, types = baselines(args.quick, args.epochs)
    ours = leak_filter(mine, seeds.samples, test)
    settings.insert(
        1,
        (
            f"gold + {len(ours)} of {len(mine)} ours (0.5B)",
            seeds.samples + ours,
            {"epochs": args.epochs or 20},
        ),
    )
    tagger_table(settings, test, types, tagger_seeds)
    print(f"(synthetic sentences, cache and rejected samples: {OUT})")
