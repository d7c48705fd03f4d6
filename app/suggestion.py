"""The suggestion stage of refineg.py (--suggest N): the pool samples to label next, written into the run.

Not in the ReFineG paper: the application's side of the labelling loop (labelling/). The tagger ranks
the --unlabelled pool (labelling/suggest.py); with --suggest-ground the MLLM draws the chosen samples'
boxes after worked examples, as the grounding stage would (`ground_suggestions`). Output, in OUT:
suggested/ (a CCKS folder of the chosen samples, the tagger's entities to correct), suggested.jsonl
(their ranks, doubts and what their boxes are) and labelstudio/ (the same samples as a Label Studio
project: labelling/labelstudio.py).

    python refineg.py --data LABELLED --test TEST --unlabelled POOL --suggest 700 --out runs/round1

Left out on purpose: sending the project to a Label Studio server (docs/labelling.md gives the commands).
"""

import dataclasses
from collections.abc import Callable
from functools import partial

import demos
import grounding
import tagger
from app.cli import Settings
from app.counts import grounding_counts
from app.report import image_lines
from app.rundir import Run, atomic
from data import DataError, Dataset, Sample
from labelling import labelstudio, suggest


def suggestion_stage(
    run: Run,
    cfg: Settings,
    chooser: tagger.Tagger,
    pool: list[Sample],
    labelled: Dataset,
    demo_pool: Callable[[tuple, Callable[[], demos.Pool]], demos.Pool],
) -> None:
    """With --suggest N: the N pool samples to label next, ranked and pre-annotated by `chooser`, in
    OUT/suggested/. `demo_pool(key, make)`: the run's embedded worked examples (RunHooks.demo_pool), so
    --suggest-ground and the grounding stage embed them once."""
    n = cfg.run.suggest
    if not n:
        return
    with run.stage("suggestion"):
        chosen = suggest.suggest(chooser, pool, n, cfg.suggest, progress=cfg.tagger.progress)
        boxes = {c.sample.id: NULL_BOXES for c in chosen}
        if cfg.suggest.ground:
            chosen, boxes = ground_suggestions(run, cfg, chosen, labelled, demo_pool)
        with atomic(run.out / "suggested") as tmp:
            suggest.write_suggestions(chosen, labelled, tmp)
        with atomic(run.out / "suggested.jsonl") as tmp:
            suggest.write_ranks(chosen, tmp, boxes)
        write_labelstudio(run, cfg, chosen, labelled)
        run.written += ["suggested/", "suggested.jsonl", "labelstudio/"]
        run.notes["suggestion"] = {
            "pool": len(pool),
            "chosen": n,
            "strategy": cfg.suggest.strategy,
            "chooser": who_chose(cfg, labelled),
            "entities_prefilled": sum(len(c.sample.entities) for c in chosen),
        }
        by = run.notes["suggestion"]["chooser"]
        print(
            f"suggested: {n} of {len(pool)} pool samples to label next in {run.out / 'suggested'} (and as a "
            f"Label Studio project in {run.out / 'labelstudio'}), chosen by {by} (ranked in suggested.jsonl; "
            f"the tagger's entities to correct; boxes: {box_summary(boxes)})"
        )


NULL_BOXES = 'not drawn: a "bnd" left null says "not in the image"; draw the box where the entity is visible'


def box_summary(boxes: dict[str, str]) -> str:
    """The suggestions' boxes in a few words; each sample's own line is in suggested.jsonl."""
    drawn = sum(why.startswith("drawn by the MLLM") for why in boxes.values())
    if not drawn:
        return NULL_BOXES
    return f"drawn by the MLLM for {drawn} of {len(boxes)} samples (each sample's in suggested.jsonl)"


def write_labelstudio(run: Run, cfg: Settings, chosen: list[suggest.Suggestion], labelled: Dataset) -> None:
    """OUT/labelstudio/: the same suggestions as a Label Studio project (docs/labelling.md)."""
    with atomic(run.out / "labelstudio") as tmp:
        rows = [(c.sample, c.score, c.why) for c in chosen]
        round_ = cfg.run.suggest_round or len(cfg.run.data)  # each round adds one --data
        images = labelstudio.image_prefix(cfg.run.labelstudio_images, run.out / "suggested" / "images")
        labelstudio.write_labelstudio(rows, labelled, tmp, round_, images)


def who_chose(cfg: Settings, labelled: Dataset) -> str:
    """Which tagger ranked the pool, in words (app/run.py: RunHooks.chooser says why)."""
    if cfg.run.tagger_dir:
        return f"the tagger of --tagger {cfg.run.tagger_dir}"
    how = f"the tagger trained on all {len(labelled.samples)} labelled samples"
    if cfg.tagger.self_train_rounds:
        how += ", before its self-training on the pool (chooser/)"
    return how


def ground_suggestions(
    run: Run, cfg: Settings, chosen: list[suggest.Suggestion], labelled: Dataset, demo_pool: Callable
) -> tuple[list[suggest.Suggestion], dict[str, str]]:
    """--suggest-ground: the MLLM draws the suggestions' boxes after the same worked examples as the
    grounding stage (chosen from every labelled sample); per sample, what its boxes are (from the trace)."""
    if not any(c.sample.image for c in chosen):  # before a call is paid: every answer would be "no image"
        raise DataError(
            "--suggest-ground: none of the suggested samples has an image to draw on: pass --images DIR "
            "(folders of <id>.jpg, .png or .jpeg; default: images/ beside --unlabelled)"
        )
    client = run.client("suggestion grounding")
    queries = [c.sample for c in chosen]
    key = (cfg.demos, [(s.id, s.image) for s in labelled.samples])  # the pipeline's key for the same pool
    examples = demos.choose(queries, demo_pool(key, partial(demos.embed_pool, labelled.samples, cfg.demos)))
    samples, traces = grounding.ground(queries, examples, labelled, client, cfg.grounding)
    run.notes["suggestion grounding"] = grounding_counts(samples, traces)
    for line in image_lines(traces):
        print(line)
    run.check_calls("suggestion grounding", "no suggestion was written")
    boxed = [dataclasses.replace(c, sample=s) for c, s in zip(chosen, samples, strict=True)]
    return boxed, {s.id: drawn(traces[s.id]) for s in samples}


def drawn(trace: grounding.GroundingTrace) -> str:
    """What a suggested sample's boxes are, for the annotator."""
    if trace.outcome is grounding.Outcome.ANSWERED:
        shown = ", ".join(x.sample.id for x in trace.examples)
        return f'drawn by the MLLM after worked examples {shown}; a null "bnd" says it saw no such entity'
    if trace.outcome is grounding.Outcome.NO_ENTITY:
        return "no entity to box (none predicted, or only types never grounded)"
    why = trace.outcome.value.replace("_", " ") + (f": {trace.error}" if trace.error else "")
    return f'not drawn ({why}): a "bnd" left null says "not in the image"; draw the box where it is visible'
