"""labelling/labelstudio.py offline: the project it writes, the export it reads, its rules and its errors.

Exports here are written by hand in Label Studio's JSON export layout (the shape the real tool's export
has; tests/real/test_labelstudio_real.py checks that against Label Studio itself). Hand-worked numbers: a box
x=10, y=20, width=50, height=30 (percent) on a 200 x 100 image is pixels (20, 20) to (120, 50).
"""

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from test_suggest import split_demo

import formats
import refineg
from app import cli, inputs, suggestion
from app.rundir import Run
from data import Box, DataError, Dataset, Entity, Sample
from formats import join
from labelling import labelstudio, suggest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
TYPES = ["PER", "LOC"]
TEXT = "Anna met Bob in Paris ."  # Anna [0, 4) met [5, 8) Bob [9, 12) in [13, 15) Paris [16, 21) . [22, 23)


def read_dataset(path: Path, images: list[Path] | None = None) -> Dataset:
    """formats.read_dataset as every dataset flag calls it: with labelling's export reader."""
    return formats.read_dataset(path, images, inputs.READERS)


def span(rid: str, start: int, end: int, label: str = "PER") -> dict:
    value = {"start": start, "end": end, "text": TEXT[start:end], "labels": [label]}
    return {"id": rid, "from_name": "label", "to_name": "text", "type": "labels", "value": value}


def rect(rid: str, xywh: tuple, label: str = "PER", size: tuple = (200, 100)) -> dict:
    value = dict(zip(("x", "y", "width", "height"), xywh), rotation=0, rectanglelabels=[label])
    return {
        "id": rid,
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": size[0],
        "original_height": size[1],
        "value": value,
    }


def rel(a: str, b: str) -> dict:
    return {"type": "relation", "from_id": a, "to_id": b, "direction": "right", "labels": ["box of"]}


def not_in_image(rid: str, start: int, end: int) -> dict:
    value = {"start": start, "end": end, "text": TEXT[start:end], "choices": ["not in the image"]}
    return {"id": rid, "from_name": "grounding", "to_name": "text", "type": "choices", "value": value}


def task(sid: str, *results: list, text: str = TEXT, **fields) -> dict:
    """A task with one annotation per result list (ids 1, 2, ...), annotation fields from `fields`."""
    anns = [{"id": k, "result": r, "was_cancelled": False, **fields} for k, r in enumerate(results, 1)]
    return {
        "id": 7,
        "data": {"sample_id": sid, "text": text, "image": ""},
        "annotations": anns,
        "predictions": [],
    }


def export(tmp_path: Path, tasks: list, types: list[str] = TYPES, config: list[str] | None = TYPES) -> Path:
    """tasks as OUT/labelstudio/export.json beside its types.txt (and the project's config.xml)."""
    folder = tmp_path / "labelstudio"
    folder.mkdir(exist_ok=True)
    (folder / "types.txt").write_text("".join(f"{k}. {t}: a {t}\n" for k, t in enumerate(types, 1)))
    if config is not None:
        (folder / "config.xml").write_text(labelstudio.labelling_config(config))
    path = folder / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def read(path: Path) -> tuple[list[Sample], labelstudio.ImportCounts]:
    """The samples and the counts of an export (its image folder: images/ beside it)."""
    counts = labelstudio.ImportCounts()
    tasks = json.loads(path.read_text())
    samples = labelstudio.parse_export(tasks, TYPES, str(path), [path.parent / "images"], counts)
    return samples, counts


# ---------------------------------------------------------------- the project written for --suggest


def test_the_config_puts_the_types_on_text_and_image_and_reads_back(tmp_path):
    path = tmp_path / "config.xml"
    path.write_text(labelstudio.labelling_config(["vehicle", "air-craft"]))
    assert labelstudio.config_types(path) == ["vehicle", "air-craft"]
    xml = path.read_text()
    assert '<Choices name="grounding" toName="text" perRegion="true"' in xml
    assert '<Choice value="not in the image"/>' in xml and '<Relation value="box of"/>' in xml
    assert 'canRotate="false"' in xml and 'granularity="word"' in xml


def test_tasks_carry_id_doubt_round_and_the_entities_as_predictions_never_annotations(tmp_path):
    demo = read_dataset(DEMO)
    rows = [(s, 0.9 - k / 100, f"why {k}") for k, s in enumerate(demo.samples[:3])]
    labelstudio.write_labelstudio(rows, demo, tmp_path / "ls", 2, "http://host:8081/")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert [t["data"]["sample_id"] for t in tasks] == [s.id for s in demo.samples[:3]]
    first = tasks[0]
    assert "annotations" not in first
    assert first["data"] | {"text": ""} == {
        "sample_id": "001",
        "text": "",
        "image": "http://host:8081/001.jpg",
        "doubt": 0.9,
        "why": "why 0",
        "rank": 1,
        "round": 2,
    }
    result = first["predictions"][0]["result"]
    leopard = demo.samples[0].entities[0]  # "Leopard 2", vehicle, two boxes on a 640 x 480 image
    assert result[0]["value"] == {"start": 4, "end": 13, "text": "Leopard 2", "labels": ["vehicle"]}
    assert result[1]["value"]["x"] == pytest.approx(100 * leopard.boxes[0].x1 / 640)
    assert result[2] == rel("e0", "e0b0")
    assert (tmp_path / "ls" / "types.txt").read_text() == (DEMO / "types.txt").read_text().strip() + "\n"


def test_default_image_urls_are_label_studio_local_files_under_the_filesystem_root(tmp_path):
    prefix = labelstudio.image_prefix("", tmp_path / "my images")
    assert prefix == "/data/local-files/?d=" + str(tmp_path).lstrip("/").replace(" ", "%20") + "/my%20images/"
    assert labelstudio.image_prefix("http://h/i/", tmp_path) == "http://h/i/"


def test_the_demo_written_as_predictions_and_accepted_as_annotations_reads_back_unchanged(tmp_path):
    demo = read_dataset(DEMO)
    labelstudio.write_labelstudio([(s, 0.5, "") for s in demo.samples], demo, tmp_path / "ls", 1, "/x/")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    for k, t in enumerate(tasks):  # an annotator who accepts every prediction as it is
        t["annotations"] = [{"id": k, "result": t["predictions"][0]["result"], "was_cancelled": False}]
    path = tmp_path / "ls" / "export.json"
    path.write_text(json.dumps(tasks))
    with pytest.warns(UserWarning, match="32 of 32 tasks read; 34 undecided"):
        back = read_dataset(path, [DEMO / "images"])
    assert back.types == demo.types and back.type_text == demo.type_text
    for a, b in zip(demo.samples, back.samples, strict=True):
        assert (b.id, b.tokens, b.image) == (a.id, a.tokens, a.image)
        assert [(e.start, e.end, e.type) for e in b.entities] == [
            (e.start, e.end, e.type) for e in a.entities
        ]
        got = [[vars(x) for x in e.boxes] for e in b.entities]
        assert got == [[pytest.approx(vars(x)) for x in e.boxes] for e in a.entities]


# ---------------------------------------------------------------- reading: the rules


def test_boxes_become_pixels_and_two_related_boxes_are_one_entitys_two_boxes(tmp_path):
    result = [span("a", 0, 4), rect("b1", (10, 20, 50, 30)), rect("b2", (0, 0, 100, 100)), rel("a", "b1")]
    result.append(rel("b2", "a"))  # either direction
    result += [span("p", 16, 21, "LOC"), not_in_image("p", 16, 21)]
    (s,), counts = read(export(tmp_path, [task("t1", result)]))
    assert s.entities == [
        Entity(0, 1, "PER", [Box(20.0, 20.0, 120.0, 50.0), Box(0.0, 0.0, 200.0, 100.0)]),
        Entity(4, 5, "LOC", []),
    ]
    assert counts.undecided == 0 and counts.by_label == 0


def test_an_entity_with_neither_box_nor_choice_is_ungroundable_and_counted(tmp_path):
    (s,), counts = read(export(tmp_path, [task("t1", [span("a", 0, 4), span("b", 9, 12)])]))
    assert [e.boxes for e in s.entities] == [[], []] and counts.undecided == 2


def test_a_box_without_relation_goes_to_the_one_entity_of_its_label(tmp_path):
    result = [span("a", 0, 4), span("p", 16, 21, "LOC"), rect("b", (10, 20, 50, 30), "LOC")]
    (s,), counts = read(export(tmp_path, [task("t1", result)]))
    assert s.entities[1].boxes == [Box(20.0, 20.0, 120.0, 50.0)] and s.entities[0].boxes == []
    assert counts.by_label == 1


def test_spans_off_token_boundaries_are_widened_to_the_tokens_they_touch(tmp_path):
    result = [span("a", 1, 3), span("b", 8, 12), span("p", 17, 23, "LOC")]  # "nn", " Bob", "aris ."
    (s,), counts = read(export(tmp_path, [task("t1", result)]))
    assert [(e.start, e.end) for e in s.entities] == [(0, 1), (2, 3), (4, 6)]
    assert counts.snapped == 3


def test_only_annotations_are_gold_and_skipped_tasks_are_counted(tmp_path):
    predicted = task("t1")
    predicted["predictions"] = [{"result": [span("a", 0, 4)]}]
    cancelled = task("t2", [span("a", 0, 4)], was_cancelled=True)
    kept = task("t3", [])  # annotated: nothing to label in it
    samples, counts = read(export(tmp_path, [predicted, cancelled, kept]))
    assert [(s.id, s.entities) for s in samples] == [("t3", [])]
    assert (counts.tasks, counts.no_annotation, counts.cancelled) == (3, 1, 1)


def test_of_several_annotations_ground_truth_wins_then_the_latest_update(tmp_path):
    old, new, truth = [span("a", 0, 4)], [span("b", 9, 12)], [span("p", 16, 21, "LOC")]
    t = task("t1", old, new, truth)
    t["annotations"][0]["updated_at"] = "2025-03-02T10:00:00.5Z"
    t["annotations"][1]["updated_at"] = "2025-03-02T11:00:00Z"
    t["annotations"][2]["updated_at"] = "2025-03-01T09:00:00Z"
    (s,), counts = read(export(tmp_path, [t]))
    assert [(e.start, e.type) for e in s.entities] == [(2, "PER")] and counts.several == 1
    t["annotations"][2]["ground_truth"] = True
    (s,), _ = read(export(tmp_path, [t]))
    assert [(e.start, e.type) for e in s.entities] == [(4, "LOC")]
    t["annotations"][2]["was_cancelled"] = True  # cancelled never counts, ground truth or not
    (s,), _ = read(export(tmp_path, [t]))
    assert [(e.start, e.type) for e in s.entities] == [(2, "PER")]


def test_types_come_from_types_txt_or_from_the_config_alone(tmp_path):
    path = export(tmp_path, [task("t1", [span("a", 0, 4)])], config=None)
    (tmp_path / "labelstudio" / "types.txt").rename(tmp_path / "labelstudio" / "kept.txt")
    (tmp_path / "labelstudio" / "config.xml").write_text(labelstudio.labelling_config(TYPES))
    with pytest.warns(UserWarning, match="1 undecided"):
        assert read_dataset(path).types == TYPES


def test_images_are_found_by_id_and_a_box_on_another_size_is_an_error(tmp_path):
    path = export(tmp_path, [task("t1", [span("a", 0, 4), rect("b", (10, 20, 50, 30)), rel("a", "b")])])
    suggested = tmp_path / "suggested" / "images"  # OUT/suggested/images beside OUT/labelstudio/
    suggested.mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(suggested / "t1.jpg")
    assert read_dataset(path).samples[0].image == str((suggested / "t1.jpg").resolve())
    Image.new("RGB", (300, 100)).save(suggested / "t1.jpg")
    with pytest.raises(DataError, match="drawn on a 200x100 image, but the sample's image is 300x100"):
        read_dataset(path)


def test_a_conll_file_starting_with_a_bracket_is_still_conll(tmp_path):
    conll = tmp_path / "a.txt"
    conll.write_text("[\tO\nBob\tB-PER\n]\tO\n")
    assert read_dataset(conll).samples[0].tokens == ["[", "Bob", "]"]


def test_formats_reads_an_export_only_through_the_reader_passed_in(tmp_path):
    """formats/ does not know Label Studio: without the reader an export is a JSON file of no layout it
    reads; the reader gives None for a file that is not an export, so formats' own readers take it."""
    path = export(tmp_path, [task("t1", [span("a", 0, 4), not_in_image("a", 0, 4)])])
    with pytest.raises(DataError, match=r"or a Twitter-GMNER or CoNLL file; got the JSON value \[\{"):
        formats.read_dataset(path)
    with pytest.warns(UserWarning, match="1 missing images"):
        assert [s.id for s in formats.read_dataset(path, readers=[labelstudio.EXPORT]).samples] == ["t1"]
    conll = tmp_path / "a.txt"
    conll.write_text("Bob\tB-PER\n")
    assert labelstudio.EXPORT.read(conll, None) is None


# ---------------------------------------------------------------- reading: the errors


def bad(result: list, text: str = TEXT) -> list:
    return [task("t0", [span("a", 0, 4)]), task("t1", result, text=text)]


@pytest.mark.parametrize(
    "tasks, message",
    [
        (
            bad([span("a", 0, 4, "ORG")]),
            r"task 1 \(Label Studio id 7\) sample 't1', annotation 1, region 'a': "
            r"label 'ORG' is not in types.txt",
        ),
        (
            bad([span("a", 0, 4), rect("b", (60, 0, 50, 10)), rel("a", "b")]),
            "box 'b': .* is not inside the image",
        ),
        (bad([span("a", 0, 4), rel("a", "gone")]), "relation 'a' -> 'gone': no region 'gone'"),
        (
            bad([span("a", 0, 4), span("b", 9, 12), rect("r", (1, 1, 5, 5))]),
            "no relation to its entity, and 2",
        ),
        (
            bad([span("a", 0, 4), rect("r", (1, 1, 5, 5), "LOC"), rel("a", "r")]),
            "labelled 'LOC', but its entity",
        ),
        (
            bad([span("a", 0, 4), rect("r", (1, 1, 5, 5)), rel("a", "r"), not_in_image("a", 0, 4)]),
            "has a box and the choice 'not in the image'",
        ),
        (bad([span("a", 0, 4), span("b", 0, 8)]), r"entities at tokens \[0, 1\) and \[0, 2\) overlap"),
        (bad([span("a", 3, 6)], text="Bob   Anna"), r"the span \[3, 6\) holds no token"),
        (
            bad([{"id": "x", "from_name": "sentiment", "type": "choices", "value": {}}]),
            "not in the labelling config",
        ),
        ([task("t0"), task("t0")], "task 1 .*: sample_id 't0' is also task 0"),
        ([{"id": 3, "data": {"text": TEXT}}], r"task 0 \(Label Studio id 3\): expected data.sample_id"),
        ([{"id": 3, "data": {"sample_id": "../x", "text": TEXT}}], "expected data.sample_id, a plain name"),
        ([], "a Label Studio export with no task"),
    ],
)
def test_bad_exports_are_one_error_naming_file_and_task(tmp_path, tasks, message):
    path = export(tmp_path, tasks)
    with pytest.raises(DataError, match=f"{path}: .*{message}" if tasks else message):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_dataset(path)


def third(bad_task: object) -> list:
    """Two good tasks (t0, t1) and a bad third one: an error must name the third, never the last one read."""
    return [task("t0", [span("a", 0, 4)]), task("t1", [span("a", 0, 4)]), bad_task]


def region(**change) -> dict:
    """The span region 'a' (Anna, PER) with fields replaced; `value_` replaces fields of its value."""
    item = span("a", 0, 4)
    item["value"] |= change.pop("value_", {})
    return item | change


RECT = rect("r", (10, 20, 50, 30))
T2 = r"task 2 \(Label Studio id 7\) sample 't2'"


@pytest.mark.parametrize(
    "bad_task, message",
    [
        (
            task("t2", [region(value="Anna")]),
            f"{T2}, annotation 1, region 'a': expected value, an object .*got 'Anna'",
        ),
        (
            task("t2", [region(value=[0, 4])]),
            f"{T2}, annotation 1, region 'a': expected value, an object .*got \\[0, 4\\]",
        ),
        (
            task("t2", [region(id=["a"])]),
            f"{T2}, annotation 1, result 0: expected id, a string \\(a region id\\), got \\['a'\\]",
        ),
        ("t2", r"task 2: expected a Label Studio task, an object .*, got 't2'"),
        ({"id": 9, "data": ["t2"]}, r"task 2: expected data, an object .*, got \['t2'\]"),
        (
            task("t2") | {"annotations": {"result": []}},
            f"{T2}: expected annotations, a list, got {{'result': \\[\\]}}",
        ),
        (task("t2") | {"annotations": ["x"]}, f"{T2}, annotations\\[0\\]: expected an annotation, .*got 'x'"),
        (
            task("t2", [], id=[1]),
            f"{T2}, annotations\\[0\\]: expected id, an integer or a string, got \\[1\\]",
        ),
        (
            task("t2", [], was_cancelled="no"),
            f"{T2}, annotations\\[0\\]: expected was_cancelled, true or false",
        ),
        (
            task("t2", [], result={}),
            f"{T2}, annotation 1: expected result, a list \\(of regions\\), got {{}}",
        ),
        (task("t2", ["a"]), f"{T2}, annotation 1, result 0: expected a region, an object .*got 'a'"),
        (
            task("t2", [{"id": "a", "value": {}}]),
            f"{T2}, annotation 1, result 0: expected type, a string, got nothing",
        ),
        (
            task("t2", [region(value_={"labels": "PER"})]),
            "region 'a': expected labels, a list of strings .*got 'PER'",
        ),
        (
            task("t2", [region(value_={"labels": [["PER"]]})]),
            "region 'a': expected labels, a list of strings",
        ),
        (task("t2", [region(value_={"labels": []})]), r"region 'a': expected labels, one label, got \[\]"),
        (task("t2", [region(value_={"start": "0"})]), "region 'a': expected start, an integer .*got '0'"),
        (task("t2", [region(value_={"end": 4.0})]), "region 'a': expected end, an integer .*got 4.0"),
        (task("t2", [region(value_={"end": True})]), "region 'a': expected end, an integer .*got True"),
        (
            task("t2", [region(), RECT | {"original_width": "200"}]),
            "box 'r': expected original_width, a positive",
        ),
        (
            task("t2", [region(), RECT | {"value": RECT["value"] | {"x": "10"}}]),
            "box 'r': expected x, a number",
        ),
        (
            task("t2", [region(), RECT | {"value": RECT["value"] | {"rotation": "0"}}]),
            "box 'r': expected rotation",
        ),
        (
            task("t2", [region(), RECT, rel(["a"], "r")]),
            r"result 2: expected from_id, a string \(a region id\), got \['a'\]",
        ),
        (
            task("t2", [region(), not_in_image("a", 0, 4) | {"value": {"choices": "not in the image"}}]),
            "expected choices",
        ),
        (task("t2", [], text=["Anna"]), f"{T2}: expected text, a string .*got \\['Anna'\\]"),
    ],
)
def test_a_field_of_the_wrong_json_type_is_one_error_naming_the_task_that_holds_it(
    tmp_path, bad_task, message
):
    path = export(tmp_path, third(bad_task))
    with pytest.raises(DataError, match=f"^{path}: .*{message}"):
        read_dataset(path)


def test_python_m_formats_names_the_third_task_of_three_when_it_is_the_bad_one(tmp_path):
    """value a string, value a list, id a list: each one `error:` line naming task 2 and sample t2, exit 2
    (these were tracebacks, exit 1, and the application named the last sample read, t1)."""
    for bad_region in [region(value="Anna"), region(value=["Anna"]), region(id=["a"])]:
        path = export(tmp_path, third(task("t2", [bad_region])))
        done = subprocess.run(
            [sys.executable, "-m", "formats", str(path)], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith(
            f"error: {path}: task 2 (Label Studio id 7) sample 't2', annotation 1, "
        )
        assert done.stderr.count("\n") == 1 and "'t1'" not in done.stderr


def test_refineg_data_names_the_failing_task_after_the_flag_and_exits_2(tmp_path, capsys):
    """The application's view of the same export: the flag, then the reader's message; no run directory."""
    path = export(tmp_path, third(task("t2", [region(value="Anna")])))
    assert refineg.main(["--data", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data {path}: task 2 (Label Studio id 7) sample 't2', annotation 1, ")
    assert err.count("\n") == 1 and "'t1'" not in err and not (tmp_path / "run").exists()


def test_an_export_beside_a_config_that_is_not_its_types_is_refused(tmp_path):
    path = export(tmp_path, [task("t1", [])], config=["PER", "ORG"])
    with pytest.raises(
        DataError, match=r"config.xml: the labelling config's labels \['PER', 'ORG'\] are not"
    ):
        read_dataset(path)
    (tmp_path / "labelstudio" / "types.txt").unlink()
    (tmp_path / "labelstudio" / "config.xml").unlink()
    with pytest.raises(DataError, match="expected types.txt .* beside the export"):
        read_dataset(path)


def test_python_m_formats_reads_an_export_and_says_a_bad_one_in_one_line(tmp_path):
    path = export(tmp_path, [task("t1", [span("a", 0, 4), not_in_image("a", 0, 4)])])
    ok = subprocess.run(
        [sys.executable, "-m", "formats", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert ok.returncode == 0 and '"samples": 1' in ok.stdout and '"PER": 1' in ok.stdout
    (tmp_path / "bad.json").write_text('{"t1": []}')
    no = subprocess.run(
        [sys.executable, "-m", "formats", str(tmp_path / "bad.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert no.returncode == 2
    assert no.stderr.startswith(f"error: {tmp_path / 'bad.json'}: expected a CCKS folder")
    assert no.stderr.endswith("or a Label Studio JSON export (a list of tasks [...]); got a JSON object\n")


def formats_says(path: Path) -> subprocess.CompletedProcess:
    """`python -m formats PATH`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "formats", str(path)], cwd=ROOT, capture_output=True, text=True
    )


def test_a_json_min_export_is_named_and_json_asked_for_even_without_types_beside_it(tmp_path):
    """Label Studio's JSON-MIN export: one flat object per annotation, the data fields and each control's
    regions (without their ids; no relations) at the top level."""
    label = [{"start": 0, "end": 4, "text": "Anna", "labels": ["PER"]}]
    record = {"image": "", "sample_id": "t1", "text": TEXT, "doubt": 0.5, "rank": 1, "round": 1, "id": 7}
    record |= {"label": label, "annotator": 1, "annotation_id": 3, "lead_time": 4.2}
    (tmp_path / "min.json").write_text(json.dumps([record]))
    done = formats_says(tmp_path / "min.json")
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {tmp_path / 'min.json'}: this is Label Studio's minimal JSON export (JSON-MIN, "
        "exportType=JSON_MIN), whose flat objects drop the regions' ids and the relations from entities to "
        'their boxes, which this reader needs: export the project as "JSON" instead\n'
    )


@pytest.mark.parametrize("sep, kind", [(",", "CSV"), ("\t", "TSV")])
def test_label_studio_csv_and_tsv_exports_are_named_and_json_asked_for(tmp_path, sep, kind):
    """Their header: the data fields, the controls and the annotation's fields (csv.QUOTE_NONNUMERIC)."""
    header = ["annotation_id", "annotator", "created_at", "id", "label", "lead_time", "sample_id", "text"]
    path = tmp_path / f"export.{kind.lower()}"
    path.write_text(sep.join(f'"{h}"' for h in header) + "\n" + sep.join(["3", "1", '"x"', "7"]) + "\n")
    done = formats_says(path)
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {path}: this is Label Studio's {kind} export, whose rows drop the regions' ids and the "
        "relations from entities to their boxes, which this reader needs: "
        'export the project as "JSON" instead\n'
    )


def test_label_studio_conll2003_export_reads_as_conll_and_warns_what_it_lacks(tmp_path):
    path = tmp_path / "result.conll"
    path.write_text("-DOCSTART- -X- O\nAnna -X- _ B-PER\nmet -X- _ O\n\nBob -X- _ B-PER\n\n")
    with pytest.warns(
        UserWarning, match="Label Studio's CONLL2003 export, read as plain CoNLL: no sample ids"
    ):
        dataset = read_dataset(path)
    assert [(s.id, s.tokens) for s in dataset.samples] == [("0", ["Anna", "met"]), ("1", ["Bob"])]


# ---------------------------------------------------------------- the annotation loop through refineg.py


def accept_all(tasks_json: Path, export_json: Path) -> None:
    """An annotator who accepts every prediction and says "not in the image" for each entity with no box."""
    tasks = json.loads(tasks_json.read_text())
    for k, t in enumerate(tasks):
        result = t["predictions"][0]["result"]
        boxed = {r["from_id"] for r in result if r["type"] == "relation"}
        spans = [r for r in result if r["type"] == "labels" and r["id"] not in boxed]
        said = [dict(r["value"], choices=["not in the image"]) for r in spans]
        choices = [dict(r, type="choices", from_name="grounding", value=v) for r, v in zip(spans, said)]
        t["annotations"] = [{"id": k, "result": result + choices, "was_cancelled": False}]
    export_json.write_text(json.dumps(tasks))


def suggestion_round(args: list[str], monkeypatch) -> Path:
    """The suggestion stage (app/suggestion.py) for `args`, as refineg.main() runs it, with a tagger that
    predicts the demo's gold (entities and boxes): the stage's own work is writing the files, not training."""
    gold = {s.id: s for s in read_dataset(DEMO).samples}

    def perfect(model, pool, n, config, progress=True):
        return [
            suggest.Suggestion(replace(gold[s.id], image=s.image), 1 - k / 10, "gold")
            for k, s in enumerate(pool[:n])
        ]

    monkeypatch.setattr(suggest, "suggest", perfect)
    cfg = cli.parse_settings(args)
    settings = cfg.run
    labelled = join([read_dataset(p) for p in settings.data], settings.data)
    pool = inputs.read_pool(settings, labelled)
    Path(settings.out).mkdir(parents=True)
    embed = lambda key, make: make()  # noqa: E731 (no pool to share: no grounding stage here)
    suggestion.suggestion_stage(Run(Path(settings.out), cfg.llm), cfg, None, pool, labelled, embed)
    return Path(settings.out)


def test_suggest_writes_a_label_studio_project_and_its_export_is_the_next_rounds_data(tmp_path, monkeypatch):
    labelled, pool = split_demo(tmp_path)
    args = ["--data", str(labelled), "--unlabelled", str(pool), "--suggest", "4"]
    out = suggestion_round(args + ["--out", str(tmp_path / "run")], monkeypatch)
    ranks = [json.loads(line) for line in (out / "suggested.jsonl").read_text().splitlines()]
    tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
    assert [t["data"]["sample_id"] for t in tasks] == [r["id"] for r in ranks]
    assert [t["data"]["doubt"] for t in tasks] == [r["score"] for r in ranks] == [1.0, 0.9, 0.8, 0.7]
    assert {t["data"]["round"] for t in tasks} == {1}  # one --data: the first round
    for t in tasks:  # the local-file URL names the copy in OUT/suggested/images (LOCAL_FILES_DOCUMENT_ROOT=/)
        assert Path("/" + t["data"]["image"].removeprefix("/data/local-files/?d=")).is_file()
    assert labelstudio.config_types(out / "labelstudio" / "config.xml") == read_dataset(labelled).types
    accept_all(out / "labelstudio" / "tasks.json", out / "labelstudio" / "export.json")
    back = read_dataset(out / "labelstudio" / "export.json")  # no warning: every entity decided
    gold = {s.id: s for s in read_dataset(DEMO).samples}
    for s in back.samples:
        assert (s.tokens, s.image) == (
            gold[s.id].tokens,
            str(out.resolve() / "suggested" / "images" / f"{s.id}.jpg"),
        )
        assert [(e.start, e.end, e.type) for e in s.entities] == [
            (e.start, e.end, e.type) for e in gold[s.id].entities
        ]
        got = [[vars(b) for b in e.boxes] for e in s.entities]
        assert got == [[pytest.approx(vars(b)) for b in e.boxes] for e in gold[s.id].entities]
    args[1:2] = [str(labelled), "--data", str(out / "labelstudio" / "export.json")]
    again = suggestion_round(args + ["--out", str(tmp_path / "run2")], monkeypatch)
    second = json.loads((again / "labelstudio" / "tasks.json").read_text())
    assert {t["data"]["round"] for t in second} == {2}  # two --data: the second round
    assert not {t["data"]["sample_id"] for t in second} & {r["id"] for r in ranks}  # none suggested twice


def test_the_round_and_the_image_prefix_can_be_given(tmp_path, monkeypatch):
    labelled, pool = split_demo(tmp_path)
    args = [
        "--data",
        str(labelled),
        "--unlabelled",
        str(pool),
        "--suggest",
        "2",
        "--out",
        str(tmp_path / "r"),
    ]
    args += ["--suggest-round", "5", "--labelstudio-images", "http://host:8081/"]
    tasks = json.loads((suggestion_round(args, monkeypatch) / "labelstudio" / "tasks.json").read_text())
    assert [(t["data"]["round"], t["data"]["image"]) for t in tasks] == [
        (5, f"http://host:8081/{t['data']['sample_id']}.jpg") for t in tasks
    ]


def test_a_box_whose_rotation_is_null_or_absent_is_unrotated_and_a_turned_one_is_refused(tmp_path):
    boxes = []
    for rotation in (None, "absent", 0, 15):
        box = rect("b", (10, 20, 50, 30))
        if rotation == "absent":
            del box["value"]["rotation"]
        else:
            box["value"]["rotation"] = rotation
        boxes.append(box)
    for box in boxes[:3]:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        path = export(folder, [task("t1", [span("a", 0, 4), box, rel("a", "b")])])
        assert read_dataset(path).samples[0].entities[0].boxes == [Box(20.0, 20.0, 120.0, 50.0)]
    path = export(tmp_path, [task("t1", [span("a", 0, 4), boxes[3], rel("a", "b")])])
    with pytest.raises(DataError, match=r"a rotated box \(rotation 15\)"):
        read_dataset(path)
