"""ccks.py: the CCKS layout's reader, writer and prediction reader, on tiny folders written here."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import refineg
from app.inputs import READERS
from data import Box, DataError
from formats import read_dataset, stats
from formats.ccks import read_ccks, read_ccks_predictions, write_ccks

ROOT = Path(__file__).resolve().parents[2]
ACCEPTED = (  # what a dataset flag takes, as the error for a .json file that is none of them says it
    "expected a CCKS folder (text.json, entity.json, images/, types.txt), a Twitter-GMNER or CoNLL file, "
    "or a Label Studio JSON export (a list of tasks [...])"
)


TYPES = (
    "Types:\n1. vehicle: tanks\n2. other: units\n3. location: places\n"
    "**DO NOT** extract entities without specific name (e.g.: gun, tank)\n"
)
LEO = {"xmin": 10, "ymin": 20, "xmax": 60, "ymax": 50}
LEO2 = {"xmin": 70, "ymin": 20, "xmax": 120, "ymax": 52}


def bnd_box(b: dict) -> Box:
    return Box(b["xmin"], b["ymin"], b["xmax"], b["ymax"])


def make_ccks(folder: Path, texts: dict, labels: dict | None, images: bool = True) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "text.json").write_text(json.dumps({k: {"text": v} for k, v in texts.items()}, indent=1))
    if labels is not None:
        (folder / "entity.json").write_text(json.dumps(labels, indent=1))
    (folder / "types.txt").write_text(TYPES)
    if images:
        for sid in texts:
            Image.new("RGB", (160, 120), (90, 120, 60)).save(folder / "images" / f"{sid}.jpg")
    return folder


TEXTS = {
    "1": "Two Leopard 2 tanks near Munster.",
    "2": "The Leopard 2 passes another Leopard 2 of Panzerbataillon 203.",
    "3": "A tank waits.",
    "4": "Standing NATO Maritime Group 1 joins NATO drills.",
}
LABELS = {
    "1": [
        {"name": "Leopard 2", "label": "vehicle", "bnd": LEO},
        {"name": "Leopard 2", "label": "vehicle", "bnd": LEO2},
        {"name": "Munster", "label": "location", "bnd": None},
    ],
    "2": [
        {"name": "Leopard 2", "label": "vehicle", "bnd": LEO},
        {"name": "Panzerbataillon 203", "label": "other", "bnd": None},
    ],
    "3": [],
    "4": [
        {"name": "NATO", "label": "other", "bnd": None},
        {"name": "Standing NATO Maritime Group 1", "label": "other", "bnd": None},
    ],
}


def test_ccks_reader(tmp_path):
    data = read_ccks(make_ccks(tmp_path, TEXTS, LABELS))
    assert data.types == ["vehicle", "other", "location"] and data.generic == ["gun", "tank"]
    assert "**DO NOT**" in data.type_text and data.missing_images == 0
    s1, s2, s3, s4 = data.samples
    assert s1.image.endswith("1.jpg")
    # two records with one name: one entity with both boxes; Munster ungroundable
    assert [(s1.name(e), e.type, e.boxes) for e in s1.entities] == [
        ("Leopard 2", "vehicle", [bnd_box(LEO), bnd_box(LEO2)]),
        ("Munster", "location", []),
    ]
    # a name occurring twice labels both occurrences, each with the name's boxes
    assert [(e.start, e.end, e.boxes) for e in s2.entities if e.type == "vehicle"] == [
        (1, 3, [bnd_box(LEO)]),
        (5, 7, [bnd_box(LEO)]),
    ]
    assert s3.entities == []
    # a shorter name inside a longer one is not labelled a second time inside it
    assert [(e.start, e.end) for e in s4.entities] == [(0, 5), (6, 7)]


def test_ccks_reader_without_labels_is_unlabelled(tmp_path):
    data = read_ccks(make_ccks(tmp_path, TEXTS, None))
    assert len(data.samples) == 4 and all(s.entities == [] for s in data.samples)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"name": "Leopard 2", "label": "ship", "bnd": None}, "label 'ship' is not in types.txt"),
        (
            {
                "name": "Leopard 2",
                "label": "vehicle",
                "bnd": {"xmin": 60, "ymin": 20, "xmax": 60, "ymax": 50},
            },
            "expected xmin < xmax and ymin < ymax inside the image",
        ),
        (
            {
                "name": "Leopard 2",
                "label": "vehicle",
                "bnd": {"xmin": 170, "ymin": 20, "xmax": 200, "ymax": 50},
            },
            "expected xmin < xmax and ymin < ymax inside the image (160x120)",
        ),  # nothing left after clipping
        (
            {
                "name": "Leopard 2",
                "label": "vehicle",
                "bnd": {"xmin": float("nan"), "ymin": 20, "xmax": 60, "ymax": 50},
            },
            "expected finite coordinates",
        ),
        (
            {
                "name": "Leopard 2",
                "label": "vehicle",
                "bnd": {"xmin": 1, "ymin": 2, "xmax": float("inf"), "ymax": 50},
            },
            "expected finite coordinates",
        ),
        (
            {
                "name": "Leopard 2",
                "label": "vehicle",
                "bnd": {"xmin": "1", "ymin": 2, "xmax": 60, "ymax": 50},
            },
            "expected bnd",
        ),
        (
            {
                "name": "Leopard 2",
                "label": "vehicle",
                "bnd": {"xmin": True, "ymin": 2, "xmax": 60, "ymax": 50},
            },
            "expected bnd",
        ),
        ({"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": 1, "ymin": 2}}, "expected bnd"),
        ({"name": "Boxer", "label": "vehicle", "bnd": None}, "name 'Boxer' is not in the text"),
        ({"label": "vehicle", "bnd": None}, 'expected {"name"'),
    ],
)
def test_ccks_bad_records_name_file_and_record(tmp_path, record, message):
    labels = {**LABELS, "2": [LABELS["2"][1], record]}
    make_ccks(tmp_path, TEXTS, labels)
    with pytest.raises(DataError) as err:
        read_ccks(tmp_path)
    assert message in str(err.value)
    assert "entity.json: record '2'" in str(err.value)


def test_ccks_malformed_json_names_the_line(tmp_path):
    make_ccks(tmp_path, TEXTS, LABELS)
    (tmp_path / "text.json").write_text(
        '{\n "1": {"text": "a"},\n "2": {"text" "b"}\n}\n'
    )  # no colon on line 3
    with pytest.raises(DataError, match=r"text\.json:3:\d+: malformed JSON"):
        read_ccks(tmp_path)


def test_a_control_character_in_a_string_gives_the_whole_json_error(tmp_path):
    """json's message for it ends in "at": the place follows, and the error must not stop before it."""
    make_ccks(tmp_path, TEXTS, LABELS)
    (tmp_path / "text.json").write_text('{\n "1": {"text": "a\tb"}\n}\n')  # a raw tab inside the string
    with pytest.raises(DataError) as err:
        read_ccks(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'text.json'}:2:18: malformed JSON: Invalid control character at: line 2 column 18 "
        "(char 19) (a tab or line break inside a string must be written \\t or \\n)"
    )


@pytest.mark.parametrize("sid", ["../x", "../images/001", "sub/002", ".hidden", "a b", ""])
def test_ccks_ids_are_plain_names(tmp_path, sid):
    make_ccks(tmp_path, {"001": "Munster.", sid: "Munster."}, {}, images=False)
    with pytest.raises(
        DataError, match=r"record .*: an id is a plain name \(letters, digits, '_', '-', '\.'"
    ):
        read_ccks(tmp_path)


def test_boxes_outside_the_image_are_clipped_counted_and_warned(tmp_path):
    labels = {**LABELS, "3": []}
    labels["2"] = [
        {"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": -3, "ymin": 20, "xmax": 500, "ymax": 50}},
        LABELS["2"][1],
    ]
    make_ccks(tmp_path, TEXTS, labels)  # images are 160 x 120
    with pytest.warns(UserWarning, match=r"1 gold box\(es\) reached outside their image and were clipped"):
        data = read_ccks(tmp_path)
    assert data.clipped_boxes == 1 and data.samples[1].entities[0].boxes == [Box(0, 20, 160, 50)]


def test_an_image_file_that_is_not_an_image_is_no_image_counted_and_warned_once(tmp_path):
    make_ccks(tmp_path, TEXTS, LABELS)
    (tmp_path / "images" / "2.jpg").write_text("not a picture")
    (tmp_path / "images" / "4.jpg").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        data = read_dataset(tmp_path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{tmp_path}: 2 of 4 image files are not readable images (e.g. ")
    assert str((tmp_path / "images" / "2.jpg").resolve()) in message and message.endswith("read as text-only")
    assert [s.image is not None for s in data.samples] == [True, False, True, False]
    assert (data.bad_images, data.missing_images) == (2, 0)
    assert stats(data)["with_image"] == 2 and stats(data)["bad_images"] == 2


def test_a_bom_is_accepted_in_every_text_file(tmp_path):
    make_ccks(tmp_path, TEXTS, LABELS)
    for name in ("text.json", "entity.json", "types.txt"):
        f = tmp_path / name
        f.write_text("\ufeff" + f.read_text(encoding="utf-8"), encoding="utf-8")
    assert read_ccks(tmp_path).types == ["vehicle", "other", "location"]
    types = tmp_path / "types.txt"  # a BOM before a later line (two files pasted together)
    types.write_text(
        types.read_text(encoding="utf-8-sig").replace("2. other", "\ufeff2. other"), encoding="utf-8"
    )
    assert read_ccks(tmp_path).types == ["vehicle", "other", "location"]
    (tmp_path / "a.txt").write_text("\ufeffIMGID:1\nObama\tB-PER\n", encoding="utf-8")
    assert [s.id for s in read_dataset(tmp_path / "a.txt").samples] == ["1"]


def test_ccks_missing_image_warns_and_reads_text_only(tmp_path):
    make_ccks(tmp_path, TEXTS, LABELS)
    (tmp_path / "images" / "3.jpg").unlink()
    with pytest.warns(UserWarning, match=r"1 of 4 images not found .*\['3'\]"):
        data = read_ccks(tmp_path)
    assert data.missing_images == 1
    assert [s.image is None for s in data.samples] == [False, False, True, False]


def test_ccks_labels_for_unknown_ids_are_an_error(tmp_path):
    make_ccks(tmp_path, TEXTS, {**LABELS, "9": []})
    with pytest.raises(DataError, match="ids with no text"):
        read_ccks(tmp_path)


def test_ccks_writer_round_trips(tmp_path):
    data = read_ccks(make_ccks(tmp_path / "a", TEXTS, LABELS))
    b = make_ccks(tmp_path / "b", TEXTS, None)
    write_ccks(data.samples, b / "entity.json")
    back = read_ccks(b)
    assert [(s.id, s.tokens, s.entities) for s in back.samples] == [
        (s.id, s.tokens, s.entities) for s in data.samples
    ]
    # the same file read as predictions against the gold samples
    pred, unplaced = read_ccks_predictions(b / "entity.json", data.samples, data.types)
    assert [s.entities for s in pred] == [s.entities for s in data.samples] and unplaced == []


def test_ccks_writer_round_trips_the_demo(tmp_path):
    demo = ROOT / "examples" / "demo"
    data = read_ccks(demo)
    shutil.copytree(demo, tmp_path / "demo")
    write_ccks(data.samples, tmp_path / "demo" / "entity.json")
    back = read_ccks(tmp_path / "demo")
    assert [s.entities for s in back.samples] == [s.entities for s in data.samples]


def test_ccks_predictions_reject_unknown_ids(tmp_path):
    data = read_ccks(make_ccks(tmp_path, TEXTS, LABELS))
    (tmp_path / "pred.json").write_text(json.dumps({"1": [], "42": []}))
    with pytest.raises(DataError, match="'42'"):
        read_ccks_predictions(tmp_path / "pred.json", data.samples)
    (tmp_path / "pred.json").write_text(json.dumps({"1": []}))  # absent ids are empty predictions
    assert all(s.entities == [] for s in read_ccks_predictions(tmp_path / "pred.json", data.samples)[0])


def test_a_ccks_file_given_for_its_folder_says_what_is_read_and_to_pass_the_folder(tmp_path):
    folder = make_ccks(tmp_path / "ccks", TEXTS, LABELS, images=False)
    for name in ("text.json", "entity.json"):
        done = subprocess.run(
            [sys.executable, "-m", "formats", str(folder / name)], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2
        assert done.stderr == (
            f"error: {folder / name}: {ACCEPTED}; got the {name} of the CCKS folder {folder}: "
            f"pass the folder {folder}\n"
        )


def test_a_json_file_that_is_no_dataset_says_what_the_flags_accept(tmp_path):
    """formats' own layouts, then the layouts of the readers passed in (the application passes Label
    Studio's, which also names a COCO file)."""
    (tmp_path / "labels.json").write_text(json.dumps({"1": []}))
    with pytest.raises(DataError) as own:
        read_dataset(tmp_path / "labels.json")
    assert str(own.value) == (
        f"{tmp_path / 'labels.json'}: expected a CCKS folder (text.json, entity.json, images/, types.txt), "
        "or a Twitter-GMNER or CoNLL file; got a JSON object"
    )
    with pytest.raises(DataError) as flags:
        read_dataset(tmp_path / "labels.json", readers=READERS)
    assert str(flags.value) == f"{tmp_path / 'labels.json'}: {ACCEPTED}; got a JSON object"
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "categories": [], "annotations": []}))
    with pytest.raises(DataError) as coco:
        read_dataset(tmp_path / "coco.json", readers=READERS)
    assert str(coco.value) == (
        f"{tmp_path / 'coco.json'}: {ACCEPTED}; got a COCO file (Label Studio's COCO export has no text): "
        'export the project as "JSON"'
    )


def test_unlabelled_given_a_ccks_text_json_is_one_error_line_naming_the_flag(tmp_path, capsys):
    """The flag comes first, as in its other errors ("--unlabelled PATH: no such file or folder"); the run
    directory is not made."""
    text = make_ccks(tmp_path / "pool", TEXTS, None, images=False) / "text.json"
    argv = [
        "--data",
        str(ROOT / "examples" / "demo"),
        "--unlabelled",
        str(text),
        "--out",
        str(tmp_path / "run"),
    ]
    assert refineg.main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: --unlabelled {text}: {ACCEPTED}; got the text.json of the CCKS folder {text.parent}: "
        f"pass the folder {text.parent}\n"
    )
    assert not (tmp_path / "run").exists()
