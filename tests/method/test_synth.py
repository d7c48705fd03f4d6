"""synth.py against a scripted fake server: the paper's checks alone, where filters run, entity-free seeds,
failed calls and the cache, each seed's trace counted as the application counts it (app/synthetic.py, whose
own tests are tests/app/test_synthetic.py). The filters beyond the paper (levers/synth_filters.py) are
tested in tests/levers/test_synth_filters.py, on the answers below."""

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from app.synthetic import summarize
from data import Dataset, Sample, label_names, tokenize
from llm import Client, ClientConfig
from servers.fake_mllm import FakeServer, reply
from synth import Filter, Reason, SynthConfig, build_request, synthesize

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


def synthesize_counted(
    data: Dataset, c: Client, config: SynthConfig, filters: Sequence[Filter] = ()
) -> tuple[list[Sample], dict]:
    """synth.synthesize, its traces counted as the application counts them (app/synthetic.py)."""
    samples, traces = synthesize(data, c, config, filters)
    return samples, summarize(data.types, traces, config.rejected_examples)


def user_text(body: dict) -> str:
    return body["messages"][1]["content"]


def item(text: str, *ents: tuple[str, str]) -> dict:
    return {"text": text, "entities": [{"name": n, "type": t} for n, t in ents]}


# Answer for s1. Index: what it tests -> its outcome under the default filters (levers/synth_filters.py).
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


def test_the_papers_checks_alone_reject_only_what_cannot_be_labelled(tmp_path):
    """With no filter, an item is rejected only for an empty text, a type not among the domain's or a
    declared name not in its sentence; a name the seed gives another type keeps the seed's (items 14-16)."""
    data = toy()
    with FakeServer(toy_handler) as srv:
        config = SynthConfig(per_seed=PER_SEED, type_enum=False)
        samples, summary = synthesize_counted(data, client(srv.url, tmp_path), config)
    assert summary["rejected"] == {"unknown_type": 2, "name_not_in_text": 2, "empty_text": 1}
    assert set(summary["rejected"]) <= set(get_args(Reason))
    kept = [int(s.id.rsplit("-", 1)[1]) for s in samples if s.id.startswith("syn-s1-")]
    assert kept == [0, 1, 2, 7, 8, 9, 10, 11, 13, 14, 15, 16]
    got = {s.id: [(s.name(e), e.type) for e in s.entities] for s in samples}
    assert got["syn-s1-8"] == [("Sea Knight", "aircraft"), ("bay", "vessel")]  # no "do not extract" check
    assert got["syn-s1-10"] == []  # a lower-case copy of the seed: its names are not found
    assert got["syn-s1-14"] == [("USS Nimitz", "vessel")] and got["syn-s1-15"] == [("F - 35", "aircraft")]
    assert got["syn-s1-16"] == [("Sachsen", "vessel"), ("Sachsen", "vessel")]  # the first declaration
    assert got["syn-s2-2"] == [("USS Nimitz", "vessel")]  # an entity for the entity-free seed is kept
    assert summary["kept"] == len(samples) == 12 + PER_SEED and summary["generated"] == 2 * PER_SEED


def test_filters_run_in_order_between_the_papers_checks_and_the_labelling(tmp_path):
    """A filter sees only the items the paper's checks passed and no earlier filter rejected; the first reason
    wins, the labelling (name_not_in_text) comes last, and a filter sees the texts kept so far."""
    answer = [
        item("The Kuznetsov sailed north early yesterday .", ("Kuznetsov", "warship")),  # unknown_type
        item("The HMS Queen Elizabeth left Portsmouth .", ("HMS Queen Elizabeth", "vessel")),  # kept
        item("The USS Nimitzes were a class of carriers .", ("USS Nimitz", "vessel")),  # "uss"
        item(
            "A frigate sailed into the harbour at dawn .", ("Admiral Gorshkov", "vessel")
        ),  # name_not_in_text
        item("Two F-35 jets landed at dawn .", ("F-35", "aircraft")),  # "f35"
    ]
    seen = []

    def uss(c):
        seen.append(("uss", answer.index(c.item), sorted(c.kept)))
        return "uss" if "USS" in c.item["text"] else None

    def f35(c):
        seen.append(("f35", answer.index(c.item), c.declared))
        return "f35" if ("F - 35", "aircraft") in c.declared else None

    config = SynthConfig(seeds=1, per_seed=len(answer), type_enum=False)
    with FakeServer(lambda body: reply({"samples": answer})) as srv:
        samples, summary = synthesize_counted(toy(), client(srv.url, tmp_path), config, [uss, f35])
    hms = "the hms queen elizabeth left portsmouth ."
    assert seen == [
        ("uss", 1, []),
        ("f35", 1, [("HMS Queen Elizabeth", "vessel")]),
        ("uss", 2, [hms]),
        ("uss", 3, [hms]),
        ("f35", 3, [("Admiral Gorshkov", "vessel")]),
        ("uss", 4, [hms]),
        ("f35", 4, [("F - 35", "aircraft")]),
    ]
    assert [s.id for s in samples] == ["syn-s1-1"]
    assert summary["rejected"] == {"f35": 1, "name_not_in_text": 1, "unknown_type": 1, "uss": 1}


def test_unknown_type_under_the_enum_is_reasked_by_the_client(tmp_path):
    data = toy()
    bad = [item("The Kuznetsov sailed north early yesterday .", ("Kuznetsov", "warship"))]
    good = [item("The Kuznetsov sailed north early yesterday .", ("Kuznetsov", "vessel"))]

    def handler(body):  # the first answer breaks the enum; the re-ask (which quotes it) gets a fixed one
        return reply({"samples": bad if len(body["messages"]) == 2 else good})

    with FakeServer(handler) as srv:
        samples, summary = synthesize_counted(
            data, client(srv.url, tmp_path), SynthConfig(seeds=1, per_seed=1)
        )
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


def test_a_one_item_answer_breaks_the_schema_and_is_reasked(tmp_path):
    data = toy()
    short = [item("...", ("...", "vessel"))]  # the placeholder copied from the format line
    full = S1_ANSWER[:3]

    def handler(body):
        return reply({"samples": short if len(body["messages"]) == 2 else full})

    with FakeServer(handler) as srv:
        samples, summary = synthesize_counted(
            data, client(srv.url, tmp_path), SynthConfig(seeds=1, per_seed=3)
        )
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
        samples, summary = synthesize_counted(data, client(srv.url, tmp_path), SynthConfig(per_seed=1))
        asked = [user_text(b) for b in srv.requests]
    assert sum("USS Alpha" in t for t in asked) >= 2 and sum("USS Bravo" in t for t in asked) >= 2
    assert sum("USS Charlie" in t for t in asked) == 1
    assert summary["failed_calls"] == 2 and summary["failed_seeds"] == ["a", "b"]
    assert [s.id for s in samples] == ["syn-c-0"] and summary["kept"] == 1


def test_rerun_with_the_same_cache_makes_no_http_call(tmp_path):
    data = toy()
    with FakeServer(clean_handler) as srv:
        first, s1 = synthesize_counted(data, client(srv.url, tmp_path), CLEAN)
        n = len(srv.requests)
        again = client(srv.url, tmp_path)
        second, s2 = synthesize_counted(data, again, CLEAN)
        assert len(srv.requests) == n == 2
    assert again.usage.cache_hits == 2 and s1["kept"] == 6
    assert [(s.id, s.tokens, s.entities) for s in first] == [(s.id, s.tokens, s.entities) for s in second]
    assert s1 == s2
