"""Images for the MLLM: every image file is untrusted input, read once into RGB or one ImageError.

The refinement and grounding stages send each sample's image to the MLLM; grounding also needs the original
size to map the model's boxes back. Input: an image path. Output: a decoded RGB image, its (width, height),
or an OpenAI `image_url` message part (a JPEG data URL, long side capped) with the size actually sent.

One frame for the whole project: the upright image, its EXIF orientation tag applied, as browsers, Label
Studio and transformers' `load_image` show it. Every pixel and size the project reads is in that frame, so a
phone photo stored on its side gets boxes where a person sees the object, and the image sent carries no tag
a server could apply twice.

    python -c "import images; print(images.image_part('examples/demo/images/001.jpg', max_side=512)[1])"

Left out on purpose: orientation kept only in XMP metadata or a camera's maker notes (ignored by
Pillow's `exif_transpose` too).
"""

import base64
import io
import math

from PIL import Image

# Qwen2-VL and Qwen2.5-VL see an image at the size transformers' image processor gives it
# (models/qwen2_vl/image_processing_qwen2_vl.py, smart_resize, with the processor's defaults):
QWEN_FACTOR = 28  # sides are multiples of a 14-pixel patch times the 2x2 merge: one token per 28x28 pixels
QWEN_MIN_PIXELS = 56 * 56  # smaller images are scaled up to at least this area
QWEN_MAX_PIXELS = 28 * 28 * 1280  # larger ones down to at most this: 1,280 image tokens


class ImageError(OSError):
    """An image file that cannot be used: missing, not an image, truncated, or too many pixels."""


# ---------------------------------------------------------------- the upright frame

ORIENTATION = 0x0112  # the EXIF tag that says how to turn the stored pixels to show the image upright
UPRIGHT = {  # orientation -> the transpose that shows the stored pixels upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIDEWAYS = (5, 6, 7, 8)  # orientations whose upright image swaps the stored width and height


def orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1 (stored upright) when it has none or none of 1..8.
    Read from the header (a PNG whose eXIf chunk follows its pixels is decoded to find it)."""
    if im.format == "TIFF":  # Pillow's TIFF reader turns it upright itself: the size on open, pixels on load
        return 1
    try:
        k = im.getexif().get(ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: browsers, and so Label Studio, show the pixels as stored
        return 1
    return k if isinstance(k, int) and k in UPRIGHT else 1


def upright(im: Image.Image) -> Image.Image:
    """The loaded image's pixels turned upright (itself when stored upright), without its EXIF block."""
    k = orientation(im)
    if k not in UPRIGHT:
        return im
    out = im.transpose(UPRIGHT[k])
    for key in ("exif", "Raw profile type exif"):  # transpose copies info: the tag would turn it again
        out.info.pop(key, None)
    return out


def open_image(path: str) -> Image.Image:
    """A decoded image as RGB, upright, or ImageError. Every image file is untrusted input: an empty file,
    text named .jpg, a truncated JPEG or a header claiming more than PIL's MAX_IMAGE_PIXELS (a decompression
    bomb, refused before decoding) all become one exception type the stages count and fall back on."""
    try:
        with Image.open(path) as im:
            if Image.MAX_IMAGE_PIXELS and im.width * im.height > Image.MAX_IMAGE_PIXELS:
                raise ImageError(f"{im.width}x{im.height} pixels, more than {Image.MAX_IMAGE_PIXELS}")
            im.load()
            im = upright(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")  # transparent pixels become white, not whatever colour they hide
                out = Image.new("RGB", rgba.size, (255, 255, 255))
                out.paste(rgba, mask=rgba.getchannel("A"))
                return out
            return im.convert("RGB")
    except ImageError as e:
        raise ImageError(f"cannot use image {path}: {e}") from None
    except Exception as e:  # PIL: OSError, ValueError, SyntaxError, DecompressionBombError, ... by format
        raise ImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of the upright image from the header alone, or ImageError: 640x480 stored with
    orientation 6 -> (480, 640)."""
    try:
        with Image.open(path) as im:
            return (im.height, im.width) if orientation(im) in SIDEWAYS else im.size
    except Exception as e:
        raise ImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) Qwen2-VL / Qwen2.5-VL resize an image to: each side rounded to a multiple of
    `factor` (Python's round: half to even), then, when the area falls outside [min_pixels, max_pixels],
    both sides scaled by one factor into it (down: floor, up: ceil, to multiples of `factor`).
    480 x 640 -> 476 x 644; 1000 x 1000 -> 980 x 980 (1008 x 1008 is over 28*28*1280); 20 x 30 -> 56 x 84.
    A size it gives is kept as it is, so an image sent at that size is seen pixel for pixel."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"expected an aspect ratio under 200, got {height} x {width}")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def image_part(path: str, max_side: int = 1000, qwen_size: bool = False) -> tuple[dict, tuple[int, int]]:
    """An image as a JPEG data URL with its long side at most `max_side`, and the (width, height) sent;
    ImageError when unreadable. Always re-encoded: the label matches the bytes (PNG, WebP, CMYK JPEG all
    become RGB JPEG, which every server decodes) and the size sent is known exactly, so a box in the sent
    image's pixels maps back to the original by a pure scaling. With `qwen_size` that size goes through
    `smart_resize` (a side may end up to 14 pixels over max_side): the model's own resize keeps it."""
    im = open_image(path)
    w, h = im.size
    size = (w, h)
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if qwen_size and max(size) / min(size) <= 200:  # beyond that ratio the processor refuses it anyway
        size = smart_resize(size[1], size[0])[::-1]
    if size != im.size:
        im = im.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}, im.size
