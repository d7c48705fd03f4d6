"""The reading rules every dataset layout shares: one policy for gold boxes, one way to find and check images.

`gold_box` checks a box as read (CCKS's JSON, Twitter-GMNER's Pascal-VOC XML) and clips it to its image;
`find_image` and `attach_images` find `<id>.jpg` (.png, .jpeg) in one or more folders; `image_problem` and
`size_or_none` look at an image file (untrusted input) without decoding it. The readers (formats/ccks.py,
formats/twitter.py, labelling's Label Studio reader) count and warn what these report.

    python -m formats examples/demo     # reads a folder with these rules and prints its statistics

Left out on purpose: guessing an image from anything but the sample id; decoding pixels (a truncated JPEG
passes here; the stage that decodes it counts it).
"""

import math
from pathlib import Path

from PIL import Image

from data import Box, DataError, Dataset, is_number
from images import ImageError, image_size


def gold_box(bnd: dict, where: str, size: tuple[int, int] | None, text: bool = False) -> tuple[Box, bool]:
    """A gold box and whether it was clipped.

    The policy: coordinates outside the image (negative, or past `size` when the image size is known)
    are clipped to it, counted and warned by the reader; anything else odd is refused: strings or
    booleans in JSON (`text` = XML, where numbers are text), NaN or Infinity, and boxes with no area
    (xmax <= xmin or ymax <= ymin, also after clipping).
    """
    try:
        xyxy = [bnd[k] for k in ("xmin", "ymin", "xmax", "ymax")]
        if text:
            xyxy = [float(v) for v in xyxy]
    except (KeyError, TypeError, ValueError):
        xyxy = [None]
    bad = [v for v in xyxy if not is_number(v)]
    if any(not isinstance(v, float) for v in bad):  # a string, a boolean, null, a missing key
        raise DataError(f"{where}: expected bnd {{xmin, ymin, xmax, ymax}} numbers or null, got {bnd!r}")
    if bad:  # NaN or Infinity
        raise DataError(f"{where}: expected finite coordinates, got {bnd!r}")
    w, h = size or (math.inf, math.inf)
    clipped = [min(max(float(v), 0.0), float(top)) for v, top in zip(xyxy, (w, h, w, h))]
    box = Box(*clipped)
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        inside = f" ({w}x{h})" if size else ""
        raise DataError(
            f"{where}: expected xmin < xmax and ymin < ymax inside the image{inside}, got {bnd!r}"
        )
    return box, clipped != xyxy


IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")  # tried in this order


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


def attach_images(dataset: Dataset, dirs: list[Path]) -> None:
    """Set every sample's image from `dirs`; count the samples that have none."""
    for s in dataset.samples:
        s.image = find_image(dirs, s.id)
    dataset.missing_images = sum(1 for s in dataset.samples if s.image is None)


def image_problem(path: str) -> str:
    """ "" when the file is an image PIL can read, else why not. Cheap: the header is parsed and
    `verify` checks the structure without decoding pixels (a truncated JPEG passes, and a stage that
    decodes it later counts it)."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... by format
        return f"{type(e).__name__}: {str(e).replace(f' {path!r}', '')}"  # the caller names the file
    return ""


def size_or_none(path: str | None) -> tuple[int, int] | None:
    """An image's upright (width, height), or None when there is none or it cannot be read: a caller that
    only clips or converts boxes with it goes without, and the stages count the unreadable image."""
    try:
        return image_size(path) if path else None
    except ImageError:
        return None
