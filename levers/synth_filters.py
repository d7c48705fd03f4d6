"""Filters of synthetic sentences beyond the paper: what a small LLM gets wrong that synth.py's checks pass.

synth.py checks what the method needs (the schema, a sentence, declared types among the domain's, declared
names in the sentence). A small model still writes copies of the seed and repeats of itself, the prompt's
scaffolding ("Its entities :", "..."), generic words as names ("runway", "reconnaissance vehicle") and
known names under another type ("the ship PUMA"). Each filter is one exact rule that returns its reason or
None; they run in this order, after synth's checks of the item and before its labelling, and the first
reason rejects it: prompt_leak, too_short / too_long, seed_copy, duplicate, entities_for_entity_free_seed,
generic_name, type_mismatch, known_type_mismatch. With `strict` off (--no-synth-strict) the type knowledge
is not used: no prompt leaks, no known type mismatch, and the generic words are only the "do not extract"
ones (types.txt's and --synth-generic's), not the type names, the descriptions' heads or lower-case names.

Input: the seeds and the SynthConfig; output: the filters synth.synthesize takes, in order:

    kept, traces = synth.synthesize(seeds, client, config, synth_filters.filters(seeds, config))

refineg.py passes them whenever it synthesises; `python -m servers.demo` shows what they reject. Left out
on purpose: any model's judgement (a classifier, an LLM grading the sentences): every rule can be checked
by reading it.
"""

import re
from dataclasses import dataclass
from functools import partial
from typing import Literal

from data import Dataset, tokenize, without_spaces
from formats.ccks import TYPE_LINE
from synth import Candidate, Filter, SynthConfig

Reason = Literal[
    "prompt_leak",
    "too_short",
    "too_long",
    "seed_copy",
    "duplicate",
    "entities_for_entity_free_seed",
    "generic_name",
    "type_mismatch",
    "known_type_mismatch",
]
# The prompts' scaffolding (synth.py): a sentence containing any of it copied the prompt, not the domain.
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
class Rules:
    """What the filters know beside the answer: built once per run from the seeds and the settings."""

    min_tokens: int
    max_tokens: int
    generic: set[str]  # singular name_keys of words that are never names
    known: dict[str, set[str]]  # name_key -> the types the seeds and the descriptions give that name
    lowercase_generic: bool  # a lower-case name without digits is generic ("runway", "airships")
    leaks: list[str]  # the scaffolding, as Candidate.text has it
    seed_texts: set[str]  # the texts of all seeds (not only those used), as Candidate.text has them


def filters(seeds: Dataset, config: SynthConfig) -> list[Filter]:
    """The filters of FILTERS, in order, each knowing the run's Rules."""
    rules = build_rules(seeds, config)
    return [partial(f, rules) for f in FILTERS]


def build_rules(seeds: Dataset, config: SynthConfig) -> Rules:
    """The run's Rules; with `strict` off, no scaffolding, no known names and no lower-case rule."""
    words = seeds.generic + config.generic
    known: dict[str, set[str]] = {}
    if config.strict:
        examples, heads = description_terms(seeds.type_text, seeds.types)
        words = words + seeds.types + sorted(heads)
        gold = [(s.name(e), e.type) for s in seeds.samples for e in s.entities]
        for name, typ in [*examples.items(), *gold]:  # a set: gold names "Tiger" as vehicle and aircraft
            known.setdefault(name_key(name), set()).add(typ)
    seed_names = [s.name(e) for s in seeds.samples for e in s.entities]
    lowercase = config.strict and bool(seed_names) and not any(map(plain_lowercase, seed_names))
    return Rules(
        min_tokens=config.min_tokens,
        max_tokens=config.max_tokens,
        generic={singular(name_key(w)) for w in words if name_key(w)},
        known=known,
        lowercase_generic=lowercase,
        leaks=[" ".join(tokenize(x)).lower() for x in LEAKS] if config.strict else [],
        seed_texts={" ".join(s.tokens).lower() for s in seeds.samples},
    )


# ---------------------------------------------------------------- the filters, in the order they run


def prompt_leak(rules: Rules, c: Candidate) -> Reason | None:
    """The scaffolding in the sentence, or a declared name without a letter or digit ("...")."""
    leaked = any(f" {leak} " in f" {c.text} " for leak in rules.leaks)
    if leaked or rules.leaks and any(not re.search(r"\w", e["name"]) for e in c.item["entities"]):
        return "prompt_leak"
    return None


def length(rules: Rules, c: Candidate) -> Reason | None:
    """Fewer or more tokens than the prompt asks for."""
    if len(c.tokens) < rules.min_tokens:
        return "too_short"
    if len(c.tokens) > rules.max_tokens:
        return "too_long"
    return None


def seed_copy(rules: Rules, c: Candidate) -> Reason | None:
    """One of the seeds' sentences, up to case."""
    return "seed_copy" if c.text in rules.seed_texts else None


def duplicate(rules: Rules, c: Candidate) -> Reason | None:
    """A sentence kept before, from any seed's answer."""
    return "duplicate" if c.text in c.kept else None


def entities_for_entity_free_seed(rules: Rules, c: Candidate) -> Reason | None:
    """The prompt asked an entity-free seed for entity-free sentences."""
    return "entities_for_entity_free_seed" if c.declared and not c.seed.entities else None


def generic_name(rules: Rules, c: Candidate) -> Reason | None:
    """A declared name that is a generic word, or lower-case without digits when no seed's name is."""
    for name, _ in c.declared:
        if singular(name.lower()) in rules.generic or rules.lowercase_generic and plain_lowercase(name):
            return "generic_name"
    return None


def type_mismatch(rules: Rules, c: Candidate) -> Reason | None:
    """A declared name given another type than the seed's gold one, or two types in one sentence."""
    first_type = {without_spaces(c.seed.name(e)): e.type for e in c.seed.entities}  # the seed's types first
    for name, typ in c.declared:
        if first_type.setdefault(without_spaces(name), typ) != typ:
            return "type_mismatch"
    return None


def known_type_mismatch(rules: Rules, c: Candidate) -> Reason | None:
    """A name the seeds or the descriptions know, declared with a type they never give it."""
    # Rejected, not relabelled: a sentence written around the wrong type ("the ship PUMA docked") has a
    # context that teaches the wrong type even if relabelled.
    if any(typ not in rules.known.get(name.lower(), {typ}) for name, typ in c.declared):
        return "known_type_mismatch"
    return None


FILTERS = [
    prompt_leak,
    length,
    seed_copy,
    duplicate,
    entities_for_entity_free_seed,
    generic_name,
    type_mismatch,
    known_type_mismatch,
]


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
