"""ReFineG end to end: synthesis, tagger, uncertainty and refinement, demo selection and grounding, scores.

The one straight pipeline of the paper (Tang et al., CCKS 2025, arXiv 2509.10975):
  1. training: an LLM writes labelled sentences from the labelled seeds (synth.py), and a small
     encoder + CRF tagger is trained on seeds + synthetic sentences (tagger.py, selftrain.py);
  2. refinement: the tagger predicts entities with CRF-marginal uncertainty (uncertainty.py);
     only the uncertain ones go to the MLLM (refinement.py);
  3. grounding: the k most similar labelled samples (demos.py) are shown to the MLLM as worked
     examples before it boxes the entities (grounding.py).
Predictions are written in the CCKS layout (and in the Twitter-GMNER layout when that is the data
predicted) and scored (eval.py) when gold exists.

    python refineg.py --data examples/demo                       # supervised path, no server
    python refineg.py --data DIR --llm-url http://127.0.0.1:8000/v1 --llm-model Qwen/Qwen2.5-VL-7B-Instruct \
        --ground-box-format abs

Only this file knows the order of the stages. A rerun of the same command resumes: synthesis and the
tagger are reused when their settings and inputs match (app/rundir.py: fingerprint); prediction,
refinement, demo selection and grounding run again and take every answer given before from the cache, so
no answered MLLM call is paid twice (a failed answer is not cached; docs/running.md says what a rerun
costs). A finished run that a new one replaces waits in OUT/previous/ until the new one finishes.

The method's modules sit beside this file; the application around it is in app/: the flags (cli.py),
reading and checking the inputs (inputs.py), the bookkeeping of a run (rundir.py: timers, clients, skips,
the files written), the summary and the --viz pictures (report.py), trace.jsonl and report.html (page.py),
and the --suggest stage (suggestion.py), which ranks with the labelling loop of labelling/ (not in the
paper).

Left out on purpose: multi-GPU training, a web UI.
"""

import dataclasses
import json
import sys
import tempfile
import traceback
from pathlib import Path

import grounding
import llm
import refinement
import selftrain
import synth
import tagger
import uncertainty
from app import page
from app.cli import RunConfig, parse_configs
from app.inputs import describe_inputs, read_inputs, read_pool
from app.report import draw, grounding_line, mllm_line, refinement_line, summary_text
from app.rundir import PREVIOUS, Run, atomic, fingerprint, read_stamp, remove, served_model, write_json
from app.suggestion import suggestion_stage
from data import DataError, Dataset, Sample, SettingsError, one_line_warnings
from eval import evaluate
from formats import ccks, twitter


def pipeline(cfg: dict, run: Run) -> int:
    """The stages in order; `run` records what each one cost, counted, skipped and wrote."""
    settings: RunConfig = cfg["run"]
    run.current = "reading the data"
    labelled, train, target, gold_known = read_inputs(settings)
    test = target.samples
    gold = test if gold_known else None
    describe_inputs(run, settings, train, test, labelled.types, gold_known)
    pool = read_pool(settings, labelled, gold)
    if run.uses_llm:
        run.mllm = served_model(cfg["llm"].model, llm.check_server(run.client_config))
        print(mllm_line(run.mllm, run.client_config.base_url))
    run.start({stage: dataclasses.asdict(c) for stage, c in cfg.items()})  # only now: the inputs were read
    try:
        synthetic = synthesis_stage(run, cfg, dataclasses.replace(labelled, samples=train))
        model, chooser = tagger_stage(run, cfg, train + synthetic, labelled.types, pool)
        suggestion_stage(run, cfg, chooser, pool, labelled)
        tagged, tau = prediction_stage(run, cfg["uncertainty"], model, test, gold)
        pred = refinement_stage(run, cfg, tagged, labelled, tau, model.tags, gold)
        run.write_predictions(pred, "predictions.refined.json")  # kept if grounding fails or is interrupted
        run.check_calls("refinement", "predictions.refined.json holds the tagger's predictions")
        pred = grounding_stage(run, cfg, pred, train, labelled)
        scoring_stage(run, pred, gold, target, held_out=not settings.test)
        run.check_calls("grounding", "predictions.json holds the entities without boxes")
        trace_stage(run, tagged, pred, gold)
    finally:  # what ran, also when a stage failed or was interrupted
        run.save()
    if settings.viz:
        with run.stage("drawing"):
            draw(pred, gold, run.out / "viz", settings.viz)
        run.written.append("viz/")
    report_page(run, settings.report_samples)
    run.finish()
    print(summary_text(run, settings.warn_failed_share))
    return 0


# ---------------------------------------------------------------- 1. training: synthesis and the tagger


def synthesis_stage(run: Run, cfg: dict, seeds: Dataset) -> list[Sample]:
    """Labelled sentences written by the LLM from the seeds (none when the stage is off)."""
    with run.stage("synthesis"):
        if cfg["run"].tagger_dir:  # synthetic sentences only serve training
            run.skip("synthesis", f"a trained tagger is reused (--tagger {cfg['run'].tagger_dir})")
            return []
        if not run.wants("synthesis", cfg["run"].synthesize):
            return []
        samples, summary = synthesize_or_reuse(cfg, seeds, run.client("synthesis"), run.out)
        if not summary.get("reused"):
            run.written += ["synthetic.jsonl", "synthetic.summary.json", "synthetic.rejected.jsonl"]
        print(synth.format_summary(summary))
        run.notes["synthesis"] = {k: v for k, v in summary.items() if k != "key"}
    run.check_calls("synthesis")
    return samples


def synthesize_or_reuse(
    cfg: dict, seeds: Dataset, client: llm.Client, out: Path
) -> tuple[list[Sample], dict]:
    """Synthesise, or reuse synthetic.jsonl written with the same settings, model and seeds when no call
    failed (a failed seed is asked again; the answered ones come from the cache)."""
    key = fingerprint(
        cfg["synth"],
        cfg["llm"].model,
        [(s.id, s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in seeds.samples],
    )
    done = read_stamp(out / "synthetic.summary.json", key)
    if done and not done.get("failed_calls") and (out / "synthetic.jsonl").is_file():
        return synth.read_synthetic(out / "synthetic.jsonl"), {**done, "reused": True}
    samples, summary = synth.synthesize(seeds, client, cfg["synth"])
    with atomic(out / "synthetic.rejected.jsonl") as tmp:
        synth.write_rejected(summary.pop("rejected_examples"), tmp)
    with atomic(out / "synthetic.jsonl") as tmp:
        synth.write_synthetic(samples, tmp)
    write_json(out / "synthetic.summary.json", {**summary, "key": key})
    return samples, summary


def tagger_stage(
    run: Run, cfg: dict, train: list[Sample], types: list[str], pool: list[Sample]
) -> tuple[tagger.Tagger, tagger.Tagger]:
    """The tagger of --tagger, or one trained (self-trained on the --unlabelled pool) or reused; and the
    chooser that ranks the pool for --suggest: the same tagger, except after self-training. A tagger
    self-trained on the pool is sure of its own pseudo labels there, so the tagger before self-training
    (OUT/chooser/, also where self-training starts) ranks it; --test is predicted by the self-trained one."""
    settings: RunConfig = cfg["run"]
    config: tagger.TaggerConfig = cfg["tagger"]
    with run.stage("tagger"):
        if settings.tagger_dir:
            model = tagger.load(settings.tagger_dir)
            print(f"tagger: loaded from {settings.tagger_dir}")
            if settings.suggest:
                warn_self_trained(settings.tagger_dir)
            return model, model
        chooser = None
        if pool and settings.suggest and config.self_train_rounds:
            plain = dataclasses.replace(config, int8=False)  # self-training continues from its float weights
            chooser, how = train_or_reuse(plain, train, types, [], run.out / "chooser")
            if how != REUSED:
                run.written.append("chooser/")
            print(f"chooser (ranks the pool, before self-training on it): {how}")
        model, how = train_or_reuse(config, train, types, pool, run.out / "tagger", start=chooser)
        if how != REUSED:
            run.written.append("tagger/")
        print(f"tagger: {how}")
    return model, chooser or model


def warn_self_trained(directory: str) -> None:
    """--suggest with a --tagger that was self-trained: if on this pool, it ranks the pool by doubts that
    its own pseudo labels took away; say which saved tagger has none."""
    stage = Path(directory) / "stage.json"  # written beside a tagger that refineg.py trained
    if not stage.is_file():
        return
    try:
        rounds = json.loads(stage.read_text(encoding="utf-8")).get("self_training") or []
    except (json.JSONDecodeError, AttributeError) as err:
        print(f"warning: {stage}: not the JSON refineg.py writes ({err}): whether it self-trained is unknown")
        return
    if any(r.get("pseudo_sentences") for r in rounds):
        print(
            f"warning: --tagger {directory} was self-trained on unlabelled text: if that was this pool, it "
            "is sure of its own pseudo labels there and ranks the pool by little doubt; the same run's "
            "chooser/ folder holds the tagger before self-training (pass it as --tagger to rank with it)"
        )


REUSED = "reused (same settings and data)"  # how the tagger came about when out/tagger was reused


def train_or_reuse(
    config: tagger.TaggerConfig,
    train: list[Sample],
    types: list[str],
    unlabelled: list[Sample],
    folder: Path,
    start: tagger.Tagger | None = None,
) -> tuple[tagger.Tagger, str]:
    """Train the tagger (self-trained on `unlabelled`, from `start` when given), or reuse `folder` when it was
    trained with the same settings on the same data (`start` is trained from those too)."""
    key = fingerprint(
        dataclasses.replace(config, progress=True),  # showing bars does not change the model
        types,
        [(s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in train],
        [s.tokens for s in unlabelled],
    )
    if read_stamp(folder / "stage.json", key):
        return tagger.load(str(folder)), REUSED
    if unlabelled:
        model, rounds = selftrain.self_train(train, unlabelled, types, config, start=start)
        history = rounds[-1]["history"]
    else:
        model, history = tagger.train_tagger(train, types, config)
        rounds = []
    with atomic(folder) as tmp:
        tagger.save(model, str(tmp), trained_on=train)
        write_json(tmp / "stage.json", {"key": key, "history": history, "self_training": rounds})
    how = f"trained on {len(train)} sentences"
    if rounds:
        how += f", self-trained on {rounds[-1]['pseudo_sentences']} of {len(unlabelled)} unlabelled"
    return model, how


# ---------------------------------------------------------------- 2. prediction with uncertainty, refinement


NOTHING_TO_PREDICT = "nothing to predict (--suggest without --test holds no sample out)"


def prediction_stage(
    run: Run,
    config: uncertainty.UncertaintyConfig,
    model: tagger.Tagger,
    test: list[Sample],
    gold: list[Sample] | None,
) -> tuple[list[Sample], float]:
    """The tagger's entities, each with its uncertainty and marked delegated or not by the one tau chosen."""
    with run.stage("prediction"):
        passes = config.mc_passes if config.method == "mc_dropout" else 0
        pred = tagger.predict(model, test, mc_passes=passes)
        uncertainty.estimate(pred, model.tags, config)
        score_mner(run, "tagger", gold, pred)
        tau, how = uncertainty.choose_threshold(pred, config)
        uncertainty.route(pred, tau)
        entities = [e for s in pred for e in s.entities]
        run.notes["uncertainty"] = {
            "tau": tau,
            "how": how,
            "entities": len(entities),
            "delegated": sum(e.delegated for e in entities),
        }
    return pred, tau


def refinement_stage(
    run: Run,
    cfg: dict,
    pred: list[Sample],
    labelled: Dataset,
    tau: float,
    tags: list[str],
    gold: list[Sample] | None,
) -> list[Sample]:
    """The entities marked delegated checked by the MLLM (the tagger's predictions when the stage is off);
    `tau`, which marked them, is recorded beside what came of them."""
    with run.stage("refinement"):
        if not pred:
            run.skip("refinement", NOTHING_TO_PREDICT)
        elif run.wants("refinement", cfg["run"].refine):
            client = run.client("refinement")
            pred, traces = refinement.refine(pred, labelled, client, cfg["refinement"], tags)
            for sid, t in traces.items():
                if t.image_error:
                    print(f"refinement: sample {sid}: {t.image_error}; text-only call")
            run.traces["refinement"] = traces
            run.notes["refinement"] = {"tau": tau, **refinement.counts(traces)}
            print(refinement_line(run.notes["refinement"]))
            score_mner(run, "refinement", gold, pred)
    return pred


def score_mner(run: Run, stage: str, gold: list[Sample] | None, pred: list[Sample]) -> None:
    """MNER (span + type): the one task a stage before grounding can be scored on."""
    if gold is not None:
        run.metrics[stage] = {"mner": evaluate(gold, pred)["mner"]}


# ---------------------------------------------------------------- 3. grounding, then the scores


def grounding_stage(
    run: Run, cfg: dict, pred: list[Sample], train: list[Sample], labelled: Dataset
) -> list[Sample]:
    """Boxes drawn by the MLLM after worked examples chosen from the labelled training samples."""
    with run.stage("grounding"):
        if not pred:
            run.skip("grounding", NOTHING_TO_PREDICT)
        elif run.wants("grounding", cfg["run"].ground):
            client = run.client("grounding")
            pred, run.notes["grounding"], run.traces["grounding"] = grounding.ground(
                pred, train, labelled, client, cfg["grounding"], cfg["demos"]
            )
            print(grounding_line(run.notes["grounding"], pred, cfg["grounding"].never_ground))
    return pred


def scoring_stage(
    run: Run, pred: list[Sample], gold: list[Sample] | None, target: Dataset, held_out: bool
) -> None:
    """All three tasks scored; the predictions written, also span-exact in the input's own layout when it is
    Twitter-GMNER or CoNLL (a CCKS name labels every occurrence of it), and a held-out split's gold."""
    with run.stage("scoring"):
        if gold is not None:
            run.metrics["final"] = evaluate(gold, pred)
        run.write_predictions(pred, "predictions.json")
        if held_out and gold is not None:  # what eval.py needs to score again: eval.py --gold OUT/gold ...
            with atomic(run.out / "gold") as tmp:
                ccks.write_ccks_folder(gold, target, tmp)
            run.written.append("gold/")
        if target.format == "twitter":
            with atomic(run.out / "predictions.txt") as tmp:
                remove(run.out / "xml")  # a stale box file would join a new prediction
                twitter.write_twitter(pred, tmp, run.out / "xml")
            run.written += ["predictions.txt", "xml/"]
        elif target.format == "conll":
            write_conll_pair(run, pred, gold if held_out else None)


def write_conll_pair(run: Run, pred: list[Sample], gold: list[Sample] | None) -> None:
    """predictions.conll (and gold.conll for a held-out split), scored exactly as the summary scored them."""
    with atomic(run.out / "predictions.conll") as tmp:
        twitter.write_conll(pred, tmp)
    run.written.append("predictions.conll")
    if gold is not None:
        with atomic(run.out / "gold.conll") as tmp:
            twitter.write_conll(gold, tmp)
        run.written.append("gold.conll")


def trace_stage(run: Run, tagged: list[Sample], pred: list[Sample], gold: list[Sample] | None) -> None:
    """trace.jsonl: every decision per sample, from the tagger's predictions to the final ones."""
    with run.stage("report"):
        page.write_trace(run.out, tagged, pred, gold, run.traces)
    run.written.append("trace.jsonl")


def report_page(run: Run, n: int) -> None:
    """report.html, drawn from what the run saved (trace.jsonl, metrics.json, usage.json); run.finish saves
    again, so that metrics.json lists it and usage.json has its time."""
    with run.stage("report"):
        page.write_page(run.out, n)
    run.written.append("report.html")


# ---------------------------------------------------------------- the command line


def main(argv: list[str] | None = None) -> int:
    cfg = parse_configs(sys.argv[1:] if argv is None else argv)
    one_line_warnings()
    run = Run(Path(cfg["run"].out), cfg["llm"])
    try:
        return pipeline(cfg, run)
    except (DataError, SettingsError, llm.LLMError, FileNotFoundError) as err:
        print(f"error: {err}{kept(run)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished stages and every answered MLLM call are kept; rerun the same command "
            f"to resume.{kept(run)}",
            file=sys.stderr,
        )
        return 130
    except Exception as err:  # a bug: one line naming the stage and sample; the traceback goes to a file
        started = "config.json" in run.written  # else --out may hold a finished run: leave it as it is
        log = run.out / "error.log" if started else Path(tempfile.gettempdir()) / "refineg-error.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc(), encoding="utf-8")
        sample = sample_of(err.__traceback__)
        where = f" on sample {sample!r}" if sample else ""
        print(
            f"error: the {run.current} stage failed{where}: {type(err).__name__}: {err}.{kept(run)} "
            f"Traceback in {log}; please report it.",
            file=sys.stderr,
        )
        return 1


def kept(run: Run) -> str:
    """What a failed run leaves: its own files, and the finished run it replaces (app.rundir.set_aside)."""
    files = f" Kept in {run.out}: {', '.join(run.written)}." if run.written else ""
    earlier = run.out / PREVIOUS
    if run.written and earlier.is_dir():
        files += f" The finished run it was to replace is whole in {earlier}."
    return files


def sample_of(tb) -> str | None:
    """The id of the innermost data.Sample a failing frame was working on (a local variable), if any."""
    found = None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, Sample):
                found = value.id
        tb = tb.tb_next
    return found


if __name__ == "__main__":
    sys.exit(main())
