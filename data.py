"""The data model of ReFineG and the rules every dataset format shares.

Every stage takes and returns these objects: `Sample` (a tokenised text, an
optional image path and its entities), `Entity` (a token span [start, end), a
type, zero or more boxes) and `Box` (pixels of the ORIGINAL image). An entity
with `boxes == []` is ungroundable: it is not visible in the image.

The formats live beside this file and build on it: `ccks.py` (the CCKS-2025
folder layout) and `twitter.py` (Twitter-GMNER and plain CoNLL); `read_dataset`
here picks the right reader for a path.

Text is tokenised with the regex `\\w+|[^\\w\\s]` (the CCKS data's own rule), so
`ship's` is `ship ' s`. A name declared in `entity.json` labels EVERY
occurrence of it in the text at token boundaries (the rule the CCKS tags were
made with); longer names are placed first and an occurrence that overlaps an
already placed entity is skipped, since BIO cannot hold overlaps. Wherever a
name becomes a span (gold, predictions, the scorer's name mode, MLLM answers,
synthetic sentences) it matches the tokens whose concatenation equals the name
without whitespace (`find_name`), so "Jay-Z" is found in `Jay - Z` and `Jay-Z`.
Gold boxes follow one policy in every format (`gold_box`), and images are found
by id in one or more folders (`find_image`).

    python data.py examples/demo     # reads a folder and prints its statistics

Left out on purpose: nested entities, character offsets (everything is tokens).
"""

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOKEN_RE = re.compile(r"\w+|[^\w\s]")


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


# ---------------------------------------------------------------- the box policy and image lookup

def gold_box(bnd: dict, where: str, size: tuple[int, int] | None, text: bool = False) -> tuple[Box, bool]:
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


def attach_images(data: Dataset, dirs: list[Path]) -> None:
    """Set every sample's image from `dirs`; count the samples that have none."""
    for s in data.samples:
        s.image = find_image(dirs, s.id)
    data.missing_images = sum(1 for s in data.samples if s.image is None)


# ---------------------------------------------------------------- any format

def read_dataset(path: str | Path, images: list[str | Path] | None = None) -> Dataset:
    """Any supported input: a CCKS folder, a Twitter txt (xml/ beside it or up to two folders up) or CoNLL.

    Images: `<dir>/<id>.jpg` (.png, .jpeg) in the folders `images` when given; else a
    CCKS folder's own images/, or an `images/` folder beside a Twitter or IMGID-CoNLL
    txt. A Twitter or IMGID-CoNLL file with neither has every image missing (counted).
    """
    # imported here, not at the top: ccks.py and twitter.py build on this module's model, so importing them
    # at module level would be circular (data -> ccks -> data)
    from ccks import read_ccks
    from twitter import read_conll, read_twitter
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
    with path.open(encoding="utf-8-sig") as f:          # the first line with text names the format
        has_imgid = next((line for line in f if line.strip()), "").startswith("IMGID:")
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
