"""Label Studio (labelstud.io): the --suggest samples as a project to correct; its JSON export as a dataset.

Not in the ReFineG paper: the annotation loop around suggest.py. Label Studio takes text spans and image
boxes in one task, so one pass corrects an entity, its type and its boxes.
- Writing (`write_labelstudio`): a folder with `config.xml` (the labelling config: the types as <Labels> on
  the tokens joined by spaces and as <RectangleLabels> on the image, a per-entity "not in the image" choice,
  a "box of" relation from an entity to each of its boxes), `tasks.json` (one task per sample; `data` holds
  sample_id, text, image URL, doubt, why, rank and round; the tagger's entities and boxes go in
  `predictions`, never `annotations`) and `types.txt`.
- Reading (`read_labelstudio`): a Label Studio JSON export of those tasks, types from the `types.txt` (or
  `config.xml`) beside it. Only annotations are gold; the rules for several annotations, boxes without a
  relation, entities without a box or a choice and spans off token boundaries are in docs/labelling.md.

    python -m formats runs/round1/labelstudio/export.json     # reads an export back, prints its statistics

Left out on purpose: Label Studio's other export formats (JSON-MIN, CSV, COCO, CoNLL: they drop the relation
from a box to its entity), rotated boxes (the config turns rotation off), its ML-backend API.
"""

import json
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from data import Box, DataError, Dataset, Entity, Sample, find_image, is_number
from formats.ccks import ID_RE, read_types, types_text
from images import ImageError, image_size

SPAN, BOX, CHOICE = "label", "box", "grounding"  # the names of the config's three controls
NOT_IN_IMAGE = "not in the image"  # the per-entity choice that makes a missing box a decision
RELATION = "box of"  # the label of the relation from an entity (text span) to one of its boxes
LOCAL_FILES = "/data/local-files/?d="  # Label Studio serves LOCAL_FILES_DOCUMENT_ROOT/<d> at this path
EDGE = 1e-3  # percent: Label Studio's float rounding past an image edge, clipped; beyond it is an error


# ---------------------------------------------------------------- writing the project


def labelling_config(types: list[str]) -> str:
    """The labelling config: word-snapped spans typed by <Labels>, boxes typed by the same labels, a
    per-region "not in the image" choice and a "box of" relation (span -> box)."""
    labels = "".join(f"    <Label value={quoteattr(t)}/>\n" for t in types)
    return (
        "<View>\n"
        '  <Header value="$sample_id (round $round, doubt $doubt)"/>\n'
        '  <Text name="text" value="$text" granularity="word"/>\n'
        f'  <Labels name="{SPAN}" toName="text" choice="single">\n{labels}  </Labels>\n'
        f'  <Choices name="{CHOICE}" toName="text" perRegion="true" choice="single">\n'
        f'    <Choice value="{NOT_IN_IMAGE}"/>\n  </Choices>\n'
        '  <Image name="image" value="$image" zoom="true"/>\n'
        f'  <RectangleLabels name="{BOX}" toName="image" canRotate="false">\n{labels}  </RectangleLabels>\n'
        f'  <Relations>\n    <Relation value="{RELATION}"/>\n  </Relations>\n'
        "</View>\n"
    )


def image_prefix(setting: str, images: Path) -> str:
    """The URL prefix of the task images: `setting` when given, else Label Studio's local-file serving of
    `images` with LOCAL_FILES_DOCUMENT_ROOT=/ (`/data/local-files/?d=abs/path/to/images/`)."""
    if setting:
        return setting
    return LOCAL_FILES + quote(str(images.resolve()).lstrip("/")) + "/"


def write_labelstudio(
    rows: list[tuple[Sample, float, str]], dataset: Dataset, folder: Path, round_: int, prefix: str
) -> None:
    """`folder`/config.xml, tasks.json and types.txt for the (sample, doubt score, why) rows, best first:
    the image of sample `x.jpg` at `prefix + "x.jpg"`, the samples' entities (and boxes) as predictions."""
    folder.mkdir(parents=True)
    (folder / "config.xml").write_text(labelling_config(dataset.types), encoding="utf-8")
    (folder / "types.txt").write_text(types_text(dataset) + "\n", encoding="utf-8")
    tasks = []
    for rank, (s, score, why) in enumerate(rows, 1):
        image = prefix + f"{s.id}{Path(s.image).suffix.lower()}" if s.image else ""
        data = {"sample_id": s.id, "text": s.text, "image": image}
        data |= {"doubt": round(score, 4), "why": why, "rank": rank, "round": round_}
        result = prediction_result(s, size_or_none(s.image))
        tasks.append(
            {"data": data, "predictions": [{"model_version": f"refineg-round{round_}", "result": result}]}
        )
    text = json.dumps(tasks, ensure_ascii=False, indent=1)
    (folder / "tasks.json").write_text(text + "\n", encoding="utf-8")


def size_or_none(path: str | None) -> tuple[int, int] | None:
    """An image's upright (width, height), or None when there is none or it cannot be read (boxes then are
    not offered: a box needs the image's size to become Label Studio's percentages). Upright, the frame
    Label Studio shows and records original_width/height in, since the browser applies the EXIF tag."""
    try:
        return image_size(path) if path else None
    except ImageError:
        return None


def token_offsets(tokens: list[str]) -> list[tuple[int, int]]:
    """Character [start, end) of each token in the tokens joined by single spaces: a b -> [(0, 1), (2, 3)]."""
    offsets = []
    pos = 0
    for t in tokens:
        offsets.append((pos, pos + len(t)))
        pos += len(t) + 1
    return offsets


def prediction_result(s: Sample, size: tuple[int, int] | None) -> list[dict]:
    """A sample's entities as Label Studio regions: span `e<k>`, its boxes `e<k>b<j>`, a relation to each."""
    offsets = token_offsets(s.tokens)
    result = []
    for k, e in enumerate(s.entities):
        value = {
            "start": offsets[e.start][0],
            "end": offsets[e.end - 1][1],
            "text": s.name(e),
            "labels": [e.type],
        }
        span = {"id": f"e{k}", "from_name": SPAN, "to_name": "text", "type": "labels", "value": value}
        if e.uncertainty is not None:
            span["score"] = round(1 - e.uncertainty, 4)  # Label Studio shows a region's score as confidence
        result.append(span)
        for j, b in enumerate(e.boxes if size else []):
            result.append(rectangle(f"e{k}b{j}", b, e.type, size))
            result.append(relation(f"e{k}", f"e{k}b{j}"))
    return result


def relation(span: str, box: str) -> dict:
    return {"type": "relation", "from_id": span, "to_id": box, "direction": "right", "labels": [RELATION]}


def rectangle(rid: str, b: Box, typ: str, size: tuple[int, int]) -> dict:
    """A box in pixels as a Label Studio rectangle: percentages of the upright image's width and height."""
    w, h = size
    value = {
        "x": 100 * b.x1 / w,
        "y": 100 * b.y1 / h,
        "width": 100 * (b.x2 - b.x1) / w,
        "height": 100 * (b.y2 - b.y1) / h,
        "rotation": 0,
        "rectanglelabels": [typ],
    }
    return {
        "id": rid,
        "from_name": BOX,
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": value,
    }


# ---------------------------------------------------------------- reading an export


@dataclass
class ImportCounts:
    """What reading an export decided, reported in one warning line (docs/labelling.md has the rules)."""

    tasks: int = 0  # tasks in the export
    no_annotation: int = 0  # tasks with no annotation (predictions alone are not gold): skipped
    cancelled: int = 0  # tasks whose every annotation was cancelled (skipped by the annotator): skipped
    several: int = 0  # tasks with several annotations: the ground-truth one, else the latest, was read
    snapped: int = 0  # spans widened to the tokens they touch
    undecided: int = 0  # entities with neither a box nor "not in the image": read as not in the image
    by_label: int = 0  # boxes with no relation, given to the one entity of their label
    missing_images: int = 0  # samples read as text-only because their image is not found


def export_tasks(path: Path) -> list | None:
    """The tasks of a Label Studio JSON export at `path`, or None when the file is not JSON (CoNLL).

    A file whose first character (after blanks) is `[` and that parses as JSON is an export; a `.json`
    file that is not a JSON list is an error, so an entity.json given as --data is not read as CoNLL."""
    with path.open(encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    is_json = path.suffix.lower() == ".json"
    if not head.startswith("["):
        if is_json:
            raise DataError(f"{path}: expected a Label Studio JSON export, a list of tasks [...]")
        return None
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        if is_json:
            raise DataError(f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}") from None
        return None  # a CoNLL file whose first token is "["
    return tasks


def read_labelstudio(path: str | Path, tasks: list, image_dirs: list[str | Path] | None = None) -> Dataset:
    """The annotated tasks of a Label Studio JSON export as a dataset (types from the types.txt beside it).

    Images are looked up by sample id in `image_dirs`, else in `images/` beside the export, else in the
    run's `suggested/images/` (an export saved in OUT/labelstudio/ next to the tasks it came from)."""
    path = Path(path)
    types, type_text, generic = export_types(path)
    dirs = [Path(d) for d in image_dirs or []] or [
        path.parent / "images",
        path.parent.parent / "suggested" / "images",
    ]
    counts = ImportCounts()
    samples = parse_export(tasks, types, str(path), dirs, counts)
    decided = {k: v for k, v in vars(counts).items() if v and k != "tasks"}
    if decided:
        said = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in decided.items())
        warnings.warn(f"{path}: {len(samples)} of {counts.tasks} tasks read; {said}", stacklevel=2)
    return Dataset(samples, types, type_text, generic, counts.missing_images)


def export_types(path: Path) -> tuple[list[str], str, list[str]]:
    """The types of an export: types.txt beside it (with config.xml, whose labels must be the same), or
    config.xml alone (names without descriptions)."""
    txt = path.parent / "types.txt"
    xml = path.parent / "config.xml"
    if not txt.is_file() and not xml.is_file():
        raise DataError(
            f"{path}: expected types.txt (or the config.xml of the project) beside the export: its types"
        )
    config = config_types(xml) if xml.is_file() else None
    if not txt.is_file():
        return config, "", []
    types, type_text, generic = read_types(txt)
    if config is not None and config != types:
        raise DataError(f"{xml}: the labelling config's labels {config} are not the types of {txt}: {types}")
    return types, type_text, generic


def config_types(xml: Path) -> list[str]:
    """The labels of a labelling config: those of its <Labels name="label">, which its
    <RectangleLabels name="box"> must repeat."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as err:
        raise DataError(f"{xml}: malformed XML: {err}") from None
    found = {}
    for tag, name in (("Labels", SPAN), ("RectangleLabels", BOX)):
        node = root.find(f".//{tag}[@name='{name}']")
        if node is None:
            raise DataError(
                f'{xml}: expected <{tag} name="{name}">: not the labelling config of formats/labelstudio.py'
            )
        found[tag] = [label.get("value") for label in node.iter("Label")]
    if found["Labels"] != found["RectangleLabels"]:
        raise DataError(
            f"{xml}: <Labels> {found['Labels']} and <RectangleLabels> {found['RectangleLabels']} differ"
        )
    return found["Labels"]


def parse_export(
    tasks: list, types: list[str], path: str, dirs: list[Path], counts: ImportCounts
) -> list[Sample]:
    """One sample per task with an annotation; a missing or repeated sample id is an error."""
    if not tasks:  # the browser's export holds only annotated tasks
        raise DataError(f"{path}: a Label Studio export with no task (none annotated yet?)")
    seen: dict[str, int] = {}
    samples = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise DataError(
                f'{path}: task {i}: expected a Label Studio task {{"data": {{...}}, "annotations": [...]}}'
            )
        where = f"{path}: task {i} (Label Studio id {task.get('id')})"
        sid = task["data"].get("sample_id")
        if not isinstance(sid, str) or not ID_RE.fullmatch(sid):
            raise DataError(f"{where}: expected data.sample_id, a plain name (images/<id>.jpg), got {sid!r}")
        if sid in seen:
            raise DataError(f"{where}: sample_id {sid!r} is also task {seen[sid]} (a sample is one task)")
        seen[sid] = i
        sample = read_task(task, f"{where} sample {sid!r}", types, dirs, counts)
        if sample is not None:
            samples.append(sample)
    counts.tasks = len(tasks)
    return samples


def read_task(
    task: dict, where: str, types: list[str], dirs: list[Path], counts: ImportCounts
) -> Sample | None:
    """The sample of one task from its chosen annotation; None (counted) when it has none."""
    text = task["data"].get("text")
    if not isinstance(text, str):
        raise DataError(f"{where}: expected data.text, the tokens joined by spaces, got {text!r}")
    annotation = chosen_annotation(task.get("annotations"), where, counts)
    if annotation is None:
        return None
    sid = task["data"]["sample_id"]
    image = find_image(dirs, sid)
    counts.missing_images += image is None
    where = f"{where}, annotation {annotation.get('id')}"
    matches = list(re.finditer(r"\S+", text))
    tokens = [m.group() for m in matches]
    offsets = [m.span() for m in matches]
    size = size_or_none(image)
    entities = annotation_entities(annotation.get("result"), offsets, types, size, where, counts)
    return Sample(sid, tokens, image, entities)


def chosen_annotation(annotations: object, where: str, counts: ImportCounts) -> dict | None:
    """The one rule for a task's annotations: cancelled ones never count; of the others, a ground-truth
    one (a reviewer's mark) before any other, then the most recently updated, then the highest id."""
    if annotations is None:
        annotations = []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise DataError(f"{where}: expected annotations, a list of objects, got {annotations!r}")
    kept = [a for a in annotations if not a.get("was_cancelled")]
    if not kept:
        if annotations:
            counts.cancelled += 1
        else:
            counts.no_annotation += 1
        return None
    if len(kept) > 1:
        counts.several += 1
    return max(kept, key=lambda a: (bool(a.get("ground_truth")), when(a, where), a.get("id") or 0))


def when(annotation: dict, where: str) -> datetime:
    """An annotation's last update (or creation) time; an export without times sorts by id alone."""
    stamp = annotation.get("updated_at") or annotation.get("created_at") or "1970-01-01T00:00:00+00:00"
    try:
        t = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))  # Python 3.10 reads no "Z"
    except ValueError:
        raise DataError(
            f"{where}: annotation {annotation.get('id')}: expected an ISO time, got {stamp!r}"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=datetime.now().astimezone().tzinfo)


def annotation_entities(
    result: object,
    offsets: list[tuple[int, int]],
    types: list[str],
    size: tuple[int, int] | None,
    where: str,
    counts: ImportCounts,
) -> list[Entity]:
    """The entities of one annotation's result: spans, each with the boxes related to it, or none."""
    if not isinstance(result, list):
        raise DataError(f"{where}: expected result, a list of regions, got {result!r}")
    spans, rects, choices, relations = regions(result, where)
    entities = {
        rid: span_entity(v, offsets, types, f"{where}, region {rid!r}", counts) for rid, v in spans.items()
    }
    owners = box_owners(relations, spans, rects, where)
    for rid, item in rects.items():
        at = f"{where}, box {rid!r}"
        box, label = rect_box(item, types, size, at)
        mine = owners.get(rid) or [s for s, e in entities.items() if e.type == label]
        if rid not in owners and len(mine) != 1:
            raise DataError(
                f"{at}: no relation to its entity, and {len(mine)} entities are {label!r}: "
                f"draw a relation from the entity to the box"
            )
        counts.by_label += rid not in owners
        for s in mine:
            if entities[s].type != label:
                raise DataError(f"{at}: labelled {label!r}, but its entity {s!r} is {entities[s].type!r}")
            if box not in entities[s].boxes:  # the same box twice is one box
                entities[s].boxes.append(box)
    for rid, e in entities.items():
        said = NOT_IN_IMAGE in choices.get(rid, [])
        if said and e.boxes:
            raise DataError(f"{where}, region {rid!r}: has a box and the choice {NOT_IN_IMAGE!r}")
        counts.undecided += not said and not e.boxes
    return merged(list(entities.values()), where)


def regions(result: list, where: str) -> tuple[dict, dict, dict, list]:
    """The result's items by kind: spans, rectangles and per-region choices by region id, and relations."""
    spans, rects, choices, relations = {}, {}, {}, []
    for j, item in enumerate(result):
        if not isinstance(item, dict):
            raise DataError(f"{where}: result {j}: expected an object, got {item!r}")
        kind = (item.get("from_name"), item.get("type"))
        if item.get("type") == "relation":
            relations.append(item)
        elif kind == (SPAN, "labels"):
            spans[item.get("id")] = item
        elif kind == (BOX, "rectanglelabels"):
            rects[item.get("id")] = item
        elif kind == (CHOICE, "choices"):
            choices[item.get("id")] = (item.get("value") or {}).get("choices") or []
        else:
            raise DataError(
                f"{where}: result {j}: from_name {kind[0]!r} of type {kind[1]!r} is not in the labelling "
                f"config ({SPAN}, {BOX}, {CHOICE}, relations): was the project made with its config.xml?"
            )
    return spans, rects, choices, relations


def one_label(item: dict, key: str, types: list[str], where: str) -> str:
    labels = (item.get("value") or {}).get(key)
    if not isinstance(labels, list) or len(labels) != 1:
        raise DataError(f"{where}: expected one label, got {labels!r}")
    if labels[0] not in types:
        raise DataError(f"{where}: label {labels[0]!r} is not in types.txt {types}")
    return labels[0]


def span_entity(
    item: dict, offsets: list[tuple[int, int]], types: list[str], where: str, counts: ImportCounts
) -> Entity:
    """A text region as an entity over the tokens it touches (a span off token boundaries is widened to
    them, counted)."""
    typ = one_label(item, "labels", types, where)
    start = item["value"].get("start")
    end = item["value"].get("end")
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end:
        raise DataError(f"{where}: expected character offsets 0 <= start < end, got {start!r}, {end!r}")
    touched = [k for k, (a, b) in enumerate(offsets) if a < end and b > start]
    if not touched:
        raise DataError(f"{where}: the span [{start}, {end}) holds no token of the text")
    first, last = touched[0], touched[-1]
    counts.snapped += (offsets[first][0], offsets[last][1]) != (start, end)
    return Entity(first, last + 1, typ)


def box_owners(relations: list, spans: dict, rects: dict, where: str) -> dict[str, list[str]]:
    """Box region id -> the span region ids a relation joins it to (either direction)."""
    owners: dict[str, list[str]] = {}
    for rel in relations:
        ends = [rel.get("from_id"), rel.get("to_id")]
        missing = [r for r in ends if r not in spans and r not in rects]
        if missing:
            raise DataError(f"{where}: relation {ends[0]!r} -> {ends[1]!r}: no region {missing[0]!r}")
        box = [r for r in ends if r in rects]
        span = [r for r in ends if r in spans]
        if len(box) != 1 or len(span) != 1:
            raise DataError(f"{where}: relation {ends[0]!r} -> {ends[1]!r}: expected an entity and a box")
        if span[0] not in owners.setdefault(box[0], []):
            owners[box[0]].append(span[0])
    return owners


def rect_box(item: dict, types: list[str], size: tuple[int, int] | None, where: str) -> tuple[Box, str]:
    """A rectangle in percentages of original_width x original_height as a Box in pixels, and its label.
    Both are the upright frame (`size` is images.image_size), so a box on a rotated photo reads back where
    it was drawn."""
    label = one_label(item, "rectanglelabels", types, where)
    w, h = item.get("original_width"), item.get("original_height")
    v = item["value"]
    xywh = [v.get(k) for k in ("x", "y", "width", "height")]
    if not all(is_count(n) for n in (w, h)) or not all(is_number(n) for n in xywh):
        raise DataError(
            f"{where}: expected original_width, original_height and x, y, width, height, got {item!r}"
        )
    if v.get("rotation", 0) != 0:
        raise DataError(f"{where}: a rotated box (rotation {v['rotation']}) is not an axis-aligned box")
    if size and size != (w, h):
        raise DataError(f"{where}: drawn on a {w}x{h} image, but the sample's image is {size[0]}x{size[1]}")
    x, y, bw, bh = xywh
    if x < -EDGE or y < -EDGE or x + bw > 100 + EDGE or y + bh > 100 + EDGE or bw <= 0 or bh <= 0:
        raise DataError(
            f"{where}: the box x={x}, y={y}, width={bw}, height={bh} (percent) is not inside the image"
        )
    pct = [min(max(p, 0.0), 100.0) for p in (x, y, x + bw, y + bh)]
    return Box(pct[0] * w / 100, pct[1] * h / 100, pct[2] * w / 100, pct[3] * h / 100), label


def is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def merged(entities: list[Entity], where: str) -> list[Entity]:
    """Entities in text order; the same span and type twice is one entity, overlapping spans an error."""
    out: list[Entity] = []
    for e in sorted(entities, key=lambda e: (e.start, e.end, e.type)):
        if out and (out[-1].start, out[-1].end, out[-1].type) == (e.start, e.end, e.type):
            out[-1].boxes += [b for b in e.boxes if b not in out[-1].boxes]
        elif out and e.start < out[-1].end:
            raise DataError(
                f"{where}: entities at tokens [{out[-1].start}, {out[-1].end}) and "
                f"[{e.start}, {e.end}) overlap (nested entities are not supported)"
            )
        else:
            out.append(e)
    return out
