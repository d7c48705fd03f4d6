"""selftrain.py with the tiny BERT of test_tagger.py: which pseudo labels are kept, rounds, and refineg
--unlabelled.

The oracle of the filter is its definition applied by hand to the teacher's own scored
predictions: a sentence is kept iff every entity's uncertainty <= tau and its missed-entity
score <= the missed threshold; the thresholds are set at the median so that both sides are
non-empty. The unlabelled sentences carry deliberately wrong labels, which must never be read.
"""

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tagger import NAMES, PLACES, encoder_dir, make  # noqa: F401  (encoder_dir is a fixture)

import refineg
import selftrain
import tagger as tg
import uncertainty
from data import Entity

TYPES = ["PER", "LOC"]
FAST = {
    "batch_size": 8,
    "lr_encoder": 1e-3,
    "lr_head": 1e-2,
    "lr_crf": 5e-2,
    "freeze_embeddings": False,
    "progress": False,
}


@pytest.fixture(scope="module")
def teacher_and_text(encoder_dir):  # noqa: F811
    rng = random.Random(1)
    labelled = make(rng, 30, NAMES[:4], PLACES[:3])
    text = make(rng, 40, NAMES, PLACES)
    for s in text:
        s.entities = [Entity(0, len(s.tokens), "LOC")]  # wrong on purpose: labels of unlabelled text
    cfg = tg.TaggerConfig(encoder=encoder_dir, epochs=3, **FAST)
    return tg.train_tagger(labelled, TYPES, cfg)[0], labelled, text


def test_kept_sentences_follow_the_filter_and_ignore_input_labels(teacher_and_text):
    model, _, text = teacher_and_text
    pred = tg.predict(model, text)
    uncertainty.estimate(pred, model.tags)
    worst = [max([e.uncertainty for e in p.entities], default=0.0) for p in pred]
    missed = [uncertainty.missed_entity_score(p, model.tags) for p in pred]
    for tau, miss in ((float(np.median(worst)), 1.0), (1.0, float(np.median(missed)))):
        model.config = replace(model.config, self_train_tau=tau, self_train_missed=miss)
        kept, _ = selftrain.pseudo_label(model, text)
        want = [p for p, w, m in zip(pred, worst, missed) if w <= tau and m <= miss]
        assert 0 < len(want) < len(text)
        assert [k.id for k in kept] == [p.id for p in want]
        for k, p in zip(kept, want):
            assert [(e.start, e.end, e.type) for e in k.entities] == [
                (e.start, e.end, e.type) for e in p.entities
            ]
            assert k.marginals is None and all(e.end - e.start < len(k.tokens) for e in k.entities)


def test_rounds_continue_from_the_teacher(teacher_and_text):
    model, labelled, text = teacher_and_text
    cfg = replace(
        model.config,
        epochs=2,
        min_steps=0,
        self_train_rounds=2,
        self_train_epochs=1,
        self_train_tau=1.0,
        self_train_missed=1.0,
    )  # keep everything: counts are exact
    student, rounds = selftrain.self_train(labelled, text, TYPES, cfg, dev=labelled[:10])
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["pseudo_sentences"] for r in rounds] == [0, len(text), len(text)]
    assert (
        [len(r["history"]) for r in rounds] == [2, 1, 1]
        and student.tags == model.tags
        and not student.training
    )
    small = replace(cfg, self_train_rounds=1, int8=True)  # int8 applies to the last tagger only
    quantized, _ = selftrain.self_train(labelled[:10], text[:10], TYPES, small)
    assert quantized.config.int8 and isinstance(
        quantized.encoder.encoder.layer[0].output.dense, torch.ao.nn.quantized.dynamic.Linear
    )
    with pytest.raises(ValueError, match="self_train_rounds: expected 0 or more"):
        selftrain.self_train(labelled, text, TYPES, replace(cfg, self_train_rounds=-1))


def test_pipeline_unlabelled_flag(encoder_dir, tmp_path: Path, capsys):  # noqa: F811
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo"
    argv = [
        "--data",
        str(demo),
        "--out",
        str(tmp_path),
        "--unlabelled",
        str(demo),
        "--tagger-encoder",
        encoder_dir,
        "--tagger-epochs",
        "1",
        "--tagger-self-train-epochs",
        "1",
        "--no-tagger-progress",
    ]
    assert refineg.main(argv) == 0
    stage = json.loads((tmp_path / "tagger" / "stage.json").read_text())
    assert [r["round"] for r in stage["self_training"]] == [0, 1, 2]  # two rounds by default
    assert "unlabelled" in capsys.readouterr().out
    assert refineg.main(argv) == 0  # same settings and texts: reused
    assert "tagger: reused" in capsys.readouterr().out
