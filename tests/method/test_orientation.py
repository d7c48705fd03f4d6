"""One frame for the whole project, the upright image (EXIF orientation applied), for the eight orientations.

Oracle: an upright 64 x 48 image, black with a red rectangle at pixels (8, 6) to (28, 20), is stored turned
by the inverse of each orientation's transpose and tagged with it; Pillow's `ImageOps.exif_transpose` (what
browsers, Label Studio and transformers' `load_image` apply) must give the upright image back. Then every
reader must find the red rectangle at those upright pixels: the size read, the pixels sent to the MLLM, the
box conversion, report.html's thumbnails and --viz pictures, the suggested copies, and a box drawn in Label
Studio read back from its export. The rectangle's centre (18, 13) is black under every other orientation's
mistake (a flip moves it to x 36..56 or y 28..42; a swapped frame has the wrong size), so a red centre and
the right size single out the upright frame.
"""

import base64
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image, ImageOps

import images
from app import page, report
from data import Box, DataError, Dataset, Entity, Sample
from formats import ccks, twitter
from grounding import from_model
from labelling import labelstudio, suggest

W, H = 64, 48  # the upright size
RED = (8, 6, 28, 20)  # the rectangle, upright pixels x1, y1, x2, y2
T = Image.Transpose
STORED = {  # orientation -> how the camera stored the upright pixels (the inverse of images.UPRIGHT[k])
    1: None,
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_90,
    7: T.TRANSVERSE,
    8: T.ROTATE_270,
}
TYPES = Dataset([], ["PER"], "1. PER: a person")


def rotated(folder: Path, k: int, fmt: str = "JPEG", name: str = "x") -> Path:
    """The oracle image stored for orientation `k` (as stored, when k is not one of 1..8) and tagged k."""
    up = Image.new("RGB", (W, H), (0, 0, 0))
    up.paste((230, 20, 20), RED)
    turn = STORED.get(k)
    exif = Image.Exif()
    exif[images.ORIENTATION] = k
    path = folder / f"{name}.{'jpg' if fmt == 'JPEG' else 'png'}"
    (up if turn is None else up.transpose(turn)).save(path, format=fmt, exif=exif, quality=95)
    if k in STORED:  # the oracle itself: the reference library turns it back upright
        with Image.open(path) as im:
            assert is_upright(ImageOps.exif_transpose(im))
    return path


def is_upright(img: Image.Image, scale: float = 1.0) -> bool:
    """The image is the oracle, maybe scaled: its size, red at the rectangle's centre, black far from it."""
    size = (round(W * scale), round(H * scale))
    centre = img.convert("RGB").getpixel((18 * scale, 13 * scale))
    far = img.convert("RGB").getpixel((56 * scale, 40 * scale))
    return img.size == size and centre[0] > 180 and max(centre[1:]) < 80 and max(far) < 60


def untagged(img: Image.Image) -> bool:
    return img.getexif().get(images.ORIENTATION, 1) == 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("k", [*STORED, 0, 9])  # 0, 9: not an orientation, read as stored
def test_every_orientation_reads_upright_size_and_pixels(tmp_path, k, fmt):
    path = rotated(tmp_path, k, fmt)
    assert images.image_size(str(path)) == (W, H)
    assert is_upright(images.open_image(str(path)))


@pytest.mark.parametrize("k", STORED)
def test_the_pixels_sent_to_the_mllm_are_upright_untagged_and_map_boxes_back(tmp_path, k):
    path = str(rotated(tmp_path, k))
    part, sent = images.image_part(path, max_side=32)
    with Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))) as got:
        assert sent == (32, 24) and untagged(got) and is_upright(got, 0.5)
    # the model's box around the rectangle in the pixels it saw comes back to the upright pixels
    assert from_model([4, 3, 14, 10], images.image_size(path), sent, "abs") == Box(*RED)
    norm = from_model([125, 125, 437.5, 416.67], images.image_size(path), sent, "norm1000")
    assert vars(norm) == pytest.approx(vars(Box(*RED)), abs=0.01)


@pytest.mark.parametrize("k", STORED)
def test_thumbnails_and_viz_pictures_are_upright(tmp_path, k):
    path = str(rotated(tmp_path, k))
    record = {"id": "x", "tokens": ["Anna"], "image": path, "final": [], "gold": None}
    assert page.thumbnail(record, tmp_path, "thumb.jpg", {}) == "report/thumb.jpg"
    report.draw([Sample("x", ["Anna"], path)], None, tmp_path / "viz", 1)
    for drawn in (tmp_path / "thumb.jpg", tmp_path / "viz" / "x.jpg"):
        with Image.open(drawn) as im:
            assert is_upright(im) and untagged(im)
    assert page.size_of(path) == [W, H]  # the trace's image_size, which the page's boxes are in


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("k", STORED)
def test_suggested_copies_are_upright_and_untagged(tmp_path, k, fmt):
    path = str(rotated(tmp_path, k, fmt))
    chosen = [suggest.Suggestion(Sample("x", ["Anna"], path), 0.5, "Anna")]
    suggest.write_suggestions(chosen, TYPES, tmp_path / "suggested")
    copy = tmp_path / "suggested" / "images" / Path(path).name
    with Image.open(copy) as im:
        assert im.format == fmt and untagged(im) and is_upright(im)
    if k == 1:  # stored upright: the file itself, byte for byte
        assert copy.read_bytes() == Path(path).read_bytes()


@pytest.mark.parametrize("k", STORED)
def test_gold_boxes_are_checked_and_written_against_the_upright_size(tmp_path, k):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    rotated(folder / "images", k)
    (folder / "text.json").write_text(json.dumps({"x": {"text": "Anna"}}))
    (folder / "types.txt").write_text(TYPES.type_text)
    corner = {"xmin": 40, "ymin": 30, "xmax": 62, "ymax": 46}  # past 48 in x: clipped if read sideways
    (folder / "entity.json").write_text(json.dumps({"x": [{"name": "Anna", "label": "PER", "bnd": corner}]}))
    data = ccks.read_ccks(folder)
    assert data.clipped_boxes == 0 and data.samples[0].entities[0].boxes == [Box(40, 30, 62, 46)]
    twitter.write_twitter(data.samples, tmp_path / "pred.txt", tmp_path / "xml")
    root = ET.parse(tmp_path / "xml" / "x.xml").getroot()
    assert (root.findtext("size/width"), root.findtext("size/height")) == (str(W), str(H))


def drawn_upright(sid: str, size: tuple[int, int] = (W, H)) -> dict:
    """A task as Label Studio exports it after an annotator drew the rectangle on the image it showed:
    percentages of the upright image, computed here from RED, not by the code under test."""
    span = {"id": "e0", "from_name": "label", "to_name": "text", "type": "labels"}
    span["value"] = {"start": 0, "end": 4, "text": "Anna", "labels": ["PER"]}
    x1, y1, x2, y2 = RED
    value = {
        "x": 100 * x1 / W,
        "y": 100 * y1 / H,
        "width": 100 * (x2 - x1) / W,
        "height": 100 * (y2 - y1) / H,
    }
    box = {"id": "b0", "from_name": "box", "to_name": "image", "type": "rectanglelabels"}
    box |= {"original_width": size[0], "original_height": size[1], "image_rotation": 0}
    box["value"] = value | {"rotation": 0, "rectanglelabels": ["PER"]}
    result = [span, box, {"type": "relation", "from_id": "e0", "to_id": "b0", "labels": ["box of"]}]
    return {
        "id": 1,
        "data": {"sample_id": sid, "text": "Anna", "image": ""},
        "annotations": [{"id": 1, "result": result}],
    }


@pytest.mark.parametrize("k", STORED)
def test_a_box_drawn_on_the_upright_image_in_label_studio_reads_back_on_the_rectangle(tmp_path, k):
    path = str(rotated(tmp_path, k))
    rows = [(Sample("x", ["Anna"], path, [Entity(0, 1, "PER", [Box(*RED)])]), 0.5, "Anna")]
    labelstudio.write_labelstudio(rows, TYPES, tmp_path / "labelstudio", 1, "/img/")
    offered = json.loads((tmp_path / "labelstudio" / "tasks.json").read_text())[0]["predictions"][0]["result"]
    assert (offered[1]["original_width"], offered[1]["original_height"]) == (W, H)
    assert offered[1]["value"] | {"rotation": 0} == drawn_upright("x")["annotations"][0]["result"][1]["value"]
    suggest.write_suggestions([suggest.Suggestion(rows[0][0], 0.5, "Anna")], TYPES, tmp_path / "suggested")
    export = tmp_path / "labelstudio" / "export.json"
    export.write_text(json.dumps([drawn_upright("x")]))
    # the image found: the rotated original (--images), or the upright copy in OUT/suggested/images
    for dirs in ([tmp_path], None):
        sample = labelstudio.read_labelstudio(export, [drawn_upright("x")], dirs).samples[0]
        box = sample.entities[0].boxes[0]
        assert vars(box) == pytest.approx(vars(Box(*RED)))
        centre = images.open_image(sample.image).getpixel(((box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2))
        assert centre[0] > 180 and max(centre[1:]) < 80  # the colour under the box: the rectangle's
    if k in images.SIDEWAYS:  # a box on the stored, sideways frame is refused, not read turned
        with pytest.raises(DataError, match=rf"drawn on a {H}x{W} image, but the sample's image is {W}x{H}"):
            labelstudio.read_labelstudio(export, [drawn_upright("x", (H, W))], [tmp_path])
