"""twitter.py: CoNLL and Twitter-GMNER readers and writers, and read_dataset's choice of format, on tiny
files."""

import shutil
from pathlib import Path

import pytest

from data import Box, DataError
from formats import read_dataset
from formats.twitter import read_conll, read_twitter, write_conll, write_twitter

ROOT = Path(__file__).resolve().parents[2]


TWITTER = ROOT.parent / "shared" / "data" / "twitter-gmner"


def test_conll_with_and_without_imgid(tmp_path):
    (tmp_path / "a.txt").write_text(
        "IMGID:17\nObama\tB-PER\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n\nIMGID:18\nhi\tO\n\n"
    )
    a = read_conll(tmp_path / "a.txt")
    assert [s.id for s in a.samples] == ["17", "18"]
    assert [(e.start, e.end, e.type) for e in a.samples[0].entities] == [(0, 1, "PER"), (2, 4, "LOC")]
    assert a.types == ["LOC", "PER"]
    (tmp_path / "b.txt").write_text("Obama S-PER\nin O\n\nNew B-LOC\nYork E-LOC\n")  # BIOES, spaces
    b = read_conll(tmp_path / "b.txt")
    assert [s.id for s in b.samples] == ["0", "1"]
    assert [[(e.start, e.end, e.type) for e in s.entities] for s in b.samples] == [
        [(0, 1, "PER")],
        [(0, 2, "LOC")],
    ]
    write_conll(a.samples, tmp_path / "c.txt")
    assert (tmp_path / "c.txt").read_text() == (tmp_path / "a.txt").read_text()


def test_conll_2003_docstart_lines_are_skipped_and_shift_no_id(tmp_path):
    """CoNLL 2003 (a -DOCSTART- line, a blank line, then sentences; a second document) reads as its
    three sentences 0, 1, 2; so does Label Studio's CONLL2003 export (no blank line after -DOCSTART-)."""
    (tmp_path / "a.txt").write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n\n"
        "-DOCSTART- -X- -X- O\n\nBonn NNP B-NP B-LOC\n"
    )
    a = read_conll(tmp_path / "a.txt")
    assert [(s.id, s.tokens) for s in a.samples] == [
        ("0", ["EU", "rejects"]),
        ("1", ["Peter"]),
        ("2", ["Bonn"]),
    ]
    assert [[(e.start, e.end, e.type) for e in s.entities] for s in a.samples] == [
        [(0, 1, "ORG")],
        [(0, 1, "PER")],
        [(0, 1, "LOC")],
    ]
    (tmp_path / "b.conll").write_text(
        "-DOCSTART- -X- O\nAnna -X- _ B-PER\nmet -X- _ O\n\nBob -X- _ B-PER\n\n"
    )
    b = read_conll(tmp_path / "b.conll")
    assert [(s.id, s.tokens) for s in b.samples] == [("0", ["Anna", "met"]), ("1", ["Bob"])]


@pytest.mark.parametrize("line", ["York\tX-LOC", "York"])
def test_conll_bad_line_names_the_line(tmp_path, line):
    (tmp_path / "a.txt").write_text(f"IMGID:1\nObama\tB-PER\n\nNew\tB-LOC\n{line}\n")
    with pytest.raises(DataError, match=r"a\.txt:5: expected"):
        read_conll(tmp_path / "a.txt")


def voc(objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return f"<annotation><size><width>500</width><height>400</height></size>{objs}</annotation>"


def test_twitter_reader_joins_boxes_by_surface_string(tmp_path):
    (tmp_path / "train.txt").write_text(
        "IMGID:1\nJustin\tB-PER\nBieber\tI-PER\nand\tO\nSelena\tB-PER\nin\tO\nLondon\tB-LOC\n\n"
        "IMGID:2\nNASA\tB-ORG\nrocks\tO\n\n"
    )
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "1.xml").write_text(
        voc(
            [
                ("Justin Bieber", (1, 2, 30, 40)),
                ("Selena", (50, 5, 90, 80)),
                ("Justin Bieber", (100, 2, 130, 40)),
            ]
        )
    )
    data = read_twitter(tmp_path / "train.txt", tmp_path / "xml")
    s1, s2 = data.samples
    assert [(s1.name(e), e.type, e.boxes) for e in s1.entities] == [
        ("Justin Bieber", "PER", [Box(1, 2, 30, 40), Box(100, 2, 130, 40)]),  # two objects: two boxes
        ("Selena", "PER", [Box(50, 5, 90, 80)]),
        ("London", "LOC", []),
    ]  # no object: ungroundable
    assert [(s2.name(e), e.boxes) for e in s2.entities] == [("NASA", [])]  # no xml file at all
    assert data.types == ["PER", "LOC", "ORG"] and "PER" in data.type_text
    assert [s.entities for s in read_dataset(tmp_path / "train.txt").samples] == [s1.entities, s2.entities]
    (tmp_path / "lead.txt").write_text("\n\n" + (tmp_path / "train.txt").read_text())  # blank lines first
    assert [s.entities for s in read_dataset(tmp_path / "lead.txt").samples] == [s1.entities, s2.entities]


def test_twitter_objects_naming_no_entity_are_counted_and_warned(tmp_path):
    (tmp_path / "t.txt").write_text("IMGID:1\nObama\tB-PER\nspeaks\tO\n")
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "1.xml").write_text(
        voc([("Obama", (1, 2, 30, 40)), ("Barack Obama", (5, 5, 20, 20)), ("Obama", (450, 350, 600, 500))])
    )  # the image is 500 x 400
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
    (folder / "t.txt").write_text(
        "IMGID:1\nJay-Z\tB-PER\nin\tO\nLondon\tB-LOC\n\nIMGID:2\nNASA\tB-ORG\n\nIMGID:3\nhi\tO\n\n"
    )
    (folder / "xml").mkdir(exist_ok=True)
    (folder / "xml" / "1.xml").write_text(voc([("Jay-Z", (1, 2, 30, 40))]))
    return folder / "t.txt"


def test_images_from_several_folders_and_beside_the_txt(tmp_path):
    from PIL import Image

    txt = twitter_files(tmp_path / "data")
    a, b = tmp_path / "twitter2015", tmp_path / "twitter2017"
    a.mkdir(), b.mkdir()
    Image.new("RGB", (50, 40)).save(a / "1.jpg")
    Image.new("RGB", (50, 40)).save(b / "2.png")  # a .png where that is what exists
    data = read_dataset(txt, [a, b])
    assert [Path(s.image).name if s.image else None for s in data.samples] == ["1.jpg", "2.png", None]
    assert data.missing_images == 1 and data.format == "twitter"
    none = read_dataset(txt)  # no flag, no images/ beside: all missing, counted
    assert none.missing_images == 3 and all(s.image is None for s in none.samples)
    (tmp_path / "data" / "images").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "data" / "images" / "3.jpeg")
    beside = read_dataset(txt)
    assert [s.image is not None for s in beside.samples] == [
        False,
        False,
        True,
    ] and beside.missing_images == 2
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
    assert [(s.id, s.tokens, s.entities) for s in back.samples] == [
        (s.id, s.tokens, s.entities) for s in gold.samples
    ]
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
    assert sum(len(e.boxes) for s in back.samples for e in s.entities) == sum(
        len(e.boxes) for s in gold.samples for e in s.entities
    )


def test_twitter_lowres_split_finds_the_xml_folder_above_it(tmp_path):
    """lowres/10GMNER/train.txt shares twitter-gmner/xml/ with train.txt: its boxes are found."""
    twitter_files(tmp_path)
    (tmp_path / "lowres" / "10GMNER").mkdir(parents=True)
    shutil.copy(tmp_path / "t.txt", tmp_path / "lowres" / "10GMNER" / "train.txt")
    data = read_dataset(tmp_path / "lowres" / "10GMNER" / "train.txt")
    assert data.format == "twitter" and data.samples[0].entities[0].boxes == [Box(1, 2, 30, 40)]
