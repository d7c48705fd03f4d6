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
tagger are reused when their settings and inputs match (rundir.fingerprint); prediction, refinement,
demo selection and grounding run again and take every answer given before from the cache, so no answered
MLLM call is paid twice (a failed answer is not cached; docs/running.md says what a rerun costs). A finished
run that a new one replaces waits in OUT/previous/ until the new one finishes. The bookkeeping of a run
(timers, clients, skips, the files written) is rundir.py's; the flags are cli.py's; the summary and the
--viz pictures are report.py's.

Left out on purpose: multi-GPU training, a web UI.
"""

import dataclasses
import json
import random
import sys
import traceback
from pathlib import Path

import formats
import grounding
import llm
import page
import refinement
import selftrain
import suggest
import synth
import tagger
import uncertainty
from cli import RunConfig, parse_configs
from data import DataError, Dataset, Sample, SettingsError, one_line_warnings
from eval import evaluate
from formats import ccks, labelstudio, twitter
from report import draw, grounding_line, mllm_line, refinement_line, summary_text
from rundir import PREVIOUS, Run, atomic, fingerprint, read_stamp, remove, served_model, write_json


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
        trace_stage(run, tagged, pred, gold, tau)
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


# ---------------------------------------------------------------- the inputs


def read_inputs(settings: RunConfig) -> tuple[Dataset, list[Sample], Dataset, bool]:
    """The labelled dataset, its training part, the data to predict, and whether that has gold."""
    labelled = formats.join(
        [read_nonempty(p, settings.images, "--data") for p in settings.data], settings.data
    )
    if not settings.test:
        if settings.suggest:  # the tagger that chooses learns from every label: none is left to score
            return labelled, labelled.samples, dataclasses.replace(labelled, samples=[]), False
        train, test = split(labelled.samples, settings.test_share, settings.seed)
        return labelled, train, unseen(settings, dataclasses.replace(labelled, samples=test)), True
    target = read_nonempty(settings.test, settings.images, "--test")
    check_types(settings.test, target, labelled)
    if not formats.has_labels(settings.test):  # predicted, not scored: the tagger may have seen them
        return labelled, labelled.samples, target, False
    refuse_overlap(target.samples, labelled.samples, f"--test {settings.test}", "--data")
    return labelled, labelled.samples, unseen(settings, target), True


def refuse_overlap(scored: list[Sample], other: list[Sample], scored_flag: str, other_flag: str) -> None:
    """A scored sample that is also in `other` (same id or same text) is an error: trained on, it inflates
    the score (--data); suggested, it would be labelled and then scored (--unlabelled)."""
    ids = {s.id for s in other}
    texts = {tagger.text_digest(s) for s in other}
    both = [s.id for s in scored if s.id in ids or tagger.text_digest(s) in texts]
    if both:
        raise DataError(
            f"{scored_flag}: {len(both)} of its {len(scored)} samples are also in {other_flag} (same id or "
            f"same text), e.g. {both[:3]}: a scored sample must not be {OVERLAP[other_flag]}; take them out "
            f"of one of the two"
        )


OVERLAP = {
    "--data": "trained on",
    "--unlabelled": "in the pool (it would be suggested, labelled, then scored)",
}


def unseen(settings: RunConfig, target: Dataset) -> Dataset:
    """The gold data to score without the samples a reused --tagger was trained on (its trained_on.json):
    a tagger scored on its own training data would look better than it is."""
    seen = tagger.trained_on(settings.tagger_dir) if settings.tagger_dir else set()
    kept = [s for s in target.samples if tagger.text_digest(s) not in seen]
    if len(kept) == len(target.samples):
        return target
    where = f"--test {settings.test}" if settings.test else "the held-out split of --data"
    if not kept:
        raise DataError(
            f"--tagger {settings.tagger_dir} was trained on every sample of {where}, so nothing is left "
            "to score it on: pass --test with samples it has not seen"
        )
    print(
        f"--tagger {settings.tagger_dir}: {len(target.samples) - len(kept)} samples of {where} are left "
        "out: the tagger was trained on them"
    )
    return dataclasses.replace(target, samples=kept)


def check_types(path: str, target: Dataset, labelled: Dataset) -> None:
    """--test must use the labelled types: an error when it shares none, a warning when some differ."""
    if Path(path).is_dir() and target.types and not set(target.types) & set(labelled.types):
        raise DataError(
            f"--test {path}: its types {target.types} share none with the labelled data's "
            f"{labelled.types}: the predictions would have the wrong types"
        )
    unknown = {e.type for s in target.samples for e in s.entities} - set(labelled.types)
    if unknown:
        raise DataError(
            f"--test {path}: types {sorted(unknown)} are not in the labelled data's types {labelled.types}"
        )
    if Path(path).is_dir() and target.types and target.types != labelled.types:  # its own types.txt
        print(
            f"warning: --test {path}: types.txt lists {target.types}, the labelled data {labelled.types}: "
            "the labelled data's types and descriptions are used"
        )


def read_nonempty(path: str, images: list[str], flag: str) -> Dataset:
    """A dataset that exists and has samples (a labelled one: entity types too)."""
    if not Path(path).exists():
        raise DataError(f"{flag} {path}: no such file or folder")
    dataset = read_flag(flag, path, images)
    if not dataset.samples:
        raise DataError(f"{flag} {path}: no sample found (an empty dataset)")
    if flag == "--data" and not dataset.types:
        what = (
            "no entity.json and no types.txt" if Path(path).is_dir() else "no token has an entity tag (B-X)"
        )
        raise DataError(f"--data {path}: {what}, so there is nothing to learn (--data is labelled data)")
    return dataset


def read_flag(flag: str, path: str, images: list[str]) -> Dataset:
    """The dataset a flag names; an error in it starts with the flag, as the flag's other errors do
    ("--unlabelled DIR/text.json: expected ..."): formats names the file, not the flag it came from."""
    try:
        return formats.read_dataset(path, images)
    except DataError as err:
        if str(err).startswith("--"):  # already names its flag (--images)
            raise
        raise DataError(f"{flag} {err}") from None


def split(samples: list[Sample], share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded hold-out of `share` of the labelled samples as the test split."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(share * len(samples)))
    return [samples[i] for i in sorted(order[n_test:])], [samples[i] for i in sorted(order[:n_test])]


def describe_inputs(
    run: Run, settings: RunConfig, train: list[Sample], test: list[Sample], types: list[str], gold_known: bool
) -> None:
    """Print what was read, record what will be scored, and refuse MLLM stages that could see no image."""
    print(
        f"data: {len(train)} labelled training samples, {len(test)} to predict "
        f"({'with' if gold_known else 'without'} gold); types {types}"
    )
    if not test:
        print(
            "--suggest without --test: the tagger that chooses trains on every labelled sample, so none is "
            "held out and nothing is scored (pass the same --test every round to follow a curve)"
        )
    with_image = sum(1 for s in test if s.image)
    missing = len(test) - with_image
    if test:
        print(
            f"images: {with_image} of {len(test)} samples to predict have one"
            + (f" ({missing} missing: text-only, their entities ungroundable)" if missing else "")
        )
    gold_entities = sum(len(s.entities) for s in test) if gold_known else None
    run.scope = {
        "samples": len(test),
        "gold_entities": gold_entities,
        "test": settings.test or None,
        "test_share": settings.test_share if not settings.test and not settings.suggest else None,
    }
    if not test:
        return
    if run.uses_llm and (settings.refine or settings.ground) and not with_image:  # before any call is paid
        raise DataError(
            f"none of the {len(test)} samples to predict has an image, so refinement and grounding "
            "cannot see anything: pass --images DIR [DIR ...] (folders of <id>.jpg, .png or .jpeg; "
            "default: images/ beside the data), or turn the stages off with --no-refine --no-ground"
        )


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


def read_pool(settings: RunConfig, labelled: Dataset, scored: list[Sample] | None = None) -> list[Sample]:
    """The --unlabelled text (labels ignored): self-training's data and the pool of --suggest (with
    --suggest, without the samples already labelled: each round may pass the same pool). None of it may
    be in a scored --test (`scored`)."""
    if not settings.unlabelled:
        return []
    if not Path(settings.unlabelled).exists():  # an empty pool is suggest.py's to refuse, with its reason
        raise DataError(f"--unlabelled {settings.unlabelled}: no such file or folder")
    pool = read_flag("--unlabelled", settings.unlabelled, settings.images).samples
    if scored is not None and settings.test:
        refuse_overlap(scored, pool, f"--test {settings.test}", "--unlabelled")
    if settings.suggest:
        fresh = suggest.not_yet_labelled(pool, labelled.samples, settings.suggest)
        if len(fresh) < len(pool):
            print(f"--unlabelled: {len(pool) - len(fresh)} pool samples are already labelled (left out)")
        pool = fresh
    return pool


def suggestion_stage(
    run: Run, cfg: dict, chooser: tagger.Tagger, pool: list[Sample], labelled: Dataset
) -> None:
    """With --suggest N: the N pool samples to label next, ranked and pre-annotated by `chooser`, in
    OUT/suggested/."""
    n = cfg["run"].suggest
    if not n:
        return
    with run.stage("suggestion"):
        chosen = suggest.suggest(chooser, pool, n, cfg["suggest"], progress=cfg["tagger"].progress)
        boxes = {c.sample.id: NULL_BOXES for c in chosen}
        if cfg["suggest"].ground:
            chosen, boxes = ground_suggestions(run, cfg, chosen, labelled)
        with atomic(run.out / "suggested") as tmp:
            suggest.write_suggestions(chosen, labelled, tmp)
        with atomic(run.out / "suggested.jsonl") as tmp:
            suggest.write_ranks(chosen, tmp, boxes)
        write_labelstudio(run, cfg, chosen, labelled)
        run.written += ["suggested/", "suggested.jsonl", "labelstudio/"]
        run.notes["suggestion"] = {
            "pool": len(pool),
            "chosen": n,
            "strategy": cfg["suggest"].strategy,
            "chooser": who_chose(cfg, labelled),
            "entities_prefilled": sum(len(c.sample.entities) for c in chosen),
        }
        by = run.notes["suggestion"]["chooser"]
        print(
            f"suggested: {n} of {len(pool)} pool samples to label next in {run.out / 'suggested'} (and as a "
            f"Label Studio project in {run.out / 'labelstudio'}), chosen by {by} (ranked in suggested.jsonl; "
            f"the tagger's entities to correct; boxes: {box_summary(boxes)})"
        )


NOTHING_TO_PREDICT = "nothing to predict (--suggest without --test holds no sample out)"
NULL_BOXES = 'not drawn: a "bnd" left null says "not in the image"; draw the box where the entity is visible'


def box_summary(boxes: dict[str, str]) -> str:
    """The suggestions' boxes in a few words; each sample's own line is in suggested.jsonl."""
    drawn = sum(why.startswith("drawn by the MLLM") for why in boxes.values())
    if not drawn:
        return NULL_BOXES
    return f"drawn by the MLLM for {drawn} of {len(boxes)} samples (each sample's in suggested.jsonl)"


def write_labelstudio(run: Run, cfg: dict, chosen: list[suggest.Suggestion], labelled: Dataset) -> None:
    """OUT/labelstudio/: the same suggestions as a Label Studio project (docs/labelling.md)."""
    with atomic(run.out / "labelstudio") as tmp:
        rows = [(c.sample, c.score, c.why) for c in chosen]
        round_ = cfg["run"].suggest_round or len(cfg["run"].data)  # each round adds one --data
        images = labelstudio.image_prefix(cfg["run"].labelstudio_images, run.out / "suggested" / "images")
        labelstudio.write_labelstudio(rows, labelled, tmp, round_, images)


def who_chose(cfg: dict, labelled: Dataset) -> str:
    """Which tagger ranked the pool, in words (tagger_stage says why)."""
    if cfg["run"].tagger_dir:
        return f"the tagger of --tagger {cfg['run'].tagger_dir}"
    how = f"the tagger trained on all {len(labelled.samples)} labelled samples"
    if cfg["tagger"].self_train_rounds:
        how += ", before its self-training on the pool (chooser/)"
    return how


def ground_suggestions(
    run: Run, cfg: dict, chosen: list[suggest.Suggestion], labelled: Dataset
) -> tuple[list[suggest.Suggestion], dict[str, str]]:
    """--suggest-ground: the MLLM draws the suggestions' boxes after the same worked examples as the
    grounding stage (chosen from every labelled sample); per sample, what its boxes are (from the trace)."""
    if not any(c.sample.image for c in chosen):  # before a call is paid: every answer would be "no image"
        raise DataError(
            "--suggest-ground: none of the suggested samples has an image to draw on: pass --images DIR "
            "(folders of <id>.jpg, .png or .jpeg; default: images/ beside --unlabelled)"
        )
    client = run.client("suggestion grounding")
    samples, notes, traces = grounding.ground(
        [c.sample for c in chosen], labelled.samples, labelled, client, cfg["grounding"], cfg["demos"]
    )
    run.notes["suggestion grounding"] = notes
    run.check_calls("suggestion grounding", "no suggestion was written")
    boxed = [dataclasses.replace(c, sample=s) for c, s in zip(chosen, samples, strict=True)]
    return boxed, {s.id: drawn(traces[s.id]) for s in samples}


def drawn(trace: grounding.GroundingTrace) -> str:
    """What a suggested sample's boxes are, for the annotator."""
    if trace.outcome == "answered":
        shown = ", ".join(e.id for e in trace.examples)
        return f'drawn by the MLLM after worked examples {shown}; a null "bnd" says it saw no such entity'
    if trace.outcome == "no_entity":
        return "no entity to box (none predicted, or only types never grounded)"
    why = trace.outcome.replace("_", " ") + (f": {trace.error}" if trace.error else "")
    return f'not drawn ({why}): a "bnd" left null says "not in the image"; draw the box where it is visible'


# ---------------------------------------------------------------- 2. prediction with uncertainty, refinement


def prediction_stage(
    run: Run,
    config: uncertainty.UncertaintyConfig,
    model: tagger.Tagger,
    test: list[Sample],
    gold: list[Sample] | None,
) -> tuple[list[Sample], float]:
    """The tagger's entities, each with its uncertainty, and the one tau that decides which are delegated."""
    with run.stage("prediction"):
        passes = config.mc_passes if config.method == "mc_dropout" else 0
        pred = tagger.predict(model, test, mc_passes=passes)
        uncertainty.estimate(pred, model.tags, config)
        score_mner(run, "tagger", gold, pred)
        tau, how = uncertainty.choose_threshold(pred, config)
        values = uncertainty.uncertainties(pred)
        run.notes["uncertainty"] = {
            "tau": tau,
            "how": how,
            "entities": len(values),
            "delegated": sum(x > tau for x in values),
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
    """The entities above tau checked by the MLLM (the tagger's predictions when the stage is off)."""
    with run.stage("refinement"):
        if not pred:
            run.skip("refinement", NOTHING_TO_PREDICT)
        elif run.wants("refinement", cfg["run"].refine):
            client = run.client("refinement")
            pred, run.notes["refinement"], run.traces["refinement"] = refinement.refine(
                pred, labelled, client, tau, cfg["refinement"], tags
            )
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


def trace_stage(
    run: Run, tagged: list[Sample], pred: list[Sample], gold: list[Sample] | None, tau: float
) -> None:
    """trace.jsonl: every decision per sample, from the tagger's predictions to the final ones."""
    with run.stage("report"):
        page.write_trace(run.out, tagged, pred, gold, tau, run.traces)
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
        log = run.out / "error.log"
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
    """What a failed run leaves: its own files, and the finished run it was replacing (rundir.set_aside)."""
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
