"""Hostile image files for tests: each is a way an image folder can break a run (issue 13).

write_bad_image(path, "bomb")    # a JPEG whose header claims 30000 x 30000 pixels
"""

import io
from pathlib import Path

from PIL import Image

BAD_IMAGES = ["empty", "text", "truncated", "bomb"]


def write_bad_image(path: str | Path, kind: str) -> None:
    path = Path(path)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated":
        path.write_bytes(jpeg[: len(jpeg) // 2])
    elif kind == "bomb":  # SOF0 = FF C0, length (2), precision (1), height (2), width (2)
        i = jpeg.index(b"\xff\xc0")
        path.write_bytes(jpeg[: i + 5] + (30000).to_bytes(2, "big") * 2 + jpeg[i + 9 :])
    else:
        raise ValueError(f"kind: expected one of {BAD_IMAGES}, got {kind!r}")
