"""The dataset layouts ReFineG reads and writes, and `read_dataset`, which picks the right reader for a path.

- `ccks.py`: the CCKS-2025 folder (text.json, entity.json, images/, types.txt).
- `twitter.py`: Twitter-GMNER (IMGID + CoNLL, Pascal-VOC xml/) and plain two-column CoNLL.
- `rules.py`: what every layout shares: the gold box policy (`gold_box`), images found by id and checked.
Every reader returns a `data.Dataset`; names become spans by the rules in data.py and gold boxes are
checked by rules.py, so the formats differ only in how they store the same thing. An image file that is not a
readable image counts as no image (`Dataset.bad_images`, one warning line).

Other layouts are passed in, not hard-wired: `read_dataset(path, images, readers)` also tries each
`Reader` of the plain list `readers`, in order, on a file (not a folder) before the CoNLL readers. A
`Reader` is a pair: `read(path, images)` returns the file's Dataset, or None when the file is not in its
layout (a file that is, or that is a known relative of it, and cannot be read is a DataError); `accepts`
names the layout in the error for a `.json` file that no reader takes ("expected a CCKS folder ..., or
<accepts>"). The application passes Label Studio's export reader (labelling/labelstudio.py: EXPORT), as
`python -m formats` does.

    python -m formats examples/demo     # reads a dataset and prints its statistics

Left out on purpose: other layouts (convert them to one of these: docs/data-formats.md).
"""

import json
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from data import DataError, Dataset
from formats.ccks import read_ccks
from formats.rules import attach_images, image_problem
from formats.twitter import read_conll, read_twitter

LAYOUTS = [  # what read_dataset reads with no reader passed in, said when a file is none of it
    "a CCKS folder (text.json, entity.json, images/, types.txt)",
    "a Twitter-GMNER or CoNLL file",
]


class Reader(NamedTuple):
    """A layout the application adds to LAYOUTS (the module docstring says how read_dataset uses it)."""

    accepts: str  # the layout, as the error for a file no reader takes names it
    read: Callable[[Path, list[str | Path] | None], Dataset | None]  # None: not a file of this layout


def one_line_warnings() -> None:
    """Show the readers' warnings (and any other) as `warning: message` lines, without Python's echo of the
    source line: what the command lines (refineg.py, `python -m app.score`, `python -m formats`) call."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


def read_dataset(
    path: str | Path, images: list[str | Path] | None = None, readers: list[Reader] | None = None
) -> Dataset:
    """Any supported input (see read_any); a file that is not UTF-8 or nests too deep is a DataError.
    An image file that is not an image makes its sample text-only (drop_bad_images)."""
    try:
        dataset = read_any(Path(path), images, readers or [])
    except UnicodeDecodeError:
        raise DataError(not_utf8(Path(path))) from None
    except RecursionError:
        raise DataError(f"{path}: a JSON value nested too deep to be a dataset") from None
    drop_bad_images(dataset, path)
    return dataset


def drop_bad_images(dataset: Dataset, path: str | Path) -> None:
    """Samples whose image file is not a readable image become text-only, counted in `bad_images` and
    warned once here, where the data is read: found later, each would fail its own MLLM call."""
    bad = []  # (image path, why)
    found = sum(1 for s in dataset.samples if s.image)
    for s in dataset.samples:
        why = image_problem(s.image) if s.image else ""
        if why:
            bad.append((s.image, why))
            s.image = None
    dataset.bad_images += len(bad)
    if bad:
        warnings.warn(
            f"{path}: {len(bad)} of {found} image files are not readable images (e.g. "
            f"{bad[0][0]}: {bad[0][1]}); those samples are read as text-only",
            stacklevel=2,
        )


def not_utf8(path: Path) -> str:
    """Which file of a dataset is not UTF-8, and where."""
    files = [path / n for n in ("text.json", "entity.json", "types.txt")] if path.is_dir() else [path]
    for f in (f for f in files if f.is_file()):
        raw = f.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return f"{f}: expected UTF-8 text, got byte {raw[err.start]:#04x} at offset {err.start}"
    return f"{path}: expected UTF-8 text"


def read_any(path: Path, images: list[str | Path] | None, readers: list[Reader]) -> Dataset:
    """Any supported input: a CCKS folder, a file one of `readers` takes, a Twitter txt (xml/ beside it or up
    to two folders up) or CoNLL; a `.json` file none of them takes is an error saying what is read.

    Images: `<dir>/<id>.jpg` (.png, .jpeg) in the folders `images` when given; else a
    CCKS folder's own images/, or an `images/` folder beside a Twitter or IMGID-CoNLL
    txt. A Twitter or IMGID-CoNLL file with neither has every image missing (counted).
    """
    for d in images or []:
        if not Path(d).is_dir():
            raise DataError(f"--images: {d} is not a folder (expected a folder of <id>.jpg images)")
    if path.is_dir():
        return read_ccks(path, images or None)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    for reader in readers:
        dataset = reader.read(path, images)
        if dataset is not None:
            return dataset
    if path.suffix.lower() == ".json":  # a JSON file read as CoNLL would fail on its first line, unexplained
        raise DataError(not_a_dataset(path, readers))
    first = first_line(path)
    dirs = [Path(d) for d in images or []] or [path.parent / "images"]
    has_imgid = first.startswith("IMGID:")
    # xml/ beside the txt or up to two folders above it: the benchmark keeps one xml/ for txt/{train,dev}.txt
    # (NUSTM/GMNER) and for the low-resource splits lowres/10GMNER/train.txt
    xml_dirs = [d / "xml" for d in path.parents[:3] if (d / "xml").is_dir()]
    if has_imgid and xml_dirs:
        return read_twitter(path, xml_dirs[0], dirs)
    dataset = read_conll(path)
    if has_imgid:  # ids are image ids only when the file names them
        attach_images(dataset, dirs)
    return dataset


def not_a_dataset(path: Path, readers: list[Reader]) -> str:
    """Why a `.json` file that is not a JSON list is no dataset: what the dataset flags accept, and, for the
    text.json or entity.json of a CCKS folder, to pass the folder."""
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        return f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}"
    if path.name in ("text.json", "entity.json") and (path.parent / "text.json").is_file():
        got = f"the {path.name} of the CCKS folder {path.parent}: pass the folder {path.parent}"
    else:
        got = "a JSON object" if isinstance(value, dict) else f"the JSON value {json.dumps(value)[:40]}"
    return f"{path}: expected {accepted(readers)}; got {got}"


def accepted(readers: list[Reader]) -> str:
    """What the dataset flags take: LAYOUTS, then each reader's layout, e.g. "A, B, or C"."""
    names = LAYOUTS + [r.accepts for r in readers]
    return ", ".join(names[:-1]) + ", or " + names[-1]


def join(datasets: list[Dataset], paths: list[str]) -> Dataset:
    """Several labelled datasets as one (e.g. --data LABELLED --data OUT/suggested): the first one's types
    and descriptions; every other's types must be among them and no sample id may repeat."""
    first = datasets[0]
    seen: dict[str, str] = {}
    for dataset, path in zip(datasets, paths):
        unknown = sorted(set(dataset.types) - set(first.types))
        if unknown:
            raise DataError(f"{path}: types {unknown} are not among the types of {paths[0]}: {first.types}")
        for s in dataset.samples:
            if s.id in seen:
                raise DataError(f"{path}: sample id {s.id!r} is also in {seen[s.id]} (ids must be unique)")
            seen[s.id] = path
    samples = [s for d in datasets for s in d.samples]
    missing = sum(d.missing_images for d in datasets)
    bad = sum(d.bad_images for d in datasets)
    return replace(first, samples=samples, missing_images=missing, bad_images=bad)


def first_line(path: Path) -> str:
    """The first line with text: it names the format (a file may start with blank lines)."""
    with path.open(encoding="utf-8-sig") as f:
        return next((line for line in f if line.strip()), "")


def has_labels(path: str | Path) -> bool:
    """A CCKS folder is labelled when it has entity.json; CoNLL and Twitter files always carry tags."""
    p = Path(path)
    return not p.is_dir() or (p / "entity.json").is_file()


def stats(dataset: Dataset) -> dict:
    """Counts a person checks first: samples, entities, boxes, images, entities per type."""
    ents = [e for s in dataset.samples for e in s.entities]
    return {
        "samples": len(dataset.samples),
        "entities": len(ents),
        "groundable": sum(1 for e in ents if e.boxes),
        "boxes": sum(len(e.boxes) for e in ents),
        "with_image": sum(1 for s in dataset.samples if s.image),
        "missing_images": dataset.missing_images,
        "bad_images": dataset.bad_images,
        "per_type": dict(Counter(e.type for e in ents)),
    }
