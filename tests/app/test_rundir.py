"""The run folder and the inputs' checks: a scored --test that overlaps --data or --unlabelled, a pool
without types.txt, an --out that cannot be written, and a failing run that never mixes its records with
those of the finished run it replaces (app.rundir.set_aside)."""

import json
import shutil
from pathlib import Path

import pytest

import formats
import refineg
from app import cli, inputs, page, run, rundir
from formats import ccks

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
FAST = ["--tagger-epochs", "3", "--no-tagger-progress"]


def demo_subset(folder: Path, ids: list[str], labelled: bool = True) -> Path:
    """A CCKS folder holding the demo samples `ids` (with entity.json when `labelled`)."""
    demo = ccks.read_ccks(DEMO)
    ccks.write_ccks_folder([s for s in demo.samples if s.id in ids], demo, folder)
    if not labelled:
        (folder / "entity.json").unlink()
    (folder / "images").symlink_to(DEMO / "images")
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of the demo without a server (the tagger trained once for this module)."""
    out = tmp_path_factory.mktemp("finished")
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *FAST]) == 0
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_scored_test_that_overlaps_data_is_an_error(tmp_path, capsys):
    ids = sorted(json.loads((DEMO / "text.json").read_text(encoding="utf-8-sig")))[12:20]
    test = demo_subset(tmp_path / "test", ids)
    out = tmp_path / "run"
    assert refineg.main(["--data", str(DEMO), "--test", str(test), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: --test {test}: 8 of its 8 samples are also in --data (the same text, id or image)"
    )
    assert repr(ids[:3])[1:-1] in err and "trained on" in err
    assert not out.exists()  # refused before anything is written
    # the same text and image under other ids is the same sample; with another image (a retweet) it is not,
    # nor without images to compare
    texts = json.loads((test / "text.json").read_text())
    labels = json.loads((test / "entity.json").read_text())
    for name, obj in (("text.json", texts), ("entity.json", labels)):
        (test / name).write_text(json.dumps({f"new{k}": v for k, v in obj.items()}))
    (test / "images").unlink()
    (test / "images").mkdir()
    for k in texts:
        shutil.copy(DEMO / "images" / f"{k}.jpg", test / "images" / f"new{k}.jpg")
    assert refineg.main(["--data", str(DEMO), "--test", str(test), "--out", str(out), *FAST]) == 2
    assert "8 of its 8 samples are also in --data" in capsys.readouterr().err
    for k in texts:  # each text now with another sample's picture
        shutil.copy(DEMO / "images" / "001.jpg", test / "images" / f"new{k}.jpg")
    settings = cli.RunConfig(data=[str(DEMO)], test=str(test))
    assert len(inputs.read_inputs(settings)[2].samples) == 8


def test_conll_files_numbering_their_sentences_do_not_overlap_by_number(tmp_path):
    """Plain CoNLL ids are sentence numbers (0, 1, ...): two disjoint files share ids, not samples."""
    (tmp_path / "train.conll").write_text("Leopard B-vehicle\ndrives O\n\nKiel B-location\nport O\n")
    (tmp_path / "test.conll").write_text("Boxer B-vehicle\nrolls O\n")
    settings = cli.RunConfig(data=[str(tmp_path / "train.conll")], test=str(tmp_path / "test.conll"))
    assert [s.id for s in inputs.read_inputs(settings)[2].samples] == ["0"]
    shutil.copy(tmp_path / "train.conll", tmp_path / "test.conll")  # the same file: the same sentences
    with pytest.raises(formats.DataError, match=r"2 of its 2 samples are also in --data"):
        inputs.read_inputs(settings)


def test_a_scored_test_that_overlaps_the_pool_is_an_error(tmp_path, capsys):
    ids = sorted(json.loads((DEMO / "text.json").read_text(encoding="utf-8-sig")))
    data = demo_subset(tmp_path / "data", ids[:20])
    test = demo_subset(tmp_path / "test", ids[20:26])
    pool = demo_subset(tmp_path / "pool", ids[24:], labelled=False)
    argv = ["--data", str(data), "--test", str(test), "--unlabelled", str(pool), "--out", str(tmp_path / "o")]
    assert refineg.main([*argv, "--suggest", "2", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --test {test}: 2 of its 6 samples are also in --unlabelled")
    assert repr(ids[24]) in err and "suggested, labelled, then scored" in err


def test_an_unlabelled_pool_needs_no_types_file(tmp_path):
    pool = demo_subset(tmp_path / "pool", ["001", "002"], labelled=False)
    (pool / "types.txt").unlink()
    dataset = formats.read_dataset(pool)
    assert [s.id for s in dataset.samples] == ["001", "002"] and dataset.types == []
    labelled = demo_subset(tmp_path / "labelled", ["001"])
    (labelled / "types.txt").unlink()
    with pytest.raises(formats.DataError, match=r"missing types.txt \(a labelled folder needs it"):
        formats.read_dataset(labelled)


def test_an_out_that_cannot_be_written_names_the_flag(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = blocker / "run"
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out}: cannot write the run there (") and err.count("\n") == 1


OTHER = ["--unc-target-rate", "0.5"]  # another setting that keeps the tagger: no training in these tests
# the stages as the run names them (rundir.Run.stage), then the two files of the report (app/page.py)
STAGES = ["synthesis", "tagger", "prediction", "refinement", "demo selection", "grounding", "scoring"]
STAGES += ["write_trace", "write_page"]


def fail_in(monkeypatch, stage: str, error: BaseException) -> None:
    """Make the run fail as `stage` starts."""

    def raises(*args, **kwargs):
        raise error

    if stage.startswith("write_"):
        monkeypatch.setattr(page, stage, raises)
        return
    real = rundir.Run.stage

    def stage_(self, name):
        return raises() if name == stage else real(self, name)

    monkeypatch.setattr(rundir.Run, "stage", stage_)


@pytest.mark.parametrize("stage", STAGES)
def test_a_failing_rerun_never_mixes_two_runs_records(finished, tmp_path, monkeypatch, capsys, stage):
    """A finished run's folder, then a rerun with another setting that fails in `stage`: the finished run
    is whole and byte for byte in previous/, and every record in the folder is the failed run's own."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)

    fail_in(monkeypatch, stage, RuntimeError(f"{stage} broke"))
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *OTHER, *FAST]) == 1
    assert f"is whole in {out / 'previous'}" in capsys.readouterr().err
    assert snapshot(out / "previous") == before
    written = json.loads((out / "metrics.json").read_text())["written"]
    records = {p.name for p in out.iterdir() if p.name in rundir.RECORDS}
    assert records <= {w.rstrip("/") for w in written} | {"error.log", "metrics.json", "usage.json"}
    assert json.loads((out / "config.json").read_text())["uncertainty"]["target_rate"] == 0.5
    assert not json.loads((out / "metrics.json").read_text())["finished"]

    monkeypatch.undo()  # the same command again, now finishing: previous/ goes, the folder is the new run
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *OTHER, *FAST]) == 0
    assert not (out / "previous").exists() and not (out / "error.log").exists()
    assert json.loads((out / "metrics.json").read_text())["finished"]


def test_an_interrupted_run_leaves_no_records_of_an_unfinished_one(finished, tmp_path, monkeypatch):
    """Two failures in a row: the second run removes the first one's records (it did not finish) and keeps
    the finished run in previous/ as it was."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)

    fail_in(monkeypatch, "grounding", KeyboardInterrupt())
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *OTHER, *FAST]) == 130
    assert (out / "predictions.refined.json").is_file()
    monkeypatch.undo()
    fail_in(monkeypatch, "prediction", KeyboardInterrupt())
    assert refineg.main(["--data", str(DEMO), "--out", str(out), "--unc-target-rate", "0.3", *FAST]) == 130
    assert not (out / "predictions.refined.json").exists()
    assert snapshot(out / "previous") == before


def test_an_annotators_edit_in_a_run_folder_stops_the_next_run(finished, tmp_path, capsys):
    """A file of suggested/ or labelstudio/ changed after the run ended is someone's work: the next run
    into that folder refuses to start instead of moving it away (and removing it when it finishes)."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "gold" / "export.json").write_text("[]")  # newer than the run's metrics.json
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *OTHER, *FAST]) == 2
    err = capsys.readouterr().err
    assert "1 files in the earlier run's folders were changed after it ended" in err and "export.json" in err
    assert (out / "gold" / "export.json").is_file() and not (out / "previous").exists()


def test_an_input_inside_a_folder_the_run_replaces_is_refused(finished, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    argv = ["--data", str(DEMO), "--test", str(out / "gold"), "--out", str(out), *FAST]
    with pytest.raises(SystemExit) as stop:  # a settings error, before anything is read
        refineg.main(argv)
    assert stop.value.code == 2
    assert "--out: expected a folder whose run files hold no input" in capsys.readouterr().err


def test_set_aside_leaves_folders_that_are_not_refineg_runs_alone(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')  # e.g. a Hugging Face model folder
    (tmp_path / "gold").mkdir()
    (tmp_path / "gold" / "mine.txt").write_text("keep")
    rundir.set_aside(tmp_path)
    assert (tmp_path / "gold" / "mine.txt").read_text() == "keep" and (tmp_path / "config.json").is_file()


def test_a_run_from_before_the_finished_flag_is_set_aside_not_removed(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["finished"]
    (out / "metrics.json").write_text(json.dumps(metrics))
    before = snapshot(out)
    rundir.set_aside(out)
    assert snapshot(out / "previous") == before and not (out / "predictions.json").exists()


def test_a_bug_before_the_run_starts_leaves_a_finished_run_as_it_was(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise RuntimeError("reading broke")

    monkeypatch.setattr(run, "read_inputs", broken)
    assert refineg.main(["--data", str(DEMO), "--out", str(out), *FAST]) == 1
    assert "refineg-error.log" in capsys.readouterr().err
    assert snapshot(out) == before
