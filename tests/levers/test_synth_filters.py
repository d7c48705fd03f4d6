"""levers/synth_filters.py against a scripted fake server: each filter's reason on the answers that earn it,
their order, the basic and the type-knowledge rules, the descriptions' names and heads, and the demo end to
end with the filters refineg.py passes."""

import json
from pathlib import Path
from typing import get_args

from test_synth import (
    PER_SEED,
    client,
    item,
    seed,
    toy,
    toy_handler,
    user_text,
)

import synth
from app.synthetic import format_summary, read_synthetic, summarize, write_rejected, write_synthetic
from data import Dataset, tokenize
from formats import read_dataset
from levers import synth_filters
from levers.synth_filters import description_terms, filters
from servers.fake_mllm import FakeServer, reply
from synth import SynthConfig, synthesize

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
REASONS = {*get_args(synth.Reason), *get_args(synth_filters.Reason)}  # the closed set of rejection reasons
# S1_ANSWER (tests/method/test_synth.py) rejected by the paper's checks and the default filters
S1_REJECTED = {
    "unknown_type": 2,
    "name_not_in_text": 2,
    "generic_name": 2,
    "duplicate": 1,
    "seed_copy": 1,
    "too_long": 1,
    "empty_text": 1,
    "too_short": 1,
    "type_mismatch": 3,
}


def synthesize_filtered(data: Dataset, c, config: SynthConfig) -> tuple[list, dict]:
    """synth.synthesize as refineg.py calls it, with the filters of levers/synth_filters.py; its traces
    counted as the application counts them (app/synthetic.py)."""
    samples, traces = synthesize(data, c, config, filters(data, config))
    return samples, summarize(data.types, traces, config.rejected_examples)


def test_validation_keeps_exactly_the_good_samples(tmp_path):
    data = toy()
    with FakeServer(toy_handler) as srv:
        # type_enum=False: the schema does not list the types, so an unknown type reaches synth's own check
        samples, summary = synthesize_filtered(
            data, client(srv.url, tmp_path), SynthConfig(per_seed=PER_SEED, generic=["BAY"], type_enum=False)
        )
    got = {s.id: [(s.name(e), e.type, e.source) for e in s.entities] for s in samples}
    assert got == {
        "syn-s1-0": [("USS Nimitz", "vessel", "synth"), ("F - 35", "aircraft", "synth")],
        "syn-s1-1": [("HMS Queen Elizabeth", "vessel", "synth")],
        "syn-s1-2": [("USS Nimitz", "vessel", "synth")],  # undeclared, but the seed declares it
        "syn-s2-0": [],
        "syn-s2-1": [],
        **{f"syn-s2-{j}": [] for j in range(3, PER_SEED)},
    }
    assert samples[0].entities[0].span == (0, 2) and samples[0].entities[1].span == (5, 8)
    assert summary["rejected"] == {**S1_REJECTED, "entities_for_entity_free_seed": 1}
    assert set(summary["rejected"]) <= REASONS
    assert summary["generated"] == 2 * PER_SEED
    assert summary["kept"] == 3 + PER_SEED - 1 and summary["entity_free_kept"] == PER_SEED - 1
    assert summary["kept"] + sum(summary["rejected"].values()) == summary["generated"]
    assert summary["entities_per_type"] == {"vessel": 3, "aircraft": 1}
    assert (summary["seeds"], summary["calls"], summary["failed_calls"]) == (2, 2, 0)
    assert f"{PER_SEED + 2} kept" in format_summary(summary) and "seed_copy 1" in format_summary(summary)


def test_description_terms_in_both_layouts():
    """Hand-read from the two layouts types.txt files use: names in brackets are examples, the words before
    the brackets are generic heads; plain `e.g. A, B` lists only names; glosses and asides are dropped."""
    inline = (
        "1. vehicle: Ground machines, e.g. tanks (Leopard 2), reconnaissance vehicles (Fennek, Dingo)\n"
        "2. vessel: named ships and submarines, e.g. USS Nimitz, U32\n"
        "**DO NOT** extract entities without specific name (e.g.: gun, ship)"
    )
    assert description_terms(inline, ["vehicle", "vessel"]) == (
        {
            "Leopard 2": "vehicle",
            "Fennek": "vehicle",
            "Dingo": "vehicle",
            "USS Nimitz": "vessel",
            "U32": "vessel",
        },
        {"tanks", "reconnaissance vehicles"},
    )
    bulleted = (
        "[Entity Type Description] Here are 2 named entity types you need to identify:\n"
        "1. aircraft: Flying machines, including but not limited to:\n"
        "- Unmanned aerial vehicles (UAVs) (e.g., KZO, Heron 1)\n"
        "- Special-mission aircraft (e.g., Boeing E-3 [AEW&C])\n"
        "2. other: Entities not fitting the above, including but not limited to:\n"
        "- Organizations/missions (e.g., UN, Resolute Support)\n"
    )
    assert description_terms(bulleted, ["aircraft", "other"]) == (
        {
            "KZO": "aircraft",
            "Heron 1": "aircraft",
            "Boeing E-3": "aircraft",
            "UN": "other",
            "Resolute Support": "other",
        },
        {
            "unmanned aerial vehicles",
            "special-mission aircraft",
            "organizations/missions",
            "organizations",
            "missions",
        },
    )


# The failures a real 0.5B model produced on the demo (issue 16), one sentence each -> the reason.
STRICT_ANSWER = [
    item("The ship PUMA is used in the exercise near Kiel .", ("PUMA", "vessel")),  # 0 known_type_mismatch
    item(
        "A Boxer armoured transport vehicle drives past a Fennek . Its entities : vehicle , Boxer , Fennek .",
        ("Boxer", "vehicle"),
        ("Fennek", "vehicle"),
    ),  # 1 prompt_leak
    item(
        "A reconnaissance vehicle drives past a Fennek at dawn .",
        ("reconnaissance vehicle", "vehicle"),
        ("Fennek", "vehicle"),
    ),  # 2 generic_name (head)
    item(
        "The vehicle was parked next to the Dingo .", ("vehicle", "vehicle"), ("Dingo", "vehicle")
    ),  # 3 generic (type)
    item("..."),  # 4 prompt_leak
    item('{"text": "A Dingo drives past ."}'),  # 5 prompt_leak
    item("The Fennek crossed the bridge near the Wolf .", ("Wolf", "vehicle")),  # 6 kept
    item("Two Fennek scouts waited at the edge of the forest ."),  # 7 kept
    item(
        "The frigate Alpha 9 left Wilhelmshaven at dawn .", ("Alpha 9", "vessel"), ("Wilhelmshaven", "vessel")
    ),
    # 8 known_type_mismatch: the name is known from another seed (s9) only
    item(
        "The Airbus A400M takes off from the runway .", ("runway", "location")
    ),  # 9 generic: lower case, no seed is
]
STRICT_REASONS = {"known_type_mismatch": 2, "prompt_leak": 3, "generic_name": 3}


def strict_data() -> Dataset:
    demo = read_dataset(DEMO)
    return Dataset(
        [
            seed("s1", "A Fennek scouted ahead of the column .", [("Fennek", "vehicle")]),
            seed("s9", "Rain fell on Wilhelmshaven all day .", [("Wilhelmshaven", "location")]),
        ],
        demo.types,
        demo.type_text,
        demo.generic,
    )


def test_strict_checks_reject_what_a_small_model_gets_wrong(tmp_path):
    data = strict_data()

    def fennek(body):
        return reply({"samples": STRICT_ANSWER if "Fennek" in user_text(body) else []})

    cfg = SynthConfig(seeds=1, per_seed=len(STRICT_ANSWER))
    with FakeServer(fennek) as srv:
        samples, summary = synthesize_filtered(data, client(srv.url, tmp_path), cfg)
        basic, before = synthesize_filtered(
            data, client(srv.url, tmp_path), SynthConfig(**{**cfg.__dict__, "strict": False})
        )
    assert summary["rejected"] == STRICT_REASONS and set(STRICT_REASONS) <= REASONS
    assert [s.id for s in samples] == ["syn-s1-6", "syn-s1-7"]
    assert [(samples[0].name(e), e.type) for e in samples[0].entities] == [
        ("Fennek", "vehicle"),
        ("Wolf", "vehicle"),
    ]
    # The basic checks (strict=False) keep all but the placeholder "..." (too short) and the generic type name
    # "vehicle" that is not in types.txt's DO NOT list: what the issue saw kept.
    assert before["rejected"] == {"too_short": 1} and len(basic) == len(STRICT_ANSWER) - 1
    # The rejected sentences are kept with their reasons, capped per reason.
    ex = summary["rejected_examples"]
    assert [(r["j"], r["reason"]) for r in ex] == [
        (0, "known_type_mismatch"),
        (1, "prompt_leak"),
        (2, "generic_name"),
        (3, "generic_name"),
        (4, "prompt_leak"),
        (5, "prompt_leak"),
        (8, "known_type_mismatch"),
        (9, "generic_name"),
    ]
    assert ex[0]["seed"] == "s1" and ex[0]["text"] == STRICT_ANSWER[0]["text"]
    with FakeServer(fennek) as srv:
        _, capped = synthesize_filtered(
            data, client(srv.url, tmp_path), SynthConfig(**{**cfg.__dict__, "rejected_examples": 1})
        )
    assert [r["j"] for r in capped["rejected_examples"]] == [0, 1, 2]
    # A seed with a lower-case name shows the domain has such names: the lower-case rule is then off.
    data.samples.append(seed("s10", "Rain fell on sylt all day .", [("sylt", "location")]))
    with FakeServer(fennek) as srv:
        _, tweets = synthesize_filtered(data, client(srv.url, tmp_path / "lc"), cfg)
    assert tweets["rejected"] == {**STRICT_REASONS, "generic_name": 2}
    write_rejected(ex, tmp_path / "rejected.jsonl")
    lines = (tmp_path / "rejected.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["reason"] for line in lines] == [r["reason"] for r in ex]


def test_end_to_end_on_the_demo(tmp_path):
    data = read_dataset(DEMO)
    by_text = {f"Example sentence: {s.text}\n": s for s in data.samples}

    def handler(body):
        text = user_text(body)
        s = next(s for k, s in by_text.items() if text.startswith(k))
        if not s.entities:
            out = [item(f"Nothing of note happened near {s.id} on day {k} .") for k in range(3)]
        else:
            out = [
                item(f"Reports say {s.name(e)} was seen again near the coast .", (s.name(e), e.type))
                for e in s.entities
            ]
            t = s.entities[0].type
            out.append(item(f"Reports say Zeta {s.id} was seen near the coast .", (f"Zeta {s.id}", t)))
        return reply({"samples": out + out[-1:] * (per_seed - len(out))})  # filled up with duplicates

    per_seed = max(3, max(len(s.entities) + 1 for s in data.samples))
    with FakeServer(handler) as srv:
        samples, summary = synthesize_filtered(
            data, client(srv.url, tmp_path), SynthConfig(per_seed=per_seed)
        )
        assert len(srv.requests) == len(data.samples)
    assert summary["seeds"] == len(data.samples) and summary["failed_calls"] == 0
    # Oracle: a templated sentence is kept once per distinct text; nothing else is rejected.
    texts = set()
    for s in data.samples:
        if s.entities:
            texts |= {
                " ".join(tokenize(f"Reports say {s.name(e)} was seen again near the coast .")).lower()
                for e in s.entities
            }
            texts.add(" ".join(tokenize(f"Reports say Zeta {s.id} was seen near the coast .")).lower())
    free = sum(1 for s in data.samples if not s.entities)
    assert summary["kept"] == len(texts) + 3 * free and summary["entity_free_kept"] == 3 * free
    assert set(summary["rejected"]) <= {"duplicate"}
    for s in samples:
        src = data.samples[[d.id for d in data.samples].index(s.id[4:].rsplit("-", 1)[0])]
        assert all(e.type in data.types for e in s.entities)
        assert bool(s.entities) == bool(src.entities)  # entity-free seeds give entity-free sentences
    path = tmp_path / "synthetic.jsonl"
    write_synthetic(samples, path)
    assert [(s.id, s.tokens, s.entities) for s in read_synthetic(path)] == [
        (s.id, s.tokens, s.entities) for s in samples
    ]
    print(format_summary(summary))
