"""Image files as the dataset readers look at them: untrusted input, checked without decoding.

Input: an image path (or none). Output: why the file is not a readable image (`image_problem`: "" when it
is; read_dataset makes such a sample text-only), or its upright (width, height), None when there is none
(`size_or_none`: the readers clip or convert gold boxes with it). The pixels themselves, and the upright
frame both use, are images.py's.

    python -m formats examples/demo     # reads a dataset: its bad images are counted and warned once

Left out on purpose: decoding (a truncated JPEG passes here; the stage that decodes it counts it).
"""

from PIL import Image

from images import ImageError, image_size


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
