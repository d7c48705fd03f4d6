"""The inputs of refineg.py: every dataset flag read, checked against the others, and described.

`read_inputs` gives the labelled dataset (every --data, joined), its training part and the data to
predict: --test, or a seeded held-out split of --data (`split`), without the samples a reused --tagger
was trained on (`unseen`); a scored sample that is also trained on or in the pool is refused
(`refuse_overlap`). `read_pool` gives the --unlabelled text. Each path goes through
`formats.read_dataset` with the layouts formats/ knows and the ones the application adds (`READERS`:
Label Studio's JSON export), and an error in it starts with its flag. `describe_inputs` prints what
was read and refuses MLLM stages that could see no image, before any call is paid.

    python refineg.py --data examples/demo --test examples/demo     # an overlap: refused, nothing written

Left out on purpose: several --test sets (one per run; several --data are joined into one).
"""

import dataclasses
import random
from pathlib import Path

import formats
from app.cli import RunConfig
from app.rundir import Run
from app.store import text_digest, trained_on
from data import DataError, Dataset, Sample
from labelling import labelstudio, suggest

READERS = [labelstudio.EXPORT]  # the layouts every dataset flag reads besides formats/' own


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
    """A scored sample that is also in `other` is an error: trained on, it inflates the score (--data);
    suggested, it would be labelled and then scored (--unlabelled). One sample = the same text (spaces
    aside) under the same id, or with the same image file content: a retweet shares its text with another
    tweet (another id, another image), and a CoNLL file numbers its sentences 0, 1, ..."""
    by_text: dict[str, list[Sample]] = {}
    for s in other:
        by_text.setdefault(text_digest(s), []).append(s)
    both = [s.id for s in scored if any(same_sample(s, o) for o in by_text.get(text_digest(s), []))]
    if both:
        raise DataError(
            f"{scored_flag}: {len(both)} of its {len(scored)} samples are also in {other_flag} (the same "
            f"text, id or image), e.g. {both[:3]}: a scored sample must not be {OVERLAP[other_flag]}; take "
            "them out of one of the two"
        )


def same_sample(a: Sample, b: Sample) -> bool:
    """Whether two samples of one text are one sample: the same id, or images with the same bytes."""
    if a.id == b.id:
        return True
    return bool(a.image and b.image) and Path(a.image).read_bytes() == Path(b.image).read_bytes()


OVERLAP = {
    "--data": "trained on",
    "--unlabelled": "in the pool (it would be suggested, labelled, then scored)",
}


def unseen(settings: RunConfig, target: Dataset) -> Dataset:
    """The gold data to score without the samples a reused --tagger was trained on (its trained_on.json):
    a tagger scored on its own training data would look better than it is."""
    seen = trained_on(settings.tagger_dir) if settings.tagger_dir else set()
    kept = [s for s in target.samples if text_digest(s) not in seen]
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
        return formats.read_dataset(path, images, READERS)
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


def read_pool(settings: RunConfig, labelled: Dataset, scored: list[Sample] | None = None) -> list[Sample]:
    """The --unlabelled text (labels ignored): self-training's data and the pool of --suggest (with
    --suggest, without the samples already labelled: each round may pass the same pool). None of it may
    be in a scored --test (`scored`) when it is suggested from."""
    if not settings.unlabelled:
        return []
    if not Path(settings.unlabelled).exists():  # an empty pool is suggest.py's to refuse, with its reason
        raise DataError(f"--unlabelled {settings.unlabelled}: no such file or folder")
    pool = read_flag("--unlabelled", settings.unlabelled, settings.images).samples
    if settings.suggest and scored is not None and settings.test:  # self-training may read test text
        refuse_overlap(scored, pool, f"--test {settings.test}", "--unlabelled")
    if settings.suggest:
        fresh = suggest.not_yet_labelled(pool, labelled.samples, settings.suggest)
        if len(fresh) < len(pool):
            print(f"--unlabelled: {len(pool) - len(fresh)} pool samples are already labelled (left out)")
        pool = fresh
    return pool
