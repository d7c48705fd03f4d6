"""The CCKS layout (the CCKS-2025 GMNER shared task): reading gold data and writing predictions.

A folder holds `text.json` {id: {"text"}}, optional `entity.json`
{id: [{"name", "label", "bnd"}]} (absent = unlabelled data), `images/<id>.jpg`
and `types.txt` (the type descriptions the prompts use). Names become token
spans by data.py's rule (`label_names`), boxes follow formats/rules.py's policy (`gold_box`).
Predictions are written in the same `entity.json` layout, one record per box,
and read back leniently: a record that cannot be placed is a model's mistake,
returned for the scorer to count, not refused.

    python -m formats examples/demo     # reads a CCKS folder (through read_dataset) and prints its statistics

Left out on purpose: character offsets (a record names its entity and every occurrence of
the name is labelled, by data.py's rule).
"""

import json
import re
import warnings
from collections import Counter
from pathlib import Path

from data import (
    Box,
    DataError,
    Dataset,
    Entity,
    Sample,
    label_names,
    tokenize,
    without_spaces,
)
from formats.rules import find_image, gold_box, size_or_none

ID_RE = re.compile(r"\w[\w.-]*")  # a sample id names its image file: no path separators, no leading dot
CONTROL_HINT = " (a tab or line break inside a string must be written \\t or \\n)"
TYPE_LINE = re.compile(r"^\s*\d+\.\s*([A-Za-z][\w-]*)\s*:")  # "3. vessel: ..." names a type
# a line that starts like a type line must be one: "7. ship:", "7) ship", "7 ship - ..." are errors
NUMBERED = re.compile(r"^\s*\d+(?:\s*[.):]|\s+[A-Za-z][\w-]*\s*[-:])")


def read_types(path: Path) -> tuple[list[str], str, list[str]]:
    """The type names, the full text and the "do not extract" examples of a types.txt.

    Type lines look like `3. vessel: Watercraft for ...`; the do-not line holds
    `(e.g.: gun, air base, ...)`.
    """
    text = path.read_text(encoding="utf-8-sig").replace("\ufeff", "")  # a BOM anywhere would hide a type line
    types = check_type_lines(path, text)
    generic = []
    m = re.search(r"DO NOT.*?\(e\.g\.:?\s*([^)]*)\)", text, flags=re.S)
    if m:
        generic = [w.strip() for w in m.group(1).split(",") if w.strip()]
    return types, text.strip(), generic


def check_type_lines(path: Path, text: str) -> list[str]:
    """The type names of a types.txt, in order; a DataError names the line of a numbered line that is not
    `N. name: description` or of a name given twice (which would give the tagger two tags for one type).
    "3. vessel: Watercraft ..." -> "vessel"; "3 vessel - Watercraft" -> an error naming line 3."""
    types: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not NUMBERED.match(line):  # descriptions may go on over lines of their own
            continue
        m = TYPE_LINE.match(line)
        if not m or not line[m.end() :].strip():
            raise DataError(
                f"{path}:{number}: expected 'N. name: description' (e.g. '1. vehicle: tanks, "
                f"...'), got {line.strip()!r}"
            )
        name = m.group(1)
        if name.lower() in first_line:
            raise DataError(
                f"{path}:{number}: type {name!r} is already named on line "
                f"{first_line[name.lower()]} (each type once)"
            )
        first_line[name.lower()] = number
        types.append(name)
    if not types:
        raise DataError(f"{path}: expected lines like '1. vehicle: description', found no type")
    return types


def _load_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:  # str(err), not err.msg: some messages end in "at" and need the place
        hint = CONTROL_HINT if err.msg.startswith("Invalid control character") else ""
        raise DataError(f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err}{hint}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object {{id: ...}}, got {type(obj).__name__}")
    return obj


def folder_types(folder: Path, labelled: bool) -> tuple[list[str], str, list[str]]:
    """The folder's types.txt read (read_types); none for an unlabelled folder without one (a pool takes
    the labelled data's types), an error for a labelled one."""
    if (folder / "types.txt").is_file():
        return read_types(folder / "types.txt")
    if labelled:
        raise DataError(
            f"{folder}: missing types.txt (a labelled folder needs it: the types of entity.json's labels "
            "and the descriptions every prompt uses)"
        )
    return [], "", []


def read_ccks(folder: str | Path, image_dirs: list[str | Path] | None = None) -> Dataset:
    """Read a CCKS-layout folder; `entity.json` may be absent (unlabelled data).

    Images are `<folder>/images/<id>.jpg`, or looked up in `image_dirs` when given.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected text.json, images/, types.txt)")
    if not (folder / "text.json").is_file():
        raise DataError(f"{folder}: missing text.json")
    labels = _load_json(folder / "entity.json") if (folder / "entity.json").is_file() else None
    types, type_text, generic = folder_types(folder, labelled=labels is not None)
    texts = _load_json(folder / "text.json")
    images = (folder / "images").resolve()
    samples = []
    missing: list[str] = []  # ids whose image is not found
    clipped = Counter()
    for sid, rec in texts.items():
        where = f"{folder / 'text.json'}: record {sid!r}"
        check_text_record(where, sid, rec)
        image = find_image(image_dirs or [images], str(sid))
        if image is None:
            missing.append(str(sid))
        tokens = tokenize(rec["text"])
        entities = []
        if labels is not None:
            size = size_or_none(image) if labels.get(sid) else None  # None: no clipping here
            entities, _ = _ccks_entities(
                labels.get(sid, []), tokens, types, f"{folder / 'entity.json'}: record {sid!r}", size, clipped
            )
        samples.append(Sample(str(sid), tokens, image, entities))
    if labels is not None:
        extra = set(labels) - set(texts)
        if extra:
            raise DataError(f"{folder / 'entity.json'}: ids with no text in text.json: {sorted(extra)[:5]}")
    if missing and (image_dirs or images.is_dir()):  # no images/ at all: a text-only dataset, said by refineg
        where = ", ".join(str(d) for d in image_dirs or [images])
        warnings.warn(
            f"{folder}: {len(missing)} of {len(texts)} images not found in {where} "
            f"(e.g. {missing[:3]}); those samples are read as text-only",
            stacklevel=2,
        )
    if clipped:
        warnings.warn(
            f"{sum(clipped.values())} gold box(es) reached outside their image and were clipped to it, "
            f"e.g. in {min(clipped)}",
            stacklevel=2,
        )
    return Dataset(samples, types, type_text, generic, len(missing), clipped_boxes=sum(clipped.values()))


def check_text_record(where: str, sid: str, rec: object) -> None:
    """A text.json record: a plain-name id (images/<id>.jpg is its image) and {"text": str}."""
    if not ID_RE.fullmatch(sid):
        raise DataError(
            f"{where}: an id is a plain name (letters, digits, '_', '-', '.'; not starting with "
            f"'.'), since images/<id>.jpg is its image; got {sid!r}"
        )
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise DataError(f'{where}: expected {{"text": str}}, got {rec!r}')


def _ccks_entities(
    records: list,
    tokens: list[str],
    types: list[str],
    where: str,
    size: tuple[int, int] | None = None,
    clipped: Counter | None = None,
    lenient: bool = False,
) -> tuple[list[Entity], list[tuple[str, str, str]]]:
    """The entities of one record list, and (name, label, reason) of the records that cannot be placed.

    Gold (lenient False) is strict: an unknown label or a name not in the text is an error.
    Predictions (lenient True) return such records instead, for the scorer to count as false positives.
    `clipped` counts, per `where`, the boxes clipped to the image `size`.
    """
    if not isinstance(records, list):
        raise DataError(f"{where}: expected a list of entities, got {type(records).__name__}")
    boxes: dict[tuple[str, str], list[Box]] = {}  # (squashed name, label) -> boxes
    names: dict[tuple[str, str], str] = {}  # (squashed name, label) -> the name as first written
    unplaced: dict[tuple[str, str], str] = {}  # (name, label) -> why it cannot be placed
    for j, r in enumerate(records):
        at = f"{where}, entity {j}"
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or "label" not in r:
            raise DataError(f'{at}: expected {{"name", "label", "bnd"}}, got {r!r}')
        if r["label"] not in types:
            if not lenient:
                raise DataError(f"{at}: label {r['label']!r} is not in types.txt {types}")
            unplaced.setdefault((r["name"], str(r["label"])), "label")
            continue
        key = (without_spaces(r["name"]), r["label"])
        names.setdefault(key, r["name"])
        boxes.setdefault(key, [])
        if r.get("bnd") is not None:
            box, was_clipped = gold_box(r["bnd"], at, size)
            if was_clipped and clipped is not None:
                clipped[where] += 1
            if box not in boxes[key]:  # the same box twice (e.g. once per occurrence of the name) is one box
                boxes[key].append(box)
    entities, missing = label_names(tokens, [(names[k], k[1]) for k in boxes])
    if missing and not lenient:
        raise DataError(
            f"{where}: name {missing[0]!r} is not in the text at token boundaries ({' '.join(tokens)!r})"
        )
    for k in boxes:
        if names[k] in missing:
            unplaced.setdefault((names[k], k[1]), "name")
    for e in entities:
        e.boxes = list(boxes[(without_spaces("".join(tokens[e.start : e.end])), e.type)])
    return entities, [(n, t, why) for (n, t), why in unplaced.items()]


def write_ccks(samples: list[Sample], path: str | Path) -> None:
    """Predictions in the CCKS JSON layout: every id present, one record per box, `[]` for none."""
    out = {}
    for s in samples:
        recs = []
        for e in s.entities:
            for b in e.boxes or [None]:
                bnd = None if b is None else {"xmin": b.x1, "ymin": b.y1, "xmax": b.x2, "ymax": b.y2}
                rec = {"name": s.name(e), "label": e.type, "bnd": bnd}
                if rec not in recs:  # a name occurring twice is one CCKS entity: its records once
                    recs.append(rec)
        out[s.id] = recs
    Path(path).write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")


def write_ccks_folder(samples: list[Sample], dataset: Dataset, folder: Path) -> None:
    """A CCKS folder (text.json, entity.json, types.txt) that read_ccks reads back as `samples`."""
    folder.mkdir(parents=True)
    texts = {s.id: {"text": s.text} for s in samples}
    (folder / "text.json").write_text(json.dumps(texts, ensure_ascii=False, indent=1), encoding="utf-8")
    write_ccks(samples, folder / "entity.json")
    (folder / "types.txt").write_text(types_text(dataset) + "\n", encoding="utf-8")


def types_text(dataset: Dataset) -> str:
    """A dataset's types.txt: its descriptions when it has them, numbered type names otherwise."""
    if dataset.type_text.strip():
        return dataset.type_text.strip()
    return "\n".join(f"{k}. {t}: {t}" for k, t in enumerate(dataset.types, 1))


def read_ccks_predictions(
    path: str | Path, like: list[Sample], types: list[str] | None = None
) -> tuple[list[Sample], list[tuple[str, str, str, str]]]:
    """Read a CCKS-layout entity.json against the samples it labels (same ids and texts).

    Returns the predicted samples and the records that cannot be placed, as (id, name,
    label, reason): a name not in its text (reason "name") or a label outside `types`
    (reason "label"; None accepts every label). Those are a model's mistakes, so they are
    returned for scoring as false positives rather than refused; a malformed file still is.
    """
    labels = _load_json(Path(path))
    extra = set(labels) - {s.id for s in like}
    if extra:  # dropping them silently would hide a prediction made for the wrong data
        raise DataError(f"{path}: {len(extra)} ids are not in the data it labels, e.g. {sorted(extra)[:5]}")
    if types is None:
        types = sorted(
            {
                r["label"]
                for recs in labels.values()
                if isinstance(recs, list)
                for r in recs
                if isinstance(r, dict) and isinstance(r.get("label"), str)
            }
        )
    out = []
    unplaced = []
    for s in like:
        ents, bad = _ccks_entities(
            labels.get(s.id, []), s.tokens, types, f"{path}: record {s.id!r}", lenient=True
        )
        out.append(Sample(s.id, s.tokens, s.image, ents))
        unplaced += [(s.id, *b) for b in bad]
    return out, unplaced
