"""ReFineG end to end: synthesis, tagger, uncertainty and refinement, demo selection and grounding, scores.

The one straight pipeline of the paper (Tang et al., CCKS 2025, arXiv 2509.10975):
  1. training: an LLM writes labelled sentences from the labelled seeds (synth.py), and a small
     encoder + CRF tagger is trained on seeds + synthetic sentences (tagger.py; selftrain.py, a lever
     beyond the paper, when unlabelled text is given);
  2. refinement: the tagger predicts entities with CRF-marginal uncertainty (uncertainty.py);
     only the uncertain ones go to the MLLM (refinement.py);
  3. grounding: the k most similar labelled samples (demos.py) are shown to the MLLM as worked
     examples before it boxes the entities (grounding.py).
Then the three tasks are scored (eval.py) when gold is given.

`pipeline` takes data and returns data: it reads no file, writes none and prints nothing. What happens
around each stage is the caller's (`Hooks`): the application (app/run.py) times it, reuses what an earlier
run trained, and writes and prints each stage's result as it ends. In Python:

    result = refineg.pipeline(Inputs(labelled, test, gold), settings, {"refinement": client})

On the command line, the application reads the flags' files, calls it, then writes and prints the result:

    python refineg.py --data examples/demo      # supervised path, no server (README.md: with an MLLM)

Left out on purpose: multi-GPU training, a web UI.
"""

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import demos
import grounding
import llm
import refinement
import selftrain
import synth
import tagger
import uncertainty
from app import run
from app.cli import Settings
from data import Dataset, Sample
from eval import evaluate
from grounding import GroundingTrace, WorkedExample
from levers import synth_filters
from refinement import RefinementTrace
from tagger import Tagger


@dataclass
class Inputs:
    """What the method works on: read from the flags' files by the application (app/inputs.py)."""

    labelled: Dataset  # the types, their descriptions and the labelled training samples
    test: list[Sample]  # the samples to predict
    gold: list[Sample] | None = None  # the test samples with their gold entities: scored when given
    pool: list[Sample] = field(default_factory=list)  # unlabelled in-domain text to self-train on
    tagger: Tagger | None = None  # a trained tagger, used instead of training one


@dataclass
class Result:
    """What each stage returned; a stage that did not run leaves its defaults."""

    synthetic: list[Sample] = field(default_factory=list)  # the LLM's labelled sentences
    synthesis: list[synth.SeedTrace] = field(default_factory=list)  # a trace per seed; none when reused
    tagger: Tagger | None = None
    training: dict = field(default_factory=dict)  # its training history, self-training rounds, "before_pool"
    tagged: list[Sample] = field(default_factory=list)  # its predictions, each entity's uncertainty and route
    tau: float = 1.0  # the threshold that routed them
    tau_how: str = ""  # how tau was chosen
    refined: list[Sample] = field(default_factory=list)  # after refinement (`tagged` when it did not run)
    refinement: dict[str, RefinementTrace] | None = None  # its trace per sample id (None: it did not run)
    demo_pool: demos.Pool | None = None  # the labelled samples worked examples are chosen from, embedded
    examples: list[list[WorkedExample]] = field(default_factory=list)  # those chosen for each refined sample
    final: list[Sample] = field(default_factory=list)  # after grounding: entities with boxes
    grounding: dict[str, GroundingTrace] | None = None  # its trace per sample id (None: it did not run)
    scores: dict[str, dict] = field(default_factory=dict)  # "tagger", "refinement": MNER; "final": all tasks


class Hooks:
    """What the caller does around the stages; these do nothing, app/run.py's time, reuse, save and print."""

    def stage(self, name: str) -> contextlib.AbstractContextManager:
        """Around each stage (the application times it and names it in an error)."""
        return contextlib.nullcontext()

    def reuse(self, name: str, key: tuple, make: Callable[[], object]) -> object:
        """make(), or what an earlier make() of the same `key` (settings and inputs) returned."""
        return make()

    def finished(self, name: str, result: Result) -> None:
        """After each stage, with everything returned so far."""


def pipeline(
    inputs: Inputs, settings: Settings, clients: dict[str, llm.Client], hooks: Hooks | None = None
) -> Result:
    """The stages in the paper's order. An MLLM stage runs when `clients` holds a client for it
    ("synthesis", "refinement", "grounding"); synthesis only serves training, so not with a given tagger."""
    r, labelled, gold, hooks = Result(), inputs.labelled, inputs.gold, hooks or Hooks()
    with hooks.stage("synthesis"):
        if "synthesis" in clients and inputs.tagger is None:
            key = (settings.synth, settings.llm.model, [(s.id, s.tokens, spans(s)) for s in labelled.samples])
            filters = synth_filters.filters(labelled, settings.synth)  # checks beyond the paper (levers/)
            make = partial(synth.synthesize, labelled, clients["synthesis"], settings.synth, filters)
            r.synthetic, r.synthesis = hooks.reuse("synthesis", key, make)
    hooks.finished("synthesis", r)
    with hooks.stage("tagger"):
        r.tagger = inputs.tagger
        if r.tagger is None:
            r.tagger, r.training = train(
                labelled.samples + r.synthetic, labelled.types, inputs.pool, settings, hooks
            )
    hooks.finished("tagger", r)
    with hooks.stage("prediction"):
        r.tagged, r.tau, r.tau_how = predict(r.tagger, inputs.test, settings.uncertainty)
        score(r, "tagger", gold, r.tagged)
    hooks.finished("prediction", r)
    with hooks.stage("refinement"):
        r.refined = r.tagged
        if "refinement" in clients and r.tagged:
            r.refined, r.refinement = refinement.refine(
                r.tagged, labelled, clients["refinement"], settings.refinement, r.tagger.tags
            )
            score(r, "refinement", gold, r.refined)
    hooks.finished("refinement", r)
    with hooks.stage("demo selection"):
        if "grounding" in clients and r.refined:  # the labelled samples, embedded once; k per sample
            key = (settings.demos, [(s.id, s.image) for s in labelled.samples])
            embed = partial(demos.embed_pool, labelled.samples, settings.demos)
            r.demo_pool = hooks.reuse("demo pool", key, embed)
            r.examples = demos.choose(r.refined, r.demo_pool)
    with hooks.stage("grounding"):
        r.final = r.refined
        if "grounding" in clients and r.refined:
            r.final, r.grounding = grounding.ground(
                r.refined, r.examples, labelled, clients["grounding"], settings.grounding
            )
    hooks.finished("grounding", r)
    if gold is not None:
        r.scores["final"] = evaluate(gold, r.final)
    return r


def spans(s: Sample) -> list[tuple[int, int, str]]:
    return [(e.start, e.end, e.type) for e in s.entities]


def train(
    samples: list[Sample], types: list[str], pool: list[Sample], settings: Settings, hooks: Hooks
) -> tuple[tagger.Tagger, dict]:
    """The tagger trained on `samples`, then self-trained on `pool` (when given and self-training is on),
    continuing from the tagger before self-training (returned too, as "before_pool": it has not seen the
    pool). The hooks may reuse either, trained before with the same settings on the same data."""
    config = settings.tagger
    pool = pool if config.self_train_rounds else []
    labels = [(s.tokens, spans(s)) for s in samples]

    def make() -> tuple[tagger.Tagger, dict]:
        if not pool:
            model, history = tagger.train_tagger(samples, types, config)
            return model, {"history": history, "self_training": []}
        plain = dataclasses.replace(config, int8=False)  # self-training goes on from its float weights
        make_plain = partial(tagger.train_tagger, samples, types, plain)
        key = (dataclasses.replace(plain, progress=True), types, labels, [])
        before, history = hooks.reuse("before self-training", key, make_plain)
        model, rounds = selftrain.self_train(samples, pool, types, config, start=before)
        rounds[0]["history"] = history  # round 0 is the tagger before self-training
        return model, {"history": rounds[-1]["history"], "self_training": rounds, "before_pool": before}

    key = (dataclasses.replace(config, progress=True), types, labels, [s.tokens for s in pool])
    return hooks.reuse("tagger", key, make)


def predict(
    model: tagger.Tagger, test: list[Sample], config: uncertainty.UncertaintyConfig
) -> tuple[list[Sample], float, str]:
    """The tagger's entities, each with its uncertainty and marked delegated or not by the one tau chosen."""
    passes = config.mc_passes if config.method == "mc_dropout" else 0
    tagged = tagger.predict(model, test, mc_passes=passes)
    uncertainty.estimate(tagged, model.tags, config)
    tau, how = uncertainty.choose_threshold(tagged, config)
    uncertainty.route(tagged, tau)
    return tagged, tau, how


def score(r: Result, stage: str, gold: list[Sample] | None, pred: list[Sample]) -> None:
    """MNER (span + type): the one task a stage before grounding can be scored on."""
    if gold is not None:
        r.scores[stage] = {"mner": evaluate(gold, pred)["mner"]}


def main(argv: list[str] | None = None) -> int:
    """python refineg.py: the application (app/run.py) reads the inputs, calls `pipeline`, writes, prints."""
    return run.main(sys.argv[1:] if argv is None else argv, pipeline, Inputs)


if __name__ == "__main__":
    sys.exit(main())
