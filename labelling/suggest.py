"""Which samples to label next: the tagger's doubt, spread over different sentences.

Not in the ReFineG paper: it answers the question a team with a few hundred labels asks next.
The tagger's CRF marginals already route entities to the MLLM (uncertainty.py) and filter
self-training's pseudo labels (selftrain.py); here they rank an unlabelled pool a third time.

Each pool sample gets a doubt score (`SuggestConfig.strategy`):
- entity: its most uncertain predicted entity, or its missed-entity score when that is higher
  (a sentence with no prediction can still hide an entity);
- mnlp: 1 - the geometric mean of the probabilities of the tagger's own tags (a sequence score);
- missed: the missed-entity score alone; random: a seeded shuffle (the baseline).
The pool is scored in chunks, keeping only the best `pool_factor * n` candidates, so memory is
bounded by the number asked for, not by the pool. Then `n` are picked greedily: each step takes
the candidate whose score minus `diversity` x (its highest cosine similarity to a sample already
picked, on the encoder's sentence embeddings) is highest, so ten tweets about the same uncertain
name do not all come first. The tagger that scores the pool is trained on every labelled sample
(refineg.py holds none out when suggesting, unless --tagger brings one) and has not self-trained on the
pool (refineg.py ranks with the tagger before self-training: one that learnt the pool's pseudo labels is
sure of them, and its doubts there fall to ties); pool samples already labelled are left out, so each
round passes the same --unlabelled. Boxes: with `ground`
(--suggest-ground) the MLLM draws the suggested entities' boxes as the grounding stage would; without
it every "bnd" is null, which reads back as "not in the image" unless the annotator draws a box.

    python refineg.py --data LABELLED --test TEST --unlabelled POOL --suggest 700 --out runs/round1
    # correct runs/round1/suggested/entity.json (the tagger's entities), then the next round:
    python refineg.py --data LABELLED --data runs/round1/suggested --test TEST --unlabelled POOL ...

Left out on purpose: clustering (the greedy penalty needs no number of clusters), expected
model change and committee disagreement (each costs more trainings than a round of labelling).
"""

import dataclasses
import heapq
import json
import random
import shutil
from dataclasses import dataclass
from math import ceil, floor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import tagger
import uncertainty
from data import Box, DataError, Dataset, Sample, require_valid, setting, spans_to_tags, without_spaces
from encoding import embed_texts
from formats.ccks import write_ccks_folder
from images import UPRIGHT, orientation, upright

STRATEGIES = ("entity", "mnlp", "missed", "random")


@dataclass
class SuggestConfig:
    strategy: str = setting(
        "entity", "entity | mnlp | missed | random: the doubt that ranks the pool", main=True
    )
    diversity: float = setting(0.5, "weight of the similarity penalty (0 = pure doubt ranking)")
    pool_factor: int = setting(4, "candidates kept while scoring the pool, as a multiple of the number asked")
    chunk: int = setting(512, "pool samples predicted at a time (bounds the memory of marginals)")
    encoder: str = setting("", 'sentence encoder of the similarity; "" = all-MiniLM-L6-v2')
    seed: int = setting(0, "the random strategy's shuffle, and ties")
    ground: bool = setting(
        False, "the MLLM draws the suggested entities' boxes (one grounding call per sample)"
    )

    def __post_init__(self):
        require_valid(
            self,
            [
                ("strategy", self.strategy in STRATEGIES, " or ".join(STRATEGIES)),
                ("diversity", self.diversity >= 0, "a weight >= 0"),
                ("pool_factor", self.pool_factor >= 1, "at least 1"),
                ("chunk", self.chunk >= 1, "at least 1 sample"),
            ],
        )


@dataclass
class Suggestion:
    sample: Sample  # the tagger's prediction: the annotator's starting point
    score: float  # the sample's doubt
    why: str  # the entity or tokens behind the score
    ranked_by: float | None = None  # the doubt less the diversity penalty when it was picked (the rank's key)


def not_yet_labelled(pool: list[Sample], labelled: list[Sample], n: int) -> list[Sample]:
    """The pool without the samples already labelled (same id, same text), so that the next round can
    reuse the same --unlabelled. Clear errors for a request that cannot be met: an empty pool, too few
    samples left, an id that names another text in the labelled data."""
    if not pool:
        raise DataError("--unlabelled: the pool to suggest from is empty")
    known = {s.id: without_spaces(s.text) for s in labelled}
    clash = sorted(s.id for s in pool if s.id in known and known[s.id] != without_spaces(s.text))
    if clash:
        raise DataError(
            f"--unlabelled: {len(clash)} pool ids name another text in the labelled data, e.g. {clash[:3]}"
            " (an id must name one sample)"
        )
    fresh = [s for s in pool if s.id not in known]
    if not fresh:
        raise DataError("--unlabelled: every pool sample is already in the labelled data")
    if n > len(fresh):
        left = f" not yet labelled (of {len(pool)})" if len(fresh) < len(pool) else ""
        raise DataError(f"--suggest {n}: the pool (--unlabelled) has only {len(fresh)} samples{left}")
    return fresh


def suggest(
    model: tagger.Tagger,
    pool: list[Sample],
    n: int,
    config: SuggestConfig | None = None,
    progress: bool = True,
) -> list[Suggestion]:
    """The `n` pool samples to label next, best first."""
    config = config or SuggestConfig()
    if config.strategy == "random":
        order = random.Random(config.seed).sample(range(len(pool)), n)
        return [Suggestion(unlabelled(pool[i]), 0.0, "random") for i in order]
    candidates = score_pool(model, pool, config.pool_factor * n, config, progress)
    return diverse(candidates, n, config)


def unlabelled(sample: Sample) -> Sample:
    return Sample(sample.id, list(sample.tokens), sample.image)


def score_pool(
    model: tagger.Tagger, pool: list[Sample], keep: int, config: SuggestConfig, progress: bool = False
) -> list[Suggestion]:
    """The `keep` most doubtful pool samples, scored chunk by chunk (marginals are dropped after each)."""
    heap: list[tuple[float, int, Suggestion]] = []  # a min-heap of the best `keep` so far
    starts = range(0, len(pool), config.chunk)
    shown = None if progress else True  # None: a bar on a terminal only, never in a log file
    for start in tqdm(starts, desc="scoring the pool", unit="chunk", disable=shown, leave=False):
        chunk = [unlabelled(s) for s in pool[start : start + config.chunk]]
        pred = tagger.predict(model, chunk)
        uncertainty.estimate(pred, model.tags)
        for k, p in enumerate(pred):
            score, why = doubt(p, model.tags, config.strategy)
            p.marginals = None
            item = (score, -(start + k), Suggestion(p, score, why))  # ties: the earlier sample wins
            if len(heap) < keep:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
    return [s for *_, s in sorted(heap, key=lambda x: x[:2], reverse=True)]


def doubt(pred: Sample, tags: list[str], strategy: str) -> tuple[float, str]:
    """A sample's doubt score under `strategy`, and the entity or token behind it."""
    missed = uncertainty.missed_entity_score(pred, tags)
    token = missed_token(pred, tags)
    if strategy == "missed":
        return missed, f"missed-entity score {missed:.3f} at {token!r}"
    if strategy == "mnlp":
        return mnlp(pred, tags), "low confidence in the whole tag sequence"
    worst = max(pred.entities, key=lambda e: e.uncertainty, default=None)
    if worst is None or missed > worst.uncertainty:
        return missed, f"missed-entity score {missed:.3f} at {token!r}"
    return worst.uncertainty, f"{pred.name(worst)!r} ({worst.type}) has uncertainty {worst.uncertainty:.3f}"


def missed_token(pred: Sample, tags: list[str]) -> str:
    """The token the missed-entity score comes from: outside every entity, the most likely not O ("" when
    no token is outside an entity)."""
    inside = {t for e in pred.entities for t in range(e.start, e.end)}
    outside = [t for t in range(len(pred.tokens)) if t not in inside]
    if pred.marginals is None or not outside:
        return ""
    return pred.tokens[max(outside, key=lambda t: 1.0 - pred.marginals[t, tags.index("O")])]


def mnlp(pred: Sample, tags: list[str]) -> float:
    """1 - exp(mean log P(tag_t = its predicted tag)): a length-normalised sequence doubt."""
    if pred.marginals is None or not pred.tokens:
        return 0.0
    scheme = uncertainty.scheme_of(tags)
    path = [tags.index(t) for t in spans_to_tags(len(pred.tokens), pred.entities, scheme)]
    p = pred.marginals[np.arange(len(path)), path].clip(1e-12, 1.0)
    return float(1.0 - np.exp(np.log(p).mean()))


def diverse(candidates: list[Suggestion], n: int, config: SuggestConfig) -> list[Suggestion]:
    """Greedy: each step the candidate of highest score - diversity x max similarity to those taken."""
    if config.diversity == 0 or len(candidates) <= n:
        return candidates[:n]
    emb = embed_texts([c.sample.text for c in candidates], config.encoder)  # (C, D) unit vectors
    scores = np.array([c.score for c in candidates])
    nearest = np.zeros(len(candidates))  # highest similarity to a taken sample
    taken = np.zeros(len(candidates), dtype=bool)
    chosen = []
    for _ in range(n):
        gain = np.where(taken, -np.inf, scores - config.diversity * nearest)
        j = int(gain.argmax())  # ties: the earlier (more doubtful) candidate
        taken[j] = True
        chosen.append(dataclasses.replace(candidates[j], ranked_by=float(gain[j])))
        nearest = np.maximum(nearest, emb @ emb[j])
    return chosen


# ---------------------------------------------------------------- the annotator's folder


def write_suggestions(chosen: list[Suggestion], labelled: Dataset, folder: Path) -> None:
    """`folder` in the CCKS layout, its entity.json pre-filled with the tagger's entities (to correct) and
    the MLLM's boxes in whole pixels, as in the gold files an annotator edits; its images/ upright copies
    of the samples' images."""
    samples = [whole_pixels(c.sample) for c in chosen]
    write_ccks_folder(samples, labelled, folder)
    with_image = [s for s in samples if s.image]
    if with_image:
        (folder / "images").mkdir()
        for s in with_image:
            # Upright copies without the tag: whatever a viewer does with EXIF, Label Studio then shows the
            # pixels the boxes (and tasks.json's original_width/height) are in, and so does any other tool.
            copy_upright(s.image, folder / "images" / f"{s.id}{Path(s.image).suffix.lower()}")


def copy_upright(src: str, dest: Path) -> None:
    """`src` copied to `dest` in the upright frame: the file itself when stored upright, else its pixels
    turned upright and saved in its own format with no orientation tag (JPEG at quality 95, ICC profile
    kept). A file that cannot be decoded is copied as it is: a viewer turns it by its tag as
    images.image_size does, and the stages count it as unreadable."""
    try:
        with Image.open(src) as im:
            k = orientation(im)
            if k in UPRIGHT:
                fmt = "JPEG" if im.format == "MPO" else im.format  # a phone's MPO is a JPEG plus depth frames
                im.load()
                upright(im).save(dest, format=fmt, quality=95, icc_profile=im.info.get("icc_profile"))
                return
    except Exception:  # PIL raises OSError, ValueError, SyntaxError, ... by format: fall back to the bytes
        pass
    shutil.copyfile(src, dest)


def whole_pixels(sample: Sample) -> Sample:
    """The sample with each box widened to whole pixels: (43.5, 10.2, 80.7, 99.0) -> (43, 10, 81, 99)."""
    entities = [
        dataclasses.replace(e, boxes=[Box(floor(b.x1), floor(b.y1), ceil(b.x2), ceil(b.y2)) for b in e.boxes])
        for e in sample.entities
    ]
    return dataclasses.replace(sample, entities=entities)


def write_ranks(chosen: list[Suggestion], path: Path, boxes: dict[str, str]) -> None:
    """One JSON line per suggestion: rank, id, its doubt (score), the key that ranked it (ranked_by: the
    doubt less the diversity penalty, falling down the list), why, and what its boxes are (`boxes[id]`)."""
    with open(path, "w", encoding="utf-8") as f:
        for rank, c in enumerate(chosen, 1):
            ranked_by = c.score if c.ranked_by is None else c.ranked_by
            row = {"rank": rank, "id": c.sample.id, "score": round(c.score, 4)}
            row |= {"ranked_by": round(ranked_by, 4), "why": c.why, "boxes": boxes[c.sample.id]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
