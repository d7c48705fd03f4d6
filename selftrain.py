"""Self-training: the tagger labels unlabelled text and learns again from the sentences it is sure of.

Not in the ReFineG paper: it is the label-efficiency lever that needs no LLM. The paper's lever,
data synthesis (synth.py), needs an LLM and writes NEW sentences around the seeds' entities;
self-training needs only raw in-domain text (tweets without tags), which is usually cheap. Use
synthesis when an LLM is at hand and in-domain text is scarce, self-training when there is text
and no LLM, or both: they add different data.

Each round: the current tagger predicts the unlabelled sentences; a sentence is kept, with its
Viterbi entities as labels, when every predicted entity's uncertainty (uncertainty.estimate) is at
most `self_train_tau` and no token outside them looks like a missed entity
(uncertainty.missed_entity_score at most `self_train_missed`). The tagger then trains on labelled +
kept sentences for `self_train_epochs` more epochs, from its own weights (a fresh student would
cost a full training run per round).

Inputs: labelled Samples, unlabelled Samples (their entities are ignored), the types, a
TaggerConfig (its `self_train_*` fields: the flags --tagger-self-train-rounds, -epochs, -tau and
-missed) and optional dev Samples for epoch selection. The uncertainty here is always the CRF
marginals' (uncertainty.estimate's default): --unc-method and the other --unc-* flags set only the
refinement stage's.
Output: the last round's Tagger and one row per round (sentences and entities kept, seconds, its epoch
history).
With `start`, round 0 is a tagger trained before: refineg.py --suggest keeps it to rank the pool,
since the self-trained tagger has learnt the pool's pseudo labels and is sure of them.

    python refineg.py --data lowres/10GMNER/train.txt --unlabelled train.txt ...
    python -m bench labels        # Twitter-GMNER: 10 % labelled, with and without the other 90 % as text

Left out on purpose (each measured, docs/results.md): partial labels, weighting the gold sentences
up, a teacher ensemble, a last pass on the gold alone. The kept sentences simply join the data.
"""

import time
from dataclasses import replace

import tagger
import uncertainty
from data import Sample


def pseudo_label(model: tagger.Tagger, unlabelled: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(kept, all) predictions of `unlabelled`: kept = the sentences the tagger is sure of, as training
    data."""
    pred = tagger.predict(model, unlabelled)
    uncertainty.estimate(pred, model.tags)
    kept = [s for s in pred if s.tokens and is_sure(s, model)]
    return [replace(s, marginals=None) for s in kept], pred


def is_sure(sample: Sample, model: tagger.Tagger) -> bool:
    """Every entity below self_train_tau, and no token outside them a likely missed entity."""
    cfg = model.config
    sure = all(e.uncertainty <= cfg.self_train_tau for e in sample.entities)
    return sure and uncertainty.missed_entity_score(sample, model.tags) <= cfg.self_train_missed


def one_round(
    model: tagger.Tagger,
    train: list[Sample],
    unlabelled: list[Sample],
    types: list[str],
    dev: list[Sample] | None = None,
) -> tuple[tagger.Tagger, list[dict], list[Sample]]:
    """One round: `model` pseudo-labels `unlabelled`, then trains on `train` + the kept sentences for its
    `self_train_epochs` more epochs, from its own weights. Returns (the new tagger, its history, the kept)."""
    kept, _ = pseudo_label(model, unlabelled)
    more = replace(model.config, epochs=model.config.self_train_epochs)
    student, history = tagger.train_tagger(train + kept, types, more, dev, init=model)
    return student, history, kept


def self_train(
    train: list[Sample],
    unlabelled: list[Sample],
    types: list[str],
    config: tagger.TaggerConfig | None = None,
    dev: list[Sample] | None = None,
    start: tagger.Tagger | None = None,
) -> tuple[tagger.Tagger, list[dict]]:
    """Train on `train` (or begin from `start`, a float tagger already trained on it, left unchanged), then
    `config.self_train_rounds` (>= 1 with `start`) times: pseudo-label `unlabelled`, retrain on both."""
    config = config or tagger.TaggerConfig()
    assert start is None or config.self_train_rounds >= 1, "with 0 rounds `start` itself would be returned"
    unlabelled = [Sample(s.id, list(s.tokens), s.image) for s in unlabelled]  # labels ignored, never read
    plain = replace(config, int8=False)  # int8 layers cannot train on: only the last tagger is quantized
    t0 = time.perf_counter()
    model, history = (start, []) if start else tagger.train_tagger(train, types, plain, dev)
    rounds = [{"round": 0, "pseudo_sentences": 0, "seconds": time.perf_counter() - t0, "history": history}]
    for r in range(1, config.self_train_rounds + 1):
        t0 = time.perf_counter()
        model, history, kept = one_round(model, train, unlabelled, types, dev)
        rounds.append(
            {
                "round": r,
                "pseudo_sentences": len(kept),
                "pseudo_entities": sum(len(s.entities) for s in kept),
                "seconds": time.perf_counter() - t0,
                "history": history,
            }
        )
    if config.int8:
        model.config = replace(model.config, int8=True)  # saved with it, so that load rebuilds int8 layers
        tagger.quantize(model)
    return model, rounds
