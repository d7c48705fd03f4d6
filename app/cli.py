"""The command line of refineg.py: one `Settings` object, one flag per field of its parts.

Each part is one stage's settings dataclass (RunConfig here, serving.ServingConfig: llm.ClientConfig and the
application's guards, synth.SynthConfig, tagger.TaggerConfig, uncertainty.UncertaintyConfig,
refinement.RefinementConfig, demos.DemoConfig, grounding.GroundingConfig, suggest.SuggestConfig); each field
is one flag `--<prefix><field-name>`, its help and type the field's own (`data.setting`, the annotation). A
part checks itself when built (its __post_init__), so `parse_settings` returns valid settings or ends the
program with one line `error: --flag: expected X, got Y` per problem and exit code 2, before any stage runs.
A porter builds the same object in Python: Settings(run=RunConfig(data=["DIR"]),
tagger=TaggerConfig(epochs=5)).

    python refineg.py --help        # the flags a user of the method sets
    python refineg.py --help-all    # every flag, by stage

Left out on purpose: configuration files (the run directory's config.json records every setting, and a
rerun with the same flags resumes).
"""

import argparse
import dataclasses
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from app.rundir import PREVIOUS, RECORDS
from app.serving import ServingConfig
from data import InvalidSettings, require_valid, setting
from demos import DemoConfig
from grounding import GroundingConfig
from labelling.suggest import SuggestConfig
from refinement import RefinementConfig
from synth import SynthConfig
from tagger import TaggerConfig
from uncertainty import UncertaintyConfig


@dataclass
class RunConfig:
    data: list[str] = setting([], "labelled data: CCKS, Twitter-GMNER or CoNLL; several join", main=True)
    test: str = setting(
        "", 'data to predict (labelled or not); "" = hold out --test-share of --data', main=True
    )
    out: str = setting(
        "runs/refineg", "run directory (config.json, predictions.json, metrics.json, ...)", main=True
    )
    unlabelled: str = setting(
        "", "in-domain text to self-train on and the pool of --suggest (labels ignored)", main=True
    )
    suggest: int = setting(
        0, "choose this many --unlabelled samples to label next (OUT/suggested/); 0 = off", main=True
    )
    suggest_round: int = setting(
        0, "the labelling round the --suggest tasks carry; 0 = the number of --data given"
    )
    labelstudio_images: str = setting(
        "",
        'URL prefix of the images of OUT/labelstudio/tasks.json; "" = Label Studio\'s local-file serving of '
        "OUT/suggested/images (docs/labelling.md)",
    )
    images: list[str] = setting([], "image folders; none = images/ beside the data", main=True)
    test_share: float = setting(0.3, "share of --data held out as the test split when --test is not given")
    tagger_dir: str = setting(
        "", "reuse a trained tagger from this directory instead of training one", main=True
    )
    synthesize: bool = setting(
        True, "run the synthesis stage when an LLM is configured and a tagger is trained", main=True
    )
    refine: bool = setting(True, "run the refinement stage when an LLM is configured", main=True)
    ground: bool = setting(True, "run the grounding stage when an LLM is configured", main=True)
    viz: int = setting(0, "draw this many predictions (boxes, names, types; gold too) into viz/", main=True)
    report_samples: int = setting(
        200, "samples shown in report.html (the most mistakes first); 0 = scores only"
    )
    warn_failed_share: float = setting(
        0.1, "a stage with more than this share of failed MLLM calls is flagged first"
    )
    seed: int = setting(0, "the test split's shuffle")

    def __post_init__(self):
        require_valid(self, run_rules(self))


def run_rules(c: RunConfig) -> list[tuple[str, bool, str]]:
    return [
        ("data", bool(c.data), "a CCKS folder, a Twitter-GMNER txt or a CoNLL file (--data is required)"),
        ("suggest", c.suggest >= 0, "a number of samples >= 0"),
        ("suggest_round", c.suggest_round >= 0, "a round >= 1, or 0 for the number of --data"),
        ("unlabelled", c.unlabelled or not c.suggest, "the pool to suggest from (--suggest needs it)"),
        ("out", not Path(c.out).is_file(), "a folder for the run (it names an existing file)"),
        (
            "out",
            not holds_input(c),
            "a folder of its own (it holds the input data; runs would write into it)",
        ),
        (
            "out",
            not in_run_records(c),
            "a folder whose run files hold no input (an input lies in OUT/suggested, OUT/labelstudio, "
            "OUT/previous or another folder a run replaces: move it out, or pass another --out)",
        ),
        (
            "tagger_dir",
            not c.tagger_dir or is_tagger_dir(c.tagger_dir),
            "a trained tagger's folder with config.json and weights.pt (OUT/tagger of an earlier run)",
        ),
        ("test_share", 0 < c.test_share < 1, "a share in (0, 1)"),
        ("viz", c.viz >= 0, "a number of pictures >= 0"),
        ("report_samples", c.report_samples >= 0, "a number of samples >= 0"),
        ("warn_failed_share", 0 <= c.warn_failed_share <= 1, "a share in [0, 1]"),
    ]


@dataclass
class Settings:
    """Every setting of a run, one part per stage, each checked when it was built."""

    run: RunConfig
    llm: ServingConfig = field(default_factory=ServingConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    tagger: TaggerConfig = field(default_factory=TaggerConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    suggest: SuggestConfig = field(default_factory=SuggestConfig)


def is_tagger_dir(path: str) -> bool:
    """Whether `path` holds what store.save writes (checked before the data is read and a run begins)."""
    return all((Path(path) / name).is_file() for name in ("config.json", "weights.pt"))


def holds_input(c: RunConfig) -> bool:
    """Whether --out is one of the input data folders, or lies inside one."""
    out = Path(c.out).resolve()
    inputs = [Path(p).resolve() for p in [*c.data, c.test, c.unlabelled] if p]
    return any(out == p or p in out.parents for p in inputs if p.is_dir())


def in_run_records(c: RunConfig) -> bool:
    """Whether an input lies in a folder or file of --out that a new run moves or removes (rundir.RECORDS,
    previous/): it would vanish under the run reading it."""
    out = Path(c.out).resolve()
    held = [out / name for name in [*RECORDS, PREVIOUS]]
    inputs = [Path(p).resolve() for p in [*c.data, c.test, c.unlabelled, c.tagger_dir, *c.images] if p]
    return any(p == h or h in p.parents for p in inputs for h in held)


# part of Settings -> (its flags' prefix, the title of its group in --help-all)
PARTS = {
    "run": ("", "the run"),
    "llm": ("llm-", "the MLLM server (llm.py, app/serving.py)"),
    "synth": ("synth-", "synthesis (synth.py)"),
    "tagger": ("tagger-", "tagger and self-training (tagger.py, selftrain.py)"),
    "uncertainty": ("unc-", "uncertainty (uncertainty.py)"),
    "refinement": ("refine-", "refinement (refinement.py)"),
    "demos": ("ground-", "demo selection (demos.py)"),
    "grounding": ("ground-", "grounding (grounding.py)"),
    "suggest": ("suggest-", "what to label next (labelling/suggest.py)"),
}
ALIASES = {"--llm-base-url": ["--llm-url"], "--tagger-dir": ["--tagger"]}  # shorter spellings, accepted too


def part_class(name: str) -> type:
    return typing.get_type_hints(Settings)[name]


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One form for every user error, argparse's own included: `error: ...` and exit code 2."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class ExtendFresh(argparse.Action):
    """A list flag: repeated uses add up (--data A --data B), and the first use replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, f"{self.dest}:given", False)
        old = getattr(namespace, self.dest) if given else []
        setattr(namespace, self.dest, [*old, *values])
        setattr(namespace, f"{self.dest}:given", True)


class HelpAll(argparse.Action):
    """--help-all: every flag, grouped by stage."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="show every flag, by stage, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        build_parser(every=True).print_help()
        parser.exit()


def flag(prefix: str, name: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def build_parser(every: bool = False) -> argparse.ArgumentParser:
    """All flags; --help shows those of the fields marked `main`, --help-all (every=True) all, by stage."""
    ap = Parser(
        prog="refineg.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="ReFineG end to end: synthesis -> tagger -> uncertainty + refinement -> demo "
        "selection + grounding -> scores.",
        usage="%(prog)s --data DATA [--test DATA] [--out DIR] [--llm-url URL --llm-model NAME] [...]",
        epilog=None if every else "Every stage's other settings: refineg.py --help-all (app/cli.py).",
    )
    ap.add_argument("--help-all", action=HelpAll)
    main = ap.add_argument_group("the flags a user of the method sets")
    for part, (prefix, title) in PARTS.items():
        group = ap.add_argument_group(title) if every else main
        for f in dataclasses.fields(part_class(part)):
            shown = every or f.metadata["main"]
            add_flag(group, part, f, flag(prefix, f.name), shown)
    return ap


def add_flag(group, part: str, f: dataclasses.Field, name: str, shown: bool) -> None:
    """One flag for one settings field: a switch for a bool, a list for a list, else one value of its type."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    text = f.metadata["help"]
    if default not in ("", None, []) and not isinstance(default, bool):
        text += f" (default: {default})"
    kind = typing.get_type_hints(part_class(part))[f.name]
    common = {"dest": f"{part}.{f.name}", "default": default, "help": text if shown else argparse.SUPPRESS}
    if kind is bool:
        group.add_argument(name, action=argparse.BooleanOptionalAction, **common)
    elif typing.get_origin(kind) is list:
        metavar = "DIR" if f.name == "images" else f.name.upper()
        # nargs *: none at all is a value too (--ground-never-ground alone empties the default)
        group.add_argument(name, nargs="*", action=ExtendFresh, metavar=metavar, **common)
    else:
        group.add_argument(
            name, *ALIASES.get(name, []), type=converter(kind), metavar=f.name.upper(), **common
        )


def converter(kind: object):
    """str -> the field's type; `none` means None for an optional field (float | None)."""
    options = [t for t in typing.get_args(kind) if t is not type(None)]
    if not options:
        return kind
    return lambda s: None if s.lower() == "none" else options[0](s)


def parse_settings(argv: list[str]) -> Settings:
    """The settings of the run; invalid ones end it here, one `error:` line each, exit code 2."""
    args = vars(build_parser().parse_args(argv))
    parts, problems = {}, []
    for part, (prefix, _) in PARTS.items():
        values = {f.name: args[f"{part}.{f.name}"] for f in dataclasses.fields(part_class(part))}
        try:
            parts[part] = part_class(part)(**values)
        except InvalidSettings as err:
            problems += [
                f"{spellings(prefix, name)}: expected {as_flags(what, prefix)}, got {values[name]!r}"
                for name, what in err.problems
            ]
    problems = problems or pair_problems(parts)
    if problems:
        sys.stderr.write("".join(f"error: {p}\n" for p in problems))
        sys.exit(2)
    return Settings(**parts)


def pair_problems(parts: dict) -> list[str]:
    """Settings that are fine alone and cannot work together."""
    if not parts["suggest"].ground:
        return []
    problems = []
    if not parts["run"].suggest:
        problems.append("--suggest-ground: expected --suggest N too (it draws the suggestions' boxes)")
    if not parts["llm"].base_url:
        problems.append("--suggest-ground: expected an MLLM to draw the boxes (--llm-url URL)")
    return problems


def spellings(prefix: str, name: str) -> str:
    """A field's flag with its shorter spellings, as argparse names it: --llm-base-url/--llm-url."""
    return "/".join([flag(prefix, name), *ALIASES.get(flag(prefix, name), [])])


def as_flags(what: str, prefix: str) -> str:
    """A check's text with the other fields it names in backticks (`max_tokens`) written as their flags."""
    return re.sub(r"`(\w+)`", lambda m: spellings(prefix, m[1]), what)
