"""The simulated MLLM's synthesis answers: a rule-based writer that recombines the seed it is sent.

synth.py asks an LLM for `per_seed` new labelled sentences per seed. No language model runs here, so
servers/simulated_mllm.py answers with this writer. It reads ONLY the request, as a real server would,
never the gold file (the gold holds the held-out split: sentences built from it would leak into the
tagger's score). From the seed sentence, its entities and the example names of the type descriptions:
- "same entities, new contexts": a crop of the seed sentence, a window of at least the prompt's
  minimum length around at least one whole entity;
- "other names of the same types": the seed sentence with each entity replaced by another example name
  of its type from the system prompt's type descriptions (mention replacement, Dai & Adel, COLING 2020);
- an entity-free seed: crops of its sentence.
A share 1 - accuracy of the items are faults that synthesis must reject: the example copied (seed_copy,
levers/synth_filters.py), a declared name missing from the sentence (name_not_in_text, synth.py), an entity
declared for an entity-free seed (levers/synth_filters.py).

    answer, faults = write(system_text, user_text, n=3, accuracy=0.8, seed=0)   # {"samples": [...]}

Left out on purpose: new wording of any kind (that takes a language model): these sentences teach the
tagger names in the seeds' own contexts, far less than a real LLM's sentences would.
"""

import random
import re

from data import find_name, tokenize
from levers.synth_filters import description_terms


def write(system: str, user: str, n: int, accuracy: float, seed: int) -> tuple[dict, int]:
    """The answer to one synthesis request (exactly `n` items, as the schema demands) and its faults."""
    example = re.search(r"^Example sentence: (.*)$", user, flags=re.M).group(1)
    tokens = tokenize(example)
    names = re.findall(r'^- "(.*)" \((\S+)\)$', user, flags=re.M)  # the seed's entities, (name, type)
    keep = re.search(r"^Write (\d+) new sentences that use these same entities", user, flags=re.M)
    n_keep = int(keep.group(1)) if keep else n
    shortest = re.search(r"Each sentence is (\d+) to", system)
    windows = crops(tokens, names, int(shortest.group(1)) if shortest else 1)
    random.Random(f"{seed}|crops|{example}").shuffle(windows)  # crops of every length, not the shortest
    types = re.search(r"spelled exactly so: (.*)\.$", system, flags=re.M)
    types = types.group(1).split(", ") if types else []
    others = other_names(system, types, names)
    items = []
    faults = 0
    for j in range(n):
        rng = random.Random(f"{seed}|synth|{example}|{j}")
        if rng.random() >= accuracy:
            faults += 1
            items.append(fault(tokens, names, types, others, windows, rng))
        elif j < n_keep and windows:
            items.append(cropped(tokens, names, windows[j % len(windows)]))
        else:
            items.append(replaced(tokens, names, others, rng) or anything(tokens, names, windows, rng))
    return {"samples": items}, faults


def anything(tokens: list[str], names: list[tuple[str, str]], windows: list, rng: random.Random) -> dict:
    """A crop when the sentence has one, else the example itself (a sentence too short to crop)."""
    return cropped(tokens, names, rng.choice(windows)) if windows else item(tokens, names)


def crops(tokens: list[str], names: list[tuple[str, str]], shortest: int) -> list[tuple[int, int]]:
    """The windows [a, b) of at least `shortest` tokens that cut no entity, hold a whole one when the seed
    has any, and are not the whole sentence: "It rains on Kiel ." with Kiel, shortest 3 -> [(1, 4), (2, 5),
    (0, 4), (1, 5)]."""
    spans = [s for name, _ in names for s in find_name(tokens, name)]
    out = []
    for size in range(max(shortest, 1), len(tokens)):
        for a in range(len(tokens) - size + 1):
            b = a + size
            cuts = any(s < a < e or s < b < e for s, e in spans)
            holds = any(a <= s and e <= b for s, e in spans)
            if not cuts and (holds or not names):
                out.append((a, b))
    return out


def other_names(system: str, types: list[str], names: list[tuple[str, str]]) -> dict[str, list[str]]:
    """{type: example names of the system prompt's type descriptions that are not the seed's own}."""
    guide = re.search(r"annotation guidelines:\n(.*?)\n\nRules:", system, flags=re.S)
    if not guide:
        return {}
    examples, _ = description_terms(guide.group(1), types)
    own = {name for name, _ in names}
    out: dict[str, list[str]] = {}
    for name, typ in examples.items():
        if name not in own:
            out.setdefault(typ, []).append(name)
    return out


def cropped(tokens: list[str], names: list[tuple[str, str]], window: tuple[int, int]) -> dict:
    part = tokens[window[0] : window[1]]
    inside = [(n, t) for n, t in names if find_name(part, n)]
    return item(part, inside)


def replaced(
    tokens: list[str], names: list[tuple[str, str]], others: dict[str, list[str]], rng: random.Random
) -> dict | None:
    """The sentence with every seed name that has another example name of its type replaced by one (None
    when none has): the new names are declared, and the seed names still in it."""
    swap = {n: rng.choice(others[t]) for n, t in names if others.get(t)}
    if not swap:
        return None
    types = dict(names)
    spans = [(s, e, name) for name in swap for s, e in find_name(tokens, name)]
    chosen = []  # longest names first: "NATO" inside "Standing NATO Maritime Group 1" is not replaced
    for s, e, name in sorted(spans, key=lambda x: (x[0] - x[1], x[0])):
        if all(e <= a or b <= s for a, b, _ in chosen):
            chosen.append((s, e, name))
    out = list(tokens)
    for s, e, name in sorted(chosen, reverse=True):  # right to left, so earlier spans keep their place
        out[s:e] = tokenize(swap[name])
    new = [(swap[name], types[name]) for _, _, name in sorted(chosen)]
    return item(out, new + [(n, t) for n, t in names if find_name(out, n)])


def fault(
    tokens: list[str],
    names: list[tuple[str, str]],
    types: list[str],
    others: dict[str, list[str]],
    windows: list[tuple[int, int]],
    rng: random.Random,
) -> dict:
    """An item synth.py must reject: an entity declared for an entity-free seed (in a crop: a copy of the
    seed is rejected as that first), a declared name missing from its sentence (a replaced name still
    declared), or the example itself."""
    if not names:
        a, b = rng.choice(windows) if windows else (0, len(tokens))
        return item(tokens[a:b], [(tokens[a], types[-1])] if a < b and types else [])
    swapped = replaced(tokens, names, others, rng) if rng.random() < 0.5 else None
    if swapped is None:
        return item(tokens, names)
    swapped["entities"] += [{"name": n, "type": t} for n, t in names]
    return swapped


def item(tokens: list[str], names: list[tuple[str, str]]) -> dict:
    return {"text": " ".join(tokens), "entities": [{"name": n, "type": t} for n, t in dict.fromkeys(names)]}
