"""The application around refineg.pipeline: read the inputs, call the pipeline, write and print its result.

`main` is `python refineg.py`: it builds the settings from the flags (cli.py), reads and checks the inputs
(inputs.py), gives each MLLM stage its own client, and calls the pipeline with `RunHooks`, which time each
stage, reuse what an earlier run trained (synthesis, the tagger: rundir.fingerprint), and write and print
each stage's result as it ends, so that an interrupted run keeps its finished stages. Then it scores, writes
the predictions in the input's layout, trace.jsonl and report.html, and prints the summary (report.py).
A rerun of the same command resumes: prediction, refinement, demo selection and grounding run again and take
every answer given before from the cache, so no answered MLLM call is paid twice (a failed answer is not
cached; docs/running.md says what a rerun costs). A finished run that a new one replaces waits in
OUT/previous/ until the new one finishes.

The refineg module is passed in (pipeline, Inputs): this folder never imports it.
"""

import dataclasses
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

import demos
import llm
import tagger
from app import page, serving, store, synthetic
from app.cli import Settings, parse_settings
from app.counts import grounding_counts, refinement_counts
from app.inputs import describe_inputs, read_inputs, read_pool
from app.report import (
    draw,
    grounding_line,
    image_lines,
    mllm_line,
    refinement_line,
    summary_text,
    training_lines,
)
from app.rundir import (
    PREVIOUS,
    Run,
    SettingsError,
    atomic,
    fingerprint,
    read_stamp,
    remove,
    served_model,
    write_json,
)
from app.suggestion import suggestion_stage
from data import DataError, Dataset, InvalidSettings, Sample
from formats import ccks, one_line_warnings, twitter

NOTHING_TO_PREDICT = "nothing to predict (--suggest without --test holds no sample out)"
REUSED = "reused (same settings and data)"  # how the tagger came about when out/tagger was reused
FOLDERS = {"tagger": "tagger", "before self-training": "chooser"}  # where a trained tagger is kept


class RunHooks:
    """refineg.Hooks for a run directory: `run` records the times, counts and files; the stages' results
    are written and printed as each stage ends."""

    def __init__(
        self, run: Run, settings: Settings, labelled: Dataset, train: list[Sample], pool: list[Sample]
    ):
        self.run, self.settings, self.labelled, self.pool = run, settings, labelled, pool
        self.train = train  # the labelled training split: the seeds, and the worked examples' pool
        self.trained_on = train  # what a tagger trained here learnt from: the training split + synthetic
        self.how: dict[str, str] = {}  # trained tagger -> how it came about (trained, reused)
        self.synthesized: dict = {}  # synthetic.summary.json's counts, once synthesis ran or was reused
        self.pools: dict[str, demos.Pool] = {}  # embedded demo pools by key (--suggest-ground: grounding's)

    def stage(self, name: str):
        return self.run.stage(name)

    def reuse(self, name: str, key: tuple, make: Callable[[], object]) -> object:
        if name == "synthesis":
            return self.synthesis(fingerprint(*key), make)
        if name == "demo pool":
            return self.demo_pool(key, make)
        model, info = self.trained(name, fingerprint(*key), len(key[2]), make)
        if name == "tagger" and self.how[name] == REUSED and key[3] and self.settings.run.suggest:
            info = {**info, "before_pool": self.before_pool(key)}  # what ranks the pool for --suggest
        return model, info

    def before_pool(self, key: tuple) -> tagger.Tagger:
        """The tagger before self-training, for a reused self-trained one: OUT/chooser when it matches."""
        plain = dataclasses.replace(self.settings.tagger, int8=False)
        make = partial(tagger.train_tagger, self.trained_on, key[1], plain)
        before, _ = self.reuse(
            "before self-training", (dataclasses.replace(key[0], int8=False), *key[1:3], []), make
        )
        return before

    def demo_pool(self, key: tuple, make: Callable[[], object]) -> demos.Pool:
        """The labelled samples embedded for demo selection, once per run: in memory, for this run only."""
        done = fingerprint(*key)
        if done not in self.pools:
            self.pools[done] = make()
        return self.pools[done]

    def synthesis(self, key: str, make: Callable[[], tuple]) -> tuple:
        """synthetic.jsonl written with the same settings, model and seeds when no call failed (a failed
        seed is asked again; the answered ones come from the cache), with no trace; else synthesised, its
        traces counted, and written."""
        out = self.run.out
        done = read_stamp(out / "synthetic.summary.json", key)
        if done and not done.get("failed_calls") and (out / "synthetic.jsonl").is_file():
            self.synthesized = {**done, "reused": True}
            return synthetic.read_synthetic(out / "synthetic.jsonl"), []
        samples, traces = make()
        examples = self.settings.synth.rejected_examples
        summary = synthetic.summarize(self.labelled.types, traces, examples)
        with atomic(out / "synthetic.rejected.jsonl") as tmp:
            synthetic.write_rejected(summary.pop("rejected_examples"), tmp)
        with atomic(out / "synthetic.jsonl") as tmp:
            synthetic.write_synthetic(samples, tmp)
        write_json(out / "synthetic.summary.json", {**summary, "key": key})
        self.run.written += ["synthetic.jsonl", "synthetic.summary.json", "synthetic.rejected.jsonl"]
        self.synthesized = summary
        return samples, traces

    def trained(self, name: str, key: str, sentences: int, make: Callable[[], tuple]) -> tuple:
        """The tagger in OUT/tagger (or the one before self-training in OUT/chooser, kept with --suggest only)
        when trained with the same settings on the same data; else trained and saved there at once."""
        folder = self.run.out / FOLDERS[name]
        keep = name == "tagger" or bool(self.settings.run.suggest)
        done = read_stamp(folder / "stage.json", key) if keep else None
        if done:
            self.how[name] = REUSED
            model = store.load(str(folder))
            return (model, done["history"]) if name != "tagger" else (model, done)
        model, info = make()
        self.how[name] = f"trained on {sentences} sentences"
        stamp = info if name == "tagger" else {"history": info, "self_training": []}
        for line in training_lines(self.settings.tagger, stamp, len(self.pool)):
            print(line)
        if keep:
            with atomic(folder) as tmp:
                store.save(model, str(tmp), trained_on=self.trained_on)
                write_json(
                    tmp / "stage.json", {"key": key, **{k: v for k, v in stamp.items() if k != "before_pool"}}
                )
            self.run.written.append(f"{FOLDERS[name]}/")
        return model, info

    def finished(self, name: str, r) -> None:
        getattr(self, "after_" + name)(r)

    def after_synthesis(self, r) -> None:
        self.trained_on = self.trained_on + r.synthetic
        if self.synthesized:
            print(synthetic.format_summary(self.synthesized))
            self.run.notes["synthesis"] = {k: v for k, v in self.synthesized.items() if k != "key"}
        self.run.check_calls("synthesis")

    def after_tagger(self, r) -> None:
        s = self.settings
        if s.run.tagger_dir:
            print(f"tagger: loaded from {s.run.tagger_dir}")
            if s.run.suggest:
                warn_self_trained(s.run.tagger_dir)
        else:
            chooser = self.how.get("before self-training")
            if chooser and s.run.suggest:
                print(f"chooser (ranks the pool, before self-training on it): {chooser}")
            print(f"tagger: {self.tagger_how(r)}")
        suggestion_stage(self.run, s, self.chooser(r), self.pool, self.labelled, self.demo_pool)

    def tagger_how(self, r) -> str:
        how = self.how.get("tagger", REUSED)
        rounds = r.training.get("self_training") or []
        if how != REUSED and rounds:
            how += f", self-trained on {rounds[-1]['pseudo_sentences']} of {len(self.pool)} unlabelled"
        return how

    def chooser(self, r) -> tagger.Tagger:
        """What ranks the pool for --suggest: the tagger before self-training when it self-trained on the
        pool (sure of its own pseudo labels there, a self-trained tagger ranks it by little doubt)."""
        return r.training.get("before_pool") or r.tagger

    def after_prediction(self, r) -> None:
        entities = [e for s in r.tagged for e in s.entities]
        delegated = sum(e.delegated for e in entities)
        self.run.notes["uncertainty"] = {
            "tau": r.tau,
            "how": r.tau_how,
            "entities": len(entities),
            "delegated": delegated,
        }
        self.run.metrics.update({k: v for k, v in r.scores.items() if k == "tagger"})

    def after_refinement(self, r) -> None:
        if r.refinement is not None:
            for sid, t in r.refinement.items():
                if t.image_error:
                    print(f"refinement: sample {sid}: {t.image_error}; text-only call")
            self.run.notes["refinement"] = {"tau": r.tau, **refinement_counts(r.refinement)}
            self.run.traces["refinement"] = r.refinement
            print(refinement_line(self.run.notes["refinement"]))
            self.run.metrics.update({k: v for k, v in r.scores.items() if k == "refinement"})
        self.run.write_predictions(r.refined, "predictions.refined.json")  # kept if grounding fails
        self.run.check_calls("refinement", "predictions.refined.json holds the tagger's predictions")

    def after_grounding(self, r) -> None:
        if r.grounding is not None:
            selection = {
                "demos_without_image": len(self.train) - len(r.demo_pool.samples),
                "selection_seconds": round(self.run.seconds.get("demo selection", 0.0), 2),
            }
            self.run.notes["grounding"] = {**grounding_counts(r.final, r.grounding), **selection}
            self.run.traces["grounding"] = r.grounding
            for line in image_lines(r.grounding):
                print(line)
            print(grounding_line(self.run.notes["grounding"], r.final, self.settings.grounding.never_ground))


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


# ---------------------------------------------------------------- the command line


def main(argv: list[str], pipeline: Callable, inputs_class: type) -> int:
    """python refineg.py: 0 when every stage ran; 2 for a bad flag or input, 130 for Ctrl-C, 1 for a bug."""
    settings = parse_settings(argv)
    one_line_warnings()
    run = Run(Path(settings.run.out), settings.llm)
    try:
        return execute(settings, run, pipeline, inputs_class)
    except (DataError, SettingsError, InvalidSettings, llm.LLMError, FileNotFoundError) as err:
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
        return bug(run, err)


def execute(settings: Settings, run: Run, pipeline: Callable, inputs_class: type) -> int:
    """Read the inputs, run the pipeline with RunHooks, then score, write and print what it returned."""
    s = settings.run
    run.current = "reading the data"
    labelled, train, target, gold_known = read_inputs(s)
    gold = target.samples if gold_known else None
    describe_inputs(run, s, train, target.samples, labelled.types, gold_known)
    pool = read_pool(s, labelled, gold)
    if run.uses_llm:
        run.mllm = served_model(settings.llm.model, serving.check_server(run.client_config))
        print(mllm_line(run.mllm, run.client_config.base_url))
    model = store.load(s.tagger_dir) if s.tagger_dir else None
    run.start(dataclasses.asdict(settings))  # only now: the inputs were read
    inputs = inputs_class(dataclasses.replace(labelled, samples=train), target.samples, gold, pool, model)
    try:
        result = pipeline(
            inputs,
            settings,
            clients(run, s, bool(target.samples)),
            RunHooks(run, settings, labelled, train, pool),
        )
        with run.stage("scoring"):
            run.metrics.update({k: v for k, v in result.scores.items() if k == "final"})
            write_outputs(run, result.final, gold, target, held_out=not s.test)
        run.check_calls("grounding", "predictions.json holds the entities without boxes")
        with run.stage("report"):
            page.write_trace(run.out, result.tagged, result.final, gold, run.traces)
        run.written.append("trace.jsonl")
    finally:  # what ran, also when a stage failed or was interrupted
        run.save()
    finish(run, s, result.final, gold)
    return 0


def clients(run: Run, s, anything_to_predict: bool) -> dict[str, llm.Client]:
    """One MLLM client per stage that runs; why each other MLLM stage does not is recorded."""
    wanted = {"synthesis": s.synthesize, "refinement": s.refine, "grounding": s.ground}
    if s.tagger_dir:  # synthetic sentences only serve training
        run.skip("synthesis", f"a trained tagger is reused (--tagger {s.tagger_dir})")
        del wanted["synthesis"]
    if not anything_to_predict:
        for name in ("refinement", "grounding"):
            run.skip(name, NOTHING_TO_PREDICT)
            del wanted[name]
    return {name: run.client(name) for name, on in wanted.items() if run.wants(name, on)}


def write_outputs(
    run: Run, pred: list[Sample], gold: list[Sample] | None, target: Dataset, held_out: bool
) -> None:
    """The predictions, also span-exact in the input's own layout when it is Twitter-GMNER or CoNLL (a CCKS
    name labels every occurrence of it), and a held-out split's gold."""
    run.write_predictions(pred, "predictions.json")
    if held_out and gold is not None:  # what scoring again needs: python -m app.score --gold OUT/gold ...
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


def finish(run: Run, s, pred: list[Sample], gold: list[Sample] | None) -> None:
    """The --viz pictures, report.html (drawn from what the run saved; run.finish saves again, so that
    metrics.json lists it and usage.json has its time), and the summary."""
    if s.viz:
        with run.stage("drawing"):
            draw(pred, gold, run.out / "viz", s.viz)
        run.written.append("viz/")
    with run.stage("report"):
        page.write_page(run.out, s.report_samples)
    run.written.append("report.html")
    run.finish()
    print(summary_text(run, s.warn_failed_share))


def kept(run: Run) -> str:
    """What a failed run leaves: its own files, and the finished run it replaces (rundir.set_aside)."""
    files = f" Kept in {run.out}: {', '.join(run.written)}." if run.written else ""
    earlier = run.out / PREVIOUS
    if run.written and earlier.is_dir():
        files += f" The finished run it was to replace is whole in {earlier}."
    return files


def bug(run: Run, err: Exception) -> int:
    """A bug: one line naming the stage and the sample; the traceback goes to error.log (or, before the run
    started, to the temp folder: --out may hold a finished run, left as it is)."""
    started = "config.json" in run.written
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


def sample_of(tb) -> str | None:
    """The id of the innermost data.Sample a failing frame was working on (a local variable), if any."""
    found = None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, Sample):
                found = value.id
        tb = tb.tb_next
    return found
