"""app/store.py: a trained tagger saved into a folder and rebuilt from it alone, with the tiny BERT of
test_tagger.py (no download)."""

import copy
import dataclasses
import json

import numpy as np
import pytest
from test_tagger import encoder_dir, spans, trained, training  # noqa: F401  (fixtures)

import tagger as tg
from app import store


def test_save_load_gives_identical_predictions(trained, tmp_path):  # noqa: F811
    tagger, test = trained
    store.save(tagger, str(tmp_path / "t"))
    again = store.load(str(tmp_path / "t"))
    a, b = tg.predict(tagger, test), tg.predict(again, test)
    assert again.tags == tagger.tags and again.config == tagger.config
    assert spans(a) == spans(b)
    for x, y in zip(a, b):
        assert np.array_equal(x.marginals, y.marginals)


def test_load_refuses_a_setting_it_does_not_know(trained, tmp_path):  # noqa: F811
    """A tagger saved by another version of tagger.py: an unknown setting is named (it used to be a
    TypeError from the dataclass); a setting missing from config.json takes its default."""
    tagger, test = trained
    store.save(tagger, str(tmp_path / "t"))
    meta = json.loads((tmp_path / "t" / "config.json").read_text())
    del meta["tagger"]["int8"]
    (tmp_path / "t" / "config.json").write_text(json.dumps(meta))
    assert spans(tg.predict(store.load(str(tmp_path / "t")), test)) == spans(tg.predict(tagger, test))
    meta["tagger"]["char_dim"] = 50
    (tmp_path / "t" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config.json: unknown tagger settings \['char_dim'\]"):
        store.load(str(tmp_path / "t"))


def test_an_int8_tagger_is_saved_and_rebuilt_as_int8(trained, tmp_path):  # noqa: F811
    tagger, test = trained
    q = copy.deepcopy(tagger)
    q.config = dataclasses.replace(q.config, int8=True)
    tg.quantize(q)
    pred = tg.predict(q, test)
    store.save(q, str(tmp_path / "q"))  # int8 weights are saved and rebuilt as int8
    again = store.load(str(tmp_path / "q"))
    assert all(np.array_equal(x.marginals, y.marginals) for x, y in zip(pred, tg.predict(again, test)))
    assert (tmp_path / "q" / "weights.pt").stat().st_size > 0
