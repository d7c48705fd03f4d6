"""Peak memory of the stages whose memory could grow with the input.

    python -m bench memory            # or: python -m bench.memory [tagger] [grounding] [suggest]

1. Tagger training (tagger.py): peak RSS of one epoch on the demo's 32 sentences, alone and with one
   5,000- or 10,000-word text added, the long text cut into `train_chunk`-word pieces (now, 64) or
   uncut (train_chunk = 10**9, what training did before). The claim: with cutting, the peak does not
   depend on the text's length (a batch holds at most batch_size x train_chunk words).
2. Grounding (grounding.py): peak RSS of the stage on 450 and 1,500 predicted samples (the demo's
   texts, repeated, each with its own 1000 x 750 photo-like JPEG made here, ~150 KB) against a
   0-latency fake server that keeps no request bodies, with requests built lazily in the workers
   (now) and all built before the first call (as before, emulated by building every request before
   map_chat). The claim: the lazy peak does not grow with the number of samples.
3. Suggestion (labelling/suggest.py): peak RSS of scoring a pool of 10,000 and 100,000 synthetic texts
   (20 words drawn from the demo's) and choosing 700, against the peak after only reading the pool; and the
   pool's scoring speed. The claim: the pool's marginals are never all kept, so the peak above the
   pool itself does not grow with it.

Each case runs in a fresh child process (`ru_maxrss` is a lifetime peak), so the numbers include
Python, torch and the encoder (~0.5 GB): compare rows, not absolute values. Uses the fake server of
`servers/fake_mllm.py` (as `python -m bench client` does). Numbers are from this machine, this run.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _tagger_case(spec: dict) -> dict:
    import random

    import data
    import tagger
    from formats import ccks

    samples = ccks.read_ccks(DEMO).samples
    if spec["long"]:
        rng = random.Random(0)
        words = [t for s in samples for t in s.tokens]
        samples = samples + [data.Sample("long", [rng.choice(words) for _ in range(spec["long"])])]
    cfg = tagger.TaggerConfig(epochs=1, epoch_size=0, progress=False, train_chunk=spec["chunk"], threads=1)
    t0 = time.perf_counter()
    tagger.train_tagger(samples, ccks.read_ccks(DEMO).types, cfg)
    return {"peak_mb": _peak_mb(), "seconds": time.perf_counter() - t0}


def _grounding_case(spec: dict) -> dict:
    import dataclasses

    import numpy as np
    from PIL import Image

    import grounding
    import llm
    from app.counts import grounding_counts
    from demos import DemoConfig, choose, embed_pool
    from formats import ccks
    from servers.fake_mllm import FakeServer, reply

    demo = ccks.read_ccks(DEMO)
    folder, rng = Path(tempfile.mkdtemp()), np.random.default_rng(0)
    y, x = np.mgrid[0:750, 0:1000]
    base = np.stack([x * 255 / 1000, y * 255 / 750, (x + y) * 255 / 1750], -1)
    queries = []
    for k in range(spec["n"]):
        s = demo.samples[k % len(demo.samples)]
        path = folder / f"{k}.jpg"
        Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)).save(
            path, quality=90
        )
        queries.append(
            dataclasses.replace(
                s,
                id=f"{s.id}_{k}",
                image=str(path),
                entities=[dataclasses.replace(e, boxes=[]) for e in s.entities],
            )
        )
    kb = sum(os.path.getsize(q.image) for q in queries) / len(queries) / 1024
    client = llm.Client(llm.ClientConfig(base_url="", workers=4))
    if spec["eager"]:  # the old behaviour: every request, with its base64 images, built before the first call
        real = client.map_chat
        client.map_chat = lambda reqs, desc="", workers=None: real(
            [r() if callable(r) else r for r in reqs], desc
        )
    with FakeServer(lambda body: reply({"entities": []})) as srv:
        srv.requests = _Tally()  # keeping every body (and its base64 images) would swamp the numbers
        client.config.base_url = srv.url
        t0 = time.perf_counter()
        examples = choose(queries, embed_pool(demo.samples, DemoConfig(w_image=0.0)))
        out, traces = grounding.ground(queries, examples, demo, client)
    counts = grounding_counts(out, traces)
    assert counts["calls"] == srv.requests.n and not counts["failed_calls"], counts
    shutil.rmtree(folder)
    return {"peak_mb": _peak_mb(), "seconds": time.perf_counter() - t0, "calls": counts["calls"], "kb": kb}


def _suggest_case(spec: dict) -> dict:
    import random

    import tagger
    from data import Sample
    from formats import ccks
    from labelling import suggest

    demo = ccks.read_ccks(DEMO)
    cfg = tagger.TaggerConfig(epochs=1, min_steps=0, progress=False, threads=1)
    model, _ = tagger.train_tagger(demo.samples, demo.types, cfg)
    rng = random.Random(0)
    words = [t for s in demo.samples for t in s.tokens]
    pool = [Sample(f"p{k}", [rng.choice(words) for _ in range(20)]) for k in range(spec["n"])]
    before = _peak_mb()
    t0 = time.perf_counter()
    chosen = suggest.suggest(model, pool, 700)
    seconds = time.perf_counter() - t0
    assert len(chosen) == 700
    return {"pool_mb": before, "peak_mb": _peak_mb(), "seconds": seconds, "sps": spec["n"] / seconds}


class _Tally(list):
    """A stand-in for FakeServer.requests that counts the bodies instead of keeping them."""

    n = 0

    def append(self, body: dict) -> None:
        self.n += 1


def _spawn(kind: str, spec: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", kind, json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {kind} {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(args=None, parts: tuple[str, ...] = ("tagger", "grounding", "suggest")) -> None:
    print("command: python -m bench memory")
    if "tagger" in parts:
        print("\n1. tagger training, one epoch on the demo's 32 sentences (MiniLM, 1 thread)")
        print(f"{'extra text':<18}{'train_chunk':>12}{'peak RSS MB':>13}{'seconds':>9}")
        for long, chunk in ((0, 64), (5000, 64), (10000, 64), (5000, 10**9)):
            r = _spawn("tagger", {"long": long, "chunk": chunk})
            print(
                f"{f'{long} words' if long else 'none':<18}{chunk if chunk < 10**9 else 'uncut':>12}"
                f"{r['peak_mb']:>13.0f}{r['seconds']:>9.1f}",
                flush=True,
            )
    if "grounding" in parts:
        print(
            "\n2. grounding stage, 0-latency fake server, 4 workers, k = 3 (demo texts, one image per sample)"
        )
        print(
            f"{'samples':>8}{'requests built':>18}{'calls':>7}{'image KB':>10}"
            f"{'peak RSS MB':>13}{'seconds':>9}"
        )
        for eager in (False, True):
            for n in (450, 1500):
                r = _spawn("grounding", {"n": n, "eager": eager})
                print(
                    f"{n:>8}{'all before' if eager else 'lazily':>18}{r['calls']:>7}{r['kb']:>10.0f}"
                    f"{r['peak_mb']:>13.0f}{r['seconds']:>9.1f}",
                    flush=True,
                )
    if "suggest" in parts:
        print("\n3. suggestion: score a pool of 20-word texts, choose 700 (1 thread, chunks of 512)")
        print(f"{'pool':>8}{'RSS after reading MB':>22}{'peak RSS MB':>13}{'seconds':>9}{'sentences/s':>13}")
        for n in (10_000, 100_000):
            r = _spawn("suggest", {"n": n})
            print(
                f"{n:>8}{r['pool_mb']:>22.0f}{r['peak_mb']:>13.0f}{r['seconds']:>9.1f}{r['sps']:>13.0f}",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        case = {"tagger": _tagger_case, "grounding": _grounding_case, "suggest": _suggest_case}[sys.argv[2]]
        print(json.dumps(case(json.loads(sys.argv[3]))))
    else:  # python -m bench.memory [tagger] [grounding] [suggest]
        bench_memory(parts=tuple(sys.argv[1:]) or ("tagger", "grounding", "suggest"))
