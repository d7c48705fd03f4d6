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
  `EXPORT` is the `formats.Reader` the application passes to `formats.read_dataset`, so every dataset flag
  reads an export (`read_export` also recognises the other exports below).

    python -m formats runs/round1/labelstudio/export.json     # reads an export back, prints its statistics

Left out on purpose: Label Studio's other export formats (JSON-MIN, CSV, TSV, COCO, CONLL2003: they drop the
relation from a box to its entity; each is recognised and refused, or warned about, saying to export "JSON"),
rotated boxes (the config turns rotation off), its ML-backend API.
"""

import json
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from data import Box, DataError, Dataset, Entity, Sample, is_number
from formats import Reader, accepted, first_line
from formats.ccks import ID_RE, read_types, types_text
from formats.rules import find_image, size_or_none

SPAN, BOX, CHOICE = "label", "box", "grounding"  # the names of the config's three controls
NOT_IN_IMAGE = "not in the image"  # the per-entity choice that makes a missing box a decision
RELATION = "box of"  # the label of the relation from an entity (text span) to one of its boxes
LOCAL_FILES = "/data/local-files/?d="  # Label Studio serves LOCAL_FILES_DOCUMENT_ROOT/<d> at this path
WANTS_JSON = (  # why Label Studio's other exports of a project are refused, and what to do
    "drop the regions' ids and the relations from entities to their boxes, which this reader needs: export "
    'the project as "JSON" instead'
)
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

REQUIRED = object()  # `field`'s default: the key must be there
JSON_KINDS = {  # what `field` can expect of a value read from JSON; a bool is never a number
    "an object": lambda v: isinstance(v, dict),
    "a list": lambda v: isinstance(v, list),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a string": lambda v: isinstance(v, str),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "an integer or a string": lambda v: isinstance(v, int | str) and not isinstance(v, bool),
    "a positive integer": lambda v: is_count(v),
    "a number": is_number,
    "true or false": lambda v: isinstance(v, bool),
}


def field(obj: dict, key: str, kind: str, where: str, what: str = "", default: object = REQUIRED) -> Any:
    """`obj[key]` when it is of `kind` (a key of JSON_KINDS), else a DataError at `where`; a missing or null
    key is `default` when one is given. `what` says what the value is for: {"start": "3"}, "start",
    "an integer", what="a character offset" -> "WHERE: expected start, an integer (a character offset), got
    '3'"."""
    value = obj.get(key)
    if value is None and default is not REQUIRED:
        return default
    if not JSON_KINDS[kind](value):
        got = shown(value) if key in obj else "nothing"
        said = f"{kind} ({what})" if what else kind
        raise DataError(f"{where}: expected {key}, {said}, got {got}")
    return value


def shown(value: object, limit: int = 60) -> str:
    """A value as a message shows it: its repr, cut to `limit` characters (a whole task is long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def read_export(path: Path, images: list[str | Path] | None = None) -> Dataset | None:
    """`EXPORT`'s read: the dataset of a Label Studio JSON export, or None for a file that is none of Label
    Studio's exports (its CONLL2003 export is one: read as plain CoNLL, warned about); its JSON-MIN, CSV,
    TSV and COCO exports are refused, saying to export "JSON"."""
    tasks = export_tasks(path)
    if tasks is not None:
        return read_labelstudio(path, tasks, images or None)
    if path.suffix.lower() == ".json":
        refuse_coco(path)
        return None
    other_export(path, first_line(path))  # Label Studio's CSV or TSV export is refused, CONLL2003 warned
    return None


EXPORT = Reader("a Label Studio JSON export (a list of tasks [...])", read_export)


def refuse_coco(path: Path) -> None:
    """A COCO file (images and categories, no text) is refused; any other JSON is left to read_dataset's
    error, which says what the dataset flags take (a malformed one too, with its line and column)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError:
        return
    if isinstance(value, dict) and {"images", "categories"} <= value.keys():
        raise DataError(
            f"{path}: expected {accepted([EXPORT])}; got a COCO file (Label Studio's COCO export has no "
            'text): export the project as "JSON"'
        )


def export_tasks(path: Path) -> list | None:
    """The tasks of a Label Studio JSON export at `path`, or None when the file is not a JSON list.

    A file whose first character (after blanks) is `[` and that parses as JSON is an export; a malformed
    `.json` file is an error, any other file that fails to parse is None (a CoNLL file whose first token
    is "["), and so is a `.json` file holding something else (read_dataset says what it takes)."""
    with path.open(encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        if path.suffix.lower() == ".json":
            raise DataError(f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}") from None
        return None


def other_export(path: Path, first: str) -> None:
    """Label Studio's other exports of a text file, by their first line: CSV and TSV (a header naming
    annotation_id and annotator) are refused, CONLL2003 (`-DOCSTART- -X- O`) reads as plain CoNLL and is
    warned about. They drop the sample ids, the boxes and the relation from a box to its entity."""
    header = {name.strip().strip('"') for name in re.split(r"[,\t]", first)}
    if {"annotation_id", "annotator"} <= header:
        kind = "TSV" if "\t" in first else "CSV"
        raise DataError(f"{path}: this is Label Studio's {kind} export, whose rows {WANTS_JSON}")
    if first.split() == ["-DOCSTART-", "-X-", "O"]:
        warnings.warn(
            f"{path}: Label Studio's CONLL2003 export, read as plain CoNLL: no sample ids (they are numbered "
            'from 0), images or boxes; export the project as "JSON" to keep them',
            stacklevel=3,
        )


def read_labelstudio(path: str | Path, tasks: list, image_dirs: list[str | Path] | None = None) -> Dataset:
    """The annotated tasks of a Label Studio JSON export as a dataset (types from the types.txt beside it).

    Images are looked up by sample id in `image_dirs`, else in `images/` beside the export, else in the
    run's `suggested/images/` (an export saved in OUT/labelstudio/ next to the tasks it came from)."""
    path = Path(path)
    if tasks and is_json_min(tasks[0]):
        raise DataError(
            f"{path}: this is Label Studio's minimal JSON export (JSON-MIN, exportType=JSON_MIN), whose flat "
            f"objects {WANTS_JSON}"
        )
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
                f'{xml}: expected <{tag} name="{name}">: not the labelling config of labelling/labelstudio.py'
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
        data = task_data(task, f"{path}: task {i}")
        where = f"{path}: task {i} (Label Studio id {task.get('id')})"
        sid = data.get("sample_id")
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


def is_json_min(task: object) -> bool:
    """A record of Label Studio's JSON-MIN export: the task's data, its labels and the annotation's id at
    the top level, no `data` and no `annotations`."""
    flat = isinstance(task, dict) and "data" not in task and "annotations" not in task
    return flat and ("annotation_id" in task or "sample_id" in task)


def task_data(task: object, where: str) -> dict:
    """The `data` of one task, which must be an object."""
    if not isinstance(task, dict):
        raise DataError(
            f'{where}: expected a Label Studio task, an object {{"data": {{...}}, "annotations": [...]}}, '
            f"got {shown(task)}"
        )
    return field(task, "data", "an object", where, "{sample_id, text, image, ...}")


def read_task(
    task: dict, where: str, types: list[str], dirs: list[Path], counts: ImportCounts
) -> Sample | None:
    """The sample of one task from its chosen annotation; None (counted) when it has none."""
    text = field(task["data"], "text", "a string", where, "the tokens joined by spaces")
    annotation = chosen_annotation(field(task, "annotations", "a list", where, default=[]), where, counts)
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
    result = field(annotation, "result", "a list", where, "of regions")
    entities = annotation_entities(result, offsets, types, size, where, counts)
    return Sample(sid, tokens, image, entities)


def chosen_annotation(annotations: list, where: str, counts: ImportCounts) -> dict | None:
    """The one rule for a task's annotations: cancelled ones never count; of the others, a ground-truth
    one (a reviewer's mark) before any other, then the most recently updated, then the highest id."""
    for k, a in enumerate(annotations):
        at = f"{where}, annotations[{k}]"
        if not isinstance(a, dict):
            raise DataError(f'{at}: expected an annotation, an object {{"result": [...]}}, got {shown(a)}')
        field(a, "id", "an integer or a string", at, default=0)
        field(a, "was_cancelled", "true or false", at, default=False)
        field(a, "ground_truth", "true or false", at, default=False)
    kept = [a for a in annotations if not a.get("was_cancelled")]
    if not kept:
        if annotations:
            counts.cancelled += 1
        else:
            counts.no_annotation += 1
        return None
    if len(kept) > 1:
        counts.several += 1
    return max(kept, key=lambda a: (bool(a.get("ground_truth")), when(a, where), id_order(a)))


def id_order(annotation: dict) -> str:
    """An annotation id as a sort key: digits padded to one width, so 9 < 10 whether the export wrote ids as
    numbers or (as Label Studio's documentation shows) as strings."""
    return str(annotation.get("id") or 0).zfill(20)


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
    result: list,
    offsets: list[tuple[int, int]],
    types: list[str],
    size: tuple[int, int] | None,
    where: str,
    counts: ImportCounts,
) -> list[Entity]:
    """The entities of one annotation's result: spans, each with the boxes related to it, or none."""
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
        kind = region_kind(item, f"{where}, result {j}")
        if kind == "relation":
            relations.append(item)
            continue
        rid = field(item, "id", "a string", f"{where}, result {j}", "a region id")
        at = f"{where}, region {rid!r}"
        value = field(item, "value", "an object", at, "{start, end, labels, ...} or {x, y, ...}")
        if kind == "span":
            spans[rid] = item
        elif kind == "box":
            rects[rid] = item
        else:
            choices[rid] = field(value, "choices", "a list of strings", at)
    return spans, rects, choices, relations


def region_kind(item: object, where: str) -> str:
    """What one result item is: "span", "box", "choice" (the config's three controls) or "relation" (whose
    two ends must be region ids)."""
    if not isinstance(item, dict):
        raise DataError(
            f'{where}: expected a region, an object {{"id", "type", "value", ...}}, got {shown(item)}'
        )
    typ = field(item, "type", "a string", where)
    if typ == "relation":
        field(item, "from_id", "a string", where, "a region id")
        field(item, "to_id", "a string", where, "a region id")
        return "relation"
    name = field(item, "from_name", "a string", where, "the name of a control of the labelling config")
    kinds = {(SPAN, "labels"): "span", (BOX, "rectanglelabels"): "box", (CHOICE, "choices"): "choice"}
    if (name, typ) not in kinds:
        raise DataError(
            f"{where}: from_name {name!r} of type {typ!r} is not in the labelling "
            f"config ({SPAN}, {BOX}, {CHOICE}, relations): was the project made with its config.xml?"
        )
    return kinds[name, typ]


def one_label(item: dict, key: str, types: list[str], where: str) -> str:
    """The one label of a region (its `value`'s `labels` or `rectanglelabels`), which must be a type."""
    labels = field(item["value"], key, "a list of strings", where, "one label")
    if len(labels) != 1:
        raise DataError(f"{where}: expected {key}, one label, got {shown(labels)}")
    if labels[0] not in types:
        raise DataError(f"{where}: label {labels[0]!r} is not in types.txt {types}")
    return labels[0]


def span_entity(
    item: dict, offsets: list[tuple[int, int]], types: list[str], where: str, counts: ImportCounts
) -> Entity:
    """A text region as an entity over the tokens it touches (a span off token boundaries is widened to
    them, counted)."""
    typ = one_label(item, "labels", types, where)
    start = field(item["value"], "start", "an integer", where, "a character offset into data.text")
    end = field(item["value"], "end", "an integer", where, "a character offset into data.text")
    if not 0 <= start < end:
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
    w, h = [
        field(item, k, "a positive integer", where, "pixels") for k in ("original_width", "original_height")
    ]
    v = item["value"]
    xywh = [
        field(v, k, "a number", where, "a percentage of the image") for k in ("x", "y", "width", "height")
    ]
    rotation = field(v, "rotation", "a number", where, "degrees", default=0)
    if rotation != 0:
        raise DataError(f"{where}: a rotated box (rotation {rotation}) is not an axis-aligned box")
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
