"""refineg.py's command line (app/cli.py): every invalid setting ends with one `error:` line and exit code 2,
before any stage.

Each case goes through main(), as a user's command does; the data folder is the shipped demo, so a case that
slipped through the check would start training (and the test would notice the missing SystemExit).
"""

import dataclasses
from pathlib import Path

import pytest

import refineg
import synth
import tagger
import uncertainty
from app import cli
from data import InvalidSettings

DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--unc-target-rate", "none"],
            "--unc-target-rate: expected a share in [0, 1] (none only together with a fixed --unc-tau), "
            "got None",
        ),
        (["--unc-target-rate", "1.5"], "--unc-target-rate: expected a share in [0, 1]"),
        (["--unc-method", "entropy"], "--unc-method: expected marginal or mc_dropout, got 'entropy'"),
        (["--unc-tau", "-1"], "--unc-tau: expected none or an uncertainty >= 0, got -1.0"),
        (["--refine-missed-tau", "2"], "--refine-missed-tau: expected a score in [0, 1], got 2.0"),
        (["--test-share", "1"], "--test-share: expected a share in (0, 1), got 1.0"),
        (["--viz", "-2"], "--viz: expected a number of pictures >= 0, got -2"),
        (["--report-samples", "-1"], "--report-samples: expected a number of samples >= 0, got -1"),
        (["--llm-structured", "xml"], "--llm-structured: expected json_schema or json_object, got 'xml'"),
        (["--llm-workers", "0"], "--llm-workers: expected at least 1, got 0"),
        (["--synth-keep-share", "2"], "--synth-keep-share: expected a share in [0, 1], got 2.0"),
        (
            ["--synth-min-tokens", "80"],
            "--synth-min-tokens: expected a number of tokens from 1 to --synth-max-tokens (64), got 80",
        ),
        (["--tagger-scheme", "IOB"], "--tagger-scheme: expected BIO or BIOES, got 'IOB'"),
        (["--tagger-epochs", "0"], "--tagger-epochs: expected at least 1, got 0"),
        (
            ["--tagger", "/no/such/tagger"],
            "--tagger-dir/--tagger: expected a trained tagger's folder with config.json and weights.pt "
            "(OUT/tagger of an earlier run), got '/no/such/tagger'",
        ),
        (["--llm-url", "localhost:8000"], "--llm-base-url/--llm-url: expected a URL starting with http://"),
        (["--tagger-dropout", "1"], "--tagger-dropout: expected a probability in [0, 1), got 1.0"),
        (
            ["--ground-box-format", "xywh"],
            "--ground-box-format: expected abs or norm1000 or norm1, got 'xywh'",
        ),
        (["--ground-entity-sim", "max"], "--ground-entity-sim: expected mean or sum, got 'max'"),
        (["--ground-k", "-1"], "--ground-k: expected 0 or more worked examples, got -1"),
        (
            ["--tagger-epochs", "x"],
            "argument --tagger-epochs: invalid int value: 'x'",
        ),  # argparse's own check
    ],
)
def test_invalid_setting_is_one_error_line_and_exit_2(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as ended:
        refineg.main(["--data", DEMO, "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert ended.value.code == 2
    assert f"error: {message}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before any stage wrote anything


def test_every_problem_is_named_at_once(capsys):
    with pytest.raises(SystemExit):
        refineg.main(["--data", DEMO, "--tagger-scheme", "IOB", "--ground-k", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2:] == [
        "error: --tagger-scheme: expected BIO or BIOES, got 'IOB'",  # one line per problem
        "error: --ground-k: expected 0 or more worked examples, got -1",
    ]


def test_a_list_flag_without_values_empties_its_list():
    """--ground-never-ground alone grounds every type (argparse's nargs="+" refused it); --data alone is the
    missing --data it looks like."""
    assert cli.parse_settings(["--data", DEMO, "--ground-never-ground"]).grounding.never_ground == []
    settings = cli.parse_settings(
        ["--data", DEMO, "--ground-never-ground", "location", "--ground-never-ground", "other"]
    )
    assert settings.grounding.never_ground == ["location", "other"]
    assert cli.parse_settings(["--data", DEMO]).grounding.never_ground == ["location"]
    with pytest.raises(SystemExit):
        cli.parse_settings(["--data"])


def test_settings_are_checked_once_when_built():
    """A porter's settings are refused where they are built, naming Class.field (and another field named in
    the check as Class.field too), with no stage run; the command line names the same rule by its flag."""
    with pytest.raises(
        InvalidSettings, match=r"SynthConfig\.min_tokens: expected .* to SynthConfig\.max_tokens"
    ):
        synth.SynthConfig(min_tokens=80)
    with pytest.raises(InvalidSettings) as refused:
        tagger.TaggerConfig(epochs=0, scheme="IOB")
    assert refused.value.problems == [("scheme", "BIO or BIOES"), ("epochs", "at least 1")]
    with pytest.raises(InvalidSettings):  # dataclasses.replace builds anew, so it is checked too
        dataclasses.replace(tagger.TaggerConfig(), epochs=0)
    assert cli.as_flags("from 1 to `max_tokens` (64)", "synth-") == "from 1 to --synth-max-tokens (64)"


def test_defaults_and_a_fixed_tau_are_valid():
    settings = cli.parse_settings(["--data", DEMO])
    assert settings.uncertainty == uncertainty.UncertaintyConfig() and settings.run.data == [DEMO]
    # no target rate is fine when tau is fixed: nothing has to be chosen on labelled dev data
    fixed = cli.parse_settings(["--data", DEMO, "--unc-target-rate", "none", "--unc-tau", "0.3"])
    assert fixed.uncertainty.tau == 0.3 and fixed.uncertainty.target_rate is None


def test_a_flags_type_is_its_fields_type():
    settings = cli.parse_settings(["--data", DEMO, "--tagger-epochs", "3", "--unc-tau", "0.25", "--viz", "2"])
    assert settings.tagger.epochs == 3 and type(settings.tagger.epochs) is int
    assert settings.uncertainty.tau == 0.25 and settings.run.viz == 2
    assert cli.parse_settings(["--data", DEMO, "--no-refine"]).run.refine is False


def flags_in(text: str) -> set[str]:
    return {w.rstrip(",") for line in text.splitlines() for w in line.split() if w.startswith("--")}


def test_help_shows_the_methods_flags_and_help_all_every_flag(capsys):
    """--help: the flags a user of the method sets (the fields marked main), each with the help beside its
    field; --help-all: every flag of every field, by stage."""
    for argv in (["--help"], ["--help-all"]):
        with pytest.raises(SystemExit) as ended:
            cli.parse_settings(argv)
        assert ended.value.code == 0
    short, every = capsys.readouterr().out.split("usage:")[1:]
    fields = [(part, f) for part in cli.PARTS for f in dataclasses.fields(cli.part_class(part))]
    main = {cli.flag(cli.PARTS[p][0], f.name) for p, f in fields if f.metadata["main"]}
    assert 20 <= len(main) <= 30
    assert main <= flags_in(short) and "--tagger-lr-crf" not in short and "--help-all" in short
    assert {cli.flag(cli.PARTS[p][0], f.name) for p, f in fields} <= flags_in(every)
    assert all(f.metadata["help"].strip() for _, f in fields)
    assert " ".join(tagger.TaggerConfig.__dataclass_fields__["lr_crf"].metadata["help"].split()[:4]) in every
