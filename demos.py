"""Multimodal context selection of ReFineG's grounding stage: which labelled samples to show as examples.

For every query sample the k labelled samples most like it are its worked examples (grounding.py shows them
with their gold boxes). Similarity is a weighted sum of text, image and entity similarity, each min-max
normalised per query. Input: the labelled samples (gold entities), embedded once per run (`embed_pool`), and
the query samples (predicted entities). Output: per query, its worked examples, best first, each with the
similarity parts that chose it (grounding.WorkedExample, recorded in grounding's trace).

    pool = demos.embed_pool(train, demos.DemoConfig())
    examples = demos.choose(queries, pool)   # examples[i]: the worked examples of queries[i]
    python -m bench selection                # selection quality and speed on Twitter-GMNER

Left out on purpose: learnt or fine-tuned retrievers, approximate nearest-neighbour indexes (the
labelled pools of low-resource GMNER are small enough for one matrix product).
"""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from data import Sample, require_valid, setting
from encoding import embed_texts
from grounding import WorkedExample
from images import ImageError, open_image

ENTITY_SIMS = ("mean", "sum")


@dataclass
class DemoConfig:
    k: int = setting(3, "worked examples per query (the authors: top-3)", main=True)
    # The weights are not meant to sum to 1: only their ratios rank the demos of a query.
    w_text: float = setting(0.4, "weight of text similarity (the authors' code)")
    w_image: float = setting(0.2, "weight of image similarity (the authors' code)")
    w_entity: float = setting(0.6, "weight of entity similarity (the authors' code)")
    entity_sim: str = setting(
        "mean", "mean over entity pairs | sum (the authors' variant, favours many entities)"
    )
    type_bonus: float = setting(0.8, "added to a pair's name cosine when the types agree (the authors' code)")
    encoder: str = setting("", 'text encoder name/path; "" = the offline all-MiniLM-L6-v2 package')
    image_encoder: str = setting("", 'local CLIP folder; "" = a weak pixel descriptor')
    batch_size: int = setting(64, "encoder batch size")

    def __post_init__(self):
        require_valid(
            self,
            [
                ("k", self.k >= 0, "0 or more worked examples"),
                ("entity_sim", self.entity_sim in ENTITY_SIMS, " or ".join(ENTITY_SIMS)),
                ("batch_size", self.batch_size >= 1, "at least 1"),
            ],
        )


# ---------------------------------------------------------------- embeddings


@dataclass
class Features:
    """What selection needs of a set of samples; computed once per dataset."""

    ids: list[str]
    text: np.ndarray  # (N, D) unit rows
    image: np.ndarray  # (N, E) unit rows, zero row when no image
    has_image: np.ndarray  # (N,) bool
    ent_mean: np.ndarray  # (N, D) mean of unit entity-name embeddings (zero when no entity)
    type_freq: np.ndarray  # (N, T) share of the sample's entities of each type
    n_ent: np.ndarray  # (N,) number of entities


PIXEL_DIM = 16 * 16 * 3 + 4 * 4 * 4  # the pixel descriptor: an RGB 16x16 thumbnail + a 4x4x4 colour histogram


def _pixel_descriptor(img: Image.Image) -> np.ndarray:
    """A weak, deterministic image descriptor: a centred 16x16 thumbnail plus a 4x4x4 colour histogram. It
    finds near duplicates and similar colours, not similar content (a local CLIP folder does that)."""
    small = np.asarray(img.resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel() / 255.0  # (768,)
    small = small - small.mean()
    q = np.asarray(img.resize((64, 64), Image.NEAREST), dtype=np.int64) // 64  # (64, 64, 3) in 0..3
    hist = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64).astype(np.float32)
    parts = [v / max(np.linalg.norm(v), 1e-9) for v in (small, hist)]
    return np.concatenate(parts) / np.sqrt(2.0)


@torch.no_grad()
def embed_images(paths: list[str | None], image_encoder: str = "", batch_size: int = 64) -> np.ndarray:
    """(N, E) unit vectors (zero rows for missing or unreadable images): CLIP when a local folder is given,
    else pixels. An unreadable image is reported where it would be sent (ground), not here."""
    have = [i for i, p in enumerate(paths) if p]
    if image_encoder:
        from transformers import CLIPImageProcessor, CLIPModel

        model = CLIPModel.from_pretrained(image_encoder).eval()
        proc = CLIPImageProcessor.from_pretrained(image_encoder)
        out = np.zeros((len(paths), model.config.projection_dim), dtype=np.float32)
        for b in range(0, len(have), batch_size):
            images = {i: _load(paths[i]) for i in have[b : b + batch_size]}
            idx = [i for i, im in images.items() if im is not None]
            if not idx:
                continue
            pix = proc(images=[images[i] for i in idx], return_tensors="pt")["pixel_values"]
            feats = model.get_image_features(pixel_values=pix)  # (B, E); transformers 5 wraps it in an output
            feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            out[idx] = torch.nn.functional.normalize(feats, dim=-1).numpy()
        return out
    out = np.zeros((len(paths), PIXEL_DIM), dtype=np.float32)
    for i in have:
        img = _load(paths[i])
        if img is not None:
            out[i] = _pixel_descriptor(img)
    return out


def _load(path: str) -> Image.Image | None:
    """The image, or None when it cannot be used (its row stays zero; ground() counts it)."""
    try:
        return open_image(path)
    except ImageError:
        return None


def features(samples: list[Sample], types: list[str], config: DemoConfig) -> Features:
    """Embed texts, images and entity names of `samples` (their .entities: gold for demos, predicted for
    queries)."""
    names = sorted({s.name(e) for s in samples for e in s.entities})
    name_vec = dict(zip(names, embed_texts(names, config.encoder, config.batch_size))) if names else {}
    text = embed_texts([s.text for s in samples], config.encoder, config.batch_size)
    ent_mean = np.zeros_like(text)
    type_freq = np.zeros((len(samples), len(types)), dtype=np.float32)
    n_ent = np.array([len(s.entities) for s in samples])
    for i, s in enumerate(samples):
        for e in s.entities:
            ent_mean[i] += name_vec[s.name(e)] / n_ent[i]
            if e.type in types:
                type_freq[i, types.index(e.type)] += 1.0 / n_ent[i]
    image = np.zeros((len(samples), 1), dtype=np.float32)  # unused at weight 0: not computed
    if config.w_image:
        image = embed_images([s.image for s in samples], config.image_encoder, config.batch_size)
    return Features(
        [s.id for s in samples],
        text,
        image,
        np.array([bool(s.image) for s in samples]),
        ent_mean,
        type_freq,
        n_ent,
    )


# ---------------------------------------------------------------- selection


def _minmax(x: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """Rescale each row to [0, 1] over its non-skipped entries; a constant row becomes 0. Per query: the
    authors' code normalises over the whole matrix."""
    lo = np.where(skip, np.inf, x).min(axis=1, keepdims=True)
    hi = np.where(skip, -np.inf, x).max(axis=1, keepdims=True)
    span = hi - lo
    ok = np.isfinite(span) & (span > 1e-9)
    return np.where(ok, (x - np.where(ok, lo, 0.0)) / np.where(ok, span, 1.0), 0.0)


def similarity_parts(q: Features, d: Features, config: DemoConfig) -> dict[str, np.ndarray]:
    """(Nq, Nd) per part: "text", "image" and "entity" similarity, each min-max normalised per query to
    [0, 1] ("image" NaN where its term is dropped: no query image, or w_image 0), and their weighted sum
    "total" = w_text * text + w_image * image + w_entity * entity, -inf where a query meets itself (same id).
    """
    self_pair = np.zeros((len(q.ids), len(d.ids)), dtype=bool)  # (Nq, Nd)
    where = {sid: j for j, sid in enumerate(d.ids)}
    for i, sid in enumerate(q.ids):
        if sid in where:
            self_pair[i, where[sid]] = True
    text = _minmax(q.text @ d.text.T, self_pair)
    # Sum over pairs (i, j) of cos(e_i, e_j) + bonus * [t_i == t_j] is a bilinear form, so it factorises into
    # (sum_i e_i) . (sum_j e_j) + bonus * counts_q . counts_d; the pair-mean divides both by n_q * n_d.
    entity = q.ent_mean @ d.ent_mean.T + config.type_bonus * (q.type_freq @ d.type_freq.T)  # (Nq, Nd)
    if config.entity_sim == "sum":
        entity = entity * np.outer(q.n_ent, d.n_ent)
    entity = _minmax(entity, self_pair)
    total = config.w_text * text + config.w_entity * entity
    image = np.full_like(total, np.nan)
    if config.w_image and q.has_image.any():
        raw = np.where(d.has_image[None, :], q.image @ d.image.T, -1.0)  # a demo without image: least similar
        image = np.where(q.has_image[:, None], _minmax(raw, self_pair), np.nan)  # no query image: dropped
        total = total + config.w_image * np.nan_to_num(image)
    total = np.where(self_pair, -np.inf, total)
    return {"text": text, "image": image, "entity": entity, "total": total}


@dataclass
class Pool:
    """The labelled samples worked examples are chosen from, embedded once per run: those with an image (only
    they can be shown), their features, their entity types and the settings that embedded them."""

    samples: list[Sample]
    features: Features
    types: list[str]
    config: DemoConfig


def embed_pool(samples: list[Sample], config: DemoConfig) -> Pool:
    """The pool of `samples` (gold entities): those with an image, embedded (texts, images, entity names)."""
    shown = [s for s in samples if s.image]
    types = sorted({e.type for s in shown for e in s.entities})
    return Pool(shown, features(shown, types, config), types, config)


def choose(queries: list[Sample], pool: Pool) -> list[list[WorkedExample]]:
    """For each query (predicted entities), its k most similar pool samples, best first, with the similarity
    parts that chose them; ties go to the earlier pool sample; never the query itself (same id)."""
    if not queries or not pool.samples:
        return [[] for _ in queries]
    q = features(queries, pool.types, pool.config)  # a type the pool lacks adds 0 to every entity similarity
    parts = similarity_parts(q, pool.features, pool.config)
    return [
        [example(parts, i, j, pool.samples[j]) for j in row]
        for i, row in enumerate(best(parts["total"], pool.config.k))
    ]


def best(total: np.ndarray, k: int) -> list[list[int]]:
    """Per row of (Nq, Nd) similarities, the columns of its k largest, largest first; ties go to the earlier
    column (a stable sort); a -inf (a query meeting itself) never."""
    top = np.argsort(-total, axis=1, kind="stable")[:, :k]  # (Nq, k)
    return [[int(j) for j in row if np.isfinite(total[i, j])] for i, row in enumerate(top)]


def example(parts: dict[str, np.ndarray], i: int, j: int, sample: Sample) -> WorkedExample:
    """Pool sample j as query i's worked example, with its similarity parts."""
    image = float(parts["image"][i, j])
    return WorkedExample(
        sample,
        float(parts["text"][i, j]),
        None if np.isnan(image) else image,
        float(parts["entity"][i, j]),
        float(parts["total"][i, j]),
    )
