"""refineg.py's command line (app/cli.py): every invalid setting ends with one `error:` line and exit code 2,
before any stage.

Each case goes through main(), as a user's command does; the data folder is the shipped demo, so a case that
slipped through the check would start training (and the test would notice the missing SystemExit).
"""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import refineg
import synth
import tagger
from app import cli

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
    cfg = cli.parse_configs(["--data", DEMO, "--ground-never-ground"])
    assert cfg["grounding"].never_ground == []
    cfg = cli.parse_configs(
        ["--data", DEMO, "--ground-never-ground", "location", "--ground-never-ground", "other"]
    )
    assert cfg["grounding"].never_ground == ["location", "other"]
    assert cli.parse_configs(["--data", DEMO])["grounding"].never_ground == ["location"]
    with pytest.raises(SystemExit):
        cli.parse_configs(["--data"])


def test_a_check_naming_another_field_names_its_flag_or_its_field():
    """The same check text, `max_tokens` in backticks, reads as a flag on the command line and as
    Class.field for a library caller."""
    with pytest.raises(
        refineg.SettingsError, match=r"SynthConfig\.min_tokens: expected .* to SynthConfig\.max_tokens"
    ):
        synth.synthesize(None, None, synth.SynthConfig(min_tokens=80))
    assert cli.as_flags("from 1 to `max_tokens` (64)", "synth-") == "from 1 to --synth-max-tokens (64)"


def test_defaults_and_a_fixed_tau_are_valid():
    assert cli.settings_problems(cli.parse_configs(["--data", DEMO])) == []
    # no target rate is fine when tau is fixed: nothing has to be chosen on labelled dev data
    assert (
        cli.settings_problems(
            cli.parse_configs(["--data", DEMO, "--unc-target-rate", "none", "--unc-tau", "0.3"])
        )
        == []
    )


DANGLING = {
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "or",
    "with",
    "in",
    "per",
    "than",
    "by",
    "for",
    "on",
    "at",
    "from",
    "into",
    "as",
    "is",
    "are",
    "be",
    "when",
    "if",
    "that",
    "which",
    "its",
    "their",
    "not",
    "but",
    "so",
    "e.g.",
}


def incomplete(text: str) -> str:
    """Why a flag's help, read alone in --help, is not a complete phrase ("" when it is)."""
    if len(re.findall(r"\w+", text)) < 3:
        return "fewer than 3 words"
    if text.startswith("..."):
        return "continues another flag's sentence"
    if text[-1] in ",;:(" or text.split()[-1].lower() in DANGLING:
        return "ends mid-phrase"
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return "a ')' before its '('"
    return "an unclosed '('" if depth else ""


def test_the_completeness_check_catches_cut_help():
    """The cuts the old one-line comment reader made, and the other ways a help can stop short."""
    assert (
        incomplete("sentences drawn afresh each epoch when there are more; 0 = all. Bounds the")
        == "ends mid-phrase"
    )
    assert incomplete("a stage with more than this share of") == "ends mid-phrase"
    assert incomplete("the rest get new names (paper: 20 of 30") == "an unclosed '('"
    assert incomplete("sampling temperature, like vLLM's,") == "ends mid-phrase"
    assert incomplete("torch device") == "fewer than 3 words"
    assert incomplete("... and its score is <= this") == "continues another flag's sentence"
    assert incomplete("share of entities to delegate (a call budget; no labels needed)") == ""


def test_every_flag_has_its_whole_comment_as_help():
    """--help comes from the comment after each settings field, continuation lines included (so a long comment
    is never cut): every field has one, and each is a complete phrase when read alone next to its flag."""
    bad = []
    for _stage, cls, prefix, *_ in cli.STAGES:
        helps = cli.field_help(cls)
        for f in dataclasses.fields(cls):
            text = helps.get(f.name, "")
            why = incomplete(text) if text else "no help"
            if why:
                bad.append(f"--{prefix}{f.name.replace('_', '-')}: {why}: {text!r}")
    assert not bad, "\n".join(bad)
    assert cli.field_help(Continued)["long"] == (
        "a comment too long for one line goes on over the comment-only lines after it (never cut)"
    )
    assert cli.field_help(Continued)["short"] == "one line of help"
    assert cli.field_help(tagger.TaggerConfig)["epoch_size"] == tagger_epoch_size_comment()
    assert "--tagger-epoch-size" in (out := cli.build_parser().format_help()) and "(bounds time)" in out


@dataclasses.dataclass
class Continued:
    """A settings class whose first comment goes on over comment-only lines, as a long one does."""

    long: int = 1  # a comment too long for one line goes on over the
    # comment-only lines after it (never cut)
    short: int = 2  # one line of help


def tagger_epoch_size_comment() -> str:
    """The comment after TaggerConfig.epoch_size, read here independently of cli.field_help."""
    line = next(
        x for x in inspect.getsource(tagger.TaggerConfig).splitlines() if x.strip().startswith("epoch_size")
    )
    return line.split("#", 1)[1].strip()
