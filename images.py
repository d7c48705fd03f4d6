"""Images for the MLLM: every image file is untrusted input, read once into RGB or one ImageError.

The refinement and grounding stages send each sample's image to the MLLM; grounding also needs the
original size to map the model's boxes back. Input: an image path. Output: a decoded RGB image, its
(width, height), or an OpenAI `image_url` message part (a JPEG data URL, long side capped) with the
size actually sent.

    python -c "import images; print(images.image_part('examples/demo/images/001.jpg', max_side=512)[1])"

Left out on purpose: EXIF rotation (boxes are in the stored pixel grid, so images are sent in it too).
"""

import base64
import io

from PIL import Image


class ImageError(OSError):
    """An image file that cannot be used: missing, not an image, truncated, or too many pixels."""


def open_image(path: str) -> Image.Image:
    """A decoded image as RGB, or ImageError. Every image file is untrusted input: an empty file, text
    named .jpg, a truncated JPEG or a header claiming more than PIL's MAX_IMAGE_PIXELS (a decompression
    bomb, refused before decoding) all become one exception type the stages count and fall back on."""
    try:
        with Image.open(path) as im:
            if Image.MAX_IMAGE_PIXELS and im.width * im.height > Image.MAX_IMAGE_PIXELS:
                raise ImageError(f"{im.width}x{im.height} pixels, more than {Image.MAX_IMAGE_PIXELS}")
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")  # transparent pixels become white, not whatever colour they hide
                out = Image.new("RGB", rgba.size, (255, 255, 255))
                out.paste(rgba, mask=rgba.getchannel("A"))
                return out
            return im.convert("RGB")
    except ImageError as e:
        raise ImageError(f"cannot use image {path}: {e}") from None
    except (
        Exception
    ) as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ... by format
        raise ImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


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


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the header alone, or ImageError."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise ImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def image_part(path: str, max_side: int = 1000) -> tuple[dict, tuple[int, int]]:
    """An image as a JPEG data URL with its long side at most `max_side`, and the (width, height) sent.

    Always re-encoded: the label then always matches the bytes (PNG, WebP, CMYK JPEG all become RGB
    JPEG, which every server decodes), and the size sent is known exactly, so a box the model gives
    in the sent image's pixels maps back to the original by a pure scaling. ImageError when unreadable.
    """
    im = open_image(path)
    w, h = im.size
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}, im.size
