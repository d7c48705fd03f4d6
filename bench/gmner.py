"""`python -m bench gmner`: ReFineG's whole method on Twitter-GMNER, with a simulated MLLM of known accuracy.

The paper's central claim is that refining only the tagger's uncertain entities beats sending
everything to the MLLM. No trained vision model runs here, so the MLLM is simulated_mllm.py:
right with probability a, wrong in realistic ways otherwise. This measures what the pipeline's
MLLM stages do to MNER, EEG and GMNER F1, and what they cost (calls and prompt tokens per
sample), as a function of a. It is a SIMULATION: it says nothing about how accurate a real MLLM is.

Data: the tagger of `python -m bench uncertainty` (trained on lowres/10GMNER/train.txt, 700 tweets,
epochs chosen on lowres/10GMNER/dev.txt, cached under /tmp), predicting the full dev.txt
(1,500 tweets) with gold boxes from xml/. Images are gray placeholders of the sizes the xml
files state (600x450 where there is no xml); boxes live in that pixel grid. Demos for grounding
are the 700 training tweets.

Rows: tagger only; refinement of the top 10/20/30 % most uncertain entities, of every entity of
every sample with an entity (the authors' rule), at a = 0.6, 0.8, 0.95; grounding of the
tagger's entities at a = 0.6, 0.8, 1.0; the GMNER ceiling (every MNER-correct entity gets its
gold region, computed without any server), which grounding at a = 1.0 must equal exactly.

    python -m bench gmner            # about 15 minutes on 2 cores (the tagger is trained once, then cached)
    python -m bench gmner --quick    # 300 test tweets, fewer rows: a fast look, numbers not comparable
    python -m bench gmner --only ground,whole   # some row groups only (refine, ground, whole)
"""

import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

IMAGES = Path("/tmp/refineg_bench_gmner_images")  # gray placeholders, rebuilt when absent; never in the repo
DEFAULT_SIZE = (600, 450)  # the median image size, for tweets without an xml file
GROUND_ACCURACIES = [0.6, 0.8, 1.0]  # a of the grounding rows (1.0: the exactness check)


def image_sizes(ids: list[str], xml_dir: Path) -> dict[str, tuple[int, int]]:
    """(width, height) per id from the xml <size>; DEFAULT_SIZE when there is no file or no usable size."""
    sizes = {}
    for sid in ids:
        size = DEFAULT_SIZE
        path = xml_dir / f"{sid}.xml"
        if path.is_file():
            node = ET.parse(path).getroot().find("size")
            try:
                w, h = int(node.findtext("width")), int(node.findtext("height"))
                size = (w, h) if w > 0 and h > 0 else size
            except (AttributeError, TypeError, ValueError):
                pass
        sizes[sid] = size
    return sizes


def placeholders(samples: list, sizes: dict[str, tuple[int, int]]) -> None:
    """Point every sample at a gray JPEG of its image's size (written once)."""
    from PIL import Image

    IMAGES.mkdir(parents=True, exist_ok=True)
    for s in samples:
        w, h = sizes[s.id]
        path = IMAGES / f"{s.id}-{w}x{h}.jpg"
        if not path.is_file():
            Image.new("RGB", (w, h), (128, 128, 128)).save(path, quality=80)
        s.image = str(path)


def ceiling(gold: list, pred: list) -> dict:
    """Scores when every predicted entity with a gold span gets that entity's gold boxes (no server)."""
    import eval as evaluation

    out = []
    for g, p in zip(gold, pred):
        boxes = {(e.start, e.end): e.boxes for e in g.entities}
        out.append(
            replace(p, entities=[replace(e, boxes=list(boxes.get((e.start, e.end), []))) for e in p.entities])
        )
    return evaluation.evaluate(gold, out)


def bench_gmner(args) -> None:
    import eval as evaluation
    import grounding
    import refinement
    import tagger
    import uncertainty
    from app.counts import grounding_counts, refinement_counts
    from bench import TWITTER, have
    from bench.uncertainty import _unc_tagger
    from demos import DemoConfig, choose, embed_pool
    from formats.twitter import read_twitter
    from llm import Client, ClientConfig
    from servers.simulated_mllm import SimConfig, SimulatedMLLM

    print(
        "command: python -m bench gmner"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
    )
    if not have(TWITTER):
        return
    tg, _, _ = _unc_tagger("twitter", args)  # the uncertainty bench's tagger, cached
    test_data = read_twitter(TWITTER / "dev.txt", TWITTER / "xml")
    demos = read_twitter(TWITTER / "lowres" / "10GMNER" / "train.txt", TWITTER / "xml").samples
    test = test_data.samples[:300] if args.quick else test_data.samples
    sizes = image_sizes([s.id for s in test + demos], TWITTER / "xml")
    placeholders(test + demos, sizes)
    world = test + demos  # what the simulated MLLM knows
    t0 = time.perf_counter()
    pred = tagger.predict(tg, test)
    uncertainty.estimate(pred, tg.tags)
    print(
        f"tagger: {len(test)} test tweets, {sum(len(s.entities) for s in pred)} predicted entities, "
        f"{sum(len(s.entities) for s in test)} gold ({time.perf_counter() - t0:.0f} s)",
        file=sys.stderr,
    )

    rows = []

    def row(name: str, a: str, out: list, usage: dict | None) -> None:
        m = evaluation.evaluate(test, out)
        calls = usage["calls"] / len(test) if usage else 0.0
        tokens = usage["prompt_tokens"] / len(test) if usage else 0.0
        rows.append((name, a, m["mner"]["f1"], m["eeg"]["f1"], m["gmner"]["f1"], calls, tokens))
        print(
            f"| {name} | {a} | {m['mner']['f1']:.3f} | {m['eeg']['f1']:.3f} | {m['gmner']['f1']:.3f} "
            f"| {calls:.3f} | {tokens:.0f} |",
            flush=True,
        )

    def client(sim) -> Client:
        return Client(ClientConfig(base_url=sim.url, workers=4, max_retries=0))

    print("\n| setting | a | MNER F1 | EEG F1 | GMNER F1 | MLLM calls / sample | prompt tokens / sample |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    row("tagger only (no MLLM)", "-", pred, None)
    settings = [
        ("refine top 10 %", 0.1),
        ("refine top 20 % (default)", 0.2),
        ("refine top 30 %", 0.3),
        ("refine every entity (authors' rule)", None),
    ]
    groups = args.only.split(",") if args.only else ["refine", "ground", "whole"]
    accuracies = [0.8] if args.quick else [0.6, 0.8, 0.95]
    for a in accuracies if "refine" in groups else []:
        for name, rate in settings:
            cfg = (
                uncertainty.UncertaintyConfig(target_rate=rate)
                if rate
                else uncertainty.UncertaintyConfig(tau=-1.0)
            )
            with SimulatedMLLM(world, sizes, SimConfig(refine_accuracy=a)) as sim:
                c = client(sim)
                tau, _ = uncertainty.choose_threshold(pred, cfg)
                uncertainty.route(pred, tau)
                out, traces = refinement.refine(pred, test_data, c)
            summary = refinement_counts(traces)
            assert not summary["failed_call"], summary
            row(name, f"{a:g}", out, c.usage.as_dict())
    best = ceiling(test, pred)
    pool = embed_pool(demos, DemoConfig())  # once: every grounding row below chooses from it
    examples = choose(pred, pool)
    for a in ([1.0] if args.quick else GROUND_ACCURACIES) if "ground" in groups else []:
        with SimulatedMLLM(world, sizes, SimConfig(ground_accuracy=a)) as sim:
            c = client(sim)
            out, traces = grounding.ground(pred, examples, test_data, c)
        counts = grounding_counts(out, traces)
        assert not counts["failed_calls"], counts
        row("tagger + grounding", f"{a:g}", out, c.usage.as_dict())
        if a == 1.0:
            got = evaluation.evaluate(test, out)["gmner"]
            exact = (got["tp"], got["fp"], got["fn"]) == (
                best["gmner"]["tp"],
                best["gmner"]["fp"],
                best["gmner"]["fn"],
            )
            print(
                f"| GMNER ceiling (each MNER-correct entity gets its gold region; no server) | - | "
                f"{best['mner']['f1']:.3f} | {best['eeg']['f1']:.3f} | {best['gmner']['f1']:.3f} | - | - |"
            )
            print(
                f"exactness: grounding at a = 1.0 GMNER tp/fp/fn {got['tp']}/{got['fp']}/{got['fn']}, "
                "ceiling "
                f"{best['gmner']['tp']}/{best['gmner']['fp']}/{best['gmner']['fn']}: "
                f"{'EQUAL' if exact else 'DIFFERENT'}"
            )
    if not args.quick and "whole" in groups:
        with SimulatedMLLM(world, sizes, SimConfig(refine_accuracy=0.8, ground_accuracy=0.8)) as sim:
            c = client(sim)
            tau, _ = uncertainty.choose_threshold(pred)
            uncertainty.route(pred, tau)
            out, _ = refinement.refine(pred, test_data, c)
            out, _ = grounding.ground(out, choose(out, pool), test_data, c)
        row("whole method: refine top 20 % + grounding", "0.8", out, c.usage.as_dict())
    print(
        "\nSIMULATION: the MLLM answers from the gold annotations, right with probability a "
        "(simulated_mllm.py); "
        "prompt tokens are estimated (4 characters per token, one token per 28x28 image patch)."
    )
