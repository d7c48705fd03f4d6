"""What synthesis leaves in a run: its summary counted from synth.py's traces, and its files.

synth.synthesize returns the kept samples and one `SeedTrace` per seed (its call's error, or each answer
item's outcome); the application counts and stores them here. Input: the traces, the samples. Output:
the counts of synthetic.summary.json (`summarize`) and the synth: lines of the run's output
(`format_summary`); synthetic.jsonl (`write_synthetic`, `read_synthetic`: a rerun reads it back instead
of asking again) and synthetic.rejected.jsonl (`write_rejected`: a few rejected items per reason).

    python refineg.py --data examples/demo --llm-url http://127.0.0.1:8000/v1 --no-refine --no-ground

Left out on purpose: every rejected item (a few per reason show what the checks remove; the counts hold
the rest), and images (synthetic sentences are text-only).
"""

import json
from collections import Counter
from pathlib import Path

from data import DataError, Entity, Sample, without_spaces
from synth import SeedTrace


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
