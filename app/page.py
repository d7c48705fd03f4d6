"""One page per run: every decision ReFineG made about each sample, in OUT/trace.jsonl and OUT/report.html.

The trace is one JSON object per sample (`record` says its keys): its text and image; the tagger's
entities with their uncertainty, whether routing delegated them (`Entity.delegated`, set by
uncertainty.route) and whether a refinement call sent them; the MLLM's
refinement decision per delegated entity (keep, change to what, reject) with the call's reasoning;
the worked examples of its grounding call (demo ids and similarity parts) and the boxes per entity;
the final entities; and, with gold, what is wrong against it by the scorer's matching (`mistakes`).
The page, in the spirit of spaCy's displaCy, is drawn from the trace and the run's metrics.json and
usage.json: the scores per stage, MLLM calls, tokens and seconds, then per sample a thumbnail with
predicted (red, solid) and gold (green, dashed) boxes numbered (report.picture), linked to the full image,
a legend of those numbers and of the entities without a box, the text with entities marked by type, and
the decisions. Input: the samples after each stage and the stages' traces (refineg.py hands them over).
Output: OUT/trace.jsonl, OUT/report.html and its thumbnails in OUT/report/.

    python refineg.py --data examples/demo --out runs/demo    # then open runs/demo/report.html

Left out on purpose: JavaScript (the page is static HTML and CSS, readable offline and in a mail);
in a run of more than --report-samples samples, the page shows only those with the most mistakes
(the trace holds every sample).
"""

import json
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

import eval as scorer
import grounding
from app.report import TASKS, picture, scope_line
from app.rundir import atomic, read_json, simulated
from data import Box, Entity, Sample
from formats.rules import size_or_none
from grounding import GroundingTrace
from images import ImageError
from refinement import Call, Outcome, RefinementTrace

THUMB_SIDE = 320  # pixels, the long side of a thumbnail: a 3,000-sample run's report/ stays a few MB
THUMB_QUALITY = 80  # JPEG quality of the thumbnails
PALETTE = ["#7aecec", "#feca74", "#aa9cfc", "#bfeeb7", "#ff9561", "#c887fb", "#9cc9cc", "#ffeb80", "#ff8197"]
# fields of client.usage.Usage, as usage.json holds them
USAGE = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "failures", "seconds")
OUTCOMES = {  # GroundingTrace.outcome, said to a person
    grounding.Outcome.ANSWERED: "answered",
    grounding.Outcome.FAILED_CALL: "the call failed",
    grounding.Outcome.IMAGE_ERROR: "the image could not be used",
    grounding.Outcome.NO_IMAGE: "no image: its entities stay ungroundable",
    grounding.Outcome.NO_ENTITY: "nothing to ground",
}


# ---------------------------------------------------------------- the trace


def entity(s: Sample, e: Entity) -> dict:
    """An entity as the trace writes it: its token span, name, type and boxes ([x1, y1, x2, y2] pixels)."""
    return {"start": e.start, "end": e.end, "name": s.name(e), "type": e.type, "boxes": boxes(e.boxes)}


def boxes(bs: list[Box]) -> list[list[float]]:
    return [[round(v, 1) for v in (b.x1, b.y1, b.x2, b.y2)] for b in bs]


def record(
    tagged: Sample,
    final: Sample,
    gold: Sample | None,
    refined: RefinementTrace | None,
    grounded: GroundingTrace | None,
) -> dict:
    """One sample's line of trace.jsonl. "refinement" is null when no call was made for the sample
    (the stage did not run, or Call.NOT_ASKED), "grounding" when the stage did not run, "gold" and
    "mistakes" when there is no gold."""
    asked = refined is not None and refined.call is not Call.NOT_ASKED
    sent = {(d.entity.start, d.entity.end, d.entity.type) for d in refined.decisions} if asked else set()
    tagger = [
        {
            **entity(tagged, e),
            "uncertainty": None if e.uncertainty is None else round(e.uncertainty, 4),
            "above_tau": bool(e.delegated),
            "to_mllm": (e.start, e.end, e.type) in sent,
        }
        for e in tagged.entities
    ]
    return {
        "id": final.id,
        "text": final.text,
        "tokens": final.tokens,
        "image": final.image,
        "image_size": size_of(final.image),
        "tagger": tagger,
        "refinement": refinement_record(tagged, refined) if asked else None,
        "grounding": grounding_record(grounded) if grounded else None,
        "final": [{**entity(final, e), "source": e.source} for e in final.entities],
        "gold": [entity(gold, e) for e in gold.entities] if gold else None,
        "mistakes": mistakes_record(gold, final) if gold else None,
    }


def size_of(path: str | None) -> list[int] | None:
    size = size_or_none(path)
    return list(size) if size else None


def refinement_record(s: Sample, t: RefinementTrace) -> dict:
    """The refinement.Outcome per delegated entity (keep, change_type, change_span, reject, or a fallback:
    missing, invalid_<why>), with what it became ("to", null when rejected); the rejected ones again under
    "rejected"."""
    decisions = [
        {
            "entity": entity(s, d.entity),
            "decision": d.outcome.value,
            "to": entity(s, d.result) if d.result is not None else None,
        }
        for d in t.decisions
    ]
    return {
        "reasoning": t.reasoning,
        "failed": t.failed,
        "decisions": decisions,
        "rejected": [d["entity"] for d in decisions if d["to"] is None],
        "added": [entity(s, e) for e in t.added],
    }


def grounding_record(t: GroundingTrace) -> dict:
    examples = [
        {
            "id": x.sample.id,
            "text": round(x.text, 3),
            "image": None if x.image is None else round(x.image, 3),
            "entity": round(x.entity, 3),
            "total": round(x.total, 3),
        }
        for x in t.examples
    ]
    answered = {name: boxes(bs) for name, bs in t.boxes.items()}
    return {
        "outcome": t.outcome.value,
        "error": t.error,
        "asked": t.asked,
        "examples": examples,
        "boxes": answered,
    }


def mistakes(gold: Sample, pred: Sample, match: str = "span") -> dict[str, list[tuple[int, int]]]:
    """What the scorer holds against one predicted sample, as (gold item, predicted item) index pairs into
    eval.items(gold) and eval.items(pred) (with match "span": the entities), -1 for none:
    - "missed": a gold item no prediction names (same identity);
    - "wrong_type": named, but no prediction of that identity has its type (the pair: by identity);
    - "wrong_box": named with its type, but the region is wrong (the pair: the MNER match);
    - "spurious": a prediction naming no gold item (or one already named by another prediction).
    The first three are the sample's GMNER false negatives, one each.
    """
    gi, pi = scorer.items(gold, match), scorer.items(pred, match)
    owners = scorer.matchings(gi, pi)
    # the matching by identity alone (type and region ignored): which prediction names each gold item
    same_identity = [[i for i, (key, _, _) in enumerate(gi) if key == pkey] for pkey, _, _ in pi]
    by_identity = scorer.max_matching(same_identity, len(gi))
    out = {"missed": [], "wrong_type": [], "wrong_box": [], "spurious": []}
    for i, j in enumerate(owners["gmner"]):
        if j >= 0:
            continue
        if by_identity[i] < 0:
            out["missed"].append((i, -1))
        elif owners["mner"][i] < 0:
            out["wrong_type"].append((i, by_identity[i]))
        else:
            out["wrong_box"].append((i, owners["mner"][i]))
    named = set(by_identity)
    out["spurious"] = [(-1, j) for j in range(len(pi)) if j not in named]
    return out


def mistakes_record(gold: Sample, pred: Sample) -> dict:
    """`mistakes` with entities for indices: {kind: [{"gold": entity or null, "pred": entity or null}]}."""
    found = mistakes(gold, pred)
    return {
        kind: [
            {
                "gold": entity(gold, gold.entities[i]) if i >= 0 else None,
                "pred": entity(pred, pred.entities[j]) if j >= 0 else None,
            }
            for i, j in pairs
        ]
        for kind, pairs in found.items()
    }


def write_trace(
    out: Path,
    tagged: list[Sample],
    final: list[Sample],
    gold: list[Sample] | None,
    traces: dict[str, dict],
) -> None:
    """OUT/trace.jsonl: one `record` per sample, in the order predicted. `traces` is rundir.Run.traces:
    {"refinement" | "grounding": {sample id: its trace}}, a stage absent when it did not run."""
    tagged_by_id = {s.id: s for s in tagged}
    gold_by_id = {s.id: s for s in gold or []}
    refined, grounded = traces.get("refinement", {}), traces.get("grounding", {})
    with atomic(out / "trace.jsonl") as tmp, tmp.open("w", encoding="utf-8") as f:
        for s in final:
            r = record(tagged_by_id[s.id], s, gold_by_id.get(s.id), refined.get(s.id), grounded.get(s.id))
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_trace(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- the page


def write_page(out: Path, n: int) -> None:
    """OUT/report.html from OUT/trace.jsonl, metrics.json and usage.json (written before), with at most `n`
    samples and their thumbnails in OUT/report/ (the ones with the most mistakes when there are more)."""
    records = read_trace(out / "trace.jsonl")
    metrics = read_json(out / "metrics.json")
    usage = read_json(out / "usage.json")
    shown = chosen(records, n)
    colours = type_colours(records)
    cards = []
    with atomic(out / "report") as folder:
        folder.mkdir()
        for k, r in enumerate(shown):
            keys = box_keys(r)
            thumb = thumbnail(r, folder, f"{k:05d}.jpg", keys)
            cards.append(card(r, figure(r, thumb, keys, out, colours), colours))
    sim = simulated(metrics.get("mllm"))
    title = f"ReFineG run {out.name}" + (" (SIMULATION)" if sim else "")
    body = header(title, metrics, usage, sim) + shown_line(len(shown), records) + "".join(cards)
    html = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
    html += f"<style>{CSS}</style></head>\n<body>{body}</body></html>\n"
    with atomic(out / "report.html") as tmp:
        tmp.write_text(html, encoding="utf-8")


def mistake_count(r: dict) -> int:
    return sum(len(v) for v in (r.get("mistakes") or {}).values())


def chosen(records: list[dict], n: int) -> list[dict]:
    """All records when there are at most n, in order; else the n with the most mistakes (then the most
    entities sent to the MLLM), most first."""
    if len(records) <= n:
        return records
    order = sorted(
        range(len(records)),
        key=lambda k: (-mistake_count(records[k]), -sum(e["to_mllm"] for e in records[k]["tagger"]), k),
    )
    return [records[k] for k in order[:n]]


def type_colours(records: list[dict]) -> dict[str, str]:
    kinds = ("tagger", "final", "gold")
    types = sorted({e["type"] for r in records for k in kinds for e in r.get(k) or []})
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(types)}


def box_keys(r: dict) -> dict[tuple[int, int], int]:
    """A number per entity span with a box, the prediction's first, then gold's: the tag drawn on its boxes
    in the thumbnail and the key of the legend under it. Prediction (0, 1), (3, 5) and gold (3, 5), (6, 7),
    all boxed -> {(0, 1): 1, (3, 5): 2, (6, 7): 3}."""
    keys: dict[tuple[int, int], int] = {}
    for e in r["final"] + (r["gold"] or []):
        if e["boxes"]:
            keys.setdefault((e["start"], e["end"]), len(keys) + 1)
    return keys


def thumbnail(r: dict, folder: Path, name: str, keys: dict[tuple[int, int], int]) -> str:
    """The sample's picture with predicted and gold boxes tagged by their `keys`, long side THUMB_SIDE,
    saved in `folder`; its path relative to report.html, or "" when there is no usable image."""
    if not r["image"]:
        return ""
    gold = sample_of(r, "gold") if r["gold"] is not None else None
    try:
        img = picture(sample_of(r, "final"), gold, THUMB_SIDE, keys)
    except ImageError:
        return ""
    img.save(folder / name, quality=THUMB_QUALITY)
    return f"report/{name}"


def sample_of(r: dict, key: str) -> Sample:
    """The record's entities under `key` ("final", "gold", "tagger") as a Sample, to draw."""
    ents = [Entity(e["start"], e["end"], e["type"], [Box(*b) for b in e["boxes"]]) for e in r[key] or []]
    return Sample(r["id"], r["tokens"], r["image"], ents)


# ---------------------------------------------------------------- the page's parts (every text escaped)


def header(title: str, metrics: dict, usage: dict, sim: bool) -> str:
    """The title, a SIMULATION banner when it was one, the scores per stage, the MLLM usage, what ran."""
    parts = [f"<h1>{escape(title)}</h1>"]
    if sim:
        said = metrics.get("mllm") if isinstance(metrics.get("mllm"), dict) else {}
        acc = f" (accuracy {escape(str(said['accuracy']))})" if said.get("accuracy") is not None else ""
        parts.append(
            f'<p class="sim">SIMULATION: the MLLM was servers/simulated_mllm.py{acc}, which answers from '
            "the gold annotations, right with a set probability: these scores are not a real model's</p>"
        )
    scope = metrics.get("scored") or {}
    parts += [scores_table(metrics.get("metrics") or {}, scope), usage_table(usage), notes(metrics)]
    return "<header>" + "".join(parts) + "</header>\n"


def table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table of texts that are already escaped."""
    th = "".join(f"<th>{h}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def scores_table(metrics: dict, scope: dict) -> str:
    rows = [
        [
            escape(stage),
            task.upper(),
            *(f"{m[task][k]:.3f}" for k in scorer.RATES),
            *(str(m[task][k]) for k in scorer.COUNTS),
        ]
        for stage, m in metrics.items()
        for task in TASKS
        if isinstance(m, dict) and task in m
    ]
    if not rows:  # the summary's own words: no gold, or nothing held out (--suggest without --test)
        said = scope_line(scope) if {"samples", "gold_entities", "test"} <= set(scope) else "not scored"
        return f"<p>{escape(said[0].upper() + said[1:])}.</p>"
    head = ["stage", "task", *(k.upper() for k in scorer.RATES + scorer.COUNTS)]
    return "<h2>Scores</h2>" + table(head, rows)


def usage_table(usage: dict) -> str:
    llm = usage.get("llm") or {}
    rows = [[escape(stage), *(escape(str(u.get(k, ""))) for k in USAGE)] for stage, u in llm.items()]
    seconds = ", ".join(f"{escape(k)} {v:.1f}" for k, v in (usage.get("seconds") or {}).items())
    head = ["MLLM", *(k.replace("_", " ") for k in USAGE[:-1]), "seconds in calls"]
    calls = table(head, rows) if rows else "<p>No MLLM call.</p>"
    return f"<h2>MLLM calls and time</h2>{calls}<p>Seconds per stage: {seconds or 'none recorded'}.</p>"


def notes(metrics: dict) -> str:
    """What was routed to the MLLM, and which stages were skipped and why."""
    lines = []
    u = (metrics.get("stages") or {}).get("uncertainty")
    if u:
        lines.append(
            f"Uncertainty: {u['delegated']} of {u['entities']} predicted entities above tau "
            f"({escape(str(u['how']))})."
        )
    skipped = metrics.get("skipped") or {}
    lines += [f"Skipped {escape(stage)}: {escape(why)}." for stage, why in skipped.items()]
    if "refinement" in skipped and "grounding" in skipped:
        lines.append("The MLLM stages were skipped: the entities below are the tagger's, without boxes.")
    return "".join(f"<p>{line}</p>" for line in lines)


def shown_line(n: int, records: list[dict]) -> str:
    total = len(records)
    if n == total:
        what = f"All {total} samples"
    elif n == 0:
        what = f"No sample shown (--report-samples 0); trace.jsonl holds all {total}"
    else:
        what = f"The {n} of {total} samples with the most mistakes; trace.jsonl holds all {total}"
    return f"<h2>Samples</h2><p>{what}.</p>{BOX_KEY if n else ''}\n"


def mark(e: dict, colours: dict[str, str]) -> str:
    """An entity as displaCy shows it: its name on its type's colour, the type label beside."""
    colour = colours.get(e["type"], "#ddd")
    label = f'<span class="t">{escape(e["type"])}</span>'
    return f'<mark style="background:{colour}">{escape(e["name"])}{label}</mark>'


def marked(tokens: list[str], ents: list[dict], colours: dict[str, str]) -> str:
    """The text with its entities marked (an entity overlapping an earlier one is left unmarked)."""
    out = []
    k = 0
    for e in sorted(ents, key=lambda e: (e["start"], -e["end"])):
        if e["start"] < k:
            continue
        out += [escape(t) for t in tokens[k : e["start"]]]
        out.append(mark(e, colours))
        k = e["end"]
    out += [escape(t) for t in tokens[k:]]
    return " ".join(out)


def card(r: dict, fig: str, colours: dict[str, str]) -> str:
    """One sample: its figure (`figure`), its text marked (prediction, gold), then each stage's decisions."""
    n = mistake_count(r)
    said = "no mistake" if n == 0 else "1 mistake" if n == 1 else f"{n} mistakes"
    badge = "" if r["mistakes"] is None else f' <span class="{"bad" if n else "ok"}">{said}</span>'
    parts = [f"<h3>{escape(r['id'])}{badge}</h3>"]
    parts.append(f'<p class="line"><b>prediction</b> {marked(r["tokens"], r["final"], colours)}</p>')
    if r["gold"] is not None:
        parts.append(f'<p class="line"><b>gold</b> {marked(r["tokens"], r["gold"], colours)}</p>')
    parts += [
        tagger_table(r, colours),
        refinement_html(r["refinement"], colours),
        grounding_html(r["grounding"]),
        mistakes_html(r["mistakes"], colours),
    ]
    return f'<section class="card"><figure>{fig}</figure><div class="body">{"".join(parts)}</div></section>\n'


def figure(r: dict, thumb: str, keys: dict[tuple[int, int], int], out: Path, colours: dict[str, str]) -> str:
    """A card's left column: the thumbnail as a link to the full image, then its legend; "no image" when
    there is no thumbnail."""
    if not thumb:
        return '<p class="noimg">no image</p>'
    href = escape(image_link(r["image"], out))
    alt = escape(f"{r['id']}: the image with its boxes")
    img = f'<a href="{href}" title="open the full image"><img src="{escape(thumb)}" alt="{alt}"></a>'
    return img + legend(r, keys, colours)


def image_link(image: str, out: Path) -> str:
    """The href from OUT/report.html to the original image, which is not copied: a relative path, so that
    the run and its data can move together; a file URI where there is none (another drive on Windows)."""
    path = Path(image).resolve()
    try:
        rel = os.path.relpath(path, out.resolve())
    except ValueError:
        return path.as_uri()
    return quote(Path(rel).as_posix())


def legend(r: dict, keys: dict[tuple[int, int], int], colours: dict[str, str]) -> str:
    """Under a thumbnail: each number drawn, its entity marked by type and whose boxes carry it (gold's
    type named when it differs); then the predicted and the gold entities without a box."""
    rows = []
    for (start, end), k in keys.items():
        pred = [e for e in r["final"] if (e["start"], e["end"]) == (start, end) and e["boxes"]]
        gold = [e for e in r["gold"] or [] if (e["start"], e["end"]) == (start, end) and e["boxes"]]
        whose = ['<span class="by p">prediction</span>'] if pred else []
        if gold and pred and gold[0]["type"] != pred[0]["type"]:
            whose.append(f'<span class="by g">gold: {escape(gold[0]["type"])}</span>')
        elif gold:
            whose.append('<span class="by g">gold</span>')
        rows.append(
            f'<li><span class="key">{k}</span> {mark((pred or gold)[0], colours)} {" ".join(whose)}</li>'
        )
    parts = [f'<ul class="legend">{"".join(rows)}</ul>'] if rows else []
    for who, ents in [("Predicted", r["final"]), ("Gold", r["gold"] or [])]:
        unboxed = " ".join(mark(e, colours) for e in ents if not e["boxes"])
        if unboxed:
            parts.append(f'<p class="nobox"><b>{who} without a box:</b> {unboxed}</p>')
    return f'<div class="keys">{"".join(parts)}</div>' if parts else ""


def tagger_table(r: dict, colours: dict[str, str]) -> str:
    """The tagger's entities: uncertainty, whether each went to the MLLM, and what the MLLM decided."""
    if not r["tagger"]:
        return '<p class="muted">The tagger found no entity.</p>'
    decided = {}
    for d in (r["refinement"] or {}).get("decisions", []):
        decided[(d["entity"]["start"], d["entity"]["end"], d["entity"]["type"])] = d
    rows = []
    for e in r["tagger"]:
        d = decided.get((e["start"], e["end"], e["type"]))
        sent = "yes" if e["to_mllm"] else "above tau, not sent" if e["above_tau"] else "no"
        unc = "" if e["uncertainty"] is None else f"{e['uncertainty']:.3f}"
        rows.append([mark(e, colours), unc, sent, decision_html(d, colours) if d else ""])
    if r["refinement"] is None:  # no call for this sample: no decision to show
        return table(["tagger entity", "uncertainty", "to MLLM"], [row[:3] for row in rows])
    return table(["tagger entity", "uncertainty", "to MLLM", "MLLM decision"], rows)


def decision_html(d: dict, colours: dict[str, str]) -> str:
    what = d["decision"]
    if what in (Outcome.CHANGE_TYPE, Outcome.CHANGE_SPAN):
        return f"{escape(what.replace('_', ' '))} to {mark(d['to'], colours)}"
    if what in (Outcome.KEEP, Outcome.REJECT):
        return escape(what)
    return f'<span class="bad">no usable decision ({escape(what)}): kept</span>'


def refinement_html(ref: dict | None, colours: dict[str, str]) -> str:
    """The refinement call's reasoning or failure, and the entities it rejected or added."""
    if ref is None:
        return ""
    parts = []
    if ref["failed"]:
        parts.append(f'<p class="bad">Refinement call failed: {escape(ref["failed"])}</p>')
    if ref["reasoning"]:
        parts.append(f"<blockquote><b>MLLM reasoning</b> {escape(ref['reasoning'])}</blockquote>")
    if ref["rejected"]:
        parts.append(
            "<p>Rejected by the MLLM: " + " ".join(mark(e, colours) for e in ref["rejected"]) + "</p>"
        )
    if ref["added"]:
        parts.append("<p>Added by the MLLM: " + " ".join(mark(e, colours) for e in ref["added"]) + "</p>")
    return "".join(parts)


def grounding_html(g: dict | None) -> str:
    """The grounding call: its outcome, the worked examples shown (why: similarity parts), boxes per name."""
    if g is None:
        return '<p class="muted">Grounding did not run.</p>'
    outcome = escape(OUTCOMES[grounding.Outcome(g["outcome"])])
    error = f": {escape(g['error'])}" if g["error"] else ""
    head = f"<b>Grounding</b> {outcome}{error}"
    parts = [f'<p class="bad">{head}</p>' if error else f"<p>{head}</p>"]
    if g["examples"]:
        shown = ", ".join(example_text(x) for x in g["examples"])
        parts.append(
            f"<p>Worked examples, best first (similarity: text, image, entity &rarr; total): {shown}</p>"
        )
    rows = []
    for name, typ in g["asked"].items():
        got = g["boxes"].get(name)
        said = "no answer" if got is None else "none (ungroundable)" if not got else box_text(got)
        rows.append([escape(name), escape(typ), said])
    return "".join(parts) + (table(["asked", "type", "boxes (pixels)"], rows) if rows else "")


def example_text(x: dict) -> str:
    """A worked example's id and the similarity parts that chose it: text, image, entity -> their weighted
    sum."""
    image = "-" if x["image"] is None else f"{x['image']:.2f}"
    return (
        f"<code>{escape(x['id'])}</code> (text {x['text']:.2f}, image {image}, entity {x['entity']:.2f} "
        f"&rarr; {x['total']:.2f})"
    )


def box_text(bs: list[list[float]]) -> str:
    return "; ".join("[" + ", ".join(f"{v:.0f}" for v in b) + "]" for b in bs) if bs else "none"


def mistakes_html(m: dict | None, colours: dict[str, str]) -> str:
    """What is wrong against gold, by the scorer's matching (`mistakes`)."""
    if m is None:
        return ""
    items = []
    for pair in m["missed"]:
        items.append(f"missed {mark(pair['gold'], colours)}")
    for pair in m["wrong_type"]:
        items.append(f"wrong type: {mark(pair['pred'], colours)}, gold {mark(pair['gold'], colours)}")
    for pair in m["wrong_box"]:
        p, g = pair["pred"], pair["gold"]
        items.append(f"wrong box: {mark(p, colours)} {box_text(p['boxes'])}, gold {box_text(g['boxes'])}")
    for pair in m["spurious"]:
        items.append(f"spurious {mark(pair['pred'], colours)}")
    if not items:
        return '<p class="ok">Right against gold.</p>'
    return '<ul class="bad">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


BOX_KEY = (  # the page's legend of the thumbnails' boxes, drawn by report.picture
    '<p class="boxkey">Boxes on the thumbnails: <span class="swatch p"></span> <b>prediction</b>: red, '
    'solid, its number in red at the top-left corner; <span class="swatch g"></span> <b>gold</b>: green and '
    "white dashes just outside the box, its number in green at the bottom-right corner. Under each "
    "thumbnail, what each number names; click a thumbnail for the full image.</p>"
)
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#f6f6f6;
 max-width:1250px;margin:0 auto;padding:12px 20px}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.15em;margin:1em 0 .3em}h3{margin:0 0 .4em;font-size:1.05em}
.sim{background:#b00020;color:#fff;padding:8px 12px;border-radius:4px;font-weight:600}
table{border-collapse:collapse;margin:.4em 0;font-size:.92em;background:#fff}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#eee;font-weight:600}
.card{display:flex;gap:18px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;
 margin:12px 0}
.card figure{margin:0;flex:0 0 320px;max-width:100%}
.card img{max-width:100%;display:block;border:1px solid #ccc}.card a:hover img{outline:2px solid #3367d6}
.legend{list-style:none;padding:0;margin:.5em 0 0;font-size:.92em}.legend li{margin:.25em 0;line-height:1.9}
.key{display:inline-block;min-width:1.4em;text-align:center;background:#333;color:#fff;border-radius:3px;
 font-weight:700}
.by{font-size:.8em;font-weight:600;padding:.05em .4em;border-radius:3px;color:#fff;white-space:nowrap}
.by.p{background:#cd1919}.by.g{background:#007832}
.nobox{margin:.35em 0;font-size:.92em;line-height:1.9}
.card figure mark{display:inline-block;line-height:1.3}  /* an entity wraps whole under the thumbnail */
.noimg{width:320px;max-width:100%;box-sizing:border-box;padding:1.5em 0;margin:0;text-align:center;color:#444;
 background:#eee;border:1px dashed #aaa}
.boxkey{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 10px}
.swatch{display:inline-block;width:1.6em;height:.8em;vertical-align:middle;background:#fff}
.swatch.p{border:2px solid #cd1919}.swatch.g{border:2px dashed #007832}
/* narrow: the text gets the card's full width, the legend goes beside the thumbnail */
@media (max-width:900px){.card{flex-direction:column}
 .card figure{flex:none;display:flex;flex-wrap:wrap;gap:0 16px}
 .card figure>a{flex:0 0 320px;max-width:100%}.keys{flex:1 1 240px}}
/* a table wider than its column scrolls, not the page */
.body{flex:1;min-width:0;overflow-x:auto}
.line{margin:.25em 0;line-height:2.3;overflow-wrap:anywhere}
mark{padding:.2em .4em;margin:0 .1em;border-radius:.35em;line-height:1;color:#111}
mark .t{font-size:.68em;font-weight:700;text-transform:uppercase;margin-left:.5em;vertical-align:middle}
blockquote{margin:.4em 0;padding:.3em .8em;border-left:3px solid #aa9cfc;background:#f7f5ff;
 overflow-wrap:anywhere;white-space:pre-wrap}
.bad{color:#b00020}.ok{color:#1b7f2a}.muted{color:#888}
code{background:#f0f0f0;padding:0 .3em;border-radius:3px}
"""
