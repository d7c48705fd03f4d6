"""Refinement Stage of ReFineG: the tagger keeps what it is sure of, the MLLM judges the rest.

The entities uncertainty.route marked delegated go, with the image and the text, to a multimodal LLM that
keeps, re-spans, re-types or rejects each of them. Confident entities are never touched, so the MLLM's own
notion of "entity" (the paper's "domain knowledge conflict", synth.py) cannot overwrite them, and only
samples with an uncertain entity cost a call (the authors' released code sends every sample with an
entity, with four images each). A failed call keeps the tagger's entities of its sample.

Inputs: routed Samples, the Dataset (types and their descriptions) and an llm.Chat. Outputs: new Samples
whose entities say where they came from (`source` "tagger" | "mllm"), and a RefinementTrace per sample id.

    python -m pytest -q tests/method/test_refinement.py     # the stage against a scripted fake MLLM

Left out on purpose: adding missed entities is off by default (`allow_add`: the MLLM's notion of "entity"
leaks in there); one image per call (not four).
"""

from dataclasses import dataclass, replace
from enum import Enum
from functools import partial

import numpy as np

from data import Dataset, Entity, Sample, find_name, require_valid, setting
from images import ImageError, image_part
from llm import Chat, LLMError, closed, text_part
from uncertainty import delegated, missed_entity_score


class Call(str, Enum):
    """What came of one sample's refinement call (its value is a key of the run's counts)."""

    NOT_ASKED = "not_asked"  # no delegated entity (and no missed-entity score over missed_tau): no call
    ANSWERED = "answered"
    FAILED_CALL = "failed_call"  # the call's LLMError: every delegated entity keeps the tagger's prediction
    BAD_ANSWER = "bad_answer"  # an answer without a list of decisions: the same


class Outcome(str, Enum):
    """What became of one delegated entity (trace.jsonl's "decision", a key of the run's counts): its
    decision applied (the first four, the answer's actions), or the tagger's prediction kept by fallback."""

    KEEP = "keep"
    CHANGE_SPAN = "change_span"
    CHANGE_TYPE = "change_type"
    REJECT = "reject"
    MISSING = "missing"  # the answer holds no decision for it (or the call failed)
    UNKNOWN_ACTION = "invalid_unknown_action"
    UNKNOWN_TYPE = "invalid_unknown_type"
    SPAN_NOT_IN_TEXT = "invalid_span_not_in_text"
    SPAN_NOT_OVERLAPPING = "invalid_span_not_overlapping"  # a new span must overlap the old one
    OVERLAPS_OTHER = "invalid_overlaps_other"  # the new span lost to another entity (resolve's rule)


class Ignored(str, Enum):
    """A part of an answer that was not used (a key of the run's counts)."""

    UNKNOWN_ENTITY = "unknown_entity"  # a decision whose id names no entity to check
    DUPLICATE_DECISION = "duplicate_decision"  # a second decision for one entity: the first counts
    ADDED_UNKNOWN_TYPE = "invalid_added_unknown_type"
    ADDED_SPAN_NOT_IN_TEXT = "invalid_added_span_not_in_text"
    ADDED_OVERLAPS_OTHER = "invalid_added_overlaps_other"  # lost to another entity (resolve's rule)


ACTIONS = [o.value for o in (Outcome.KEEP, Outcome.CHANGE_SPAN, Outcome.CHANGE_TYPE, Outcome.REJECT)]


@dataclass
class RefinementConfig:
    allow_add: bool = setting(
        False,
        "may the MLLM add entities the tagger missed? off: its own notion of entity enters there (the "
        "paper's domain knowledge conflict)",
        main=True,
    )
    missed_tau: float = setting(
        0.5, "with allow_add: also send a sample whose missed-entity score exceeds this"
    )
    max_side: int = setting(1000, "longest image side sent to the MLLM, pixels")
    max_reasoning: int = setting(
        1500, "schema bound on the answer's reasoning, characters (keeps answers short)"
    )

    def __post_init__(self):
        require_valid(
            self,
            [
                ("missed_tau", 0 <= self.missed_tau <= 1, "a score in [0, 1]"),
                ("max_side", self.max_side >= 1, "pixels >= 1"),
                ("max_reasoning", self.max_reasoning >= 1, "at least 1 character"),
            ],
        )


@dataclass
class Decision:
    """What became of one delegated entity."""

    entity: Entity  # as the tagger predicted it
    outcome: Outcome
    result: Entity | None  # the entity after the decision; None = rejected


@dataclass
class RefinementTrace:
    """What refinement did for one sample; `refine` returns one per sample id."""

    call: Call
    entities: int  # the tagger's entities in the sample
    decisions: list[Decision]  # one per delegated entity, in the order asked ([] when not asked)
    added: list[Entity]  # entities the MLLM added that were merged (allow_add only)
    ignored: list[Ignored]  # what of the answer was not used, one item each
    reasoning: str = ""  # the answer's reasoning, as the MLLM wrote it
    failed: str = ""  # why no decision could be used (the call's error, an answer of the wrong shape)
    image_error: str = ""  # why the sample's image could not be used: the call went without it
    text_only: bool = False  # the call went without an image (the sample has none, or image_error)


# ---------------------------------------------------------------- the request

SYSTEM = (
    "You check named entities in an image-text pair. A small tagger labelled the text; "
    "you judge only the entities it is unsure of, using the text and the image."
)
STEPS = [
    "Think step by step for each entity to check:",
    "1. Is it a specific named entity of one of the types above (not a generic word)? If not: reject.",
    "2. Does the span cover the whole name and nothing more? If not: change_span, with the corrected "
    "span copied word for word from the text; it must overlap the old span.",
    "3. Is the type right, given the text and the image? If not: change_type.",
    "Otherwise: keep.",
    'Write your reasoning first, briefly. Then one decision per entity to check: "span" is the '
    'entity\'s text after your decision and "type" its type after your decision.',
]


def prompt(sample: Sample, dataset: Dataset, allow_add: bool, image: bool) -> str:
    """The text of one refinement question: the types, the text, the sure entities, the delegated ones to
    check (numbered from 1 in text order: the decisions' ids)."""
    uncertain = delegated(sample)
    sure = [e for e in sample.entities if not e.delegated]
    lines = [dataset.type_text or "Entity types: " + ", ".join(dataset.types), "", f"Text: {sample.text}", ""]
    lines.append("Entities the tagger is sure of (context only, do not judge them):")
    lines += [f'- "{sample.name(e)}" ({e.type})' for e in sure] or ["- none"]
    lines += ["", "Entities to check:"]
    lines += [f'[{i}] "{sample.name(e)}" ({e.type})' for i, e in enumerate(uncertain, 1)] or ["- none"]
    lines += ["", *STEPS]
    if allow_add:
        lines.append('If a specific named entity of these types is in neither list, put it in "added".')
    if not image:
        lines.append("There is no image for this text: judge from the text alone.")
    return "\n".join(lines)


def answer_schema(n: int, types: list[str], config: RefinementConfig) -> dict:
    """A reasoning string and exactly one decision per entity to check (bounded: a broken model stops)."""
    decision = closed(
        {
            "id": {"type": "integer", "minimum": 1, "maximum": max(n, 1)},
            "action": {"type": "string", "enum": ACTIONS},
            "span": {"type": "string", "maxLength": 200},
            "type": {"type": "string", "enum": list(types)},
        }
    )
    props = {
        "reasoning": {"type": "string", "maxLength": config.max_reasoning},
        "decisions": {"type": "array", "items": decision, "minItems": n, "maxItems": n},
    }
    if config.allow_add:
        added = closed({k: decision["properties"][k] for k in ("span", "type")})
        props["added"] = {"type": "array", "maxItems": 5, "items": added}
    return closed(props)


def build_request(sample: Sample, dataset: Dataset, config: RefinementConfig, image: dict | None) -> dict:
    """The chat() kwargs of one routed sample's refinement call: the messages (image first, when there is
    one) and the schema."""
    text = prompt(sample, dataset, config.allow_add, image is not None)
    content = ([image] if image is not None else []) + [text_part(text)]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
    return {"messages": messages, "schema": answer_schema(len(delegated(sample)), dataset.types, config)}


# ---------------------------------------------------------------- merging one answer


def merge(
    sample: Sample, answer: object, types: list[str], allow_add: bool = False
) -> tuple[Sample, RefinementTrace]:
    """Apply one answer (parsed JSON, or the call's LLMError) to a routed sample, and trace it: each
    decision on its own (`decide`), so the additions; then `resolve` settles overlaps once. A missing or
    invalid decision keeps the tagger's entity (source "tagger"); a changed or added one gets "mllm"."""
    call, failed = status(answer)
    answered = answer if call is Call.ANSWERED else {"decisions": []}
    asked = delegated(sample)
    decided, ignored = decisions(answered["decisions"], len(asked))
    made = [decide(sample.tokens, e, decided.get(i), types) for i, e in enumerate(asked, 1)]
    added, refused = additions(sample.tokens, answered.get("added") if allow_add else None, types)
    made, added, lost = resolve(sample, made, added)
    sure = [replace(e, boxes=list(e.boxes)) for e in sample.entities if not e.delegated]
    final = sure + [d.result for d in made if d.result is not None] + added
    reasoning = answered.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, str) else ""
    unused = ignored + refused + lost
    trace = RefinementTrace(call, len(sample.entities), made, added, unused, reasoning, failed)
    return replace(sample, entities=sorted(final, key=lambda e: e.start)), trace


def status(answer: object) -> tuple[Call, str]:
    """What came of one call, and why none of its decisions can be used ("" when they can)."""
    if isinstance(answer, LLMError):
        return Call.FAILED_CALL, str(answer)
    if not isinstance(answer, dict) or not isinstance(answer.get("decisions"), list):
        return Call.BAD_ANSWER, "the answer has no list of decisions"
    return Call.ANSWERED, ""


def decisions(given: list, n: int) -> tuple[dict[int, dict], list[Ignored]]:
    """{entity number 1..n: its first decision} of an answer's decisions, and the ones ignored. The schema
    guarantees these shapes (the checks guard direct callers), but not distinct ids or spans in the text."""
    decided, ignored = {}, []
    for d in given:
        i = d.get("id") if isinstance(d, dict) else None
        if type(i) is not int or not 1 <= i <= n:
            ignored.append(Ignored.UNKNOWN_ENTITY)
        elif i in decided:
            ignored.append(Ignored.DUPLICATE_DECISION)
        else:
            decided[i] = d
    return decided, ignored


def decide(tokens: list[str], e: Entity, d: dict | None, types: list[str]) -> Decision:
    """One delegated entity after its decision, on its own (overlaps with others are `resolve`'s)."""
    kept = replace(e, boxes=list(e.boxes))
    if d is None:
        return Decision(e, Outcome.MISSING, kept)
    action, new_type = d.get("action"), d.get("type")
    if action not in ACTIONS:
        return Decision(e, Outcome.UNKNOWN_ACTION, kept)
    if action == Outcome.KEEP:
        return Decision(e, Outcome.KEEP, kept)
    if action == Outcome.REJECT:
        return Decision(e, Outcome.REJECT, None)
    if new_type not in types:
        return Decision(e, Outcome.UNKNOWN_TYPE, kept)
    span, why = (e.span, None) if action == Outcome.CHANGE_TYPE else find_span(tokens, d.get("span"), e)
    if span is None:
        return Decision(e, why, kept)
    if span == e.span and new_type == e.type:
        return Decision(e, Outcome.KEEP, kept)
    new = replace(e, start=span[0], end=span[1], type=new_type, source="mllm")
    return Decision(e, Outcome(action), new)


def additions(tokens: list[str], added: object, types: list[str]) -> tuple[list[list[Entity]], list[Ignored]]:
    """Each entity the MLLM added (allow_add) with a known type and a name in the text, as one Entity per
    occurrence of the name (`resolve` places it at the first free one); and the ones refused."""
    out, refused = [], []
    for a in added if isinstance(added, list) else []:
        a = a if isinstance(a, dict) else {}
        name = a.get("span")
        hits = find_name(tokens, name) if isinstance(name, str) else []
        if a.get("type") not in types:
            refused.append(Ignored.ADDED_UNKNOWN_TYPE)
        elif not hits:
            refused.append(Ignored.ADDED_SPAN_NOT_IN_TEXT)
        else:
            out.append([Entity(start, end, a["type"], source="mllm") for start, end in hits])
    return out, refused


def find_span(tokens: list[str], text: object, old: Entity) -> tuple[tuple[int, int] | None, Outcome | None]:
    """The token span of `text` that overlaps `old` most (the first among equals), or None and why."""
    hits = find_name(tokens, text) if isinstance(text, str) else []  # "Jay - Z" and "Jay-Z" are one name
    if not hits:
        return None, Outcome.SPAN_NOT_IN_TEXT
    shared = {h: min(h[1], old.end) - max(h[0], old.start) for h in hits}  # tokens in common with `old`
    near = [h for h in hits if shared[h] > 0]
    if not near:
        return None, Outcome.SPAN_NOT_OVERLAPPING
    return max(near, key=lambda h: (shared[h], -h[0])), None


def resolve(
    sample: Sample, made: list[Decision], added: list[list[Entity]]
) -> tuple[list[Decision], list[Entity], list[Ignored]]:
    """Settle overlaps once, by one rule: tokens are held first come, first served. Every entity not
    rejected holds its tagger span; then the new spans are placed in the order given (re-spans in the
    order asked, then additions), each only on tokens no other entity holds. A placed re-span gives up its
    tagger span; a refused one keeps its tagger entity (invalid_overlaps_other); an addition goes to the
    first free occurrence of its name, or is dropped (invalid_added_overlaps_other). "Two Leopard 2 tanks":
    "Leopard" delegated and re-spanned to "Leopard 2" is refused while "2" holds its token (sure, or
    delegated and not rejected), and placed when "2" is rejected."""
    nobody, fixed = -1, -2  # holders that are no decision: no one; a sure entity or a placed addition
    holder = np.full(len(sample.tokens), nobody)  # who holds each token: nobody, fixed, or decision i
    for e in sample.entities:
        if not e.delegated:
            holder[e.start : e.end] = fixed
    for i, d in enumerate(made):
        if d.result is not None:
            holder[d.entity.start : d.entity.end] = i
    settled = []
    for i, d in enumerate(made):
        moved = d.result is not None and d.result.span != d.entity.span
        if moved and np.isin(holder[d.result.start : d.result.end], [nobody, i], invert=True).any():
            d = Decision(d.entity, Outcome.OVERLAPS_OTHER, replace(d.entity, boxes=list(d.entity.boxes)))
        elif moved:
            holder[holder == i] = nobody
            holder[d.result.start : d.result.end] = i
        settled.append(d)
    kept, lost = [], []
    for occurrences in added:
        spots = [e for e in occurrences if (holder[e.start : e.end] == nobody).all()]
        if spots:
            holder[spots[0].start : spots[0].end] = fixed
            kept.append(spots[0])
        else:
            lost.append(Ignored.ADDED_OVERLAPS_OTHER)
    return settled, kept, lost


# ---------------------------------------------------------------- the stage


def refine(
    samples: list[Sample],
    dataset: Dataset,
    client: Chat,
    config: RefinementConfig | None = None,
    tags: list[str] | None = None,
) -> tuple[list[Sample], dict[str, RefinementTrace]]:
    """Send the entities `uncertainty.route` marked delegated to the MLLM, one call per sample (an entity
    never routed is an error); return the refined samples and a RefinementTrace per sample id. With
    `config.allow_add`, `tags` (the tagger's tag names) also sends samples by their missed-entity score."""
    config = config or RefinementConfig()
    asked = [i for i, s in enumerate(samples) if delegated(s) or missed(s, tags, config)]
    image_errors: dict[str, str] = {}  # sample id -> why its image cannot be used
    jobs = [partial(request_with_image, samples[i], dataset, config, image_errors) for i in asked]
    replies = dict(zip(asked, client.map_chat(jobs, desc="refine") if jobs else []))
    out, traces = [], {}
    for i, s in enumerate(samples):
        if i in replies:
            answer = replies[i] if isinstance(replies[i], LLMError) else replies[i].content
            new, trace = merge(s, answer, dataset.types, config.allow_add)
            why = image_errors.get(s.id, "")
            trace = replace(trace, image_error=why, text_only=bool(why) or not s.image)
        else:  # copied too, so the caller's predictions are never mutated
            new = replace(s, entities=[replace(e, boxes=list(e.boxes)) for e in s.entities])
            trace = RefinementTrace(Call.NOT_ASKED, len(s.entities), [], [], [])
        out.append(new)
        traces[s.id] = trace
    return out, traces


def missed(sample: Sample, tags: list[str] | None, config: RefinementConfig) -> bool:
    """Whether a sample goes to the MLLM for an entity the tagger may have missed (allow_add only)."""
    return config.allow_add and tags is not None and missed_entity_score(sample, tags) > config.missed_tau


def request_with_image(sample: Sample, dataset: Dataset, config: RefinementConfig, errors: dict) -> dict:
    """One routed sample's request with its image, built in map_chat's workers so that only the requests in
    flight hold their base64 image; an unreadable image (noted in `errors`) makes a text-only call."""
    image = None
    if sample.image:
        try:
            image = image_part(sample.image, config.max_side)[0]
        except ImageError as err:
            errors[sample.id] = str(err)
    return build_request(sample, dataset, config, image)
