"""Grounding stage of ReFineG: in-context grounding after worked examples.

For every sample, a frozen multimodal LLM is shown its worked examples (the labelled samples most like it,
chosen by demos.py) with their gold boxes, then gives the boxes of the sample's predicted entities, or none
(ungroundable): grounding by analogy with solved examples. Inputs: predicted samples (boxes ignored), their
worked examples, the Dataset (type descriptions) and an llm.Client (only its `map_chat`). Output: new samples
whose entities carry boxes in original image pixels (upright, images.py), and a `GroundingTrace` per sample.

    python -m pytest -q tests/method/test_grounding.py   # the stage against a scripted fake MLLM

Left out on purpose: correcting spans or types while grounding (the refinement stage does that), the MLLM's
free-text reasoning, boxes for entities the MLLM invents (ignored and counted).
"""

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from typing import NamedTuple

from data import Box, Dataset, Sample, is_number, require_valid, setting, without_spaces
from images import ImageError, image_part, image_size
from llm import Chat, LLMError, Reply, closed, text_part

# Box format -> how the prompt describes it. Qwen2.5-VL's "absolute pixels" are those of its own resize of the
# image (images.smart_resize: sides multiples of 28); for abs the image is sent at that size already
# (show), so those pixels are the pixels sent and the size the prompt states.
FORMATS = {
    "abs": "absolute pixels [x1, y1, x2, y2] of the image as you see it "
    "(its width x height is given with it)",
    "norm1000": "coordinates [x1, y1, x2, y2] normalised to 0-1000 on each axis "
    "(0,0 = top left, 1000,1000 = bottom right)",
    "norm1": "coordinates [x1, y1, x2, y2] normalised to 0-1 on each axis "
    "(0,0 = top left, 1,1 = bottom right)",
}


@dataclass
class GroundingConfig:
    max_side: int = setting(1000, "longest side of images sent to the MLLM, pixels")
    box_format: str = setting(
        "abs", "the MLLM's boxes: abs (Qwen2.5-VL) | norm1000 (Qwen2/3-VL, GLM-V) | norm1", main=True
    )
    never_ground: list[str] = setting(
        ["location"],
        "types never boxed (authors' rule) (the flag given with no type boxes every type)",
        main=True,
    )
    max_boxes: int = setting(10, "boxes per entity the answer schema allows")

    def __post_init__(self):
        require_valid(
            self,
            [
                ("max_side", self.max_side >= 1, "pixels >= 1"),
                ("box_format", self.box_format in FORMATS, " or ".join(FORMATS)),
                ("max_boxes", self.max_boxes >= 1, "at least 1"),
            ],
        )


class Shown(NamedTuple):
    """An image as sent to the MLLM."""

    part: dict  # the chat content part (base64 image)
    sent: tuple[int, int]  # width, height as sent (after the resize to max_side)
    orig: tuple[int, int]  # width, height of the original file: boxes come back to these pixels


@dataclass
class WorkedExample:
    """A labelled sample shown to the MLLM before a query, and the similarity that chose it (demos.choose;
    a caller with its own retriever may leave the parts at 0 and put its score in `total`)."""

    sample: Sample  # with gold entities and boxes, and an image
    text: float = 0.0  # text similarity to the query, min-max normalised per query to [0, 1]
    image: float | None = None  # image similarity, the same way; None when its term was dropped
    entity: float = 0.0  # entity similarity, the same way
    total: float = 0.0  # the weighted sum the examples were ranked by


class Outcome(str, Enum):
    """What became of one sample in grounding; trace.jsonl writes the value."""

    ANSWERED = "answered"  # the call was answered (parts of the answer may still be unusable: `defects`)
    FAILED_CALL = "failed_call"  # the call failed after the client's retries: no box
    IMAGE_ERROR = "image_error"  # its image could not be used: no call, no box
    NO_IMAGE = "no_image"  # no image: no call, its entities stay ungroundable
    NO_ENTITY = "no_entity"  # nothing to ask (no entity, or only types never grounded): no call


# What parse_answer counts in an answer it cannot fully use: the keys of GroundingTrace.defects
DEFECTS = ("bad_answers", "bad_items", "invented", "malformed_boxes", "degenerate_boxes", "missing")


@dataclass
class GroundingTrace:
    """What grounding did for one sample; `ground` returns one per sample id. A stable record: the run's
    trace.jsonl is written from it, and boxes[name] is what the MLLM drew for that name."""

    outcome: Outcome
    asked: dict[str, str]  # {name: type} to ground, in text order (types in never_ground are not asked)
    examples: list[WorkedExample]  # the worked examples shown, best first (those with a readable image)
    boxes: dict[str, list[Box]]  # answered name -> boxes in original pixels, [] = ungroundable; a name
    # missing here got no answer (failed call, or left out of the answer): it has no box either
    error: str = ""  # why the call failed or its image could not be used
    defects: dict[str, int] = field(default_factory=dict)  # DEFECTS of its answer -> how many
    dropped: dict[str, str] = field(default_factory=dict)  # worked examples not shown: id -> why (image)


# ---------------------------------------------------------------- box conversion


def _scale(orig: tuple[int, int], sent: tuple[int, int], fmt: str) -> tuple[float, float]:
    """Model units per original pixel, on x and y."""
    if fmt not in FORMATS:
        raise ValueError(f"box_format: expected {' or '.join(FORMATS)}, got {fmt!r}")
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
    w, h = float(orig[0]), float(orig[1])
    return Box(
        min(max(x1 / sx, 0.0), w),
        min(max(y1 / sy, 0.0), h),
        min(max(x2 / sx, 0.0), w),
        min(max(y2 / sy, 0.0), h),
    )


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


def system_prompt(dataset: Dataset, never: list[str], fmt: str) -> str:
    never_rule = (
        f"- Entities of type {', '.join(never)} are never grounded and are not asked.\n" if never else ""
    )
    return (
        "You are an expert at visual grounding of named entities: you find the regions of an image that "
        "show the entities named in its text.\n\n"
        f"Entity types:\n{dataset.type_text or ', '.join(dataset.types)}\n\n"
        "Rules:\n"
        "- For each listed entity, give the boxes of the image regions that show precisely that entity.\n"
        "- Box only what is precisely visible: if the entity is not shown, or you cannot tell which region "
        "it is, give an empty list of boxes.\n"
        "- One entity may have several boxes (several people or objects of that name).\n"
        f"{never_rule}"
        f"- Boxes are {FORMATS[fmt]}.\n"
        '- Answer with JSON only: {"entities": [{"entity": name, "type": type, "boxes": '
        "[[x1, y1, x2, y2], ...]}]}, one item per listed entity.\n"
        "Solved examples (image, text, entities, then the correct answer) may come first."
    )


def _turn(sample: Sample, asked: dict[str, str], part: dict, sent: tuple[int, int], fmt: str) -> dict:
    """The user turn of a demo or the query: its image, its size as sent (for abs), its text, the entities
    asked."""
    size = f"Image size: {sent[0]}x{sent[1]} pixels.\n" if fmt == "abs" else ""
    listed = json.dumps([{"entity": n, "type": t} for n, t in asked.items()], ensure_ascii=False)
    return {"role": "user", "content": [part, text_part(f"{size}Text: {sample.text}\nEntities: {listed}")]}


def _answer(demo: Sample, asked: dict[str, str], orig, sent, fmt: str) -> dict:
    """The assistant turn of a worked example: the demo's gold boxes of the asked names, as the model writes
    them."""
    boxes = {n: [] for n in asked}
    for e in demo.entities:
        for box in e.boxes if demo.name(e) in asked else []:
            xyxy = _written(box, orig, sent, fmt)
            if xyxy not in boxes[demo.name(e)]:  # every occurrence of a name carries the same boxes
                boxes[demo.name(e)].append(xyxy)
    items = [{"entity": n, "type": t, "boxes": boxes[n]} for n, t in asked.items()]
    return {"role": "assistant", "content": json.dumps({"entities": items}, ensure_ascii=False)}


def answer_schema(
    asked: dict[str, str], types: list[str], sent: tuple[int, int], fmt: str, max_boxes: int
) -> dict:
    top = {"abs": max(sent), "norm1000": 1000, "norm1": 1}[fmt]
    # Whole units except for 0-1: llama.cpp's grammar enforces minimum/maximum on integers only, so a
    # "number" lets a model write -3333333333 and pay a re-ask with every image sent again.
    coord = {"type": "number" if fmt == "norm1" else "integer", "minimum": 0, "maximum": top}
    box = {"type": "array", "minItems": 4, "maxItems": 4, "items": coord}
    item = closed(
        {
            "entity": {"type": "string", "enum": list(asked)},
            "type": {"type": "string", "enum": types},
            "boxes": {"type": "array", "maxItems": max_boxes, "items": box},
        }
    )
    return closed({"entities": {"type": "array", "maxItems": len(asked), "items": item}})


def parse_answer(
    content: object, asked: dict[str, str], orig, sent, fmt: str
) -> tuple[dict[str, list[Box]], Counter]:
    """{asked name: boxes in original pixels} from an answer, and its DEFECTS counted: anything malformed is
    counted and left out, never raised."""
    counts = Counter()
    items = content.get("entities") if isinstance(content, dict) else content  # a bare list is accepted too
    if not isinstance(items, list):
        counts["bad_answers"] += 1
        return {}, counts
    found: dict[str, list[Box]] = {}
    by_key = {without_spaces(n): n for n in asked}  # the one name rule: whitespace does not count
    for it in items:
        if (
            not isinstance(it, dict)
            or not isinstance(it.get("entity"), str)
            or not isinstance(it.get("boxes"), list)
        ):
            counts["bad_items"] += 1
            continue
        name = by_key.get(without_spaces(it["entity"]))
        if name is None:
            counts["invented"] += 1
            continue
        raw = it["boxes"]
        if len(raw) == 4 and all(is_number(v) for v in raw):
            raw = [raw]  # one flat box instead of a list of boxes
        boxes = found.setdefault(name, [])  # an entity answered with [] is ungroundable, not missing
        for xyxy in raw:
            if not (isinstance(xyxy, list) and len(xyxy) == 4 and all(is_number(v) for v in xyxy)):
                counts["malformed_boxes"] += 1
                continue
            box = from_model(xyxy, orig, sent, fmt)
            if box.x2 - box.x1 < 1 or box.y2 - box.y1 < 1:  # x2 < x1, zero area, or entirely off the image
                counts["degenerate_boxes"] += 1
                continue
            boxes.append(box)
    counts["missing"] += sum(1 for n in asked if n not in found)
    return found, counts


def build_request(
    sample: Sample,
    asked: dict[str, str],
    image: Shown,
    examples: list[tuple[Sample, Shown]],
    dataset: Dataset,
    never: list[str],
    config: GroundingConfig,
) -> dict:
    """The chat() kwargs of one grounding call: the system prompt, a user turn and the gold answer per worked
    example (a demo with its image as sent), the query's turn (its `asked` {name: type}) and the answer
    schema."""
    fmt = config.box_format
    never_l = {t.lower() for t in never}
    messages = [{"role": "system", "content": system_prompt(dataset, never, fmt)}]
    for d, shown in examples:
        d_asked = _asked(d, never_l)
        messages.append(_turn(d, d_asked, shown.part, shown.sent, fmt))
        messages.append(_answer(d, d_asked, shown.orig, shown.sent, fmt))
    messages.append(_turn(sample, asked, image.part, image.sent, fmt))
    types = dataset.types + [t for t in dict.fromkeys(asked.values()) if t not in dataset.types]
    return {"messages": messages, "schema": answer_schema(asked, types, image.sent, fmt, config.max_boxes)}


# ---------------------------------------------------------------- the stage


def ground(
    samples: list[Sample],
    examples: list[list[WorkedExample]],
    dataset: Dataset,
    client: Chat,
    config: GroundingConfig | None = None,
) -> tuple[list[Sample], dict[str, GroundingTrace]]:
    """Boxes for the predicted entities of `samples`, the call of samples[i] shown examples[i] first (best
    first: demos.choose); also a GroundingTrace per sample id."""
    config = config or GroundingConfig()
    # Only the data's own types: the default "location" leaves Twitter's LOC grounded.
    never = [t for t in dataset.types if t.lower() in {n.lower() for n in config.never_ground}]
    never_l = {t.lower() for t in never}
    calls = [Call(s, _asked(s, never_l), x) for s, x in zip(samples, examples, strict=True)]
    jobs = [partial(c.request, dataset, never, config) for c in calls if c.asks()]
    replies = iter(client.map_chat(jobs, desc="grounding") if jobs else [])
    out = [c.grounded(next(replies) if c.asks() else None, never_l, config.box_format) for c in calls]
    return [s for s, _ in out], {s.id: t for s, t in out}


@dataclass
class Call:
    """One sample's grounding call. Its request is built in map_chat's worker (`request`), so only the calls
    in flight hold their base64 images; the worker keeps what reading the answer needs: the query image's
    sizes, the worked examples shown, or why an image cannot be used (images are untrusted files)."""

    sample: Sample
    asked: dict[str, str]  # {name: type} to ground
    examples: list[WorkedExample]  # chosen for it, best first
    sizes: tuple[tuple[int, int], tuple[int, int]] | None = None  # (original, sent) of the query image
    shown: list[WorkedExample] = field(default_factory=list)  # the examples whose image could be sent
    dropped: dict[str, str] = field(default_factory=dict)  # the others: id -> why
    error: str = ""  # why the query image cannot be used

    def asks(self) -> bool:
        """Whether it makes a call: something to ask, and an image to ask about."""
        return bool(self.asked and self.sample.image)

    def request(self, dataset: Dataset, never: list[str], config: GroundingConfig) -> dict | None:
        """The chat() kwargs of the call; None (no call, no box) when the query image cannot be used."""
        try:
            query = show(self.sample.image, config)
        except ImageError as err:
            self.error = str(err)
            return None
        images = []
        for x in self.examples:
            try:
                images.append((x.sample, show(x.sample.image, config)))
                self.shown.append(x)
            except ImageError as err:
                self.dropped[x.sample.id] = str(err)
        self.sizes = query.orig, query.sent
        return build_request(self.sample, self.asked, query, images, dataset, never, config)

    def grounded(
        self, reply: Reply | LLMError | None, never: set[str], fmt: str
    ) -> tuple[Sample, GroundingTrace]:
        """The sample with the boxes answered for its names, and its trace."""
        boxes, defects, error = {}, Counter(), self.error
        if not self.asked:
            outcome = Outcome.NO_ENTITY
        elif not self.sample.image:
            outcome = Outcome.NO_IMAGE
        elif self.sizes is None:
            outcome = Outcome.IMAGE_ERROR
        elif isinstance(reply, LLMError):
            outcome, error = Outcome.FAILED_CALL, str(reply)
        else:
            outcome = Outcome.ANSWERED
            boxes, defects = parse_answer(reply.content, self.asked, *self.sizes, fmt)
        trace = GroundingTrace(outcome, self.asked, self.shown, boxes, error, dict(defects), self.dropped)
        return with_boxes(self.sample, boxes, never), trace


def show(path: str, config: GroundingConfig) -> Shown:
    """An image as sent to the MLLM (for abs at Qwen2.5-VL's own size), or ImageError."""
    orig = image_size(path)
    part, sent = image_part(path, config.max_side, qwen_size=config.box_format == "abs")
    return Shown(part, sent, orig)


def with_boxes(sample: Sample, boxes: dict[str, list[Box]], never: set[str]) -> Sample:
    """A copy of the sample whose entities carry the boxes found for their name (every occurrence alike); the
    rest of each entity (uncertainty, source, routing) as it was."""
    ents = [
        replace(e, boxes=[] if e.type.lower() in never else list(boxes.get(sample.name(e), [])))
        for e in sample.entities
    ]
    return replace(sample, tokens=list(sample.tokens), entities=ents)
