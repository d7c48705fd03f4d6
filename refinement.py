"""Refinement Stage of ReFineG: the tagger keeps what it is sure of, the MLLM judges the rest.

The entities uncertainty.py marked delegated (uncertainty above tau) go, with the image and the text,
to a multimodal LLM that keeps, re-spans, re-types or rejects each of them. Confident entities are never
touched, so the MLLM's own notion of "entity", which differs from the dataset's annotation guidelines
(the paper's "domain knowledge conflict", synth.py), cannot overwrite them, and only samples with an
uncertain entity cost a call (the authors' released code sends every sample with an entity, with four
images each). A failed call keeps the tagger's entities of its sample (counted).

Inputs: predicted Samples routed by uncertainty.route (each entity's `delegated` set), the Dataset
(types and their descriptions) and an llm.Client. Outputs: new Samples whose entities say where they
came from (`source` = "tagger" | "mllm"), a dict of counts (calls, decisions, fallbacks), and per
sample id asked a `RefinementTrace` (each delegated entity's decision, the added ones, the call's reasoning).

    python -m pytest -q tests/method/test_refinement.py     # the stage against a scripted fake MLLM

Left out on purpose: adding missed entities is off by default (`allow_add`: adding is where the
MLLM's notion of "entity" leaks in, the domain knowledge conflict); one image per call (not four).
"""

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from data import Dataset, Entity, Sample, find_name, require_valid, setting
from images import ImageError, image_part
from llm import Chat, LLMError, text_part
from uncertainty import delegated, missed_entity_score

ACTIONS = ["keep", "change_span", "change_type", "reject"]


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
    outcome: str  # keep | change_type | change_span | reject | missing | invalid_<reason> (both: kept)
    result: Entity | None  # the entity after the decision; None = rejected


@dataclass
class RefinementTrace:
    """One sample's refinement call: the decision per delegated entity, in the order they were asked."""

    decisions: list[Decision]
    added: list[Entity]  # entities the MLLM added (allow_add only)
    reasoning: str  # the answer's reasoning, as the MLLM wrote it
    failed: str  # why no decision could be used (the call's error, an answer of the wrong shape); "" = none


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


def prompt(sample: Sample, uncertain: list[Entity], dataset: Dataset, allow_add: bool, image: bool) -> str:
    """The text of one refinement question: the types, the text, the sure entities, the ones to check."""
    sure = [e for e in sample.entities if all(e is not u for u in uncertain)]
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
    decision = {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "action", "span", "type"],
        "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": max(n, 1)},
            "action": {"type": "string", "enum": ACTIONS},
            "span": {"type": "string", "maxLength": 200},
            "type": {"type": "string", "enum": list(types)},
        },
    }
    props = {
        "reasoning": {"type": "string", "maxLength": config.max_reasoning},
        "decisions": {"type": "array", "items": decision, "minItems": n, "maxItems": n},
    }
    if config.allow_add:
        added = {k: v for k, v in decision["properties"].items() if k in ("span", "type")}
        item = {
            "type": "object",
            "additionalProperties": False,
            "required": ["span", "type"],
            "properties": added,
        }
        props["added"] = {"type": "array", "maxItems": 5, "items": item}
    return {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}


def build_request(
    sample: Sample, uncertain: list[Entity], dataset: Dataset, config: RefinementConfig, image: dict | None
) -> dict:
    """The chat() kwargs of one refinement call: the messages (image first, when there is one) and the
    schema."""
    text = prompt(sample, uncertain, dataset, config.allow_add, image is not None)
    content = ([image] if image is not None else []) + [text_part(text)]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
    return {"messages": messages, "schema": answer_schema(len(uncertain), dataset.types, config)}


# ---------------------------------------------------------------- merging one answer


def merge(
    sample: Sample, uncertain: list[Entity], answer: object, types: list[str], allow_add: bool = False
) -> tuple[Sample, Counter, RefinementTrace]:
    """Apply one answer (parsed JSON, or the call's LLMError) to a sample; also say what became of each
    delegated entity.

    Confident entities are untouched. A delegated entity whose decision is missing or invalid
    keeps the tagger's prediction, counted under `missing` or `invalid_<reason>`, and in
    `kept_by_fallback`. A changed entity gets source "mllm"; a kept one stays "tagger".
    """
    decided, counts = decisions(answer, len(uncertain))
    final: list[Entity | None] = [replace(e, boxes=list(e.boxes)) for e in sample.entities]  # None: rejected
    taken = np.zeros(len(sample.tokens), dtype=bool)  # tokens covered by a final entity
    for e in sample.entities:
        taken[e.start : e.end] = True
    made = []
    for i, e, d in in_order(sample, uncertain, decided):
        taken[e.start : e.end] = False
        new, outcome = decide(sample.tokens, e, d, types, taken)
        counts[outcome] += 1
        counts["kept_by_fallback"] += outcome == "missing" or outcome.startswith("invalid_")
        final[i] = new
        made.append(Decision(e, outcome, new))
        if new is not None:
            taken[new.start : new.end] = True
    added = answer.get("added") if allow_add and isinstance(answer, dict) else None
    final += additions(sample.tokens, added if isinstance(added, list) else [], types, taken, counts)
    kept = sorted((e for e in final if e is not None), key=lambda e: e.start)
    made.sort(key=lambda m: _index(uncertain, m.entity))
    trace = RefinementTrace(made, [e for e in final[len(sample.entities) :] if e], *said(answer))
    return replace(sample, entities=kept), counts, trace


def said(answer: object) -> tuple[str, str]:
    """(reasoning, why the answer could not be used) of one answer, for its trace."""
    if isinstance(answer, LLMError):
        return "", str(answer)
    if not isinstance(answer, dict) or not isinstance(answer.get("decisions"), list):
        return "", "the answer has no list of decisions"
    reasoning = answer.get("reasoning")
    return (reasoning if isinstance(reasoning, str) else ""), ""


def decisions(answer: object, n: int) -> tuple[dict[int, dict], Counter]:
    """{entity number 1..n: its first decision} of an answer, and what was wrong with the rest.

    The schema (llm.Client enforces it) already guarantees these shapes; the checks guard direct
    callers. Not guaranteed by any schema: distinct ids and spans that are in the text.
    """
    counts = Counter()
    decided = {}
    if isinstance(answer, LLMError):
        counts["failed_call"] += 1
    elif not isinstance(answer, dict) or not isinstance(answer.get("decisions"), list):
        counts["bad_answer"] += 1
    else:
        for d in answer["decisions"]:
            i = d.get("id") if isinstance(d, dict) else None
            if type(i) is not int or not 1 <= i <= n:
                counts["unknown_entity"] += 1
            elif i in decided:
                counts["duplicate_decision"] += 1
            else:
                decided[i] = d
    return decided, counts


def in_order(
    sample: Sample, uncertain: list[Entity], decided: dict[int, dict]
) -> list[tuple[int, Entity, dict | None]]:
    """(index in sample.entities, entity, its decision or None) in the order the decisions apply:
    rejections first (they free tokens), span changes last (checked against the tokens still free)."""
    steps = [(_index(sample.entities, e), e, decided.get(i)) for i, e in enumerate(uncertain, 1)]
    rank = {"reject": 0, "change_span": 2}
    return sorted(steps, key=lambda step: rank.get(step[2].get("action") if step[2] else None, 1))


def _index(entities: list[Entity], e: Entity) -> int:
    """The position of this very entity object (equal entities may occur twice)."""
    return next(k for k, x in enumerate(entities) if x is e)


def decide(
    tokens: list[str], e: Entity, d: dict | None, types: list[str], taken: np.ndarray
) -> tuple[Entity | None, str]:
    """One delegated entity after its decision (None = rejected) and the outcome's name."""
    kept = replace(e, boxes=list(e.boxes))
    if d is None:
        return kept, "missing"
    action, new_type = d.get("action"), d.get("type")
    if action not in ACTIONS:
        return kept, "invalid_unknown_action"
    if action == "keep":
        return kept, "keep"
    if action == "reject":
        return None, "reject"
    if new_type not in types:
        return kept, "invalid_unknown_type"
    if action == "change_type":
        if new_type == e.type:
            return kept, "keep"
        return replace(e, type=new_type, source="mllm"), "change_type"
    span, why = find_span(tokens, d.get("span"), e, taken)
    if span is None:
        return kept, f"invalid_{why}"
    if span == (e.start, e.end) and new_type == e.type:
        return kept, "keep"
    return replace(e, start=span[0], end=span[1], type=new_type, source="mllm"), "change_span"


def additions(
    tokens: list[str], added: list, types: list[str], taken: np.ndarray, counts: Counter
) -> list[Entity]:
    """The entities the MLLM added (allow_add) that fit: a known type, a span in the text on free tokens."""
    out = []
    for a in added:
        a = a if isinstance(a, dict) else {}
        span, why = find_span(tokens, a.get("span"), None, taken)
        if a.get("type") not in types:
            counts["invalid_added_unknown_type"] += 1
        elif span is None:
            counts[f"invalid_added_{why}"] += 1
        else:
            taken[span[0] : span[1]] = True
            out.append(Entity(span[0], span[1], a["type"], source="mllm"))
            counts["added"] += 1
    return out


def find_span(
    tokens: list[str], text: object, old: Entity | None, taken: np.ndarray
) -> tuple[tuple[int, int] | None, str]:
    """The token span of `text` (overlapping `old` when given, not overlapping `taken`), or a reason."""
    if not isinstance(text, str) or not text.strip():
        return None, "span_not_in_text"
    hits = set(find_name(tokens, text))  # whitespace-insensitive: "Jay - Z" and "Jay-Z" are one name
    if not hits:
        return None, "span_not_in_text"
    if old is not None:
        hits = {h for h in hits if min(h[1], old.end) > max(h[0], old.start)}
        if not hits:
            return None, "span_not_overlapping"
        hits = {max(hits, key=lambda h: (min(h[1], old.end) - max(h[0], old.start), -h[0]))}
    free = sorted(h for h in hits if not taken[h[0] : h[1]].any())
    return (free[0], "") if free else (None, "overlaps_other")


# ---------------------------------------------------------------- the stage


def refine(
    samples: list[Sample],
    dataset: Dataset,
    client: Chat,
    config: RefinementConfig | None = None,
    tags: list[str] | None = None,
) -> tuple[list[Sample], dict, dict[str, RefinementTrace]]:
    """Send the entities marked `delegated` to the MLLM, one call per sample. The samples come routed:
    `uncertainty.route(samples, tau)` first; an entity never routed (`delegated` None) is an error.

    Returns the refined samples, the counts, and a RefinementTrace per id of a sample asked (samples
    without a call have none). `tags` (the tagger's tag names) is needed only to send whole samples by
    their missed-entity score, which happens only with `config.allow_add`.
    """
    config = config or RefinementConfig()
    unsure = [delegated(s) for s in samples]
    counts = Counter()
    asked = [i for i, (s, unc) in enumerate(zip(samples, unsure)) if unc or missed(s, tags, config)]
    counts["missed_routed"] += sum(1 for i in asked if not unsure[i])
    image_errors: dict[str, str] = {}  # sample id -> why its image cannot be used
    jobs = [request_builder(samples[i], unsure[i], dataset, config, image_errors) for i in asked]
    replies = client.map_chat(jobs, desc="refine") if jobs else []
    for sid, why in image_errors.items():
        print(f"refinement: sample {sid}: {why}; text-only call")
    counts["image_errors"] += len(image_errors)
    counts["text_only_calls"] += sum(not samples[i].image for i in asked) + len(image_errors)
    # Unasked samples are copied too, so the caller's predictions are never mutated.
    out = [replace(s, entities=[replace(e, boxes=list(e.boxes)) for e in s.entities]) for s in samples]
    traces = {}
    for i, reply in zip(asked, replies):
        answer = reply if isinstance(reply, LLMError) else reply.content
        out[i], c, traces[samples[i].id] = merge(
            samples[i], unsure[i], answer, dataset.types, config.allow_add
        )
        counts.update(c)
    summary = {
        "samples": len(samples),
        "entities": sum(len(s.entities) for s in samples),
        "delegated": sum(map(len, unsure)),
        "calls": len(asked),
        "calls_per_sample": len(asked) / max(len(samples), 1),
        "authors_calls": sum(1 for s in samples if s.entities),
    }
    return out, {**summary, **counts}, traces


def missed(sample: Sample, tags: list[str] | None, config: RefinementConfig) -> bool:
    """Whether a sample goes to the MLLM for an entity the tagger may have missed (allow_add only)."""
    return config.allow_add and tags is not None and missed_entity_score(sample, tags) > config.missed_tau


def request_builder(
    sample: Sample,
    uncertain: list[Entity],
    dataset: Dataset,
    config: RefinementConfig,
    errors: dict[str, str],
):
    """A function that builds one request in map_chat's workers, so only the requests in flight hold their
    base64 image; an unreadable image (counted in `errors`) makes a text-only call."""

    def build() -> dict:
        image = None
        if sample.image:
            try:
                image = image_part(sample.image, config.max_side)[0]
            except ImageError as err:
                errors[sample.id] = str(err)
        return build_request(sample, uncertain, dataset, config, image)

    return build
