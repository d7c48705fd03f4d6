"""Grounding stage of ReFineG: multimodal context selection and in-context grounding.

For every sample, the k labelled samples most like it (text, image and entity
similarity, weighted; demos.py picks them) are shown to a frozen multimodal LLM as worked examples
with their gold boxes; the MLLM then gives the boxes of the sample's predicted
entities, or none (ungroundable): grounding by analogy with solved examples.

Inputs: predicted samples (entities, boxes ignored), labelled demos (gold
entities with boxes), the Dataset (type descriptions) and an llm.Client.
Output: new samples whose entities carry boxes in ORIGINAL image pixels (upright, images.py), a
dict of counts (calls, skipped samples, malformed and dropped answers), and a
`GroundingTrace` per sample id (what was asked, the worked examples shown with
their similarity parts, the boxes answered, whether the call failed).

    python -m pytest -q tests/method/test_grounding.py   # the stage against a scripted fake MLLM
    python -m bench selection                     # demo selection quality and speed on Twitter-GMNER

Choices:
- Demo selection (text, image and entity similarity, weighted): demos.py.
- Worked examples are chat turns: a user turn (image, text, entities) then an
  assistant turn (the gold answer as JSON, boxes in the box format of that demo
  image as sent). Only demos with an image are shown.
- Boxes follow the MLLM's convention (`box_format`): abs = pixels of the image
  as sent (Qwen2.5-VL), norm1000 = 0-1000 (Qwen2-VL, Qwen3-VL, GLM-V), norm1 = 0-1.
  For abs the image is sent at the size Qwen2.5-VL's own resize gives it (sides multiples
  of 28 within its pixel limits, images.smart_resize), so the model sees it pixel for pixel.
  Answers come back to original pixels, clipped to the image; degenerate boxes
  are dropped. Boxes attach by name to every occurrence of that name.
- Types in `never_ground` (default location, as in the authors' prompt) are
  neither asked nor boxed; the default only applies when the data has that type
  (Twitter's LOC is grounded). A sample with nothing to ask, or without image,
  makes no call. A call that fails (after the client's retries) gives its sample no
  box: its entities stay ungroundable, counted in `failed_calls`.

Left out on purpose: correcting spans or types while grounding (the refinement
stage does that), the MLLM's free-text reasoning, boxes for entities the MLLM
invents (ignored and counted).
"""

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from data import Box, Dataset, Entity, Sample, failed_rules, is_number, require_valid, without_spaces
from demos import DemoConfig, Pick, choose_demos
from images import ImageError, image_part, image_size
from llm import Chat, LLMError, text_part

# Box format -> how the prompt describes it. Qwen2.5-VL's "absolute pixels" are those of its own resize of the
# image (images.smart_resize: sides multiples of 28); for abs the image is sent at that size already
# (Calls.show), so those pixels are the pixels sent and the size the prompt states.
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
    max_side: int = 1000  # longest side of images sent to the MLLM, pixels
    box_format: str = "abs"  # the MLLM's boxes: abs (Qwen2.5-VL) | norm1000 (Qwen2/3-VL, GLM-V) | norm1
    never_ground: list[str] = field(default_factory=lambda: ["location"])  # types never boxed (authors' rule)
    # (the flag given with no type boxes every type)
    max_boxes: int = 10  # boxes per entity the answer schema allows


def check_config(c: GroundingConfig) -> list[tuple[str, str]]:
    """The settings that cannot work, as (field, what was expected)."""
    return failed_rules(
        [
            ("max_side", c.max_side >= 1, "pixels >= 1"),
            ("box_format", c.box_format in FORMATS, " or ".join(FORMATS)),
            ("max_boxes", c.max_boxes >= 1, "at least 1"),
        ]
    )


class Shown(NamedTuple):
    """An image as sent to the MLLM."""

    part: dict  # the chat content part (base64 image)
    sent: tuple[int, int]  # width, height as sent (after the resize to max_side)
    orig: tuple[int, int]  # width, height of the original file: boxes come back to these pixels


@dataclass
class WorkedExample:
    """A labelled sample shown to the MLLM before a query, and why it was chosen (demos.Pick's parts)."""

    id: str  # the labelled sample's id
    text: float  # text similarity to the query, min-max normalised per query to [0, 1]
    image: float | None  # image similarity, the same way; None when its term was dropped
    entity: float  # entity similarity, the same way
    total: float  # the weighted sum the examples were ranked by


@dataclass
class GroundingTrace:
    """What grounding did for one sample; `ground` returns one per sample id. A stable record: the run's
    trace.jsonl is written from it, and boxes[name] is what the MLLM drew for that name."""

    outcome: str  # answered | failed_call | image_error (the call was made or tried) | no_image | no_entity
    asked: dict[str, str]  # {name: type} to ground, in text order (types in never_ground are not asked)
    examples: list[WorkedExample]  # the worked examples shown, best first (demos with a readable image)
    boxes: dict[str, list[Box]]  # answered name -> boxes in original pixels, [] = ungroundable; a name
    # missing here got no answer (failed call, or left out of the answer): it has no box either
    error: str = ""  # why the call failed or its image could not be used


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
    item = {
        "type": "object",
        "additionalProperties": False,
        "required": ["entity", "type", "boxes"],
        "properties": {
            "entity": {"type": "string", "enum": list(asked)},
            "type": {"type": "string", "enum": types},
            "boxes": {
                "type": "array",
                "maxItems": max_boxes,
                "items": {"type": "array", "minItems": 4, "maxItems": 4, "items": coord},
            },
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["entities"],
        "properties": {"entities": {"type": "array", "maxItems": len(asked), "items": item}},
    }


def parse_answer(
    content: object, asked: dict[str, str], orig, sent, fmt: str, counts: Counter
) -> dict[str, list[Box]]:
    """{asked name: boxes in original pixels} from an answer; anything malformed is counted, never raised."""
    items = content.get("entities") if isinstance(content, dict) else content  # a bare list is accepted too
    if not isinstance(items, list):
        counts["bad_answers"] += 1
        return {}
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
    return found


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
    demos: list[Sample],
    dataset: Dataset,
    client: Chat,
    config: GroundingConfig | None = None,
    selection: DemoConfig | None = None,
) -> tuple[list[Sample], dict, dict[str, GroundingTrace]]:
    """Boxes for the predicted entities of `samples`, by in-context examples chosen from `demos`; also the
    counts, and a GroundingTrace per sample id."""
    config = config or GroundingConfig()
    require_valid(config, check_config(config))
    never = [t for t in dataset.types if t.lower() in {n.lower() for n in config.never_ground}]
    never_l = {t.lower() for t in never}
    counts = Counter(samples=len(samples))
    pool = [d for d in demos if d.image]
    counts["demos_without_image"] = len(demos) - len(pool)
    todo = to_ask(samples, never_l, counts)  # (sample index, {name: type})
    t0 = time.perf_counter()
    chosen = (
        choose_demos([samples[i] for i, _ in todo], pool, selection or DemoConfig()) if todo and pool else []
    )
    chosen = chosen or [[]] * len(todo)
    counts["selection_seconds"] = round(time.perf_counter() - t0, 2)  # embeddings included
    calls = Calls(dataset, never, config)
    jobs = [
        calls.builder(k, samples[i], asked, [pool[p.index] for p in picks])
        for k, ((i, asked), picks) in enumerate(zip(todo, chosen))
    ]
    replies = client.map_chat(jobs, desc="grounding") if jobs else []
    found = calls.read(todo, replies, counts)
    counts["calls"] = len(todo) - counts["image_errors"]
    counts["demo_image_errors"] = sum(v is None for v in calls.demos.values())
    for _, why in sorted(calls.errors.items()):
        print(f"grounding: {why}; no box from it")
    out = [with_boxes(s, found.get(i, {}), never_l) for i, s in enumerate(samples)]
    counts["entities_grounded"] = sum(1 for s in out for e in s.entities if e.boxes)
    counts["boxes"] = sum(len(e.boxes) for s in out for e in s.entities)
    return out, dict(counts), traces(samples, never_l, todo, chosen, pool, calls, found)


def traces(
    samples: list[Sample],
    never: set[str],
    todo: list[tuple[int, dict[str, str]]],
    chosen: list[list[Pick]],
    pool: list[Sample],
    calls: "Calls",
    found: dict[int, dict[str, list[Box]]],
) -> dict[str, GroundingTrace]:
    """The GroundingTrace of every sample, by id: a sample not in `todo` needed no call (why: to_ask)."""
    out = {}
    for s in samples:
        asked = _asked(s, never)
        out[s.id] = GroundingTrace("no_image" if asked else "no_entity", asked, [], {})
    for k, ((i, asked), picks) in enumerate(zip(todo, chosen)):
        shown = [pool[p.index] for p in picks]
        examples = [
            WorkedExample(d.id, p.text, p.image, p.entity, p.total)
            for d, p in zip(shown, picks)
            if calls.demos.get(d.image) is not None
        ]
        outcome, error = calls.outcomes[k]
        out[samples[i].id] = GroundingTrace(outcome, asked, examples, found.get(i, {}), error)
    return out


def to_ask(samples: list[Sample], never: set[str], counts: Counter) -> list[tuple[int, dict[str, str]]]:
    """(index, {name: type}) of the samples that need a call; the others are counted by why they need none."""
    todo = []
    for i, s in enumerate(samples):
        asked = _asked(s, never)
        if not asked:
            counts["no_entity"] += 1
        elif not s.image:
            counts["no_image"] += 1
            counts["no_image_entities"] += sum(1 for e in s.entities if e.type.lower() not in never)
        else:
            todo.append((i, asked))
    return todo


class Calls:
    """The grounding calls of one run: their requests, built in map_chat's workers so only the requests in
    flight hold their base64 images, and the reading of their answers. Images are untrusted files: one
    that cannot be read is remembered with why; a demo image is encoded once, a query image once per call."""

    def __init__(self, dataset: Dataset, never: list[str], config: GroundingConfig):
        self.dataset, self.never, self.config = dataset, never, config
        self.demos: dict[str, Shown | None] = {}  # demo image path -> as sent, None = unreadable
        self.queries: dict[int, Shown] = {}  # call number -> its query image as sent (for the answer's boxes)
        self.errors: dict[str, str] = {}  # image path -> why it cannot be used
        self.outcomes: dict[int, tuple[str, str]] = {}  # call number -> (GroundingTrace.outcome, error)

    def show(self, path: str) -> Shown | None:
        try:
            orig = image_size(path)
            part, sent = image_part(path, self.config.max_side, qwen_size=self.config.box_format == "abs")
            return Shown(part, sent, orig)
        except ImageError as err:
            self.errors[path] = str(err)
            return None

    def builder(self, k: int, sample: Sample, asked: dict[str, str], picks: list[Sample]):
        """Call k's request as a function; it gives None (no call, no box) when the query image is
        unreadable."""

        def build() -> dict | None:
            query = self.show(sample.image)
            if query is None:
                self.outcomes[k] = ("image_error", self.errors.get(sample.image, ""))
                return None
            for d in picks:
                if d.image not in self.demos:  # two workers may both encode it: harmless
                    self.demos[d.image] = self.show(d.image)
            examples = [(d, self.demos[d.image]) for d in picks if self.demos[d.image] is not None]
            self.queries[k] = query
            return build_request(sample, asked, query, examples, self.dataset, self.never, self.config)

        return build

    def read(self, todo: list[tuple[int, dict[str, str]]], replies: list, counts: Counter) -> dict:
        """{sample index: {asked name: boxes in original pixels}} of the answered calls; failures counted."""
        found = {}
        for k, ((i, asked), reply) in enumerate(zip(todo, replies)):
            if reply is None:
                counts["image_errors"] += 1  # its outcome was set when the request could not be built
            elif isinstance(reply, LLMError):
                counts["failed_calls"] += 1
                self.outcomes[k] = ("failed_call", str(reply))
            else:
                self.outcomes[k] = ("answered", "")
                q = self.queries[k]
                found[i] = parse_answer(reply.content, asked, q.orig, q.sent, self.config.box_format, counts)
        return found


def with_boxes(sample: Sample, boxes: dict[str, list[Box]], never: set[str]) -> Sample:
    """A copy of the sample whose entities carry the boxes found for their name (every occurrence alike)."""
    ents = [
        Entity(
            e.start,
            e.end,
            e.type,
            [] if e.type.lower() in never else list(boxes.get(sample.name(e), [])),
            e.uncertainty,
            e.source,
        )
        for e in sample.entities
    ]
    return Sample(sample.id, list(sample.tokens), sample.image, ents, sample.marginals)
