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
entity into the training labels. A declared name, by contrast, is checked
against the type list, the "do not extract" list and the text, and then labels
every occurrence of itself (data.label_names, the rule the gold data follows).
A declared name whose type differs from the seed's, or from the one the seeds and
descriptions give it, is a "type mismatch" and rejected: a check of declared labels,
not the conflict above, which declaring names avoids.
Every answer item is validated (`check`) before it reaches the training set and
each rejection is counted by reason; a sample of the rejected items is kept for reading.

Input: a labelled `Dataset` (the seeds) and an llm.Client. Output: synthetic
`Sample`s (ids `syn-<seed id>-<j>`, j = position in the LLM's answer, no image)
and a summary dict; `write_synthetic` / `read_synthetic` store them as
synthetic.jsonl. Reruns cost nothing: the requests are deterministic and the
client caches answers. Run through the pipeline (any LLM server; a text-only one is enough):

    python refineg.py --data examples/demo --llm-url http://127.0.0.1:8000/v1 --no-refine --no-ground

Left out on purpose: images (synthetic sentences are text-only: they train the
text tagger), asking the LLM to tag free text (see above), and filtering by any
model's judgement: every check here is an exact rule a reader can verify.
"""

import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from data import (
    DataError,
    Dataset,
    Entity,
    Sample,
    failed_rules,
    label_names,
    require_valid,
    tokenize,
    without_spaces,
)
from formats.ccks import TYPE_LINE
from llm import Chat, LLMError

MAX_NAME_CHARS = 100  # schema bound on a declared name; real names are far shorter
# The prompts' scaffolding (below): a sentence containing any of it copied the prompt, not the domain.
# Matched as token sequences; "..." is a placeholder small models write for a sentence (captions have none).
LEAKS = [
    "Example sentence",
    "Its entities",
    "entities :",
    "Answer with JSON",
    "{",
    "}",
    '"text"',
    '"entities"',
    '"name"',
    '"type"',
    "...",
    "\u2026",
]


@dataclass
class SynthConfig:
    per_seed: int = 30  # sentences asked per seed (paper: 30)
    keep_share: float = 2 / 3  # share reusing the seed's entities; the rest get new names (paper: 20 of 30)
    min_tokens: int = 4  # shorter sentences are rejected (tokens as data.tokenize counts them)
    max_tokens: int = 64  # longer ones too; also bounds the schema's text length
    max_entities: int = 10  # schema bound on entities per sentence
    temperature: float = 0.8  # sampling temperature: diversity matters more than the single best sentence
    answer_tokens: int = 4096  # max_tokens per call: 30 sentences with their JSON need about 3k tokens
    seeds: int = 0  # use the first N seed samples only; 0 = all (a cheap trial run)
    type_enum: bool = True  # types as a schema enum; off, an unknown type costs its sentence, not the answer
    generic: list[str] = field(default_factory=list)  # extra generic words to reject, beside types.txt's list
    strict: bool = True  # also reject known names given another type, generic heads, prompt leaks
    rejected_examples: int = 20  # rejected sentences kept per reason in synthetic.rejected.jsonl (0 = none)


def check_config(c: SynthConfig) -> list[tuple[str, str]]:
    """The settings that cannot work, as (field, what was expected)."""
    return failed_rules(
        [
            ("per_seed", c.per_seed >= 1, "at least 1"),
            ("keep_share", 0 <= c.keep_share <= 1, "a share in [0, 1]"),
            (
                "min_tokens",
                1 <= c.min_tokens <= c.max_tokens,
                f"a number of tokens from 1 to `max_tokens` ({c.max_tokens})",
            ),
            ("max_entities", c.max_entities >= 1, "at least 1"),
            ("answer_tokens", c.answer_tokens >= 1, "at least 1"),
            ("seeds", c.seeds >= 0, "0 (all) or more"),
            ("rejected_examples", c.rejected_examples >= 0, "0 or more"),
        ]
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


# ---------------------------------------------------------------- the domain's type knowledge


def description_terms(type_text: str, types: list[str]) -> tuple[dict[str, str], set[str]]:
    """The example names (name -> type) and the generic heads of a types.txt's descriptions.

    Two layouts are read: inline, `e.g. tanks (Leopard 2), infantry fighting
    vehicles (PUMA)` (heads outside the brackets, names inside) or a plain
    `e.g. USS Nimitz, F-35`; and bulleted, `- Tanks and armored vehicles (e.g.,
    Leopard 2, GTK Boxer)` (the head before the bracket). A head joined by
    "and", "or" or "/" counts whole and in parts; `[glosses]` are dropped, and
    the "DO NOT" line is ccks.read_types's business.
    """
    examples = {}
    heads = set()

    def add_head(text: str) -> None:
        text = text.strip(" -*\t").lower()
        if text:
            heads.update([text, *(p.strip() for p in re.split(r"/| and | or ", text) if p.strip())])

    def add_names(text: str, typ: str) -> None:
        for name in text.split(","):
            if name.strip():
                examples.setdefault(name.strip(), typ)

    typ = None
    for line in type_text.splitlines():
        m = TYPE_LINE.match(line)
        typ = m.group(1) if m else typ
        if typ not in types or "DO NOT" in line:
            continue
        line = re.sub(r"\[[^\]]*\]", "", line)  # "MARS [rocket system]": a gloss
        if "(e.g." in line:  # bulleted layout
            line = re.sub(r"\((?!e\.g\.)[^()]*\)", "", line)  # "vehicles (UAVs) (e.g., ...)": an aside
            for m in re.finditer(r"([^(),:;]*)\(e\.g\.[,:]?([^()]*)\)", line):
                add_head(m.group(1))
                add_names(m.group(2), typ)
            continue
        m = re.search(r"e\.g\.[,:]?(.*)", line)  # inline layout
        for part in re.findall(r"[^,(]*(?:\([^()]*\))?", m.group(1) if m else ""):
            bracket = re.fullmatch(r"\s*([^(]*?)\s*\(([^()]*)\)\s*", part)
            if bracket:
                add_head(bracket.group(1))
                add_names(bracket.group(2), typ)
            else:
                add_names(part, typ)
    return examples, heads


def singular(word: str) -> str:
    """Enough English for generic heads: "reconnaissance vehicles" and "countries" match their singular."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def plain_lowercase(name: str) -> bool:
    return name == name.lower() and not any(c.isdigit() for c in name)


def name_key(name: str) -> str:
    """Names compare as lower-cased token sequences: "F-35", "F - 35" and "f-35" are one name."""
    return " ".join(tokenize(name)).lower()


@dataclass
class Rules:
    """What validation knows beside the answer: built once per run from the seeds and the types."""

    types: list[str]
    generic: set[str]  # singular name_keys of words that are never names
    known: dict[str, set[str]]  # name_key -> the types the seeds and the descriptions give that name
    lowercase_generic: bool  # a lower-case name without digits is generic ("runway", "airships")
    leaks: list[str]  # the scaffolding, as normalised token strings
    seed_texts: set[str]  # normalised texts of all seeds (not only those used)


def build_rules(seeds: Dataset, config: SynthConfig) -> Rules:
    words = seeds.generic + config.generic
    known: dict[str, set[str]] = {}
    if config.strict:
        examples, heads = description_terms(seeds.type_text, seeds.types)
        words = words + seeds.types + sorted(heads)
        gold = [(s.name(e), e.type) for s in seeds.samples for e in s.entities]
        for name, typ in [*examples.items(), *gold]:
            known.setdefault(name_key(name), set()).add(
                typ
            )  # a set: gold names "Tiger" as vehicle and aircraft
    seed_names = [s.name(e) for s in seeds.samples for e in s.entities]
    lowercase = config.strict and bool(seed_names) and not any(map(plain_lowercase, seed_names))
    return Rules(
        types=seeds.types,
        generic={singular(name_key(w)) for w in words if name_key(w)},
        known=known,
        lowercase_generic=lowercase,
        leaks=[normalise(tokenize(x)) for x in LEAKS] if config.strict else [],
        seed_texts={normalise(s.tokens) for s in seeds.samples},
    )


# ---------------------------------------------------------------- validation


def normalise(tokens: list[str]) -> str:
    return " ".join(tokens).lower()


class Checked(NamedTuple):
    """One answer item after validation: `reason` is "" when it is kept, else why it is rejected."""

    reason: str
    tokens: list[str] = []
    entities: list[Entity] = []


def check(item: dict, seed: Sample, rules: Rules, config: SynthConfig, kept_texts: set[str]) -> Checked:
    """The tokens and entities of an answer item, or the reason it is rejected: first by its text (empty,
    prompt leak, length, copy of a seed, duplicate), then by its declared names (text_problem,
    name_problem)."""
    tokens = tokenize(item["text"].strip())
    reason = text_problem(tokens, item, rules, config, kept_texts)
    if reason:
        return Checked(reason)
    # Names compare as token sequences: "F-35" and the seed's "F - 35" are one name.
    declared = [(" ".join(tokenize(e["name"])), e["type"]) for e in item["entities"]]
    reason = name_problem(declared, seed, rules)
    if reason:
        return Checked(reason)
    # The seed's names are declared too (with the seed's gold type): a sentence that reuses one without
    # declaring it must not teach the tagger it is O. Names are one name when equal without whitespace.
    names = {without_spaces(seed.name(e)): (seed.name(e), e.type) for e in seed.entities}
    for n, t in declared:
        names.setdefault(without_spaces(n), (n, t))
    entities, missing = label_names(tokens, list(names.values()))
    if {without_spaces(n) for n, _ in declared} & {without_spaces(m) for m in missing}:
        return Checked("name_not_in_text")
    return Checked("", tokens, [replace(e, source="synth") for e in entities])


def text_problem(
    tokens: list[str], item: dict, rules: Rules, config: SynthConfig, kept_texts: set[str]
) -> str:
    """Why the sentence itself is rejected, or ""."""
    if not tokens:
        return "empty_text"
    text = normalise(tokens)
    leaked = any(f" {leak} " in f" {text} " for leak in rules.leaks)
    if leaked or rules.leaks and any(not re.search(r"\w", e["name"]) for e in item["entities"]):
        return "prompt_leak"
    if len(tokens) < config.min_tokens:
        return "too_short"
    if len(tokens) > config.max_tokens:
        return "too_long"
    if text in rules.seed_texts:
        return "seed_copy"
    if text in kept_texts:
        return "duplicate"
    return ""


def name_problem(declared: list[tuple[str, str]], seed: Sample, rules: Rules) -> str:
    """Why the names declared for a sentence are rejected, or ""."""
    if declared and not seed.entities:
        return "entities_for_entity_free_seed"
    if any(t not in rules.types for _, t in declared):
        return "unknown_type"
    if any(
        singular(n.lower()) in rules.generic or rules.lowercase_generic and plain_lowercase(n)
        for n, _ in declared
    ):
        return "generic_name"
    first_type = {without_spaces(seed.name(e)): e.type for e in seed.entities}  # the seed's gold types first
    for n, t in declared:
        if first_type.setdefault(without_spaces(n), t) != t:
            return "type_mismatch"
    # Rejected, not relabelled: a sentence written around the wrong type ("the ship PUMA docked") has a
    # context that teaches the wrong type even if relabelled.
    if any(t not in rules.known.get(n.lower(), {t}) for n, t in declared):
        return "known_type_mismatch"
    return ""


# ---------------------------------------------------------------- the stage


def synthesize(seeds: Dataset, client: Chat, config: SynthConfig | None = None) -> tuple[list[Sample], dict]:
    """One LLM call per seed (concurrent, cached); the valid synthetic samples and a summary."""
    config = config or SynthConfig()
    require_valid(config, check_config(config))
    if not seeds.types:
        raise ValueError("expected a dataset with entity types (types.txt), got none")
    used = seeds.samples[: config.seeds] if config.seeds > 0 else seeds.samples
    replies = client.map_chat([build_request(s, seeds, config) for s in used], desc="synth")
    rules = build_rules(seeds, config)
    kept_texts: set[str] = set()
    out = []
    rejected = Counter()
    examples = []  # up to rejected_examples items per reason, for synthetic.rejected.jsonl
    failed = [(seed.id, str(reply)) for seed, reply in zip(used, replies) if isinstance(reply, LLMError)]
    answered = [
        (seed, reply.content["samples"])
        for seed, reply in zip(used, replies)
        if not isinstance(reply, LLMError)
    ]  # the client already retried failed calls: counted only
    for seed, items in answered:
        for j, item in enumerate(items):
            checked = check(item, seed, rules, config, kept_texts)
            if checked.reason:
                rejected[checked.reason] += 1
                if rejected[checked.reason] <= config.rejected_examples:
                    examples.append({"seed": seed.id, "j": j, "reason": checked.reason, **item})
                continue
            kept_texts.add(normalise(checked.tokens))
            out.append(Sample(f"syn-{seed.id}-{j}", checked.tokens, None, checked.entities))
    generated = sum(len(items) for _, items in answered)
    return out, summarize(seeds, used, failed, generated, out, rejected, examples)


def summarize(
    seeds: Dataset,
    used: list[Sample],
    failed: list[tuple[str, str]],
    generated: int,
    out: list[Sample],
    rejected: Counter,
    examples: list[dict],
) -> dict:
    per_type = Counter(e.type for s in out for e in s.entities)
    return {
        "seeds": len(used),
        "calls": len(used),
        "failed_calls": len(failed),
        "failed_seeds": [sid for sid, _ in failed],
        "first_error": failed[0][1] if failed else None,
        "generated": generated,
        "kept": len(out),
        "entity_free_kept": sum(1 for s in out if not s.entities),
        "rejected": dict(sorted(rejected.items())),
        "entities_per_type": {t: per_type[t] for t in seeds.types},
        "rejected_examples": examples,  # refineg.py writes them to synthetic.rejected.jsonl
    }


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
    """synthetic.rejected.jsonl: what the filter removed, one answer item a line with its seed and reason."""
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
