"""Grounding stage of ReFineG: multimodal context selection and in-context grounding.

For every sample, the k labelled samples most like it (text, image and entity
similarity, weighted; demos.py picks them) are shown to a frozen multimodal LLM as worked examples
with their gold boxes; the MLLM then gives the boxes of the sample's predicted
entities, or none (ungroundable): grounding by analogy with solved examples.

Inputs: predicted samples (entities, boxes ignored), labelled demos (gold
entities with boxes), the Dataset (type descriptions) and an llm.Client.
Output: new samples whose entities carry boxes in ORIGINAL image pixels, and a
dict of counts (calls, skipped samples, malformed and dropped answers).

    python -m pytest -q tests/test_grounding.py   # the stage against a scripted fake MLLM
    python bench.py selection                     # demo selection quality and speed on Twitter-GMNER

Choices:
- Demo selection (text, image and entity similarity, weighted): demos.py.
- Worked examples are chat turns: a user turn (image, text, entities) then an
  assistant turn (the gold answer as JSON, boxes in the box format of that demo
  image as sent). Only demos with an image are shown.
- Boxes follow the MLLM's convention (`box_format`): abs = pixels of the image
  as sent (Qwen2.5-VL), norm1000 = 0-1000 (Qwen2-VL, Qwen3-VL, GLM-V), norm1 = 0-1.
  Answers come back to original pixels, clipped to the image; degenerate boxes
  are dropped. Boxes attach by name to every occurrence of that name.
- Types in `never_ground` (default location, as in the authors' prompt) are
  neither asked nor boxed; the default only applies when the data has that type
  (Twitter's LOC is grounded). A sample with nothing to ask, or without image,
  makes no call.

Left out on purpose: correcting spans or types while grounding (the refinement
stage does that), the MLLM's free-text reasoning, boxes for entities the MLLM
invents (ignored and counted).
"""

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from data import Box, Dataset, Entity, Sample, squash
from demos import select_demos
from images import ImageError, image_part, image_size
from llm import Client, LLMError, text_part

# Box format -> how the prompt describes it. Qwen2.5-VL's "absolute pixels" are those of its own resize of the
# image (sides rounded to multiples of 28), a few pixels off the size sent; servers do not report that size.
FORMATS = {
    "abs": "absolute pixels [x1, y1, x2, y2] of the image as you see it (its width x height is given with it)",
    "norm1000": "coordinates [x1, y1, x2, y2] normalised to 0-1000 on each axis (0,0 = top left, 1000,1000 = bottom right)",
    "norm1": "coordinates [x1, y1, x2, y2] normalised to 0-1 on each axis (0,0 = top left, 1,1 = bottom right)",
}


@dataclass
class GroundingConfig:
    k: int = 3                      # worked examples per query (the authors: top-3)
    w_text: float = 0.4             # weight of text similarity (the authors' code)
    w_image: float = 0.2            # weight of image similarity (the authors' code)
    w_entity: float = 0.6           # weight of entity similarity (the authors' code)
    entity_sim: str = "mean"        # mean over entity pairs | sum (the authors' variant, favours many entities)
    type_bonus: float = 0.8         # added to a pair's name cosine when the types agree (the authors' code)
    encoder: str = ""               # text encoder name/path; "" = offline all-MiniLM-L6-v2
    image_encoder: str = ""         # local CLIP folder; "" = weak pixel descriptor
    batch_size: int = 64            # encoder batch size
    max_side: int = 1000            # longest side of images sent to the MLLM, pixels
    box_format: str = "abs"         # how the MLLM writes boxes: abs (Qwen2.5-VL) | norm1000 (Qwen2/3-VL, GLM-V) | norm1
    never_ground: list[str] = field(default_factory=lambda: ["location"])   # types never boxed (authors' prompt)
    max_boxes: int = 10             # boxes per entity the answer schema allows


class Shown(NamedTuple):
    """An image as sent to the MLLM."""
    part: dict                      # the chat content part (base64 image)
    sent: tuple[int, int]           # width, height as sent (after the resize to max_side)
    orig: tuple[int, int]           # width, height of the original file: boxes come back to these pixels


# ---------------------------------------------------------------- box conversion

def _scale(orig: tuple[int, int], sent: tuple[int, int], fmt: str) -> tuple[float, float]:
    """Model units per original pixel, on x and y."""
    if fmt not in FORMATS:
        raise ValueError(f"box_format: expected one of {list(FORMATS)}, got {fmt!r}")
    unit = {"abs": sent, "norm1000": (1000, 1000), "norm1": (1, 1)}[fmt]
    return unit[0] / orig[0], unit[1] / orig[1]


def to_model(box: Box, orig: tuple[int, int], sent: tuple[int, int], fmt: str) -> list[float]:
    """A box in original pixels as the MLLM writes it, for an image of size `orig` sent at size `sent`."""
    sx, sy = _scale(orig, sent, fmt)
    return [box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy]


def from_model(xyxy: list[float], orig: tuple[int, int], sent: tuple[int, int], fmt: str) -> Box:
    """The inverse of to_model, clipped to the original image (the result may be degenerate: check it)."""
    sx, sy = _scale(orig, sent, fmt)
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    cx = lambda v: min(max(v / sx, 0.0), float(orig[0]))
    cy = lambda v: min(max(v / sy, 0.0), float(orig[1]))
    return Box(cx(x1), cy(y1), cx(x2), cy(y2))


def _written(box: Box, orig, sent, fmt: str) -> list[float]:
    """A gold box as written in a worked example: whole units, 3 decimals for 0-1."""
    xyxy = to_model(box, orig, sent, fmt)
    return [round(v, 3) for v in xyxy] if fmt == "norm1" else [round(v) for v in xyxy]


# ---------------------------------------------------------------- the grounding call

def _asked(sample: Sample, never: set[str]) -> dict[str, str]:
    """{name: type} of the entities to ground, in text order (first type wins for a repeated name)."""
    out = {}
    for e in sample.entities:
        if e.type.lower() not in never:
            out.setdefault(sample.name(e), e.type)
    return out


def system_prompt(data: Dataset, never: list[str], fmt: str) -> str:
    never_rule = (f"- Entities of type {', '.join(never)} are never grounded and are not asked.\n" if never else "")
    return ("You are an expert at visual grounding of named entities: you find the regions of an image that "
            "show the entities named in its text.\n\n"
            f"Entity types:\n{data.type_text or ', '.join(data.types)}\n\n"
            "Rules:\n"
            "- For each listed entity, give the boxes of the image regions that show precisely that entity.\n"
            "- Box only what is precisely visible: if the entity is not shown, or you cannot tell which region "
            "it is, give an empty list of boxes.\n"
            "- One entity may have several boxes (several people or objects of that name).\n"
            f"{never_rule}"
            f"- Boxes are {FORMATS[fmt]}.\n"
            "- Answer with JSON only: {\"entities\": [{\"entity\": name, \"type\": type, \"boxes\": "
            "[[x1, y1, x2, y2], ...]}]}, one item per listed entity.\n"
            "Solved examples (image, text, entities, then the correct answer) may come first.")


def _turn(sample: Sample, asked: dict[str, str], part: dict, sent: tuple[int, int], fmt: str) -> dict:
    """The user turn of a demo or the query: its image, its size as sent (for abs), its text, the entities asked."""
    size = f"Image size: {sent[0]}x{sent[1]} pixels.\n" if fmt == "abs" else ""
    listed = json.dumps([{"entity": n, "type": t} for n, t in asked.items()], ensure_ascii=False)
    return {"role": "user", "content": [part, text_part(f"{size}Text: {sample.text}\nEntities: {listed}")]}


def _answer(demo: Sample, asked: dict[str, str], orig, sent, fmt: str) -> dict:
    """The assistant turn of a worked example: the demo's gold boxes of the asked names, as the model writes them."""
    boxes = {n: [] for n in asked}
    for e in demo.entities:
        for box in e.boxes if demo.name(e) in asked else []:
            xyxy = _written(box, orig, sent, fmt)
            if xyxy not in boxes[demo.name(e)]:          # every occurrence of a name carries the same boxes
                boxes[demo.name(e)].append(xyxy)
    items = [{"entity": n, "type": t, "boxes": boxes[n]} for n, t in asked.items()]
    return {"role": "assistant", "content": json.dumps({"entities": items}, ensure_ascii=False)}


def answer_schema(asked: dict[str, str], types: list[str], sent: tuple[int, int], fmt: str, max_boxes: int) -> dict:
    top = {"abs": max(sent), "norm1000": 1000, "norm1": 1}[fmt]
    # Whole units except for 0-1: llama.cpp's grammar enforces minimum/maximum on integers only, so a
    # "number" lets a model write -3333333333 and pay a re-ask with every image sent again.
    coord = {"type": "number" if fmt == "norm1" else "integer", "minimum": 0, "maximum": top}
    item = {"type": "object", "additionalProperties": False, "required": ["entity", "type", "boxes"],
            "properties": {"entity": {"type": "string", "enum": list(asked)},
                           "type": {"type": "string", "enum": types},
                           "boxes": {"type": "array", "maxItems": max_boxes,
                                     "items": {"type": "array", "minItems": 4, "maxItems": 4, "items": coord}}}}
    return {"type": "object", "additionalProperties": False, "required": ["entities"],
            "properties": {"entities": {"type": "array", "maxItems": len(asked), "items": item}}}


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def parse_answer(content: object, asked: dict[str, str], orig, sent, fmt: str, counts: Counter) -> dict[str, list[Box]]:
    """{asked name: boxes in original pixels} from an answer; anything malformed is counted, never raised."""
    items = content.get("entities") if isinstance(content, dict) else content   # a bare list is accepted too
    if not isinstance(items, list):
        counts["bad_answers"] += 1
        return {}
    found: dict[str, list[Box]] = {}
    by_key = {squash(n): n for n in asked}          # the one name rule: whitespace does not count
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("entity"), str) or not isinstance(it.get("boxes"), list):
            counts["bad_items"] += 1
            continue
        name = by_key.get(squash(it["entity"]))
        if name is None:
            counts["invented"] += 1
            continue
        raw = it["boxes"]
        if len(raw) == 4 and all(_number(v) for v in raw):
            raw = [raw]                                  # one flat box instead of a list of boxes
        boxes = found.setdefault(name, [])               # an entity answered with [] is ungroundable, not missing
        for xyxy in raw:
            if not (isinstance(xyxy, list) and len(xyxy) == 4 and all(_number(v) for v in xyxy)):
                counts["malformed_boxes"] += 1
                continue
            box = from_model(xyxy, orig, sent, fmt)
            if box.x2 - box.x1 < 1 or box.y2 - box.y1 < 1:   # x2 < x1, zero area, or entirely off the image
                counts["degenerate_boxes"] += 1
                continue
            boxes.append(box)
    counts["missing"] += sum(1 for n in asked if n not in found)
    return found


def build_request(sample: Sample, asked: dict[str, str], image: Shown, examples: list[tuple[Sample, Shown]],
                  data: Dataset, never: list[str], config: GroundingConfig) -> dict:
    """The chat() kwargs of one grounding call: the system prompt, a user turn and the gold answer per worked
    example (a demo with its image as sent), the query's turn (its `asked` {name: type}) and the answer schema."""
    fmt, never_l = config.box_format, {t.lower() for t in never}
    messages = [{"role": "system", "content": system_prompt(data, never, fmt)}]
    for d, shown in examples:
        d_asked = _asked(d, never_l)
        messages += [_turn(d, d_asked, shown.part, shown.sent, fmt), _answer(d, d_asked, shown.orig, shown.sent, fmt)]
    messages.append(_turn(sample, asked, image.part, image.sent, fmt))
    types = data.types + [t for t in dict.fromkeys(asked.values()) if t not in data.types]
    return {"messages": messages, "schema": answer_schema(asked, types, image.sent, fmt, config.max_boxes)}


def ground(samples: list[Sample], demos: list[Sample], data: Dataset, client: Client,
           config: GroundingConfig) -> tuple[list[Sample], dict]:
    """Boxes for the predicted entities of `samples`, by in-context examples chosen from `demos`."""
    fmt = config.box_format
    if fmt not in FORMATS:
        raise ValueError(f"box_format: expected one of {list(FORMATS)}, got {fmt!r}")
    never = [t for t in data.types if t.lower() in {n.lower() for n in config.never_ground}]
    never_l = {t.lower() for t in never}
    counts = Counter(samples=len(samples))
    pool = [d for d in demos if d.image]
    counts["demos_without_image"] = len(demos) - len(pool)
    todo = []                                                      # (sample index, asked)
    for i, s in enumerate(samples):
        asked = _asked(s, never_l)
        if not asked:
            counts["no_entity"] += 1
        elif not s.image:
            counts["no_image"] += 1
            counts["no_image_entities"] += sum(1 for e in s.entities if e.type.lower() not in never_l)
        else:
            todo.append((i, asked))
    t0 = time.perf_counter()
    chosen = select_demos([samples[i] for i, _ in todo], pool, config) if todo and pool else [[] for _ in todo]
    counts["selection_seconds"] = round(time.perf_counter() - t0, 2)      # embeddings included
    shown: dict[str, Shown | None] = {}      # demo image -> as sent, None = unreadable; encoded once
    sizes: dict[int, tuple] = {}             # todo index -> (orig, sent) of the query image
    bad_images: dict[str, str] = {}          # image path -> why it cannot be used

    def encode(path: str) -> Shown | None:
        try:
            orig, (part, sent) = image_size(path), image_part(path, config.max_side)
            return Shown(part, sent, orig)
        except ImageError as err:              # untrusted file: counted, the call goes on without it
            bad_images[path] = str(err)
            return None

    def request(k: int, i: int, asked: dict[str, str], picks: list[int]) -> dict | None:
        """Built in map_chat's workers, so only the requests in flight hold their base64 images."""
        query = encode(samples[i].image)
        if query is None:
            return None                          # no image to ground in: no call, no box
        for d in (pool[j] for j in picks):
            if d.image not in shown:             # two workers may both encode it: harmless
                shown[d.image] = encode(d.image)
        examples = [(pool[j], shown[pool[j].image]) for j in picks if shown[pool[j].image] is not None]
        sizes[k] = (query.orig, query.sent)
        return build_request(samples[i], asked, query, examples, data, never, config)

    builders = [lambda k=k, i=i, a=asked, p=picks: request(k, i, a, p)
                for k, ((i, asked), picks) in enumerate(zip(todo, chosen))]
    replies = client.map_chat(builders, desc="grounding") if builders else []
    found: dict[int, dict[str, list[Box]]] = {}
    for k, ((i, asked), reply) in enumerate(zip(todo, replies)):
        if reply is None:
            counts["image_errors"] += 1
        elif isinstance(reply, LLMError):
            counts["failed_calls"] += 1
        else:
            found[i] = parse_answer(reply.content, asked, *sizes[k], fmt, counts)
    counts["calls"] = len(todo) - counts["image_errors"]
    counts["demo_image_errors"] = sum(v is None for v in shown.values())
    for path, why in sorted(bad_images.items()):
        print(f"grounding: {why}; no box from it")
    out = []
    for i, s in enumerate(samples):
        boxes = found.get(i, {})
        ents = [Entity(e.start, e.end, e.type, [] if e.type.lower() in never_l else list(boxes.get(s.name(e), [])),
                       e.score, e.source) for e in s.entities]
        counts["entities_grounded"] += sum(1 for e in ents if e.boxes)
        out.append(Sample(s.id, list(s.tokens), s.image, ents, s.marginals))
    counts["boxes"] = sum(len(e.boxes) for s in out for e in s.entities)
    return out, dict(counts)
