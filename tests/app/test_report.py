"""Tests of app/report.py's grounding lines: every number they print is read from app/counts.py's
grounding_counts, by the keys it gives (a renamed key fails here instead of printing 0); and of the lines a
tagger's training says, read from the history and self-training rounds it returned."""

from app import report
from app.counts import grounding_counts
from data import Box, Entity, Sample
from grounding import GroundingTrace, Outcome
from tagger import TaggerConfig


def epochs(n: int, sentences: int) -> list[dict]:
    """A training history of `n` epochs of `sentences` sentences each."""
    return [{"epoch": e, "loss": 1.0, "sentences": sentences} for e in range(1, n + 1)]


def test_the_minimum_of_steps_raising_the_epochs_is_said_in_one_line():
    """22 sentences in batches of 16 are 2 steps an epoch: --tagger-epochs 2 gives 4 steps, under the
    60 of --tagger-min-steps, so 30 epochs were trained (tagger.epochs_to_run), and one line says it;
    enough steps say nothing."""
    trained = {"history": epochs(30, 22), "self_training": []}
    assert report.training_lines(TaggerConfig(epochs=2, min_steps=60), trained, 0) == [
        "tagger: 2 epochs of 2 steps are under the minimum of 60 steps (--tagger-min-steps): "
        "training 30 epochs"
    ]
    assert report.training_lines(TaggerConfig(epochs=30, min_steps=60), trained, 0) == []


def test_each_self_training_round_says_what_it_kept_after_its_own_epochs_line():
    """Rounds of 3 epochs (--tagger-self-train-epochs): round 1 trains on 22 sentences, 2 steps an epoch,
    so 10 steps take 5 epochs; round 2's 100 sentences are 7 steps an epoch, 21 in 3 epochs. Round 0, the
    tagger before self-training, said its own line; without progress the rounds say nothing."""
    config = TaggerConfig(epochs=1, min_steps=10, self_train_epochs=3)
    rounds = [
        {"round": 0, "pseudo_sentences": 0, "history": epochs(10, 4)},
        {"round": 1, "pseudo_sentences": 5, "pseudo_entities": 7, "history": epochs(5, 22)},
        {"round": 2, "pseudo_sentences": 9, "pseudo_entities": 11, "history": epochs(3, 100)},
    ]
    training = {"history": rounds[-1]["history"], "self_training": rounds}
    epochs_line = (
        "tagger: 3 epochs of 2 steps are under the minimum of 10 steps (--tagger-min-steps): "
        "training 5 epochs"
    )
    assert report.training_lines(config, training, 40) == [
        epochs_line,
        "self-training round 1: trained on 5 of 40 unlabelled sentences (7 entities)",
        "self-training round 2: trained on 9 of 40 unlabelled sentences (11 entities)",
    ]
    quiet = TaggerConfig(epochs=1, min_steps=10, self_train_epochs=3, progress=False)
    assert report.training_lines(quiet, training, 40) == [epochs_line]


def test_grounding_line_prints_the_counts_of_hand_built_traces():
    """a: answered, 2 boxes on "Leopard 2" (both its mentions) and none on "NATO"; b: no image, its
    vehicle and its location (never grounded, not asked); c: its image unreadable; d: the call failed;
    e: nothing to ask. Asked 3 of 5 (a, c, d), in 2 calls (a, d); 4 boxes on 2 entities; 7 - 2 = 5 entities
    without a box, 1 of them a location."""
    box = Box(1, 1, 9, 9)
    tokens = "Leopard 2 and Leopard 2 with NATO".split()
    a = Sample(
        "a", tokens, "a.jpg", [Entity(0, 2, "vehicle", [box, box]), Entity(3, 5, "vehicle", [box, box])]
    )
    a.entities.append(Entity(6, 7, "other"))
    b = Sample("b", ["Boxer", "in", "Kiel"], None, [Entity(0, 1, "vehicle"), Entity(2, 3, "location")])
    c = Sample("c", ["Puma"], "c.jpg", [Entity(0, 1, "vehicle")])
    d = Sample("d", ["Tiger"], "d.jpg", [Entity(0, 1, "aircraft")])
    e = Sample("e", ["rain"], "e.jpg", [])
    traces = {
        "a": GroundingTrace(
            Outcome.ANSWERED,
            {"Leopard 2": "vehicle", "NATO": "other"},
            [],
            {"Leopard 2": [box, box], "NATO": []},
            defects={"degenerate_boxes": 1, "missing": 0},
        ),
        "b": GroundingTrace(Outcome.NO_IMAGE, {"Boxer": "vehicle"}, [], {}),
        "c": GroundingTrace(Outcome.IMAGE_ERROR, {"Puma": "vehicle"}, [], {}, "cannot read image c.jpg"),
        "d": GroundingTrace(
            Outcome.FAILED_CALL, {"Tiger": "aircraft"}, [], {}, "HTTP 500", dropped={"x": "?"}
        ),
        "e": GroundingTrace(Outcome.NO_ENTITY, {}, [], {}),
    }
    n = grounding_counts([a, b, c, d, e], traces)
    assert n == {
        "samples": 5,
        "calls": 2,
        "failed_calls": 1,
        "image_errors": 1,
        "no_image": 1,
        "no_image_entities": 1,
        "no_entity": 1,
        "demo_image_errors": 1,
        "bad_answers": 0,
        "bad_items": 0,
        "invented": 0,
        "malformed_boxes": 0,
        "degenerate_boxes": 1,
        "missing": 0,
        "entities_grounded": 2,
        "boxes": 4,
    }
    assert report.grounding_line(n, [a, b, c, d, e], ["location"]) == (
        "grounding: 3 of 5 samples asked in 2 calls, 4 boxes drawn on 2 entities; 5 of 7 entities left "
        "without a box (1 of them location, a type never grounded)"
    )
    assert report.image_lines(traces) == [
        "grounding: cannot read image c.jpg; no box for its sample",
        "grounding: ?; not shown as a worked example",
    ]
