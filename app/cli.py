"""The command line of refineg.py: every stage's settings dataclass becomes a group of flags, checked at once.

Each field of RunConfig and of the stages' settings (serving.ServingConfig: llm.ClientConfig and three more
fields; synth.SynthConfig, tagger.TaggerConfig, uncertainty.UncertaintyConfig, refinement.RefinementConfig,
demos.DemoConfig, grounding.GroundingConfig) is one flag `--<prefix><field-name>`, with the field's comment
as its help.
`parse_configs` returns the settings of every stage, or ends the program with one line
`error: --flag: expected X, got Y` per problem and exit code 2, before any stage runs: each stage's
own `check_config` is asked, the same check its functions make for library callers.

    python refineg.py --help

Left out on purpose: configuration files (the run directory's config.json records every setting, and a
rerun with the same flags resumes).
"""

import argparse
import dataclasses
import inspect
import re
import sys
from dataclasses import field
from pathlib import Path

import demos
import grounding
import refinement
import synth
import tagger
import uncertainty
from app import serving
from app.rundir import PREVIOUS, RECORDS
from data import failed_rules
from labelling import suggest


@dataclasses.dataclass
class RunConfig:
    data: list[str] = field(default_factory=list)  # labelled data: CCKS, Twitter-GMNER or CoNLL; several join
    test: str = ""  # data to predict (labelled or not); "" = hold out --test-share of --data
    out: str = "runs/refineg"  # run directory (config.json, predictions.json, metrics.json, ...)
    unlabelled: str = ""  # in-domain text to self-train on and the pool of --suggest (labels ignored)
    suggest: int = 0  # choose this many --unlabelled samples to label next (OUT/suggested/); 0 = off
    suggest_round: int = 0  # the labelling round the --suggest tasks carry; 0 = the number of --data given
    labelstudio_images: str = ""  # URL prefix of the images of OUT/labelstudio/tasks.json; "" = Label
    # Studio's local-file serving of OUT/suggested/images (docs/labelling.md)
    images: list[str] = field(default_factory=list)  # image folders; none = images/ beside the data
    test_share: float = 0.3  # share of --data held out as the test split when --test is not given
    tagger_dir: str = ""  # reuse a trained tagger from this directory instead of training one
    synthesize: bool = True  # run the synthesis stage when an LLM is configured and a tagger is trained
    refine: bool = True  # run the refinement stage when an LLM is configured
    ground: bool = True  # run the grounding stage when an LLM is configured
    viz: int = 0  # draw this many predictions (boxes, names, types; gold too) into viz/
    report_samples: int = 200  # samples shown in report.html (the most mistakes first); 0 = scores only
    warn_failed_share: float = 0.1  # a stage with more than this share of failed MLLM calls is flagged first
    seed: int = 0  # the test split's shuffle


def check_run(c: RunConfig) -> list[tuple[str, str]]:
    return failed_rules(
        [
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
    )


def is_tagger_dir(path: str) -> bool:
    """Whether `path` holds what tagger.save writes (checked before the data is read and a run begins)."""
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


# (name in the settings dict, settings class, flag prefix, its check, the help group's title)
STAGES = [
    ("run", RunConfig, "", check_run, "the run"),
    ("llm", serving.ServingConfig, "llm-", serving.check_config, "the MLLM server (llm.py, app/serving.py)"),
    ("synth", synth.SynthConfig, "synth-", synth.check_config, "synthesis (synth.py)"),
    ("tagger", tagger.TaggerConfig, "tagger-", tagger.check_config, "tagger and self-training (tagger.py)"),
    (
        "uncertainty",
        uncertainty.UncertaintyConfig,
        "unc-",
        uncertainty.check_config,
        "uncertainty (uncertainty.py)",
    ),
    (
        "refinement",
        refinement.RefinementConfig,
        "refine-",
        refinement.check_config,
        "refinement (refinement.py)",
    ),
    ("demos", demos.DemoConfig, "ground-", demos.check_config, "demo selection (demos.py)"),
    ("grounding", grounding.GroundingConfig, "ground-", grounding.check_config, "grounding (grounding.py)"),
    ("suggest", suggest.SuggestConfig, "suggest-", suggest.check_config, "what to label next (suggest.py)"),
]
# The flags most runs need, shown first in --help: (settings name, field)
COMMON = [
    ("run", "data"),
    ("run", "test"),
    ("run", "out"),
    ("run", "unlabelled"),
    ("run", "suggest"),
    ("run", "images"),
    ("llm", "base_url"),
    ("llm", "model"),
    ("grounding", "box_format"),
    ("run", "viz"),
]
ALIASES = {"--llm-base-url": ["--llm-url"], "--tagger-dir": ["--tagger"]}  # shorter spellings, accepted too


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


def flag(prefix: str, name: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def field_help(cls: type) -> dict[str, str]:
    """The comment after each field of a settings dataclass, joined with the comment-only lines that
    continue it (so a long comment is never cut): the single source of --help."""
    helps = {}
    name = None
    source = [inspect.getsource(k) for k in reversed(cls.__mro__) if dataclasses.is_dataclass(k)]
    for line in "\n".join(source).splitlines():  # a subclass's fields follow its parents' (ServingConfig)
        field_line = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        more = re.match(r"\s+#\s*(.+)$", line)
        if field_line:
            name = field_line[1]
            helps[name] = field_line[2].strip()
        elif more and name:
            helps[name] += " " + more[1].strip()
        else:
            name = None
    return helps


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="refineg.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="ReFineG end to end: synthesis -> tagger -> uncertainty + refinement -> demo "
        "selection + grounding -> scores.",
        usage="%(prog)s --data DATA [--test DATA] [--out DIR] [--llm-url URL --llm-model NAME] [...]",
        epilog="Every flag sets the field of the same name in its stage's settings (cli.py).",
    )
    common = ap.add_argument_group("the flags most runs need")
    for stage, cls, prefix, _, title in STAGES:
        group = ap.add_argument_group(title)
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            where = common if (stage, f.name) in COMMON else group
            add_flag(where, stage, f, flag(prefix, f.name), helps.get(f.name, ""))
    return ap


def add_flag(group, stage: str, f: dataclasses.Field, name: str, text: str) -> None:
    """One flag for one settings field: a switch for a bool, a list for a list, else one typed value."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default not in ("", None, []) and not isinstance(default, bool):
        text += f" (default: {default})"
    dest = f"{stage}.{f.name}"
    if isinstance(default, bool):
        group.add_argument(name, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text)
    elif isinstance(default, list):
        group.add_argument(
            name,
            dest=dest,
            nargs="*",  # none at all is a value too: --ground-never-ground alone empties the default
            action=ExtendFresh,
            metavar="DIR" if f.name == "images" else f.name.upper(),
            default=default,
            help=text,
        )
    else:
        group.add_argument(
            name,
            *ALIASES.get(name, []),
            dest=dest,
            type=converter(str(f.type)),
            metavar=f.name.upper(),
            default=default,
            help=text,
        )


def converter(annotation: str):
    """str -> the field's type; `none` means None for optional fields."""
    base = float if "float" in annotation else int if "int" in annotation else str
    if "None" not in annotation:
        return base
    return lambda s: None if s.lower() == "none" else base(s)


def parse_configs(argv: list[str]) -> dict:
    """The settings of every stage; invalid ones end the run here, one `error:` line each, exit code 2."""
    args = vars(build_parser().parse_args(argv))
    cfg = {
        stage: cls(**{f.name: args[f"{stage}.{f.name}"] for f in dataclasses.fields(cls)})
        for stage, cls, *_ in STAGES
    }
    problems = settings_problems(cfg)
    if problems:
        sys.stderr.write("".join(f"error: {p}\n" for p in problems))
        sys.exit(2)
    return cfg


def settings_problems(cfg: dict) -> list[str]:
    """Every setting no stage can work with, as "--flag: expected X, got Y", checked before any stage runs
    (a stage finding it later would end the run after minutes of training)."""
    return [
        f"{spellings(prefix, name)}: expected {as_flags(what, prefix)}, got {getattr(cfg[stage], name)!r}"
        for stage, _, prefix, check, _ in STAGES
        for name, what in check(cfg[stage])
    ] + pair_problems(cfg)


def pair_problems(cfg: dict) -> list[str]:
    """Settings that are fine alone and cannot work together."""
    if not cfg["suggest"].ground:
        return []
    problems = []
    if not cfg["run"].suggest:
        problems.append("--suggest-ground: expected --suggest N too (it draws the suggestions' boxes)")
    if not cfg["llm"].base_url:
        problems.append("--suggest-ground: expected an MLLM to draw the boxes (--llm-url URL)")
    return problems


def spellings(prefix: str, name: str) -> str:
    """A field's flag with its shorter spellings, as argparse names it: --llm-base-url/--llm-url."""
    return "/".join([flag(prefix, name), *ALIASES.get(flag(prefix, name), [])])


def as_flags(what: str, prefix: str) -> str:
    """A check's text with the other fields it names in backticks (`max_tokens`) written as their flags."""
    return re.sub(r"`(\w+)`", lambda m: spellings(prefix, m[1]), what)
