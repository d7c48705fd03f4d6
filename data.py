"""The data model of ReFineG and the rules every stage and dataset format shares.

Every stage takes and returns these objects: `Sample` (a tokenised text, an optional image path and its
entities), `Entity` (a token span [start, end), a type, zero or more boxes; `boxes == []` = ungroundable,
not visible in the image) and `Box` (pixels of the original image). Text is tokenised with the regex
`\\w+|[^\\w\\s]` (the CCKS data's own rule), so `ship's` is `ship ' s`. Wherever a name becomes a span
(gold, predictions, the scorer's name mode, MLLM answers, synthetic sentences) it follows `find_name`, and a
declared name labels EVERY occurrence of it (`label_names`, the rule the CCKS tags were made with). Every
stage's settings are a dataclass whose fields carry their help (`setting`) and which checks itself when
built (`require_valid`). The dataset layouts that read into these objects are in formats/.

    python -m formats examples/demo     # reads a folder and prints its statistics

Left out on purpose: nested entities (BIO cannot hold overlaps), character offsets (everything is tokens).
"""

import math
import re
from dataclasses import dataclass, field

import numpy as np

TOKEN_RE = re.compile(r"\w+|[^\w\s]")


class DataError(ValueError):
    """Bad input data; the message names the file, the line or record, and what was expected."""


class InvalidSettings(ValueError):
    """A settings dataclass refused when built: `problems` holds (field, what was expected) for each
    broken rule, so that the command line can name them by their flags."""

    def __init__(self, config: object, problems: list[tuple[str, str]]):
        self.config, self.problems = config, problems
        name = type(config).__name__
        said = []
        for f, what in problems:
            wanted = re.sub(r"`(\w+)`", lambda m: f"{name}.{m[1]}", what)  # another field, as `name.field`
            said.append(f"{name}.{f}: expected {wanted}, got {getattr(config, f)!r}")
        super().__init__("; ".join(said))


def setting(default: object, help: str, main: bool = False):
    """A field of a stage's settings with its help beside it (refineg.py --help shows it); `main` = one of the
    flags a user of the method sets, shown by --help (the rest only by --help-all)."""
    meta = {"help": help, "main": main}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def require_valid(config: object, rules: list[tuple[str, bool, str]]) -> None:
    """Refuse settings when built (called by their __post_init__): rules are (field, holds, what is expected);
    InvalidSettings names every one that does not hold. Another field named in backticks in what is expected
    (`max_tokens`) is written as Class.max_tokens here, as its flag on the command line."""
    problems = [(name, expected) for name, holds, expected in rules if not holds]
    if problems:
        raise InvalidSettings(config, problems)


def is_number(v: object) -> bool:
    """A finite int or float that is not a bool: what a coordinate or a token count read from JSON must be."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class Box:
    """An axis-aligned box in pixels of the original image (x2 > x1, y2 > y1), upright: the frame the image
    is shown in once its EXIF orientation is applied (images.py), as in browsers and Label Studio."""

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
    start: int  # first token of the span
    end: int  # one past the last token
    type: str
    boxes: list[Box] = field(default_factory=list)  # [] = ungroundable
    uncertainty: float | None = None  # the tagger's doubt in [0, 1], higher = less sure (uncertainty.py)
    source: str = "gold"  # gold | synth | tagger | mllm: who produced this entity
    delegated: bool | None = None  # goes to the MLLM? set once by uncertainty.route; None = never routed

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)


@dataclass
class Sample:
    id: str
    tokens: list[str]
    image: str | None = None  # path of the image; None = text only
    entities: list[Entity] = field(default_factory=list)
    # (T, K) P(tag_t = k | text), set by tagger.predict; not compared (an array has no single truth value)
    marginals: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def name(self, e: Entity) -> str:
        """The surface string of an entity: its tokens joined by single spaces."""
        return " ".join(self.tokens[e.start : e.end])


@dataclass
class Dataset:
    """Samples plus what the prompts need to know about the entity types."""

    samples: list[Sample]
    types: list[str]  # the type set, in file order
    type_text: str = ""  # the type descriptions (types.txt), verbatim, for prompts
    generic: list[str] = field(default_factory=list)  # "do not extract" words from types.txt
    missing_images: int = 0  # samples read as text-only because their image is missing
    bad_images: int = 0  # samples read as text-only because their image file is not a readable image (warned)
    clipped_boxes: int = 0  # gold boxes reaching outside their image, clipped to it (warned)
    unmatched_objects: int = 0  # Twitter xml objects naming no entity of their sample (warned, dropped)
    format: str = ""  # "twitter" (txt + xml) or "conll": predictions are also written in that layout


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def without_spaces(name: str) -> str:
    """A name without any whitespace: the one identity by which a name becomes a token span."""
    return "".join(name.split())


def find_name(tokens: list[str], name: str) -> list[tuple[int, int]]:
    """Every token span [start, end) whose tokens, joined, equal `name` once all whitespace is removed.

    So a name survives any tokenisation: "V-E Day" matches both `V-E Day` (Twitter-GMNER
    keeps hyphens inside tokens) and `V - E Day` (our tokenize()). Spans start and end at
    token boundaries ("York" is not inside `NewYork`), and matching is case-sensitive:
    "Tiger" the helicopter is not "tiger" the animal.
    """
    target = without_spaces(name)
    spans = []
    for i in range(len(tokens) if target else 0):
        joined = ""
        j = i
        while j < len(tokens) and len(joined) < len(target) and target.startswith(joined):
            joined += without_spaces(tokens[j])
            j += 1
        if joined == target:
            spans.append((i, j))
    return spans


def label_names(tokens: list[str], names: list[tuple[str, str]]) -> tuple[list[Entity], list[str]]:
    """Entities for every occurrence of each (name, type); also the names found nowhere.

    Longer names first; an occurrence overlapping an already placed entity is skipped.
    """
    taken = [False] * len(tokens)
    entities = []
    missing = []
    for name, typ in sorted(names, key=lambda nt: -len(without_spaces(nt[0]))):
        spans = find_name(tokens, name)
        if not spans:
            missing.append(name)
        for s, e in spans:
            if not any(taken[s:e]):
                taken[s:e] = [True] * (e - s)
                entities.append(Entity(s, e, typ))
    entities.sort(key=lambda e: e.start)
    return entities, missing


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
    spans = []
    start = None
    cur = None
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
