"""data.py: tokenising, tags <-> spans, and every reader and writer, on tiny files written here."""

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data import (Box, DataError, Entity, Sample, find_name, label_names, read_ccks, read_ccks_predictions,  # noqa: E402
                  read_conll, read_dataset, read_twitter, spans_to_tags, tags_to_spans, tokenize, write_twitter,
                  write_ccks, write_conll)

TWITTER = ROOT.parent / "shared" / "data" / "twitter-gmner"
TYPES = "Types:\n1. vehicle: tanks\n2. other: units\n3. location: places\n" \
        "**DO NOT** extract entities without specific name (e.g.: gun, tank)\n"
LEO = {"xmin": 10, "ymin": 20, "xmax": 60, "ymax": 50}
LEO2 = {"xmin": 70, "ymin": 20, "xmax": 120, "ymax": 52}


def bnd_box(b: dict) -> Box:
    return Box(b["xmin"], b["ymin"], b["xmax"], b["ymax"])


# ---------------------------------------------------------------- tokens and tags

def test_samples_compare_by_content_not_by_marginals():
    """A predicted Sample carries a (T, K) marginals array; == must compare ids, tokens, image and entities
    (comparing arrays raises "truth value of an array is ambiguous"), and repr must not print the array."""
    a = Sample("1", ["Obama", "spoke"], None, [Entity(0, 1, "PER")], marginals=np.ones((2, 3)))
    b = Sample("1", ["Obama", "spoke"], None, [Entity(0, 1, "PER")], marginals=np.zeros((2, 3)))
    assert a == b
    assert a != Sample("1", ["Obama", "spoke"], None, [Entity(0, 1, "LOC")])
    assert "marginals" not in repr(a)


def test_tokenize_splits_words_from_punctuation():
    assert tokenize("The ship's NH-90, at 10:30.") == \
        ["The", "ship", "'", "s", "NH", "-", "90", ",", "at", "10", ":", "30", "."]
    assert tokenize("  ") == []


def test_find_name_is_case_sensitive_and_token_aligned():
    tokens = tokenize("Tiger tiger Tigers Tiger NH-90")
    assert find_name(tokens, "Tiger") == [(0, 1), (3, 4)]
    assert find_name(tokens, "NH-90") == [(4, 7)]
    assert find_name(tokens, "") == [] and find_name(tokens, "  ") == []
    assert find_name(tokens, "Tige") == [] and find_name(tokens, "iger") == []   # token boundaries


def test_find_name_ignores_whitespace_whatever_the_tokenisation():
    """Twitter-GMNER keeps hyphens inside tokens; tokenize() splits them: both are found, and both
    ways of writing the name find both."""
    twitter = ["Happy", "V-E", "Day", "from", "Jay-Z"]
    ours = tokenize("Happy V-E Day from Jay-Z")           # Happy V - E Day from Jay - Z
    for name in ("V-E Day", "V - E Day", "V-EDay"):
        assert find_name(twitter, name) == [(1, 3)]
        assert find_name(ours, name) == [(1, 5)]
    assert find_name(twitter, "Jay - Z") == [(4, 5)] and find_name(ours, "Jay-Z") == [(6, 9)]
    assert find_name(twitter, "V-E") == [(1, 2)] and find_name(twitter, "V") == []   # not inside a token
    assert find_name(["New", "York", "NewYork"], "New York") == [(0, 2), (2, 3)]


def random_spans(rng: random.Random, n: int, types: list[str]) -> list[Entity]:
    """Non-overlapping entities, some adjacent, with lengths 1..3."""
    out, i = [], 0
    while i < n:
        if rng.random() < 0.4:
            length = min(rng.randint(1, 3), n - i)
            out.append(Entity(i, i + length, rng.choice(types)))
            i += length
        else:
            i += 1
    return out


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_spans_tags_round_trip(scheme):
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(0, 12)
        ents = random_spans(rng, n, ["PER", "LOC"])
        tags = spans_to_tags(n, ents, scheme)
        assert len(tags) == n
        assert tags_to_spans(tags) == [(e.start, e.end, e.type) for e in ents]
        assert spans_to_tags(n, [Entity(s, e, t) for s, e, t in tags_to_spans(tags)], scheme) == tags


def test_tag_schemes_by_hand():
    ents = [Entity(0, 1, "PER"), Entity(1, 4, "LOC")]
    assert spans_to_tags(5, ents, "BIO") == ["B-PER", "B-LOC", "I-LOC", "I-LOC", "O"]
    assert spans_to_tags(5, ents, "BIOES") == ["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"]


def test_conlleval_stray_inside_tags():
    assert tags_to_spans(["O", "I-PER"]) == [(1, 2, "PER")]                     # a stray I- starts an entity
    assert tags_to_spans(["B-PER", "I-LOC"]) == [(0, 1, "PER"), (1, 2, "LOC")]  # a type change is two
    assert tags_to_spans(["I-PER", "I-PER", "B-PER"]) == [(0, 2, "PER"), (2, 3, "PER")]
    assert tags_to_spans(["E-PER", "S-LOC", "B-LOC", "E-LOC"]) == [(0, 1, "PER"), (1, 2, "LOC"), (2, 4, "LOC")]


def test_label_names_longest_first_without_overlap():
    tokens = tokenize("Standing NATO Maritime Group 1 joins NATO drills")
    ents, missing = label_names(tokens, [("NATO", "other"), ("Standing NATO Maritime Group 1", "other"),
                                         ("UN", "other")])
    assert [(e.start, e.end) for e in ents] == [(0, 5), (6, 7)]
    assert missing == ["UN"]


# ---------------------------------------------------------------- the CCKS layout

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


TEXTS = {"1": "Two Leopard 2 tanks near Munster.",
         "2": "The Leopard 2 passes another Leopard 2 of Panzerbataillon 203.",
         "3": "A tank waits.",
         "4": "Standing NATO Maritime Group 1 joins NATO drills."}
LABELS = {"1": [{"name": "Leopard 2", "label": "vehicle", "bnd": LEO},
                {"name": "Leopard 2", "label": "vehicle", "bnd": LEO2},
                {"name": "Munster", "label": "location", "bnd": None}],
          "2": [{"name": "Leopard 2", "label": "vehicle", "bnd": LEO},
                {"name": "Panzerbataillon 203", "label": "other", "bnd": None}],
          "3": [],
          "4": [{"name": "NATO", "label": "other", "bnd": None},
                {"name": "Standing NATO Maritime Group 1", "label": "other", "bnd": None}]}


def test_ccks_reader(tmp_path):
    data = read_ccks(make_ccks(tmp_path, TEXTS, LABELS))
    assert data.types == ["vehicle", "other", "location"] and data.generic == ["gun", "tank"]
    assert "**DO NOT**" in data.type_text and data.missing_images == 0
    s1, s2, s3, s4 = data.samples
    assert s1.image.endswith("1.jpg")
    # two records with one name: one entity with both boxes; Munster ungroundable
    assert [(s1.name(e), e.type, e.boxes) for e in s1.entities] == \
        [("Leopard 2", "vehicle", [bnd_box(LEO), bnd_box(LEO2)]), ("Munster", "location", [])]
    # a name occurring twice labels both occurrences, each with the name's boxes
    assert [(e.start, e.end, e.boxes) for e in s2.entities if e.type == "vehicle"] == \
        [(1, 3, [bnd_box(LEO)]), (5, 7, [bnd_box(LEO)])]
    assert s3.entities == []
    # a shorter name inside a longer one is not labelled a second time inside it
    assert [(e.start, e.end) for e in s4.entities] == [(0, 5), (6, 7)]


def test_ccks_reader_without_labels_is_unlabelled(tmp_path):
    data = read_ccks(make_ccks(tmp_path, TEXTS, None))
    assert len(data.samples) == 4 and all(s.entities == [] for s in data.samples)


@pytest.mark.parametrize("record, message", [
    ({"name": "Leopard 2", "label": "ship", "bnd": None}, "label 'ship' is not in types.txt"),
    ({"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": 60, "ymin": 20, "xmax": 60, "ymax": 50}},
     "expected xmin < xmax and ymin < ymax inside the image"),
    ({"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": 170, "ymin": 20, "xmax": 200, "ymax": 50}},
     "expected xmin < xmax and ymin < ymax inside the image (160x120)"),     # nothing left after clipping
    ({"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": float("nan"), "ymin": 20, "xmax": 60, "ymax": 50}},
     "expected finite coordinates"),
    ({"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": 1, "ymin": 2, "xmax": float("inf"), "ymax": 50}},
     "expected finite coordinates"),
    ({"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": "1", "ymin": 2, "xmax": 60, "ymax": 50}},
     "expected bnd"),
    ({"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": True, "ymin": 2, "xmax": 60, "ymax": 50}},
     "expected bnd"),
    ({"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": 1, "ymin": 2}}, "expected bnd"),
    ({"name": "Boxer", "label": "vehicle", "bnd": None}, "name 'Boxer' is not in the text"),
    ({"label": "vehicle", "bnd": None}, "expected {\"name\""),
])
def test_ccks_bad_records_name_file_and_record(tmp_path, record, message):
    labels = {**LABELS, "2": [LABELS["2"][1], record]}
    make_ccks(tmp_path, TEXTS, labels)
    with pytest.raises(DataError) as err:
        read_ccks(tmp_path)
    assert message in str(err.value)
    assert "entity.json: record '2'" in str(err.value)


def test_ccks_malformed_json_names_the_line(tmp_path):
    make_ccks(tmp_path, TEXTS, LABELS)
    (tmp_path / "text.json").write_text('{\n "1": {"text": "a"},\n "2": {"text" "b"}\n}\n')   # no colon on line 3
    with pytest.raises(DataError, match=r"text\.json:3:\d+: malformed JSON"):
        read_ccks(tmp_path)


@pytest.mark.parametrize("sid", ["../x", "../images/001", "sub/002", ".hidden", "a b", ""])
def test_ccks_ids_are_plain_names(tmp_path, sid):
    make_ccks(tmp_path, {"001": "Munster.", sid: "Munster."}, {}, images=False)
    with pytest.raises(DataError, match=r"record .*: an id is a plain name \(letters, digits, '_', '-', '\.'"):
        read_ccks(tmp_path)


def test_boxes_outside_the_image_are_clipped_counted_and_warned(tmp_path):
    labels = {**LABELS, "3": []}
    labels["2"] = [{"name": "Leopard 2", "label": "vehicle", "bnd": {"xmin": -3, "ymin": 20, "xmax": 500, "ymax": 50}},
                   LABELS["2"][1]]
    make_ccks(tmp_path, TEXTS, labels)                  # images are 160 x 120
    with pytest.warns(UserWarning, match=r"1 gold box\(es\) reached outside their image and were clipped"):
        data = read_ccks(tmp_path)
    assert data.clipped_boxes == 1 and data.samples[1].entities[0].boxes == [Box(0, 20, 160, 50)]


def test_a_bom_is_accepted_in_every_text_file(tmp_path):
    make_ccks(tmp_path, TEXTS, LABELS)
    for name in ("text.json", "entity.json", "types.txt"):
        f = tmp_path / name
        f.write_text("\ufeff" + f.read_text(encoding="utf-8"), encoding="utf-8")
    assert read_ccks(tmp_path).types == ["vehicle", "other", "location"]
    types = tmp_path / "types.txt"           # a BOM before a later line (two files pasted together)
    types.write_text(types.read_text(encoding="utf-8-sig").replace("2. other", "\ufeff2. other"), encoding="utf-8")
    assert read_ccks(tmp_path).types == ["vehicle", "other", "location"]
    (tmp_path / "a.txt").write_text("\ufeffIMGID:1\nObama\tB-PER\n", encoding="utf-8")
    assert [s.id for s in read_dataset(tmp_path / "a.txt").samples] == ["1"]


def test_ccks_missing_image_warns_and_reads_text_only(tmp_path):
    make_ccks(tmp_path, TEXTS, LABELS)
    (tmp_path / "images" / "3.jpg").unlink()
    with pytest.warns(UserWarning, match="record '3'.*not found"):
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
    assert [(s.id, s.tokens, s.entities) for s in back.samples] == \
        [(s.id, s.tokens, s.entities) for s in data.samples]
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
    (tmp_path / "pred.json").write_text(json.dumps({"1": []}))       # absent ids are empty predictions
    assert all(s.entities == [] for s in read_ccks_predictions(tmp_path / "pred.json", data.samples)[0])


# ---------------------------------------------------------------- CoNLL and Twitter-GMNER

def test_conll_with_and_without_imgid(tmp_path):
    (tmp_path / "a.txt").write_text("IMGID:17\nObama\tB-PER\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n\n"
                                    "IMGID:18\nhi\tO\n\n")
    a = read_conll(tmp_path / "a.txt")
    assert [s.id for s in a.samples] == ["17", "18"]
    assert [(e.start, e.end, e.type) for e in a.samples[0].entities] == [(0, 1, "PER"), (2, 4, "LOC")]
    assert a.types == ["LOC", "PER"]
    (tmp_path / "b.txt").write_text("Obama S-PER\nin O\n\nNew B-LOC\nYork E-LOC\n")   # BIOES, spaces
    b = read_conll(tmp_path / "b.txt")
    assert [s.id for s in b.samples] == ["0", "1"]
    assert [[(e.start, e.end, e.type) for e in s.entities] for s in b.samples] == [[(0, 1, "PER")], [(0, 2, "LOC")]]
    write_conll(a.samples, tmp_path / "c.txt")
    assert (tmp_path / "c.txt").read_text() == (tmp_path / "a.txt").read_text()


@pytest.mark.parametrize("line", ["York\tX-LOC", "York"])
def test_conll_bad_line_names_the_line(tmp_path, line):
    (tmp_path / "a.txt").write_text(f"IMGID:1\nObama\tB-PER\n\nNew\tB-LOC\n{line}\n")
    with pytest.raises(DataError, match=r"a\.txt:5: expected"):
        read_conll(tmp_path / "a.txt")


def voc(objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return f"<annotation><size><width>500</width><height>400</height></size>{objs}</annotation>"


def test_twitter_reader_joins_boxes_by_surface_string(tmp_path):
    (tmp_path / "train.txt").write_text(
        "IMGID:1\nJustin\tB-PER\nBieber\tI-PER\nand\tO\nSelena\tB-PER\nin\tO\nLondon\tB-LOC\n\n"
        "IMGID:2\nNASA\tB-ORG\nrocks\tO\n\n")
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "1.xml").write_text(voc([("Justin Bieber", (1, 2, 30, 40)), ("Selena", (50, 5, 90, 80)),
                                                 ("Justin Bieber", (100, 2, 130, 40))]))
    data = read_twitter(tmp_path / "train.txt", tmp_path / "xml")
    s1, s2 = data.samples
    assert [(s1.name(e), e.type, e.boxes) for e in s1.entities] == [
        ("Justin Bieber", "PER", [Box(1, 2, 30, 40), Box(100, 2, 130, 40)]),   # two objects: two boxes
        ("Selena", "PER", [Box(50, 5, 90, 80)]),
        ("London", "LOC", [])]                                                  # no object: ungroundable
    assert [(s2.name(e), e.boxes) for e in s2.entities] == [("NASA", [])]      # no xml file at all
    assert data.types == ["PER", "LOC", "ORG"] and "PER" in data.type_text
    assert [s.entities for s in read_dataset(tmp_path / "train.txt").samples] == [s1.entities, s2.entities]


def test_twitter_objects_naming_no_entity_are_counted_and_warned(tmp_path):
    (tmp_path / "t.txt").write_text("IMGID:1\nObama\tB-PER\nspeaks\tO\n")
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "1.xml").write_text(voc([("Obama", (1, 2, 30, 40)), ("Barack Obama", (5, 5, 20, 20)),
                                                 ("Obama", (450, 350, 600, 500))]))     # the image is 500 x 400
    with pytest.warns(UserWarning) as seen:
        data = read_twitter(tmp_path / "t.txt", tmp_path / "xml")
    assert data.unmatched_objects == 1 and data.clipped_boxes == 1
    assert data.samples[0].entities[0].boxes == [Box(1, 2, 30, 40), Box(450, 350, 500, 400)]
    assert any("1 object(s) name no entity" in str(w.message) and "1.xml" in str(w.message) for w in seen)


def test_twitter_bad_box_names_the_file(tmp_path):
    (tmp_path / "t.txt").write_text("IMGID:1\nObama\tB-PER\n")
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "1.xml").write_text(voc([("Obama", (30, 2, 10, 40))]))
    with pytest.raises(DataError, match=r"1\.xml: object 0"):
        read_twitter(tmp_path / "t.txt", tmp_path / "xml")


@pytest.mark.skipif(not (TWITTER / "train.txt").is_file(), reason="shared Twitter-GMNER data absent")
def test_real_twitter_gmner_train():
    data = read_dataset(TWITTER / "train.txt")
    ents = [e for s in data.samples for e in s.entities]
    assert len(data.samples) == 7000
    assert len(ents) == 11779
    assert sum(1 for e in ents if e.boxes) == 4733


def twitter_files(folder: Path) -> Path:
    """A tiny Twitter-GMNER txt with xml/ beside it: tweet 1 has a boxed entity, tweet 2 none."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t.txt").write_text("IMGID:1\nJay-Z\tB-PER\nin\tO\nLondon\tB-LOC\n\nIMGID:2\nNASA\tB-ORG\n\n"
                                  "IMGID:3\nhi\tO\n\n")
    (folder / "xml").mkdir(exist_ok=True)
    (folder / "xml" / "1.xml").write_text(voc([("Jay-Z", (1, 2, 30, 40))]))
    return folder / "t.txt"


def test_images_from_several_folders_and_beside_the_txt(tmp_path):
    from PIL import Image
    txt = twitter_files(tmp_path / "data")
    a, b = tmp_path / "twitter2015", tmp_path / "twitter2017"
    a.mkdir(), b.mkdir()
    Image.new("RGB", (50, 40)).save(a / "1.jpg")
    Image.new("RGB", (50, 40)).save(b / "2.png")          # a .png where that is what exists
    data = read_dataset(txt, [a, b])
    assert [Path(s.image).name if s.image else None for s in data.samples] == ["1.jpg", "2.png", None]
    assert data.missing_images == 1 and data.format == "twitter"
    none = read_dataset(txt)                              # no flag, no images/ beside: all missing, counted
    assert none.missing_images == 3 and all(s.image is None for s in none.samples)
    (tmp_path / "data" / "images").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "data" / "images" / "3.jpeg")
    beside = read_dataset(txt)
    assert [s.image is not None for s in beside.samples] == [False, False, True] and beside.missing_images == 2
    with pytest.raises(DataError, match="--images: .* is not a folder"):
        read_dataset(txt, [tmp_path / "nope"])


def test_twitter_writer_round_trips(tmp_path):
    from PIL import Image
    txt = twitter_files(tmp_path / "data")
    (tmp_path / "data" / "images").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "data" / "images" / "1.jpg")
    gold = read_dataset(txt)
    write_twitter(gold.samples, tmp_path / "out" / "p.txt", tmp_path / "out" / "xml")
    back = read_dataset(tmp_path / "out" / "p.txt")
    assert [(s.id, s.tokens, s.entities) for s in back.samples] == [(s.id, s.tokens, s.entities) for s in gold.samples]
    assert "<width>50</width>" in (tmp_path / "out" / "xml" / "1.xml").read_text()


@pytest.mark.skipif(not (TWITTER / "dev.txt").is_file(), reason="shared Twitter-GMNER data absent")
def test_real_twitter_gmner_round_trips_through_the_writer(tmp_path):
    """Twitter gold -> write_twitter -> read_twitter scores 1.000 on every task (the oracle: eval.py)."""
    from eval import evaluate
    gold = read_dataset(TWITTER / "dev.txt")
    write_twitter(gold.samples, tmp_path / "dev.txt", tmp_path / "xml")
    back = read_dataset(tmp_path / "dev.txt")
    result = evaluate(gold.samples, back.samples)
    assert all(result[t]["f1"] == 1.0 for t in ("mner", "eeg", "gmner"))
    assert sum(len(e.boxes) for s in back.samples for e in s.entities) == \
        sum(len(e.boxes) for s in gold.samples for e in s.entities)


def test_twitter_lowres_split_finds_the_xml_folder_above_it(tmp_path):
    """lowres/10GMNER/train.txt shares twitter-gmner/xml/ with train.txt: its boxes are found."""
    twitter_files(tmp_path)
    (tmp_path / "lowres" / "10GMNER").mkdir(parents=True)
    shutil.copy(tmp_path / "t.txt", tmp_path / "lowres" / "10GMNER" / "train.txt")
    data = read_dataset(tmp_path / "lowres" / "10GMNER" / "train.txt")
    assert data.format == "twitter" and data.samples[0].entities[0].boxes == [Box(1, 2, 30, 40)]
