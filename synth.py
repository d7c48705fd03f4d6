"""Training stage, part 1 of ReFineG: the paper's domain-aware NER data synthesis.

For every labelled seed sample one LLM call asks for `per_seed` new sentences: `keep_share` of them reuse
the seed's entities in new contexts, the rest use new specific names of the same types (paper: 20 + 10 of
30); an entity-free seed asks for entity-free sentences (negatives from the domain). The prompt carries
the domain's type descriptions (types.txt).

Labels come only from names the LLM DECLARES for a sentence it writes, never from tagging free text: this
is how the paper avoids "domain knowledge conflict" (a general LLM would tag "aircraft carrier" or "the
navy", putting its own notion of entity into the training labels). The paper's checks are here: the
sentence is not empty, every type is the domain's, every declared name occurs in the sentence; checks
beyond the paper are `filters` the caller passes (refineg.py: levers/synth_filters.py's).

Input: a labelled `Dataset` (the seeds) and an llm.Chat. Output: synthetic `Sample`s (ids
`syn-<seed id>-<j>`, j = position in the answer, no image) and one `SeedTrace` per seed (its call's error,
or each item's outcome: kept, or why it was rejected); app/synthetic.py counts and stores them. Reruns
cost nothing: the requests are deterministic and the client caches answers.

    python refineg.py --data examples/demo --llm-url http://127.0.0.1:8000/v1 --no-refine --no-ground

Left out on purpose: images (synthetic sentences train the text tagger), asking the LLM to tag free text
(see above), and filtering by any model's judgement: every check is an exact rule a reader can verify.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

from data import Dataset, Entity, Sample, label_names, require_valid, setting, tokenize, without_spaces
from llm import Chat, LLMError, Reply, closed

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

    The list is wrapped in an object because structured-output servers want an object at the top level. It
    holds exactly the `per_seed` sentences the prompt asks for: a model that answers one placeholder item
    (copied from the format line) breaks the schema and is asked again, instead of passing.
    """
    typ = {"type": "string", "enum": list(types)} if config.type_enum else {"type": "string", "maxLength": 40}
    entity = closed({"name": {"type": "string", "maxLength": MAX_NAME_CHARS}, "type": typ})
    sample = closed(
        {
            "text": {"type": "string", "maxLength": 10 * config.max_tokens},
            "entities": {"type": "array", "maxItems": config.max_entities, "items": entity},
        }
    )
    per_seed = config.per_seed
    return closed({"samples": {"type": "array", "minItems": per_seed, "maxItems": per_seed, "items": sample}})


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
        "marks), reads like the example, and differs from the example and from your other sentences."
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
) -> tuple[list[Sample], list[SeedTrace]]:
    """One LLM call per seed (concurrent, cached); the kept synthetic samples and each seed's trace.

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
    return samples, traces


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
