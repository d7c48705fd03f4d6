"""synth.py against a scripted fake server: validation counts, entity-free seeds,
failed calls, the cache, the JSONL round trip and an end-to-end run on examples/demo."""

import json
from pathlib import Path

import pytest

from data import Dataset, Sample, label_names, tokenize
from formats import read_dataset
from llm import Client, ClientConfig
from servers.fake_mllm import FakeServer, reply
from synth import (
    SynthConfig,
    build_request,
    description_terms,
    format_summary,
    read_synthetic,
    synthesize,
    write_rejected,
    write_synthetic,
)

TYPES = ["vessel", "aircraft"]
TYPE_TEXT = (
    "1. vessel: named ships and submarines, e.g. USS Nimitz\n"
    "2. aircraft: named aircraft models, e.g. F-35\n"
    "DO NOT extract generic words (e.g.: ship, aircraft carrier, jet)"
)
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def seed(sid: str, text: str, names: list[tuple[str, str]]) -> Sample:
    tokens = tokenize(text)
    entities, missing = label_names(tokens, names)
    assert not missing
    return Sample(sid, tokens, None, entities)


def toy() -> Dataset:
    return Dataset(
        [
            seed(
                "s1",
                "The USS Nimitz sailed with two F-35 jets .",
                [("USS Nimitz", "vessel"), ("F-35", "aircraft")],
            ),
            seed("s2", "Sailors rested on deck after the long drill .", []),
        ],
        TYPES,
        TYPE_TEXT,
        ["ship", "aircraft carrier", "jet"],
    )


def client(url: str, tmp_path: Path, **kw) -> Client:
    cfg = {
        "base_url": url,
        "model": "fake",
        "cache_path": str(tmp_path / "cache.jsonl"),
        "max_retries": 1,
        "backoff_base": 0.0,
        "backoff_cap": 0.0,
        "workers": 2,
        "schema_retries": 1,
    }
    cfg.update(kw)
    return Client(ClientConfig(**cfg))


def user_text(body: dict) -> str:
    return body["messages"][1]["content"]


def item(text: str, *ents: tuple[str, str]) -> dict:
    return {"text": text, "entities": [{"name": n, "type": t} for n, t in ents]}


# Answer for s1. Index: what it tests -> expected outcome.
S1_ANSWER = [
    item(
        "USS Nimitz reached port with F-35 fighters on board .",
        ("USS Nimitz", "vessel"),
        ("F-35", "aircraft"),
    ),  # 0 kept
    item("The HMS Queen Elizabeth left Portsmouth on Monday .", ("HMS Queen Elizabeth", "vessel")),  # 1 kept
    item("Crews repainted the USS Nimitz hull in dry dock ."),  # 2 kept, seed name labelled
    item("The Kuznetsov sailed north early yesterday .", ("Kuznetsov", "warship")),  # 3 unknown_type
    item(
        "The Kuznetsov sailed south early yesterday .", ("Kuznetsov", "Vessel")
    ),  # 4 unknown_type (no remap)
    item("A frigate sailed into the harbour at dawn .", ("Admiral Gorshkov", "vessel")),  # 5 name_not_in_text
    item(
        "The USS Nimitzes were a class of carriers .", ("USS Nimitz", "vessel")
    ),  # 6 name_not_in_text (boundary)
    item(
        "An Aircraft Carrier crossed the strait on Friday .", ("Aircraft Carrier", "vessel")
    ),  # 7 generic_name
    item(
        "A Sea Knight crossed the bay on Friday .", ("Sea Knight", "aircraft"), ("bay", "vessel")
    ),  # 8 generic (config)
    item(
        "USS Nimitz reached port with F-35 fighters on board.", ("USS Nimitz", "vessel"), ("F-35", "aircraft")
    ),  # 9 duplicate
    item("the uss nimitz sailed with two f-35 jets."),  # 10 seed_copy
    item(" ".join(["word"] * 70)),  # 11 too_long
    item("   "),  # 12 empty_text
    item("Go !"),  # 13 too_short
    item(
        "The USS Nimitz flew over the bay at noon .", ("USS Nimitz", "aircraft")
    ),  # 14 type_mismatch with seed
    item("Two F-35 jets landed on the deck at dawn .", ("F-35", "vessel")),  # 15 type_mismatch ("F - 35")
    item(
        "The Sachsen met the Sachsen class leader .", ("Sachsen", "vessel"), ("Sachsen", "aircraft")
    ),  # 16 type_mismatch
]
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
S2_ANSWER = [
    item("Sailors painted the railings before the inspection ."),  # 0 kept, entity-free
    item("The crew ate dinner on deck after sunset ."),  # 1 kept, entity-free
    item(
        "Sailors cheered as the USS Nimitz came in .", ("USS Nimitz", "vessel")
    ),  # 2 entities_for_entity_free_seed
]
# The schema asks for exactly per_seed sentences (minItems = maxItems), so s2's answer is filled up to
# S1's length with entity-free sentences that pass.
S2_FULL = S2_ANSWER + [
    item(f"The crew washed deck number {k} before dinner .") for k in range(len(S1_ANSWER) - 3)
]
PER_SEED = len(S1_ANSWER)


def toy_handler(body: dict) -> dict:
    text = user_text(body)
    if "USS Nimitz" in text:
        return reply({"samples": S1_ANSWER})
    return reply({"samples": S2_FULL})


def clean_handler(body: dict) -> dict:
    """Only the sentences that pass (per_seed = 3), so the default config (types as an enum) accepts every
    answer."""
    return reply(
        {"samples": S1_ANSWER[:3] if "USS Nimitz" in user_text(body) else S2_ANSWER[:2] + S2_FULL[-1:]}
    )


CLEAN = SynthConfig(per_seed=3)


def test_validation_keeps_exactly_the_good_samples(tmp_path):
    data = toy()
    with FakeServer(toy_handler) as srv:
        # type_enum=False: the schema does not list the types, so an unknown type reaches synth's own check
        samples, summary = synthesize(
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
    assert summary["generated"] == 2 * PER_SEED
    assert summary["kept"] == 3 + PER_SEED - 1 and summary["entity_free_kept"] == PER_SEED - 1
    assert summary["kept"] + sum(summary["rejected"].values()) == summary["generated"]
    assert summary["entities_per_type"] == {"vessel": 3, "aircraft": 1}
    assert (summary["seeds"], summary["calls"], summary["failed_calls"]) == (2, 2, 0)
    assert f"{PER_SEED + 2} kept" in format_summary(summary) and "seed_copy 1" in format_summary(summary)


def test_unknown_type_under_the_enum_is_reasked_by_the_client(tmp_path):
    data = toy()
    bad = [item("The Kuznetsov sailed north early yesterday .", ("Kuznetsov", "warship"))]
    good = [item("The Kuznetsov sailed north early yesterday .", ("Kuznetsov", "vessel"))]

    def handler(body):  # the first answer breaks the enum; the re-ask (which quotes it) gets a fixed one
        return reply({"samples": bad if len(body["messages"]) == 2 else good})

    with FakeServer(handler) as srv:
        samples, summary = synthesize(data, client(srv.url, tmp_path), SynthConfig(seeds=1, per_seed=1))
        assert len(srv.requests) == 2 and "warship" in srv.requests[1]["messages"][-1]["content"]
    assert [(samples[0].name(e), e.type) for e in samples[0].entities] == [("Kuznetsov", "vessel")]
    assert summary["rejected"] == {} and summary["failed_calls"] == 0


def test_every_occurrence_of_a_declared_name_is_labelled(tmp_path):
    data = toy()
    answer = [item("F-35 jets escorted more F-35 jets over the sea .", ("F-35", "aircraft"))]
    with FakeServer(lambda body: reply({"samples": answer})) as srv:
        samples, _ = synthesize(data, client(srv.url, tmp_path), SynthConfig(seeds=1, per_seed=1))
    assert [e.span for e in samples[0].entities] == [(0, 3), (6, 9)]


def test_prompt_and_schema(tmp_path):
    data = toy()
    cfg = SynthConfig(per_seed=30, keep_share=2 / 3)
    req = build_request(data.samples[0], data, cfg)
    system, user = req["messages"][0]["content"], req["messages"][1]["content"]
    assert TYPE_TEXT in system and "aircraft carrier" in system
    assert "Write 20 new sentences" in user and "10 sentences that use other specific names" in user
    assert '"USS Nimitz" (vessel)' in user and '"F - 35" (aircraft)' in user
    free = build_request(data.samples[1], data, cfg)["messages"][1]["content"]
    assert "Write 30 new sentences" in free and "contain no entity" in free and "Its entities: none" in free
    schema = req["schema"]
    samples = schema["properties"]["samples"]
    assert schema["type"] == "object" and samples["minItems"] == samples["maxItems"] == 30
    assert (
        samples["items"]["properties"]["text"]["maxLength"] == 10 * cfg.max_tokens
    )  # 10 characters per token
    ents = samples["items"]["properties"]["entities"]
    assert ents["maxItems"] == cfg.max_entities and ents["items"]["properties"]["type"]["enum"] == TYPES
    assert build_request(data.samples[0], data, cfg) == req  # deterministic: the cache can hit
    loose = build_request(data.samples[0], data, SynthConfig(type_enum=False))["schema"]
    assert (
        "enum"
        not in loose["properties"]["samples"]["items"]["properties"]["entities"]["items"]["properties"][
            "type"
        ]
    )


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
        samples, summary = synthesize(data, client(srv.url, tmp_path), cfg)
        basic, before = synthesize(
            data, client(srv.url, tmp_path), SynthConfig(**{**cfg.__dict__, "strict": False})
        )
    assert summary["rejected"] == STRICT_REASONS
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
        _, capped = synthesize(
            data, client(srv.url, tmp_path), SynthConfig(**{**cfg.__dict__, "rejected_examples": 1})
        )
    assert [r["j"] for r in capped["rejected_examples"]] == [0, 1, 2]
    # A seed with a lower-case name shows the domain has such names: the lower-case rule is then off.
    data.samples.append(seed("s10", "Rain fell on sylt all day .", [("sylt", "location")]))
    with FakeServer(fennek) as srv:
        _, tweets = synthesize(data, client(srv.url, tmp_path / "lc"), cfg)
    assert tweets["rejected"] == {**STRICT_REASONS, "generic_name": 2}
    write_rejected(ex, tmp_path / "rejected.jsonl")
    lines = (tmp_path / "rejected.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["reason"] for line in lines] == [r["reason"] for r in ex]


def test_a_one_item_answer_breaks_the_schema_and_is_reasked(tmp_path):
    data = toy()
    short = [item("...", ("...", "vessel"))]  # the placeholder copied from the format line
    full = S1_ANSWER[:3]

    def handler(body):
        return reply({"samples": short if len(body["messages"]) == 2 else full})

    with FakeServer(handler) as srv:
        samples, summary = synthesize(data, client(srv.url, tmp_path), SynthConfig(seeds=1, per_seed=3))
        assert len(srv.requests) == 2 and "at least 3" in srv.requests[1]["messages"][-1]["content"]
    assert summary["generated"] == 3 and summary["kept"] == 3 and summary["failed_calls"] == 0


def test_malformed_answers_are_retried_then_counted_as_failed(tmp_path):
    data = Dataset(
        [
            seed("a", "The USS Alpha sailed today .", [("USS Alpha", "vessel")]),
            seed("b", "The USS Bravo sailed today .", [("USS Bravo", "vessel")]),
            seed("c", "The USS Charlie sailed today .", [("USS Charlie", "vessel")]),
        ],
        TYPES,
        TYPE_TEXT,
    )

    def handler(body):
        text = user_text(body)
        if "USS Alpha" in text:
            return reply('{"samples": [ {"text": "cut off')  # invalid JSON
        if "USS Bravo" in text:
            return reply({"sentences": ["USS Bravo is here ."]})  # JSON, but not the schema
        return reply({"samples": [item("The USS Charlie docked at noon .", ("USS Charlie", "vessel"))]})

    with FakeServer(handler) as srv:
        samples, summary = synthesize(data, client(srv.url, tmp_path), SynthConfig(per_seed=1))
        asked = [user_text(b) for b in srv.requests]
    assert sum("USS Alpha" in t for t in asked) >= 2 and sum("USS Bravo" in t for t in asked) >= 2
    assert sum("USS Charlie" in t for t in asked) == 1
    assert summary["failed_calls"] == 2 and summary["failed_seeds"] == ["a", "b"]
    assert [s.id for s in samples] == ["syn-c-0"] and summary["kept"] == 1


def test_rerun_with_the_same_cache_makes_no_http_call(tmp_path):
    data = toy()
    with FakeServer(clean_handler) as srv:
        first, s1 = synthesize(data, client(srv.url, tmp_path), CLEAN)
        n = len(srv.requests)
        again = client(srv.url, tmp_path)
        second, s2 = synthesize(data, again, CLEAN)
        assert len(srv.requests) == n == 2
    assert again.usage.cache_hits == 2 and s1["kept"] == 6
    assert [(s.id, s.tokens, s.entities) for s in first] == [(s.id, s.tokens, s.entities) for s in second]
    assert s1 == s2


def test_write_read_round_trip(tmp_path):
    data = toy()
    with FakeServer(clean_handler) as srv:
        samples, _ = synthesize(data, client(srv.url, tmp_path), CLEAN)
    path = tmp_path / "synthetic.jsonl"
    write_synthetic(samples, path)
    back = read_synthetic(path)
    assert [(s.id, s.tokens, s.entities) for s in back] == [(s.id, s.tokens, s.entities) for s in samples]
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["seed"] == "s1" and first["entities"][0] == {
        "start": 0,
        "end": 2,
        "type": "vessel",
        "name": "USS Nimitz",
    }


def test_read_synthetic_rejects_a_span_that_does_not_match_its_name(tmp_path):
    path = tmp_path / "bad.jsonl"
    rec = {
        "id": "syn-x-0",
        "seed": "x",
        "text": "a b c",
        "tokens": ["a", "b", "c"],
        "entities": [{"start": 0, "end": 1, "type": "vessel", "name": "b"}],
    }
    path.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: entity name 'b'"):
        read_synthetic(path)


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
        samples, summary = synthesize(data, client(srv.url, tmp_path), SynthConfig(per_seed=per_seed))
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
