"""ReFineG end to end: synthesis -> tagger -> uncertainty + refinement -> demo selection + grounding -> scores.

The one straight pipeline of the paper (Tang et al., CCKS 2025, arXiv 2509.10975):
  1. training stage: an LLM writes labelled sentences from the labelled seeds
     (synth.py), a small encoder + CRF tagger is trained on seeds + synthetic
     data (tagger.py);
  2. refinement stage: the tagger predicts entities with CRF-marginal
     uncertainty; only the uncertain ones go to the MLLM (uncertainty.py);
  3. grounding stage: the k most similar labelled samples (demos.py) are shown
     to the MLLM as worked examples before it boxes the entities (grounding.py).
Predictions are written in the CCKS layout (and in the Twitter-GMNER layout when
that is the data predicted) and scored (eval.py) when gold exists.

    python refineg.py --data examples/demo                       # supervised path, no server
    python refineg.py --data DIR --llm-url http://127.0.0.1:8000/v1 --llm-model Qwen/Qwen2.5-VL-7B-Instruct \
        --ground-box-format abs

Rerunning the same command resumes: finished stages are reused (keyed by their
settings) and cached MLLM answers are not paid again. Only this file knows the
order of the stages; every flag maps onto one field of a stage's settings. The
summary printed at the end and the --viz pictures are drawn by report.py; the flags
are built and checked by cli.py.
Left out on purpose: multi-GPU training, a web UI. Off by default, in the
paper's spirit: letting the MLLM add entities the tagger missed (--unc-allow-add),
since that is where an LLM's notion of "entity" leaks in.
"""

import dataclasses
import hashlib
import json
import random
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

import ccks
import data
import eval as scorer
import grounding
import llm
import selftrain
import synth
import tagger
import twitter
import uncertainty
from cli import RunConfig, parse_configs
from report import NO_LLM, all_runs, draw, summary_text


def key(*parts) -> str:
    """A short fingerprint of settings and inputs: a finished stage is reused only when it matches."""
    blob = json.dumps(parts, sort_keys=True, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_json(path: Path, obj) -> None:
    """Write-then-rename, so Ctrl-C never leaves a half-written file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


def split(samples: list[data.Sample], share: float, seed: int) -> tuple[list, list]:
    """A seeded hold-out of `share` of the labelled samples as the test split."""
    if not 0.0 < share < 1.0:
        raise data.DataError(f"--test-share: expected a share in (0, 1), got {share}")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(share * len(samples)))
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return [samples[i] for i in train], [samples[i] for i in test]


def has_labels(path: str) -> bool:
    """A CCKS folder is labelled when it has entity.json; CoNLL and Twitter files always carry tags."""
    p = Path(path)
    return not p.is_dir() or (p / "entity.json").is_file()


def read_inputs(run: RunConfig) -> tuple[data.Dataset, list[data.Sample], data.Dataset, bool]:
    """The labelled dataset, its training part, the data to predict, and whether it has gold."""
    if not run.data:
        raise data.DataError("--data is required: a CCKS folder, a Twitter-GMNER txt or a CoNLL file")
    labelled = data.read_dataset(run.data, run.images)
    if not labelled.samples:
        raise data.DataError(f"{run.data}: no sample found (an empty dataset)")
    if not run.test:
        train, test = split(labelled.samples, run.test_share, run.seed)
        return labelled, train, dataclasses.replace(labelled, samples=test), True
    target = data.read_dataset(run.test, run.images)
    if not target.samples:
        raise data.DataError(f"{run.test}: no sample found (an empty dataset)")
    unknown = {e.type for s in target.samples for e in s.entities} - set(labelled.types)
    if unknown:
        raise data.DataError(f"{run.test}: types {sorted(unknown)} are not in the labelled data's types {labelled.types}")
    if Path(run.test).is_dir() and target.types != labelled.types:    # a CCKS folder brings its own types.txt
        warnings.warn(f"{run.test}/types.txt lists {target.types}, the labelled data {labelled.types}: the labelled "
                      "data's types and descriptions are used")
    return labelled, labelled.samples, target, has_labels(run.test)


def train_or_reuse(cfg: dict, train: list[data.Sample], types: list[str], out: Path,
                   unlabelled: list[data.Sample]) -> tuple[tagger.Tagger, str]:
    """Train the tagger (self-trained when there is unlabelled text), or reuse out/tagger when it was trained
    with the same settings on the same data."""
    run = cfg["run"]
    if run.tagger_dir:
        return tagger.load(run.tagger_dir), f"loaded from {run.tagger_dir}"
    settings = dataclasses.replace(cfg["tagger"], progress=True)    # showing bars does not change the model
    k = key(settings, types, [(s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in train],
            [s.tokens for s in unlabelled])
    stamp = out / "tagger" / "stage.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == k:
        return tagger.load(str(out / "tagger")), "reused (same settings and data)"
    if unlabelled:
        model, rounds = selftrain.self_train(train, unlabelled, types, cfg["tagger"])
        history = rounds[-1]["history"]
    else:
        (model, history), rounds = tagger.train_tagger(train, types, cfg["tagger"]), []
    tmp = out / "tagger.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tagger.save(model, str(tmp))
    write_json(tmp / "stage.json", {"key": k, "history": history, "self_training": rounds})
    shutil.rmtree(out / "tagger", ignore_errors=True)
    tmp.rename(out / "tagger")
    kept = f", self-trained on {rounds[-1]['pseudo_sentences']} of {len(unlabelled)} unlabelled" if rounds else ""
    return model, f"trained on {len(train)} sentences{kept}"


def synthesize_or_reuse(cfg: dict, seeds: data.Dataset, client: llm.Client, out: Path) -> tuple[list[data.Sample], dict]:
    """Synthesise from the seeds, or reuse synthetic.jsonl when it was written with the same settings, model and
    seeds and no call failed (a failed seed is asked again; the answered ones come from the cache)."""
    k = key(cfg["synth"], cfg["llm"].model, [(s.id, s.tokens, [(e.start, e.end, e.type) for e in s.entities])
                                            for s in seeds.samples])
    stamp = out / "synthetic.summary.json"
    done = json.loads(stamp.read_text()) if stamp.is_file() and (out / "synthetic.jsonl").is_file() else {}
    if done.get("key") == k and not done.get("failed_calls"):    # failed calls are asked again (the rest is cached)
        return synth.read_synthetic(out / "synthetic.jsonl"), {**done, "reused": True}
    samples, summary = synth.synthesize(seeds, client, cfg["synth"])
    synth.write_rejected(summary.pop("rejected_examples"), out / "synthetic.rejected.jsonl")
    synth.write_synthetic(samples, out / "synthetic.jsonl.tmp")
    (out / "synthetic.jsonl.tmp").replace(out / "synthetic.jsonl")
    write_json(stamp, {**summary, "key": k})
    return samples, summary


def mner(gold: list[data.Sample], pred: list[data.Sample]) -> dict:
    """MNER (span + type) scores: the one task a stage before grounding can be scored on."""
    return scorer.evaluate(gold, pred)["mner"]


def pipeline(cfg: dict, state: dict) -> int:
    """The stages in order; `state["stage"]` names the running one (for main's error line)."""
    run, out = cfg["run"], Path(cfg["run"].out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {stage: dataclasses.asdict(c) for stage, c in cfg.items()})
    state["stage"] = "reading the data"
    labelled, train, target, gold_known = read_inputs(run)
    test = target.samples
    seeds = dataclasses.replace(labelled, samples=train)
    print(f"data: {len(train)} labelled training samples, {len(test)} to predict "
          f"({'with' if gold_known else 'without'} gold); types {labelled.types}")
    scored = {"samples": len(test), "gold_entities": sum(len(s.entities) for s in test) if gold_known else None,
              "test": run.test or None, "test_share": run.test_share}
    with_image = sum(1 for s in test if s.image)
    print(f"images: {with_image} of {len(test)} samples to predict have one"
          + (f" ({len(test) - with_image} missing: text-only, their entities ungroundable)" if with_image < len(test) else ""))
    use_llm = bool(cfg["llm"].base_url)
    if use_llm and (run.refine or run.ground) and not with_image:   # before any call is paid for
        raise data.DataError(f"none of the {len(test)} samples to predict has an image, so refinement and grounding "
                             "cannot see anything: pass --images DIR [DIR ...] (folders of <id>.jpg, .png or .jpeg; "
                             "default: images/ beside the data), or turn the stages off with --no-refine --no-ground")
    llm_cfg = dataclasses.replace(cfg["llm"], cache_path=cfg["llm"].cache_path or str(out / "llm_cache.jsonl"))
    if use_llm:
        llm.check_server(llm_cfg)
    metrics, seconds, notes = {}, {}, {}
    skipped: dict[str, str] = {}        # stage -> why it did not run
    clients: dict[str, llm.Client] = {}  # one per stage that calls the MLLM, so usage.json counts each apart
    state["written"] = []

    def off(flag: str) -> str:
        return f"turned off by --{flag}" if use_llm else NO_LLM

    def predictions(samples: list[data.Sample], name: str) -> None:
        ccks.write_ccks(samples, out / f"{name}.tmp")
        (out / f"{name}.tmp").replace(out / name)
        state["written"].append(name)

    try:
        # 1. training stage: synthesis, then the tagger on seeds + synthetic sentences
        t0 = time.perf_counter()
        synthetic = []
        if run.tagger_dir:                                      # synthetic sentences only serve training
            skipped["synthesis"] = f"a trained tagger is reused (--tagger {run.tagger_dir})"
        elif use_llm and run.synthesize:
            state["stage"] = "synthesis"
            clients["synthesis"] = llm.Client(llm_cfg)
            synthetic, summary = synthesize_or_reuse(cfg, seeds, clients["synthesis"], out)
            print(synth.format_summary(summary))
            notes["synthesis"] = {k: v for k, v in summary.items() if k != "key"}
            all_failed("synthesis", clients["synthesis"], "")
        else:
            skipped["synthesis"] = off("no-synthesize")
        seconds["synthesis"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        state["stage"] = "tagger"
        unlabelled = data.read_dataset(run.unlabelled).samples if run.unlabelled and not run.tagger_dir else []
        model, how = train_or_reuse(cfg, train + synthetic, labelled.types, out, unlabelled)
        print(f"tagger: {how}")
        seconds["tagger"] = time.perf_counter() - t0

        # 2. refinement stage: uncertainty for every predicted entity, the uncertain ones to the MLLM
        t0 = time.perf_counter()
        state["stage"] = "prediction"
        unc = cfg["uncertainty"]
        pred = tagger.predict(model, test, mc_passes=unc.mc_passes if unc.method == "mc_dropout" else 0)
        uncertainty.score(pred, model.tags, unc)
        if gold_known:
            metrics["tagger"] = {"mner": mner(test, pred)}
        tau, tau_how = uncertainty.choose_threshold(pred, None, unc)        # the one tau: refinement is given it
        notes["uncertainty"] = {"tau": tau, "how": tau_how, "entities": sum(len(s.entities) for s in pred),
                                "delegated": sum(map(len, uncertainty.route(pred, tau)))}
        seconds["predict"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if use_llm and run.refine:
            state["stage"] = "refinement"
            clients["refinement"] = llm.Client(llm_cfg)
            pred, notes["refinement"] = uncertainty.refine(pred, labelled, clients["refinement"], unc, tau=tau,
                                                           tags=model.tags)
            if gold_known:
                metrics["refinement"] = {"mner": mner(test, pred)}
        else:
            skipped["refinement"] = off("no-refine")
        seconds["refinement"] = time.perf_counter() - t0
        # What finished is on disk before grounding starts: a crash or Ctrl-C there keeps these predictions.
        predictions(pred, "predictions.refined.json")
        if "refinement" in clients:
            all_failed("refinement", clients["refinement"], "predictions.refined.json holds the tagger's predictions")

        # 3. grounding stage: k similar labelled samples as worked examples, then boxes
        t0 = time.perf_counter()
        if use_llm and run.ground:
            state["stage"] = "grounding"
            clients["grounding"] = llm.Client(llm_cfg)
            pred, notes["grounding"] = grounding.ground(pred, train, labelled, clients["grounding"], cfg["grounding"])
        else:
            skipped["grounding"] = off("no-ground")
        seconds["grounding"] = time.perf_counter() - t0
        state["stage"] = "scoring"
        if gold_known:
            metrics["final"] = scorer.evaluate(test, pred)
        predictions(pred, "predictions.json")
        if target.format == "twitter":     # also the benchmark's own layout: predictions.txt + xml/ beside it
            shutil.rmtree(out / "xml", ignore_errors=True)      # a stale box file would join a new prediction
            twitter.write_twitter(pred, out / "predictions.txt.tmp", out / "xml")
            (out / "predictions.txt.tmp").replace(out / "predictions.txt")
            state["written"].append("predictions.txt")
        if "grounding" in clients:
            all_failed("grounding", clients["grounding"], "predictions.json holds the entities without boxes")
    finally:     # counts and times of whatever ran, also when a stage failed or was interrupted
        usage = {stage: c.usage.as_dict() for stage, c in clients.items()}
        write_json(out / "metrics.json", {"metrics": metrics, "scored": scored, "stages": notes, "skipped": skipped,
                                          "written": state["written"]})
        write_json(out / "usage.json", {"llm": usage, "all_runs": all_runs(usage), "seconds": seconds})
    if run.viz:
        state["stage"] = "drawing"
        draw(pred, test if gold_known else None, out / "viz", run.viz)
    print(summary_text(metrics, notes, usage, seconds, skipped, out, scored, run.warn_failed_share))
    return 0


def all_failed(stage: str, client: llm.Client, kept: str) -> None:
    """Raise LLMError when every call of a stage failed (a refused key, a dead model): the run must not end
    with exit 0 and a summary that looks normal."""
    u = client.usage
    if u.calls and u.failures == u.calls:
        raise llm.LLMError(f"every one of the {u.calls} {stage} calls failed" + (f" ({kept})" if kept else "")
                           + f"; the last error: {client.last_error}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_configs(sys.argv[1:] if argv is None else argv)
    state = {"stage": "start", "written": []}
    kept = lambda: (f" Kept in {cfg['run'].out}: {', '.join(state['written'])}." if state["written"] else "")
    try:
        return pipeline(cfg, state)
    except (data.DataError, llm.LLMError, FileNotFoundError) as err:
        print(f"error: {err}{kept()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished stages and every answered MLLM call are kept; rerun the same command to "
              f"resume.{kept()}", file=sys.stderr)
        return 130
    except Exception as err:        # a bug: one line naming the stage and sample; the traceback goes to a file
        log = Path(cfg["run"].out) / "error.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc(), encoding="utf-8")
        sample = _sample_of(err.__traceback__)
        print(f"error: the {state['stage']} stage failed{f' on sample {sample!r}' if sample else ''}: "
              f"{type(err).__name__}: {err}.{kept()} Traceback in {log}; please report it.", file=sys.stderr)
        return 1


def _sample_of(tb) -> str | None:
    """The id of the innermost data.Sample a failing frame was working on (a local variable), if any."""
    found = None
    while tb is not None:
        for v in tb.tb_frame.f_locals.values():
            if isinstance(v, data.Sample):
                found = v.id
        tb = tb.tb_next
    return found


if __name__ == "__main__":
    sys.exit(main())
