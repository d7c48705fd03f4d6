"""Training stage, part 1 of ReFineG: the paper's domain-aware NER data synthesis.

The LLM's knowledge reaches the small tagger as extra labelled sentences. For
every labelled seed sample one LLM call asks for `per_seed` new sentences:
`keep_share` of them reuse the seed's entities in new contexts, the rest use
new specific names of the same types (paper: 20 + 10 of 30); an entity-free
seed asks for entity-free sentences, so the tagger also sees negatives from the
domain. The prompt carries the domain's own type descriptions (types.txt).

Labels come only from names the seed or the LLM DECLARES for a sentence it
writes; the LLM is never asked to tag free text. This is how the paper avoids
"domain knowledge conflict": a general LLM's idea of what counts as an entity
differs from the domain's annotation guidelines (it would tag "aircraft
carrier" or "the navy"), so its tags on free text would put its notion of
entity into the training labels. An answer item is checked here as far as the
method needs it: the answer fits the JSON schema (the client checks that), the
sentence is not empty, every declared type is one of the domain's, and every
declared name occurs in the sentence; each declared name then labels every
occurrence of itself (data.label_names, the rule the gold data follows).
Checks beyond the paper (prompt leaks, length, copies and repeats, the "do not
extract" words, a name given a type the seeds or descriptions contradict) are
`filters` the caller passes: refineg.py passes levers/synth_filters.py's.

Input: a labelled `Dataset` (the seeds) and an llm.Client. Output: synthetic
`Sample`s (ids `syn-<seed id>-<j>`, j = position in the LLM's answer, no image)
and a summary dict counted from one trace per seed (its call's error, or each
item's outcome: kept, or the reason it was rejected); `write_synthetic` /
`read_synthetic` store the samples as synthetic.jsonl. Reruns cost nothing: the
requests are deterministic and the client caches answers. Run through the
pipeline (any LLM server; a text-only one is enough):

    python refineg.py --data examples/demo --llm-url http://127.0.0.1:8000/v1 --no-refine --no-ground

Left out on purpose: images (synthetic sentences are text-only: they train the
text tagger), asking the LLM to tag free text (see above), and filtering by any
model's judgement: every check here and in the filters is an exact rule a reader can verify.
"""

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

from data import (
    DataError,
    Dataset,
    Entity,
    Sample,
    label_names,
    require_valid,
    setting,
    tokenize,
    without_spaces,
)
from llm import Chat, LLMError, Reply

MAX_NAME_CHARS = 100  # schema bound on a declared name; real names are far shorter


@dataclass
class SynthConfig:
    per_seed: int = setting(30, "sentences asked per seed (paper: 30)", main=True)
    keep_share: float = setting(
        2 / 3, "share reusing the seed's entities; the rest get new names (paper: 20 of 30)"
    )
    min_tokens: int = setting(4, "shorter sentences are rejected (tokens as data.tokenize counts them)")
    max_tokens: int = setting(64, "longer ones too; also bounds the schema's text length")
    max_entities: int = setting(10, "schema bound on entities per sentence")
    temperature: float = setting(
        0.8, "sampling temperature: diversity matters more than the single best sentence"
    )
    answer_tokens: int = setting(
        4096, "max_tokens per call: 30 sentences with their JSON need about 3k tokens"
    )
    seeds: int = setting(0, "use the first N seed samples only; 0 = all (a cheap trial run)")
    type_enum: bool = setting(
        True, "types as a schema enum; off, an unknown type costs its sentence, not the answer"
    )
    generic: list[str] = setting([], "extra generic words to reject, beside types.txt's list")
    strict: bool = setting(True, "also reject known names given another type, generic heads, prompt leaks")
    rejected_examples: int = setting(
        20, "rejected sentences kept per reason in synthetic.rejected.jsonl (0 = none)"
    )

    def __post_init__(self):
        require_valid(
            self,
            [
                ("per_seed", self.per_seed >= 1, "at least 1"),
                ("keep_share", 0 <= self.keep_share <= 1, "a share in [0, 1]"),
                (
                    "min_tokens",
                    1 <= self.min_tokens <= self.max_tokens,
                    f"a number of tokens from 1 to `max_tokens` ({self.max_tokens})",
                ),
                ("max_entities", self.max_entities >= 1, "at least 1"),
                ("answer_tokens", self.answer_tokens >= 1, "at least 1"),
                ("seeds", self.seeds >= 0, "0 (all) or more"),
                ("rejected_examples", self.rejected_examples >= 0, "0 or more"),
            ],
        )


# ---------------------------------------------------------------- the request


def answer_schema(types: list[str], config: SynthConfig) -> dict:
    """JSON schema of one answer, bounded everywhere: a random-weight model never stops otherwise.

    The list is wrapped in an object because structured-output servers want
    an object at the top level. It holds exactly the `per_seed` sentences the
    prompt asks for: a model that answers one placeholder item (copied from the
    format line) breaks the schema and is asked again, instead of passing.
    """
    typ = {"type": "string", "enum": list(types)} if config.type_enum else {"type": "string", "maxLength": 40}
    entity = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "type"],
        "properties": {"name": {"type": "string", "maxLength": MAX_NAME_CHARS}, "type": typ},
    }
    sample = {
        "type": "object",
        "additionalProperties": False,
        "required": ["text", "entities"],
        "properties": {
            "text": {"type": "string", "maxLength": 10 * config.max_tokens},
            "entities": {"type": "array", "maxItems": config.max_entities, "items": entity},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["samples"],
        "properties": {
            "samples": {
                "type": "array",
                "minItems": config.per_seed,
                "maxItems": config.per_seed,
                "items": sample,
            }
        },
    }


def system_prompt(data: Dataset, config: SynthConfig) -> str:
    generic = data.generic + config.generic
    dont = f" (for example: {', '.join(generic)})" if generic else ""
    return (
        "You write training sentences for a named entity recognizer in one specific domain.\n\n"
        f"The entity types of this domain, with their annotation guidelines:\n{data.type_text}\n\n"
        "Rules:\n"
        f"1. An entity is a specific name (a proper name, model or designation), never a generic "
        f"word{dont}.\n"
        "2. Every entity you declare for a sentence appears in that sentence verbatim, "
        "with the same spelling and capitalisation.\n"
        f"3. Use only these types, spelled exactly so: {', '.join(data.types)}.\n"
        "4. Declare every entity of these types that a sentence contains, and nothing else.\n"
        f"5. Each sentence is {config.min_tokens} to {config.max_tokens} tokens long (words and punctuation "
        "marks), "
        "reads like the example, "
        "and differs from the example and from your other sentences."
    )  # no answer template: the schema carries the format, and small models copy a template's placeholders


def user_prompt(seed: Sample, config: SynthConfig) -> str:
    if not seed.entities:
        return (
            f"Example sentence: {seed.text}\nIts entities: none.\n\n"
            f"Write {config.per_seed} new sentences in the same style and domain that contain no entity "
            "of the listed types; give each an empty entities list."
        )
    keep = round(config.per_seed * config.keep_share)
    names = dict.fromkeys((seed.name(e), e.type) for e in seed.entities)  # unique, in text order
    listed = "\n".join(f'- "{n}" ({t})' for n, t in names)
    types = ", ".join(dict.fromkeys(t for _, t in names))
    return (
        f"Example sentence: {seed.text}\nIts entities:\n{listed}\n\n"
        f"Write {keep} new sentences that use these same entities in new contexts, and "
        f"{config.per_seed - keep} sentences that use other specific names of the same types ({types}). "
        "Declare the entities of every sentence."
    )


def build_request(seed: Sample, data: Dataset, config: SynthConfig) -> dict:
    """The kwargs of Client.chat for one seed; a pure function of its inputs, so the cache hits on reruns."""
    return {
        "messages": [
            {"role": "system", "content": system_prompt(data, config)},
            {"role": "user", "content": user_prompt(seed, config)},
        ],
        "schema": answer_schema(data.types, config),
        "temperature": config.temperature,
        "max_tokens": config.answer_tokens,
    }


# ---------------------------------------------------------------- checking an answer item

Reason = Literal["empty_text", "unknown_type", "name_not_in_text"]  # the paper's checks; filters add theirs


class Candidate(NamedTuple):
    """One answer item on its way to the training set, as the checks and the filters see it."""

    seed: Sample
    item: dict  # as the LLM wrote it: {"text", "entities": [{"name", "type"}]}
    tokens: list[str]
    declared: list[tuple[str, str]]  # (name, type), the name's tokens joined by spaces: "F-35" -> "F - 35"
    text: str  # the tokens joined by spaces, lower-cased: how sentences compare
    kept: set[str]  # the `text` of every sentence kept so far in this run


Filter = Callable[[Candidate], str | None]  # the reason it rejects a candidate, or None


class Outcome(NamedTuple):
    """What became of one answer item: the sample it gave, or why it was rejected."""

    j: int  # its position in the answer
    item: dict
    reason: str | None = None  # a Reason, or the reason of the filter that rejected it
    sample: Sample | None = None


class SeedTrace(NamedTuple):
    """One seed's call: its error when it failed (after the client's retries), else each item's outcome."""

    seed: str
    error: str | None
    outcomes: list[Outcome]


def candidate(seed: Sample, item: dict, kept: set[str]) -> Candidate:
    tokens = tokenize(item["text"].strip())
    # Names compare as token sequences: "F-35" and the seed's "F - 35" are one name.
    declared = [(" ".join(tokenize(e["name"])), e["type"]) for e in item["entities"]]
    return Candidate(seed, item, tokens, declared, " ".join(tokens).lower(), kept)


def rejection(c: Candidate, types: list[str], filters: Sequence[Filter]) -> str | None:
    """Why an item is rejected before it is labelled: the paper's checks, then each filter in order."""
    if not c.tokens:
        return "empty_text"
    if any(t not in types for _, t in c.declared):
        return "unknown_type"  # reaches here only when the schema does not list the types (type_enum off)
    for f in filters:
        reason = f(c)
        if reason:
            return reason
    return None


def label(c: Candidate) -> list[Entity] | None:
    """Every occurrence of the seed's names and of the declared ones; None when a declared name is not in the
    sentence ("USS Nimitz" in "The USS Nimitzes ..." is not: spans end at token boundaries)."""
    # The seed's names are declared too (with the seed's gold type): a sentence that reuses one without
    # declaring it must not teach the tagger it is O. Names are one name when equal without whitespace.
    names = {without_spaces(c.seed.name(e)): (c.seed.name(e), e.type) for e in c.seed.entities}
    for n, t in c.declared:
        names.setdefault(without_spaces(n), (n, t))
    entities, missing = label_names(c.tokens, list(names.values()))
    if {without_spaces(n) for n, _ in c.declared} & {without_spaces(m) for m in missing}:
        return None
    return [replace(e, source="synth") for e in entities]


def outcome(c: Candidate, j: int, types: list[str], filters: Sequence[Filter]) -> Outcome:
    reason = rejection(c, types, filters)
    if reason:
        return Outcome(j, c.item, reason)
    entities = label(c)
    if entities is None:
        return Outcome(j, c.item, "name_not_in_text")
    return Outcome(j, c.item, None, Sample(f"syn-{c.seed.id}-{j}", c.tokens, None, entities))


# ---------------------------------------------------------------- the stage


def synthesize(
    seeds: Dataset, client: Chat, config: SynthConfig | None = None, filters: Sequence[Filter] = ()
) -> tuple[list[Sample], dict]:
    """One LLM call per seed (concurrent, cached); the kept synthetic samples and a summary.

    Each answer item passes the paper's checks, then `filters` in order (none by default; refineg.py passes
    levers/synth_filters.py's), then labelling: the first reason that applies rejects it.
    """
    config = config or SynthConfig()
    if not seeds.types:
        raise ValueError("expected a dataset with entity types (types.txt), got none")
    used = seeds.samples[: config.seeds] if config.seeds > 0 else seeds.samples
    replies = client.map_chat([build_request(s, seeds, config) for s in used], desc="synth")
    kept: set[str] = set()  # one set for all seeds: a filter may compare with any seed's kept sentences
    traces = [trace(seed, reply, seeds.types, filters, kept) for seed, reply in zip(used, replies)]
    samples = [o.sample for t in traces for o in t.outcomes if o.sample]
    return samples, summarize(seeds.types, traces, config.rejected_examples)


def trace(
    seed: Sample, reply: Reply | LLMError, types: list[str], filters: Sequence[Filter], kept: set[str]
) -> SeedTrace:
    """What became of one seed's call; the texts of the items it keeps join `kept`."""
    if isinstance(reply, LLMError):  # the client already retried: counted only
        return SeedTrace(seed.id, str(reply), [])
    outcomes = []
    for j, item in enumerate(reply.content["samples"]):
        c = candidate(seed, item, kept)
        outcomes.append(outcome(c, j, types, filters))
        if outcomes[-1].sample:
            kept.add(c.text)
    return SeedTrace(seed.id, None, outcomes)


def summarize(types: list[str], traces: list[SeedTrace], examples_per_reason: int) -> dict:
    """synthetic.summary.json's counts, all from the traces."""
    outcomes = [o for t in traces for o in t.outcomes]
    kept = [o.sample for o in outcomes if o.sample]
    failed = [t for t in traces if t.error is not None]
    per_type = Counter(e.type for s in kept for e in s.entities)
    rejected = Counter(o.reason for o in outcomes if o.reason)
    return {
        "seeds": len(traces),
        "calls": len(traces),
        "failed_calls": len(failed),
        "failed_seeds": [t.seed for t in failed],
        "first_error": failed[0].error if failed else None,
        "generated": len(outcomes),
        "kept": len(kept),
        "entity_free_kept": sum(1 for s in kept if not s.entities),
        "rejected": dict(sorted(rejected.items())),
        "entities_per_type": {t: per_type[t] for t in types},
        "rejected_examples": rejected_examples(traces, examples_per_reason),  # for synthetic.rejected.jsonl
    }


def rejected_examples(traces: list[SeedTrace], per_reason: int) -> list[dict]:
    """The first `per_reason` rejected items of each reason, in answer order, with their seed and reason."""
    shown = Counter()
    examples = []
    for t in traces:
        for o in t.outcomes:
            if o.reason and shown[o.reason] < per_reason:
                shown[o.reason] += 1
                examples.append({"seed": t.seed, "j": o.j, "reason": o.reason, **o.item})
    return examples


def format_summary(summary: dict) -> str:
    """The synth: lines of the run's output; a reused synthetic.jsonl says so instead of its calls."""
    s = summary
    calls = f"{s['calls']} calls ({s['failed_calls']} failed)"
    if s.get("reused"):  # the counts are those of the run that wrote it
        calls = "no call: synthetic.jsonl reused"
    lines = [
        f"synth: {s['seeds']} seeds, {calls}, {s['generated']} sentences generated, {s['kept']} kept "
        f"({s['entity_free_kept']} entity-free)"
    ]
    if s["rejected"]:
        lines.append("  rejected: " + ", ".join(f"{k} {v}" for k, v in s["rejected"].items()))
    lines.append("  entities: " + ", ".join(f"{k} {v}" for k, v in s["entities_per_type"].items()))
    if s["failed_calls"]:
        lines.append(
            f"  failed seeds: {', '.join(s['failed_seeds'][:10])}"
            f"{' ...' if s['failed_calls'] > 10 else ''}; first error: {s['first_error']}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- synthetic.jsonl


def write_synthetic(samples: list[Sample], path: str | Path) -> None:
    """One JSON object a line: id, seed, text, tokens, entities [{start, end, type, name}]."""
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            seed = s.id[len("syn-") :].rsplit("-", 1)[0] if s.id.startswith("syn-") else None
            ents = [{"start": e.start, "end": e.end, "type": e.type, "name": s.name(e)} for e in s.entities]
            rec = {"id": s.id, "seed": seed, "text": s.text, "tokens": s.tokens, "entities": ents}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_rejected(examples: list[dict], path: str | Path) -> None:
    """synthetic.rejected.jsonl: what the checks removed, one answer item a line with its seed and reason."""
    with open(path, "w", encoding="utf-8") as f:
        for rec in examples:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def read_synthetic(path: str | Path) -> list[Sample]:
    """The samples write_synthetic wrote; a malformed line is a DataError naming the file and line."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
                tokens = [str(t) for t in rec["tokens"]]
                ents = [
                    Entity(int(e["start"]), int(e["end"]), str(e["type"]), source="synth")
                    for e in rec["entities"]
                ]
                sample = Sample(str(rec["id"]), tokens, None, ents)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise DataError(
                    f"{where}: expected {{id, tokens, entities: [{{start, end, type}}]}}: {err!r}"
                ) from None
            for e, raw in zip(ents, rec["entities"]):
                if not 0 <= e.start < e.end <= len(tokens):
                    raise DataError(f"{where}: entity span [{e.start}, {e.end}) outside {len(tokens)} tokens")
                if "name" in raw and without_spaces(str(raw["name"])) != without_spaces(sample.name(e)):
                    raise DataError(
                        f"{where}: entity name {raw['name']!r} is not the tokens of its span "
                        f"{sample.name(e)!r}"
                    )
            samples.append(sample)
    return samples
