"""Twitter-GMNER and plain CoNLL: the readers and writers of the pre-tokenised formats.

Twitter-GMNER (Yu et al. 2023) is `IMGID:<id>` + two-column CoNLL and a
folder of Pascal-VOC XML files whose objects join entities by surface string;
plain two-column CoNLL (BIO or BIOES) may have `IMGID:` lines or none. Tokens are
the file's own (hyphens stay inside tokens: "Jay-Z"); tags become spans by
data.py's `tags_to_spans`, boxes follow formats/rules.py's policy (`gold_box`). Predictions are
written in the same layout, so `read_twitter` reads back what `write_twitter` wrote.

    python -m formats ../shared/data/twitter-gmner/dev.txt   # reads it and prints its statistics

Left out on purpose: other CoNLL columns (POS, chunks): only the first and the last are read.
"""

import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from data import (
    Box,
    DataError,
    Dataset,
    Entity,
    Sample,
    spans_to_tags,
    tags_to_spans,
)
from formats.rules import attach_images, gold_box
from images import ImageError, image_size

TWITTER_TYPES = ["PER", "LOC", "ORG", "OTHER"]
TWITTER_TYPE_TEXT = (
    "1. PER: names of people (real or fictional), e.g. Justin Bieber, Obama\n"
    "2. LOC: names of places, e.g. London, Mount Everest\n"
    "3. ORG: names of organisations, companies, teams, e.g. NASA, Real Madrid\n"
    "4. OTHER: other named things: products, events, works, e.g. iPhone, Super Bowl"
)


def read_conll(path: str | Path) -> Dataset:
    """Two-column CoNLL (token TAB tag), blank line between sentences, optional `IMGID:` lines.

    A sentence's id is its IMGID, else its index among the file's sentences (0, 1, 2, ...). CoNLL 2003's
    `-DOCSTART-` lines mark documents: they are skipped, end the sentence before them and shift no id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    samples = []
    tokens = []
    tags = []
    sid = None

    def flush():
        if tokens:
            ents = [Entity(s, e, t) for s, e, t in tags_to_spans(tags)]
            samples.append(Sample(sid or str(len(samples)), list(tokens), None, ents))
        tokens.clear(), tags.clear()

    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if line.startswith("IMGID:"):
                flush()
                sid = line[len("IMGID:") :].strip()
                continue
            if not line.strip() or line.split()[0] == "-DOCSTART-":
                flush()
                sid = None
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) < 2:
                raise DataError(f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
            tag = cols[-1]
            if not (tag == "O" or re.fullmatch(r"[BIES]-\S+", tag)):
                raise DataError(f"{path}:{lineno}: expected a tag O, B-X, I-X, E-X or S-X, got {tag!r}")
            tokens.append(cols[0])
            tags.append(tag)
    flush()
    types = sorted({e.type for s in samples for e in s.entities})
    return Dataset(samples, types, format="conll")


def read_twitter(txt: str | Path, xml_dir: str | Path, image_dirs: list[str | Path] | None = None) -> Dataset:
    """Twitter-GMNER: CoNLL with IMGID lines plus Pascal-VOC boxes joined by surface string.

    Every mention whose string has an <object> of that name gets all its boxes;
    the others are ungroundable. Images are `<dir>/<id>.jpg` (.png, .jpeg) in
    `image_dirs` when given (see read_dataset for the default).
    """
    data = read_conll(txt)
    xml_dir = Path(xml_dir)
    unmatched = Counter()  # xml file -> objects naming no entity
    for s in data.samples:
        xml = xml_dir / f"{s.id}.xml"
        named, clipped = read_voc(xml) if xml.is_file() else ({}, 0)
        data.clipped_boxes += clipped
        for e in s.entities:
            e.boxes = list(named.get(s.name(e), []))
        names = {s.name(e) for e in s.entities}
        unmatched[xml] += sum(len(boxes) for name, boxes in named.items() if name not in names)
    data.unmatched_objects = sum(unmatched.values())
    if data.unmatched_objects:
        warnings.warn(
            f"{xml_dir}: {data.unmatched_objects} object(s) name no entity of their sample and are dropped, "
            f"e.g. in {next(str(x) for x, n in unmatched.items() if n)}",
            stacklevel=2,
        )
    if data.clipped_boxes:
        warnings.warn(
            f"{xml_dir}: {data.clipped_boxes} box(es) reached outside their image and were clipped to it",
            stacklevel=2,
        )
    data.types = [t for t in TWITTER_TYPES if t in data.types] + [
        t for t in data.types if t not in TWITTER_TYPES
    ]
    data.type_text = TWITTER_TYPE_TEXT
    data.format = "twitter"
    if image_dirs is not None:
        attach_images(data, [Path(d) for d in image_dirs])
    return data


def read_voc(xml: Path) -> tuple[dict[str, list[Box]], int]:
    """The boxes of one Pascal-VOC file by object name, and how many were clipped to the image."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as err:
        raise DataError(f"{xml}: malformed XML: {err}") from None
    try:  # the VOC <size>, when present, bounds the boxes
        size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    except (TypeError, ValueError):
        size = None
    named: dict[str, list[Box]] = {}
    clipped = 0
    for k, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        bnd = {t: bb.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")} if bb is not None else None
        box, was_clipped = gold_box(
            bnd, f"{xml}: object {k}", size if size and min(size) > 0 else None, text=True
        )
        clipped += was_clipped
        named.setdefault(obj.findtext("name", "").strip(), []).append(box)
    return named, clipped


def write_conll(samples: list[Sample], path: str | Path, scheme: str = "BIO", imgid: bool = True) -> None:
    """Two-column CoNLL (token TAB tag in `scheme`), with an `IMGID:<id>` line before each sample when
    `imgid`."""
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            if imgid:
                f.write(f"IMGID:{s.id}\n")
            for tok, tag in zip(s.tokens, spans_to_tags(len(s.tokens), s.entities, scheme)):
                f.write(f"{tok}\t{tag}\n")
            f.write("\n")


def write_twitter(samples: list[Sample], txt: str | Path, xml_dir: str | Path) -> None:
    """Predictions in the Twitter-GMNER layout: IMGID + CoNLL, one VOC file per sample with a box.

    Boxes join entities by surface string, as in the dataset, so `read_twitter` reads back
    exactly what was written (boxes rounded to whole pixels, as the dataset's are).
    """
    Path(txt).parent.mkdir(parents=True, exist_ok=True)
    write_conll(samples, txt)
    xml_dir = Path(xml_dir)
    xml_dir.mkdir(parents=True, exist_ok=True)
    for s in samples:
        objs = []
        for e in s.entities:  # a name occurring twice carries the same boxes: its objects once
            objs += [(s.name(e), b) for b in e.boxes if (s.name(e), b) not in objs]
        if not objs:
            continue
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{s.id}.jpg"
        if s.image:  # the dataset's own files state the image size; ours do when we know it
            try:
                w, h = image_size(s.image)  # upright, the frame of the boxes
                size = ET.SubElement(root, "size")
                ET.SubElement(size, "width").text = str(w)
                ET.SubElement(size, "height").text = str(h)
            except ImageError:  # an unreadable image only costs the <size> element
                pass
        for name, b in objs:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = name
            bb = ET.SubElement(obj, "bndbox")
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (b.x1, b.y1, b.x2, b.y2)):
                ET.SubElement(bb, tag).text = str(round(v))
        ET.ElementTree(root).write(xml_dir / f"{s.id}.xml", encoding="utf-8")
