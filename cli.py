"""The command line of refineg.py: every stage's settings dataclass becomes a group of flags, checked at once.

Each field of RunConfig, llm.ClientConfig, synth.SynthConfig, tagger.TaggerConfig,
uncertainty.UncertaintyConfig and grounding.GroundingConfig is one flag (`--<prefix><field-name>`), with
the field's comment as its help and its default. `parse_configs` returns the settings of every stage,
or ends the program with `refineg.py: error: --flag: expected X, got Y` and exit code 2 when a setting
cannot work, before any stage runs. refineg.py is the only caller.

    python refineg.py --help

Left out on purpose: configuration files (the run directory's config.json records every setting, and a
rerun with the same flags resumes).
"""

import argparse
import dataclasses
import inspect
import re

import grounding
import llm
import synth
import tagger
import uncertainty


@dataclasses.dataclass
class RunConfig:
    data: str = ""                  # labelled data: a CCKS folder, a Twitter-GMNER txt (xml/ beside it) or CoNLL
    test: str = ""                  # data to predict (labelled or not); "" = hold out --test-share of --data
    images: list[str] = dataclasses.field(default_factory=list)   # image folders (<id>.jpg/.png/.jpeg) for --data and --test; none = images/ beside the data
    test_share: float = 0.3         # share of --data held out as the test split when --test is not given
    out: str = "runs/refineg"       # run directory (config.json, predictions.json, metrics.json, ...)
    tagger_dir: str = ""            # reuse a trained tagger from this directory instead of training one
    unlabelled: str = ""            # in-domain text to self-train the tagger on (any --data format; labels ignored)
    synthesize: bool = True         # run the synthesis stage when an LLM is configured and a tagger is trained
    refine: bool = True             # run the refinement stage when an LLM is configured
    ground: bool = True             # run the grounding stage when an LLM is configured
    viz: int = 0                    # draw this many predictions (boxes, names, types; gold too) into viz/
    warn_failed_share: float = 0.1  # a stage with more than this share of failed MLLM calls is flagged first
    seed: int = 0                   # the test split's shuffle


STAGES = [("run", RunConfig, ""), ("llm", llm.ClientConfig, "llm-"), ("synth", synth.SynthConfig, "synth-"),
          ("tagger", tagger.TaggerConfig, "tagger-"), ("uncertainty", uncertainty.UncertaintyConfig, "unc-"),
          ("grounding", grounding.GroundingConfig, "ground-")]


def field_help(cls: type) -> dict[str, str]:
    """The comment after each field of a settings dataclass, joined with the comment-only lines that continue
    it (so a long comment is never cut): the single source of --help."""
    helps, name = {}, None
    for line in inspect.getsource(cls).splitlines():
        field, more = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line), re.match(r"\s+#\s*(.+)$", line)
        if field:
            name, helps[field[1]] = field[1], field[2].strip()
        elif more and name:
            helps[name] += " " + more[1].strip()
        else:
            name = None
    return helps


ALIASES = {"--llm-base-url": ["--llm-url"], "--tagger-dir": ["--tagger"]}   # shorter spellings, accepted too


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="refineg.py", description="ReFineG end to end: synthesis -> tagger -> uncertainty + refinement -> demo selection + "
                                 "grounding -> scores.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s --data DATA [--test DATA] [--out DIR] [--llm-url URL ...] (see --help)",
                                 epilog="Every flag sets the field of the same name in that stage's settings dataclass.")
    for stage, cls, prefix in STAGES:
        group = ap.add_argument_group(f"{stage} ({cls.__module__}.{cls.__name__})")
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            flag = "--" + prefix + f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind = type(default)
            text = f"{helps.get(f.name, '')} (default: {default!r})"
            if kind is bool:
                group.add_argument(flag, dest=f"{stage}.{f.name}", action=argparse.BooleanOptionalAction, default=default, help=text)
            elif kind is list:
                group.add_argument(flag, dest=f"{stage}.{f.name}", nargs="*", metavar=f.name.upper(), default=default, help=text)
            else:
                group.add_argument(flag, *ALIASES.get(flag, []), dest=f"{stage}.{f.name}", type=converter(str(f.type)),
                                   metavar=f.name.upper(), default=default, help=text)
    return ap


def converter(annotation: str):
    """str -> the field's type; `none` means None for optional fields."""
    base = float if "float" in annotation else int if "int" in annotation else str
    if "None" not in annotation:
        return base
    return lambda s: None if s.lower() == "none" else base(s)


def parse_configs(argv: list[str]) -> dict:
    """The settings of every stage; an invalid one ends the run here with `error: ...` and exit code 2."""
    ap = build_parser()
    args = vars(ap.parse_args(argv))
    cfg = {stage: cls(**{f.name: args[f"{stage}.{f.name}"] for f in dataclasses.fields(cls)}) for stage, cls, _ in STAGES}
    problems = settings_problems(cfg)
    if problems:
        ap.exit(2, f"{ap.prog}: error: {'; '.join(problems)}\n")      # as argparse ends a bad flag
    return cfg


def settings_problems(cfg: dict) -> list[str]:
    """Every setting no stage can work with, as "--flag: expected X, got Y", checked before any stage runs
    (a stage finding it later would end the run with a traceback after minutes of training)."""
    run, client, syn, tag, unc, gr = (cfg[s] for s in ("run", "llm", "synth", "tagger", "uncertainty", "grounding"))
    rules = [  # (flag, value, ok, what was expected)
        ("--test-share", run.test_share, 0 < run.test_share < 1, "a share in (0, 1)"),
        ("--viz", run.viz, run.viz >= 0, "a number of pictures >= 0"),
        ("--warn-failed-share", run.warn_failed_share, 0 <= run.warn_failed_share <= 1, "a share in [0, 1]"),
        ("--llm-structured", client.structured, client.structured in ("json_schema", "json_object"),
         "json_schema or json_object"),
        ("--llm-workers", client.workers, client.workers >= 1, "at least 1"),
        ("--llm-max-retries", client.max_retries, client.max_retries >= 0, "0 or more"),
        ("--llm-schema-retries", client.schema_retries, client.schema_retries >= 0, "0 or more"),
        ("--llm-read-timeout", client.read_timeout, client.read_timeout > 0, "seconds > 0"),
        ("--llm-call-budget", client.call_budget, client.call_budget > 0, "seconds > 0"),
        ("--llm-max-tokens", client.max_tokens, client.max_tokens >= 1, "at least 1"),
        ("--synth-per-seed", syn.per_seed, syn.per_seed >= 1, "at least 1"),
        ("--synth-keep-share", syn.keep_share, 0 <= syn.keep_share <= 1, "a share in [0, 1]"),
        ("--synth-min-tokens", syn.min_tokens, 1 <= syn.min_tokens <= syn.max_tokens,
         f"1 <= min-tokens <= --synth-max-tokens ({syn.max_tokens})"),
        ("--synth-seeds", syn.seeds, syn.seeds >= 0, "0 (all) or more"),
        ("--tagger-scheme", tag.scheme, tag.scheme in ("BIO", "BIOES"), "BIO or BIOES"),
        ("--tagger-epochs", tag.epochs, tag.epochs >= 1, "at least 1"),
        ("--tagger-batch-size", tag.batch_size, tag.batch_size >= 1, "at least 1"),
        ("--tagger-epoch-size", tag.epoch_size, tag.epoch_size >= 0, "0 (all) or more"),
        ("--tagger-train-chunk", tag.train_chunk, tag.train_chunk >= 1, "a positive number of words"),
        ("--tagger-warmup", tag.warmup, 0 <= tag.warmup <= 1, "a share in [0, 1]"),
        ("--tagger-dropout", tag.dropout, 0 <= tag.dropout < 1, "a probability in [0, 1)"),
        ("--tagger-self-train-rounds", tag.self_train_rounds, tag.self_train_rounds >= 0, "0 or more"),
        ("--unc-method", unc.method, unc.method in ("marginal", "mc_dropout"), "marginal or mc_dropout"),
        ("--unc-tau", unc.tau, unc.tau is None or unc.tau >= 0, "none or a score >= 0"),
        ("--unc-target-rate", unc.target_rate,
         unc.target_rate is not None and 0 <= unc.target_rate <= 1 or unc.target_rate is None and unc.tau is not None,
         # picking tau by F1 gain needs labelled dev predictions, which the pipeline does not hold out
         "a share in [0, 1] (none only together with a fixed --unc-tau)"),
        ("--unc-mc-passes", unc.mc_passes, unc.method != "mc_dropout" or unc.mc_passes >= 1, "at least 1 with mc_dropout"),
        ("--ground-k", gr.k, gr.k >= 0, "0 or more worked examples"),
        ("--ground-box-format", gr.box_format, gr.box_format in grounding.FORMATS, " or ".join(grounding.FORMATS)),
        ("--ground-entity-sim", gr.entity_sim, gr.entity_sim in ("mean", "sum"), "mean or sum"),
        ("--ground-max-side", gr.max_side, gr.max_side >= 1, "pixels >= 1"),
        ("--ground-max-boxes", gr.max_boxes, gr.max_boxes >= 1, "at least 1"),
    ]
    return [f"{flag}: expected {what}, got {value!r}" for flag, value, ok, what in rules if not ok]
