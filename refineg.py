"""ReFineG end to end: synthesis -> tagger -> uncertainty + refinement -> demo selection + grounding -> scores.

The one straight pipeline of the paper (Tang et al., CCKS 2025, arXiv 2509.10975):
  1. training stage: an LLM writes labelled sentences from the labelled seeds
     (synth.py), a small encoder + CRF tagger is trained on seeds + synthetic
     data (tagger.py);
  2. refinement stage: the tagger predicts entities with CRF-marginal
     uncertainty; only the uncertain ones go to the MLLM (uncertainty.py);
  3. grounding stage: the k most similar labelled samples are shown to the MLLM
     as worked examples before it boxes the entities (grounding.py).
Predictions are written in the CCKS layout (and in the Twitter-GMNER layout when
that is the data predicted) and scored (eval.py) when gold exists.

    python refineg.py --data examples/demo                       # supervised path, no server
    python refineg.py --data DIR --llm-url http://127.0.0.1:8000/v1 --llm-model Qwen/Qwen2.5-VL-7B-Instruct \
        --box-format abs

Rerunning the same command resumes: finished stages are reused (keyed by their
settings) and cached MLLM answers are not paid again. Only this file knows the
order of the stages; every flag maps onto one field of a stage's settings. The
summary printed at the end and the --viz pictures are drawn by report.py.
Left out on purpose: multi-GPU training, a web UI, adding entities the tagger
missed (off by default in the paper's spirit: that is where an LLM's notion of
"entity" leaks in).
"""

import argparse
import dataclasses
import hashlib
import inspect
import json
import random
import re
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

import data
import eval as scorer
import grounding
import llm
import selftrain
import synth
import tagger
import uncertainty
from report import NO_LLM, all_runs, draw, summary_text

# ---------------------------------------------------------------- settings -> flags


@dataclasses.dataclass
class RunConfig:
    data: str = ""                  # labelled data: a CCKS folder, a Twitter-GMNER txt (xml/ beside it) or CoNLL
    test: str = ""                  # data to predict (labelled or not); "" = hold out --test-share of --data
    images: list[str] = dataclasses.field(default_factory=list)   # image folders (<id>.jpg/.png/.jpeg) for --data and --test; none = images/ beside the data
    test_share: float = 0.3         # share of --data held out as the test split when --test is not given
    out: str = "runs/refineg"       # run directory (config.json, predictions.json, metrics.json, ...)
    tagger_dir: str = ""            # reuse a trained tagger from this directory instead of training one
    unlabelled: str = ""            # in-domain text to self-train the tagger on (any --data format; labels ignored)
    synthesize: bool = True         # run the synthesis stage when an LLM is configured and a tagger is trained
    refine: bool = True             # run the refinement stage when an LLM is configured
    ground: bool = True             # run the grounding stage when an LLM is configured
    viz: int = 0                    # draw this many predictions (boxes, names, types; gold too) into viz/
    warn_failed_share: float = 0.1  # a stage with more than this share of failed MLLM calls is flagged first
    seed: int = 0                   # the test split's shuffle


STAGES = [("run", RunConfig, ""), ("llm", llm.ClientConfig, "llm-"), ("synth", synth.SynthConfig, "synth-"),
          ("tagger", tagger.TaggerConfig, "tagger-"), ("uncertainty", uncertainty.UncertaintyConfig, "unc-"),
          ("grounding", grounding.GroundingConfig, "ground-")]


def field_help(cls: type) -> dict[str, str]:
    """The comment after each field of a settings dataclass: the single source of --help."""
    src = inspect.getsource(cls)
    return dict(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", src, flags=re.M))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="refineg.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s --data DATA [--test DATA] [--out DIR] [--llm-url URL ...] (see --help)",
                                 epilog="Every flag sets the field of the same name in that stage's settings dataclass.")
    for stage, cls, prefix in STAGES:
        group = ap.add_argument_group(f"{stage} ({cls.__module__}.{cls.__name__})")
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            flag = "--" + prefix + f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind = type(default)
            text = f"{helps.get(f.name, '')} (default: {default!r})"
            if kind is bool:
                group.add_argument(flag, dest=f"{stage}.{f.name}", action=argparse.BooleanOptionalAction, default=default, help=text)
            elif kind is list:
                group.add_argument(flag, dest=f"{stage}.{f.name}", nargs="*", metavar=f.name.upper(), default=default, help=text)
            else:
                group.add_argument(flag, *ALIASES.get(flag, []), dest=f"{stage}.{f.name}", type=converter(str(f.type)),
                                   metavar=f.name.upper(), default=default, help=text)
    return ap


ALIASES = {"--llm-base-url": ["--llm-url"], "--tagger-dir": ["--tagger"]}


def converter(annotation: str):
    """str -> the field's type; `none` means None for optional fields."""
    base = float if "float" in annotation else int if "int" in annotation else str
    if "None" not in annotation:
        return base
    return lambda s: None if s.lower() == "none" else base(s)


def parse_configs(argv: list[str]) -> dict:
    """The settings of every stage; an invalid one ends the run here with `error: ...` and exit code 2."""
    ap = build_parser()
    args = vars(ap.parse_args(argv))
    cfg = {stage: cls(**{f.name: args[f"{stage}.{f.name}"] for f in dataclasses.fields(cls)}) for stage, cls, _ in STAGES}
    problems = settings_problems(cfg)
    if problems:
        ap.exit(2, f"{ap.prog}: error: {'; '.join(problems)}\n")      # as argparse ends a bad flag
    return cfg


def settings_problems(cfg: dict) -> list[str]:
    """Every setting no stage can work with, as "--flag: expected X, got Y", checked before any stage runs
    (a stage finding it later would end the run with a traceback after minutes of training)."""
    run, client, syn, tag, unc, gr = (cfg[s] for s in ("run", "llm", "synth", "tagger", "uncertainty", "grounding"))
    rules = [  # (flag, value, ok, what was expected)
        ("--test-share", run.test_share, 0 < run.test_share < 1, "a share in (0, 1)"),
        ("--viz", run.viz, run.viz >= 0, "a number of pictures >= 0"),
        ("--warn-failed-share", run.warn_failed_share, 0 <= run.warn_failed_share <= 1, "a share in [0, 1]"),
        ("--llm-structured", client.structured, client.structured in ("json_schema", "json_object"),
         "json_schema or json_object"),
        ("--llm-workers", client.workers, client.workers >= 1, "at least 1"),
        ("--llm-max-retries", client.max_retries, client.max_retries >= 0, "0 or more"),
        ("--llm-schema-retries", client.schema_retries, client.schema_retries >= 0, "0 or more"),
        ("--llm-read-timeout", client.read_timeout, client.read_timeout > 0, "seconds > 0"),
        ("--llm-call-budget", client.call_budget, client.call_budget > 0, "seconds > 0"),
        ("--llm-max-tokens", client.max_tokens, client.max_tokens >= 1, "at least 1"),
        ("--synth-per-seed", syn.per_seed, syn.per_seed >= 1, "at least 1"),
        ("--synth-keep-share", syn.keep_share, 0 <= syn.keep_share <= 1, "a share in [0, 1]"),
        ("--synth-min-tokens", syn.min_tokens, 1 <= syn.min_tokens <= syn.max_tokens,
         f"1 <= min-tokens <= --synth-max-tokens ({syn.max_tokens})"),
        ("--synth-seeds", syn.seeds, syn.seeds >= 0, "0 (all) or more"),
        ("--tagger-scheme", tag.scheme, tag.scheme in ("BIO", "BIOES"), "BIO or BIOES"),
        ("--tagger-epochs", tag.epochs, tag.epochs >= 1, "at least 1"),
        ("--tagger-batch-size", tag.batch_size, tag.batch_size >= 1, "at least 1"),
        ("--tagger-epoch-size", tag.epoch_size, tag.epoch_size >= 0, "0 (all) or more"),
        ("--tagger-train-chunk", tag.train_chunk, tag.train_chunk >= 1, "a positive number of words"),
        ("--tagger-warmup", tag.warmup, 0 <= tag.warmup <= 1, "a share in [0, 1]"),
        ("--tagger-dropout", tag.dropout, 0 <= tag.dropout < 1, "a probability in [0, 1)"),
        ("--tagger-self-train-rounds", tag.self_train_rounds, tag.self_train_rounds >= 0, "0 or more"),
        ("--unc-method", unc.method, unc.method in ("marginal", "mc_dropout"), "marginal or mc_dropout"),
        ("--unc-tau", unc.tau, unc.tau is None or unc.tau >= 0, "none or a score >= 0"),
        ("--unc-target-rate", unc.target_rate,
         unc.target_rate is not None and 0 <= unc.target_rate <= 1 or unc.target_rate is None and unc.tau is not None,
         # picking tau by F1 gain needs labelled dev predictions, which the pipeline does not hold out
         "a share in [0, 1] (none only together with a fixed --unc-tau)"),
        ("--unc-mc-passes", unc.mc_passes, unc.method != "mc_dropout" or unc.mc_passes >= 1, "at least 1 with mc_dropout"),
        ("--ground-k", gr.k, gr.k >= 0, "0 or more worked examples"),
        ("--ground-box-format", gr.box_format, gr.box_format in grounding.FORMATS, " or ".join(grounding.FORMATS)),
        ("--ground-entity-sim", gr.entity_sim, gr.entity_sim in ("mean", "sum"), "mean or sum"),
        ("--ground-max-side", gr.max_side, gr.max_side >= 1, "pixels >= 1"),
        ("--ground-max-boxes", gr.max_boxes, gr.max_boxes >= 1, "at least 1"),
    ]
    return [f"{flag}: expected {what}, got {value!r}" for flag, value, ok, what in rules if not ok]


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
    else:
        model, rounds = tagger.train_tagger(train, types, cfg["tagger"]), []
    tmp = out / "tagger.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tagger.save(model, str(tmp))
    write_json(tmp / "stage.json", {"key": k, "history": model.history, "self_training": rounds})
    shutil.rmtree(out / "tagger", ignore_errors=True)
    tmp.rename(out / "tagger")
    kept = f", self-trained on {rounds[-1]['pseudo_sentences']} of {len(unlabelled)} unlabelled" if rounds else ""
    return model, f"trained on {len(train)} sentences{kept}"


def synthesize_or_reuse(cfg: dict, seeds: data.Dataset, client: llm.Client, out: Path) -> tuple[list[data.Sample], dict]:
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
    clients: dict[str, llm.Client] = {}
    state["written"] = []

    def off(flag: str) -> str:
        return f"turned off by --{flag}" if use_llm else NO_LLM

    def client(stage: str) -> llm.Client:
        state["stage"] = stage
        clients[stage] = llm.Client(llm_cfg)
        return clients[stage]

    def predictions(samples: list[data.Sample], name: str) -> None:
        data.write_ccks(samples, out / f"{name}.tmp")
        (out / f"{name}.tmp").replace(out / name)
        state["written"].append(name)

    try:
        # 1. training stage: synthesis, then the tagger on seeds + synthetic sentences
        t0 = time.perf_counter()
        synthetic = []
        if run.tagger_dir:                                      # synthetic sentences only serve training
            skipped["synthesis"] = f"a trained tagger is reused (--tagger {run.tagger_dir})"
        elif use_llm and run.synthesize:
            synthetic, summary = synthesize_or_reuse(cfg, seeds, client("synthesis"), out)
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
        tau, tau_how = uncertainty.choose_threshold(pred, None, unc)
        notes["uncertainty"] = {"tau": tau, "how": tau_how, "entities": sum(len(s.entities) for s in pred),
                                "delegated": sum(map(len, uncertainty.route(pred, tau)))}
        seconds["predict"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if use_llm and run.refine:
            pred, notes["refinement"] = uncertainty.refine(pred, labelled, client("refinement"), unc, tags=model.tags)
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
            pred, notes["grounding"] = grounding.ground(pred, train, labelled, client("grounding"), cfg["grounding"])
        else:
            skipped["grounding"] = off("no-ground")
        seconds["grounding"] = time.perf_counter() - t0
        state["stage"] = "scoring"
        if gold_known:
            metrics["final"] = scorer.evaluate(test, pred)
        predictions(pred, "predictions.json")
        if target.format == "twitter":     # also the benchmark's own layout: predictions.txt + xml/ beside it
            shutil.rmtree(out / "xml", ignore_errors=True)      # a stale box file would join a new prediction
            data.write_twitter(pred, out / "predictions.txt.tmp", out / "xml")
            (out / "predictions.txt.tmp").replace(out / "predictions.txt")
            state["written"].append("predictions.txt")
        if "grounding" in clients:
            all_failed("grounding", clients["grounding"], "predictions.json holds the entities without boxes")
    finally:     # counts and times of whatever ran, also when a stage failed or was interrupted
        usage = {stage: c.usage.as_dict() for stage, c in clients.items()}
        write_json(out / "metrics.json", {"metrics": metrics, "stages": notes, "skipped": skipped,
                                          "written": state["written"]})
        write_json(out / "usage.json", {"llm": usage, "all_runs": all_runs(usage), "seconds": seconds})
    if run.viz:
        state["stage"] = "drawing"
        draw(pred, test if gold_known else None, out / "viz", run.viz)
    print(summary_text(metrics, notes, usage, seconds, skipped, out, run.warn_failed_share))
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
