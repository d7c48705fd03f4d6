"""The data model of ReFineG and the dataset formats it reads and writes.

Every stage takes and returns these objects: `Sample` (a tokenised text, an
optional image path and its entities), `Entity` (a token span [start, end), a
type, zero or more boxes) and `Box` (pixels of the ORIGINAL image). An entity
with `boxes == []` is ungroundable: it is not visible in the image.

Formats:
- CCKS layout (the CCKS-2025 GMNER shared task): a folder with `text.json`
  {id: {"text"}}, optional `entity.json` {id: [{"name", "label", "bnd"}]},
  `images/<id>.jpg` and `types.txt` (the type descriptions the prompts use).
- Twitter-GMNER: `IMGID:<id>` + two-column CoNLL, and a folder of Pascal-VOC
  XML files whose objects join entities by surface string.
- Plain two-column CoNLL (BIO or BIOES), with or without `IMGID:` lines.

Text is tokenised with the regex `\\w+|[^\\w\\s]` (the CCKS data's own rule), so
`ship's` is `ship ' s`. A name declared in `entity.json` labels EVERY
occurrence of it in the text at token boundaries (the rule the CCKS tags were
made with); longer names are placed first and an occurrence that overlaps an
already placed entity is skipped, since BIO cannot hold overlaps. Wherever a
name becomes a span (gold, predictions, the scorer's name mode, MLLM answers,
synthetic sentences) it matches the tokens whose concatenation equals the name
without whitespace (`find_name`), so "Jay-Z" is found in `Jay - Z` and `Jay-Z`.

    python data.py examples/demo     # reads a folder and prints its statistics

Left out on purpose: nested entities, character offsets (everything is tokens).
"""

import json
import re
import sys
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
ID_RE = re.compile(r"\w[\w.-]*")       # a sample id names its image file: no path separators, no leading dot
TWITTER_TYPES = ["PER", "LOC", "ORG", "OTHER"]
TWITTER_TYPE_TEXT = (
    "1. PER: names of people (real or fictional), e.g. Justin Bieber, Obama\n"
    "2. LOC: names of places, e.g. London, Mount Everest\n"
    "3. ORG: names of organisations, companies, teams, e.g. NASA, Real Madrid\n"
    "4. OTHER: other named things: products, events, works, e.g. iPhone, Super Bowl"
)


class DataError(ValueError):
    """Bad input data; the message names the file, the line or record, and what was expected."""


@dataclass
class Box:
    """An axis-aligned box in pixels of the original image (x2 > x1, y2 > y1)."""
    x1: float
    y1: float
    x2: float
    y2: float

    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def iou(self, other: "Box") -> float:
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        inter = max(0.0, w) * max(0.0, h)
        union = self.area() + other.area() - inter
        return inter / union if union > 0 else 0.0


@dataclass
class Entity:
    start: int                      # first token of the span
    end: int                        # one past the last token
    type: str
    boxes: list[Box] = field(default_factory=list)   # [] = ungroundable
    score: float | None = None      # the tagger's uncertainty (uncertainty.py)
    source: str = "gold"            # gold | synth | tagger | mllm: who produced this entity

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)


@dataclass
class Sample:
    id: str
    tokens: list[str]
    image: str | None = None        # path of the image; None = text only
    entities: list[Entity] = field(default_factory=list)
    # (T, K) P(tag_t = k | text), set by tagger.predict; left out of == (an array has no single truth value) and repr
    marginals: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def name(self, e: Entity) -> str:
        """The surface string of an entity: its tokens joined by single spaces."""
        return " ".join(self.tokens[e.start:e.end])


@dataclass
class Dataset:
    """Samples plus what the prompts need to know about the entity types."""
    samples: list[Sample]
    types: list[str]                # the type set, in file order
    type_text: str = ""             # the type descriptions (types.txt), verbatim, for prompts
    generic: list[str] = field(default_factory=list)   # "do not extract" words from types.txt
    missing_images: int = 0         # samples read as text-only because their image is missing
    clipped_boxes: int = 0          # gold boxes reaching outside their image, clipped to it (warned)
    unmatched_objects: int = 0      # Twitter xml objects whose name is no entity of their sample (warned, dropped)
    format: str = ""                # "twitter" when read from Twitter-GMNER txt + xml (predictions are also written so)


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def squash(name: str) -> str:
    """A name without any whitespace: the one identity by which a name becomes a token span."""
    return "".join(name.split())


def find_name(tokens: list[str], name: str) -> list[tuple[int, int]]:
    """Every token span [start, end) whose tokens, joined, equal `name` once all whitespace is removed.

    So a name survives any tokenisation: "V-E Day" matches both `V-E Day` (Twitter-GMNER
    keeps hyphens inside tokens) and `V - E Day` (our tokenize()). Spans start and end at
    token boundaries ("York" is not inside `NewYork`), and matching is case-sensitive:
    "Tiger" the helicopter is not "tiger" the animal.
    """
    target = squash(name)
    spans = []
    for i in range(len(tokens) if target else 0):
        joined, j = "", i
        while j < len(tokens) and len(joined) < len(target) and target.startswith(joined):
            joined += squash(tokens[j])
            j += 1
        if joined == target:
            spans.append((i, j))
    return spans


def label_names(tokens: list[str], names: list[tuple[str, str]]) -> tuple[list[Entity], list[str]]:
    """Entities for every occurrence of each (name, type); also the names found nowhere.

    Longer names first; an occurrence overlapping an already placed entity is skipped.
    """
    taken = [False] * len(tokens)
    entities, missing = [], []
    for name, typ in sorted(names, key=lambda nt: -len(squash(nt[0]))):
        spans = find_name(tokens, name)
        if not spans:
            missing.append(name)
        for s, e in spans:
            if not any(taken[s:e]):
                taken[s:e] = [True] * (e - s)
                entities.append(Entity(s, e, typ))
    entities.sort(key=lambda e: e.start)
    return entities, missing


# ---------------------------------------------------------------- tags <-> spans

def spans_to_tags(n: int, entities: list[Entity], scheme: str = "BIO") -> list[str]:
    tags = ["O"] * n
    for e in entities:
        if e.end - e.start == 1 and scheme == "BIOES":
            tags[e.start] = f"S-{e.type}"
            continue
        tags[e.start] = f"B-{e.type}"
        for i in range(e.start + 1, e.end):
            tags[i] = f"I-{e.type}"
        if scheme == "BIOES":
            tags[e.end - 1] = f"E-{e.type}"
    return tags


def tags_to_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) chunks of a BIO or BIOES tag sequence.

    conlleval's rule: an I- (or E-) that does not continue a chunk of its own
    type starts a new chunk, so `O I-PER` is a PER entity.
    """
    spans, start, cur = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, typ = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if start is not None and (prefix in "BSO" or typ != cur):
            spans.append((start, i, cur))
            start = None
        if prefix in "BS" or (prefix in "IE" and start is None):
            start, cur = i, typ
        if prefix in "ES" and start is not None:
            spans.append((start, i + 1, cur))
            start = None
    return spans


# ---------------------------------------------------------------- the CCKS layout

def read_types(path: Path) -> tuple[list[str], str, list[str]]:
    """The type names, the full text and the "do not extract" examples of a types.txt.

    Type lines look like `3. vessel: Watercraft for ...`; the do-not line holds
    `(e.g.: gun, air base, ...)`.
    """
    text = path.read_text(encoding="utf-8-sig").replace("\ufeff", "")   # a BOM anywhere would hide a type line
    types = re.findall(r"^\s*\d+\.\s*([A-Za-z][\w-]*)\s*:", text, flags=re.M)
    if not types:
        raise DataError(f"{path}: expected lines like '1. vehicle: description', found no type")
    generic = []
    m = re.search(r"DO NOT.*?\(e\.g\.:?\s*([^)]*)\)", text, flags=re.S)
    if m:
        generic = [w.strip() for w in m.group(1).split(",") if w.strip()]
    return types, text.strip(), generic


def _load_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object {{id: ...}}, got {type(obj).__name__}")
    return obj


def _box(bnd: dict, where: str, size: tuple[int, int] | None, text: bool = False) -> tuple[Box, bool]:
    """A gold box and whether it was clipped. The policy: coordinates outside the image (negative, or past
    `size` when the image size is known) are clipped to it, counted and warned by the reader; anything
    else odd is refused: strings or booleans in JSON (`text` = XML, where numbers are text), NaN or
    Infinity, and boxes with no area (xmax <= xmin or ymax <= ymin, also after clipping)."""
    try:
        raw = [bnd[k] for k in ("xmin", "ymin", "xmax", "ymax")]
        if not text and not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
            raise TypeError
        xyxy = [float(v) for v in raw]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: expected bnd {{xmin, ymin, xmax, ymax}} numbers or null, got {bnd!r}") from None
    if not all(np.isfinite(xyxy)):
        raise DataError(f"{where}: expected finite coordinates, got {bnd!r}")
    w, h = size or (np.inf, np.inf)
    clipped = [min(max(v, 0.0), float(top)) for v, top in zip(xyxy, (w, h, w, h))]
    box = Box(*clipped)
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        raise DataError(f"{where}: expected xmin < xmax and ymin < ymax inside the image"
                        f"{f' ({w}x{h})' if size else ''}, got {bnd!r}")
    return box, clipped != xyxy


def _image_size(path: Path) -> tuple[int, int] | None:
    """The size from the image header; None when it cannot be read (grounding reports that image)."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:    # any unreadable file: no clipping to its size here; the stages count it
        return None


IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")   # tried in this order


def find_image(dirs: list[Path], sid: str) -> str | None:
    """`<dir>/<id>.jpg` (or .png, .jpeg) in the first of `dirs` that has it; None when none has.

    Several folders because one benchmark's photos may come from several image sets
    (Twitter-GMNER: the Twitter-2015 and Twitter-2017 images).
    """
    for d in dirs:
        for suffix in IMAGE_SUFFIXES:
            path = Path(d) / f"{sid}{suffix}"
            if path.is_file():
                return str(path.resolve())
    return None


def attach_images(data: "Dataset", dirs: list[Path]) -> None:
    """Set every sample's image from `dirs`; count the samples that have none."""
    for s in data.samples:
        s.image = find_image(dirs, s.id)
    data.missing_images = sum(1 for s in data.samples if s.image is None)


def read_ccks(folder: str | Path, image_dirs: list[str | Path] | None = None) -> Dataset:
    """Read a CCKS-layout folder; `entity.json` may be absent (unlabelled data).

    Images are `<folder>/images/<id>.jpg`, or looked up in `image_dirs` when given.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected text.json, images/, types.txt)")
    for need in ("text.json", "types.txt"):
        if not (folder / need).is_file():
            raise DataError(f"{folder}: missing {need}")
    types, type_text, generic = read_types(folder / "types.txt")
    texts = _load_json(folder / "text.json")
    labels = _load_json(folder / "entity.json") if (folder / "entity.json").is_file() else None
    images = (folder / "images").resolve()
    samples, missing_images, clipped = [], 0, Counter()
    for sid, rec in texts.items():
        where = f"{folder / 'text.json'}: record {sid!r}"
        if not ID_RE.fullmatch(sid):
            raise DataError(f"{where}: an id is a plain name (letters, digits, '_', '-', '.'; not starting with "
                            f"'.'), since images/<id>.jpg is its image; got {sid!r}")
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError(f"{where}: expected {{\"text\": str}}, got {rec!r}")
        image = find_image(image_dirs or [images], str(sid))
        if image is None:
            warnings.warn(f"{where}: image {sid}.jpg not found in {image_dirs or [images]}; reading it as text-only")
            missing_images += 1
        tokens = tokenize(rec["text"])
        entities = []
        if labels is not None:
            size = _image_size(Path(image)) if image and labels.get(sid) else None
            entities, _ = _ccks_entities(labels.get(sid, []), tokens, types,
                                         f"{folder / 'entity.json'}: record {sid!r}", size, clipped)
        samples.append(Sample(str(sid), tokens, image, entities))
    if labels is not None:
        extra = set(labels) - set(texts)
        if extra:
            raise DataError(f"{folder / 'entity.json'}: ids with no text in text.json: {sorted(extra)[:5]}")
    if clipped:
        warnings.warn(f"{sum(clipped.values())} gold box(es) reached outside their image and were clipped to it, "
                      f"e.g. in {min(clipped)}")
    return Dataset(samples, types, type_text, generic, missing_images, clipped_boxes=sum(clipped.values()))


def _ccks_entities(records: list, tokens: list[str], types: list[str], where: str,
                   size: tuple[int, int] | None = None, clipped: Counter | None = None,
                   lenient: bool = False) -> tuple[list[Entity], list[tuple[str, str, str]]]:
    """The entities of one record list, and (name, label, reason) of the records that cannot be placed.

    Gold (lenient False) is strict: an unknown label or a name not in the text is an error.
    Predictions (lenient True) return such records instead, for the scorer to count as false positives.
    `clipped` counts, per `where`, the boxes clipped to the image `size`.
    """
    if not isinstance(records, list):
        raise DataError(f"{where}: expected a list of entities, got {type(records).__name__}")
    boxes: dict[tuple[str, str], list[Box]] = {}       # (squashed name, label) -> boxes
    names: dict[tuple[str, str], str] = {}             # (squashed name, label) -> the name as first written
    unplaced: dict[tuple[str, str], str] = {}          # (name, label) -> why it cannot be placed
    for j, r in enumerate(records):
        at = f"{where}, entity {j}"
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or "label" not in r:
            raise DataError(f"{at}: expected {{\"name\", \"label\", \"bnd\"}}, got {r!r}")
        if r["label"] not in types:
            if not lenient:
                raise DataError(f"{at}: label {r['label']!r} is not in types.txt {types}")
            unplaced.setdefault((r["name"], str(r["label"])), "label")
            continue
        key = (squash(r["name"]), r["label"])
        names.setdefault(key, r["name"])
        boxes.setdefault(key, [])
        if r.get("bnd") is not None:
            box, was_clipped = _box(r["bnd"], at, size)
            if was_clipped and clipped is not None:
                clipped[where] += 1
            if box not in boxes[key]:   # the same box twice (e.g. once per occurrence of the name) is one box
                boxes[key].append(box)
    entities, missing = label_names(tokens, [(names[k], k[1]) for k in boxes])
    if missing and not lenient:
        raise DataError(f"{where}: name {missing[0]!r} is not in the text at token boundaries ({' '.join(tokens)!r})")
    for k in boxes:
        if names[k] in missing:
            unplaced.setdefault((names[k], k[1]), "name")
    for e in entities:
        e.boxes = list(boxes[(squash("".join(tokens[e.start:e.end])), e.type)])
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
                if rec not in recs:     # a name occurring twice is one CCKS entity: its records once
                    recs.append(rec)
        out[s.id] = recs
    Path(path).write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")


def read_ccks_predictions(path: str | Path, like: list[Sample],
                          types: list[str] | None = None) -> tuple[list[Sample], list[tuple[str, str, str, str]]]:
    """Read a CCKS-layout entity.json against the samples it labels (same ids and texts).

    Returns the predicted samples and the records that cannot be placed, as (id, name,
    label, reason): a name not in its text (reason "name") or a label outside `types`
    (reason "label"; None accepts every label). Those are a model's mistakes, so they are
    returned for scoring as false positives rather than refused; a malformed file still is.
    """
    labels = _load_json(Path(path))
    extra = set(labels) - {s.id for s in like}
    if extra:   # dropping them silently would hide a prediction made for the wrong data
        raise DataError(f"{path}: {len(extra)} ids are not in the data it labels, e.g. {sorted(extra)[:5]}")
    if types is None:
        types = sorted({r["label"] for recs in labels.values() if isinstance(recs, list)
                        for r in recs if isinstance(r, dict) and isinstance(r.get("label"), str)})
    out, unplaced = [], []
    for s in like:
        ents, bad = _ccks_entities(labels.get(s.id, []), s.tokens, types, f"{path}: record {s.id!r}", lenient=True)
        out.append(Sample(s.id, s.tokens, s.image, ents))
        unplaced += [(s.id, *b) for b in bad]
    return out, unplaced


# ---------------------------------------------------------------- CoNLL and Twitter-GMNER

def read_conll(path: str | Path) -> Dataset:
    """Two-column CoNLL (token TAB tag), blank line between sentences, optional `IMGID:` lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    samples, tokens, tags, sid = [], [], [], None

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
                sid = line[len("IMGID:"):].strip()
                continue
            if not line.strip():
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
    return Dataset(samples, types)


def read_twitter(txt: str | Path, xml_dir: str | Path, image_dirs: list[str | Path] | None = None) -> Dataset:
    """Twitter-GMNER: CoNLL with IMGID lines plus Pascal-VOC boxes joined by surface string.

    Every mention whose string has an <object> of that name gets all its boxes;
    the others are ungroundable. Images are `<dir>/<id>.jpg` (.png, .jpeg) in
    `image_dirs` when given (see read_dataset for the default).
    """
    data = read_conll(txt)
    xml_dir = Path(xml_dir)
    unmatched = Counter()                                   # xml file -> objects naming no entity
    for s in data.samples:
        xml = xml_dir / f"{s.id}.xml"
        named: dict[str, list[Box]] = {}
        if xml.is_file():
            try:
                root = ET.parse(xml).getroot()
            except ET.ParseError as err:
                raise DataError(f"{xml}: malformed XML: {err}") from None
            try:            # the VOC <size>, when present, bounds the boxes
                size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
            except (TypeError, ValueError):
                size = None
            for k, obj in enumerate(root.iter("object")):
                bb = obj.find("bndbox")
                bnd = {t: bb.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")} if bb is not None else None
                box, clipped = _box(bnd, f"{xml}: object {k}", size if size and min(size) > 0 else None, text=True)
                data.clipped_boxes += clipped
                named.setdefault(obj.findtext("name", "").strip(), []).append(box)
        for e in s.entities:
            e.boxes = list(named.get(s.name(e), []))
        names = {s.name(e) for e in s.entities}
        unmatched[xml] += sum(len(boxes) for name, boxes in named.items() if name not in names)
    data.unmatched_objects = sum(unmatched.values())
    if data.unmatched_objects:
        warnings.warn(f"{xml_dir}: {data.unmatched_objects} object(s) name no entity of their sample and are dropped, "
                      f"e.g. in {next(str(x) for x, n in unmatched.items() if n)}")
    if data.clipped_boxes:
        warnings.warn(f"{xml_dir}: {data.clipped_boxes} box(es) reached outside their image and were clipped to it")
    data.types = [t for t in TWITTER_TYPES if t in data.types] + [t for t in data.types if t not in TWITTER_TYPES]
    data.type_text = TWITTER_TYPE_TEXT
    data.format = "twitter"
    if image_dirs is not None:
        attach_images(data, [Path(d) for d in image_dirs])
    return data


def write_conll(samples: list[Sample], path: str | Path, scheme: str = "BIO", imgid: bool = True) -> None:
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
        for e in s.entities:            # a name occurring twice carries the same boxes: its objects once
            objs += [(s.name(e), b) for b in e.boxes if (s.name(e), b) not in objs]
        if not objs:
            continue
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{s.id}.jpg"
        if s.image:                     # the dataset's own files state the image size; ours do when we know it
            try:
                with Image.open(s.image) as img:
                    w, h = img.size
                size = ET.SubElement(root, "size")
                ET.SubElement(size, "width").text = str(w)
                ET.SubElement(size, "height").text = str(h)
            except OSError:             # an unreadable image only costs the <size> element
                pass
        for name, b in objs:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = name
            bb = ET.SubElement(obj, "bndbox")
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (b.x1, b.y1, b.x2, b.y2)):
                ET.SubElement(bb, tag).text = str(round(v))
        ET.ElementTree(root).write(xml_dir / f"{s.id}.xml", encoding="utf-8")


def read_dataset(path: str | Path, images: list[str | Path] | None = None) -> Dataset:
    """Any supported input: a CCKS folder, a Twitter txt (xml/ beside it or up to two folders up) or CoNLL.

    Images: `<dir>/<id>.jpg` (.png, .jpeg) in the folders `images` when given; else a
    CCKS folder's own images/, or an `images/` folder beside a Twitter or IMGID-CoNLL
    txt. A Twitter or IMGID-CoNLL file with neither has every image missing (counted).
    """
    path = Path(path)
    for d in images or []:
        if not Path(d).is_dir():
            raise DataError(f"--images: {d} is not a folder (expected a folder of <id>.jpg images)")
    if path.is_dir():
        return read_ccks(path, images or None)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    dirs = [Path(d) for d in images or []] or [path.parent / "images"]
    # xml/ beside the txt, or up to two folders above it: the benchmark's own layouts keep one xml/ for
    # txt/{train,dev,test}.txt (NUSTM/GMNER) and for the low-resource splits lowres/10GMNER/train.txt
    xml_dirs = [d / "xml" for d in (path.parent, path.parent.parent, path.parent.parent.parent) if (d / "xml").is_dir()]
    with path.open(encoding="utf-8-sig") as f:
        has_imgid = f.readline().startswith("IMGID:")
    if has_imgid and xml_dirs:
        return read_twitter(path, xml_dirs[0], dirs)
    data = read_conll(path)
    if has_imgid:                   # ids are image ids only when the file names them
        attach_images(data, dirs)
    return data


def stats(data: Dataset) -> dict:
    ents = [e for s in data.samples for e in s.entities]
    return {
        "samples": len(data.samples),
        "entities": len(ents),
        "groundable": sum(1 for e in ents if e.boxes),
        "boxes": sum(len(e.boxes) for e in ents),
        "with_image": sum(1 for s in data.samples if s.image),
        "missing_images": data.missing_images,
        "per_type": dict(Counter(e.type for e in ents)),
    }


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["examples/demo"]:
        print(arg, json.dumps(stats(read_dataset(arg)), indent=1))
