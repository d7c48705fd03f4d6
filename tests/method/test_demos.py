"""Tests of demos.py, the choice of worked examples for grounding: the weighted text + image + entity
similarity
on a hand-built case whose expected rankings the docstring derives, the factorised entity term against a
brute-force
double loop, and the three encoders (pixel descriptor, a tiny CLIP built from a config, the offline text
encoder).
"""

import numpy as np
import pytest
from PIL import Image

import demos as sel
from data import Entity, Sample


def feats(ids, text, image, has_image, ent_mean, type_freq, n_ent):
    def f(x):
        return np.asarray(x, dtype=np.float32)

    return sel.Features(
        ids, f(text), f(image), np.asarray(has_image), f(ent_mean), f(type_freq), np.asarray(n_ent)
    )


def hand_built():
    """Queries q0 (no image; one entity of type A named like [1, 0]) and q1 (image [1, 0]; no entity).
    Demos: d0 is q0 itself; d1 has q0's text but a type-B entity; d2 a close text and q0's entity;
    d3 q0's entity four times; d4 no entity. With weights .4/.2/.6 and type bonus .8:
      q0 text (min-max over d1..d4) 1, .6, 0, 0; entity mean 0, 1.8, 1.8, 0 -> 0, 1, 1, 0
         score d1 .40, d2 .84, d3 .60, d4 0 -> [d2, d3, d1]
         entity sum 0, 1.8, 7.2, 0 -> 0, .25, 1, 0: d1 .40, d2 .39, d3 .60 -> [d3, d1, d2]
      q1 text 0, 0, .8, 1, 1 -> same; image 1, -1 (no image), 0, 0, 1 -> 1, 0, .5, .5, 1
         score d0 .20, d1 0, d2 .42, d3 .50, d4 .60 -> [d4, d3, d2]; without the image term d3 and d4 tie
         at .40 and the earlier demo wins -> [d3, d4, d2]."""
    q = feats(
        ["q0", "q1"],
        [[1, 0], [0, 1]],
        [[0, 0], [1, 0]],
        [False, True],
        [[1, 0], [0, 0]],
        [[1, 0], [0, 0]],
        [1, 0],
    )
    d = feats(
        ["q0", "d1", "d2", "d3", "d4"],
        [[1, 0], [1, 0], [0.6, 0.8], [0, 1], [0, 1]],
        [[1, 0], [0, 0], [0, 1], [0, 1], [1, 0]],
        [True, False, True, True, True],
        [[1, 0], [0, 1], [1, 0], [1, 0], [0, 0]],
        [[1, 0], [0, 1], [1, 0], [1, 0], [0, 0]],
        [1, 1, 1, 4, 0],
    )
    return q, d


def rank(q: sel.Features, d: sel.Features, config: sel.DemoConfig) -> list[list[int]]:
    return sel.best(sel.similarity_parts(q, d, config)["total"], config.k)


def test_selection_picks_the_expected_demos_on_a_hand_built_case():
    q, d = hand_built()
    assert rank(q, d, sel.DemoConfig()) == [[2, 3, 1], [4, 3, 2]]
    assert rank(q, d, sel.DemoConfig(entity_sim="sum")) == [[3, 1, 2], [4, 3, 2]]
    assert rank(q, d, sel.DemoConfig(w_image=0.0)) == [[2, 3, 1], [3, 4, 2]]


def test_examples_carry_the_similarity_parts_the_docstring_derives():
    """hand_built's numbers, part by part: q0 has no image (its image term is dropped: None); q1 has no
    entity (a constant entity row normalises to 0)."""
    q, d = hand_built()
    cfg = sel.DemoConfig()
    parts = sel.similarity_parts(q, d, cfg)
    pool = [Sample(i, [i]) for i in d.ids]
    got = [[sel.example(parts, i, j, pool[j]) for j in row] for i, row in enumerate(rank(q, d, cfg))]
    want = [
        [(2, 0.6, None, 1.0, 0.84), (3, 0.0, None, 1.0, 0.6), (1, 1.0, None, 0.0, 0.4)],
        [(4, 1.0, 1.0, 0.0, 0.6), (3, 1.0, 0.5, 0.0, 0.5), (2, 0.8, 0.5, 0.0, 0.42)],
    ]
    for row, want_row in zip(got, want, strict=True):
        for x, w in zip(row, want_row, strict=True):
            assert x.sample is pool[w[0]] and x.image == pytest.approx(w[2])
            assert [x.text, x.entity, x.total] == pytest.approx([w[1], w[3], w[4]], abs=1e-6)


def test_selection_never_picks_itself_and_breaks_ties_by_demo_order():
    """q0 text only: d1 .4, d2 .24, d3 = d4 = 0; k larger than the 4 other demos returns those 4."""
    q, d = hand_built()
    picks = rank(q, d, sel.DemoConfig(k=9, w_entity=0.0, w_image=0.0))
    assert picks[0] == [1, 2, 3, 4]
    assert picks[1] == [3, 4, 2, 0, 1]  # text .4, .4, .32, 0, 0: both ties go to the earlier demo


def test_entity_similarity_matches_brute_force_over_pairs(monkeypatch):
    """The factorised entity term equals the explicit double loop over (query entity, demo entity) pairs."""
    rng = np.random.default_rng(0)
    vocab = {}

    def fake_embed(texts, encoder="", batch_size=64):  # a fixed random unit vector per string
        for t in texts:
            vocab.setdefault(t, rng.normal(size=8))
        out = np.array([vocab[t] / np.linalg.norm(vocab[t]) for t in texts], dtype=np.float32)
        return out.reshape(len(texts), 8)

    monkeypatch.setattr(sel, "embed_texts", fake_embed)
    words = ["Leopard", "Tiger", "Kiel", "NATO", "Boxer", "Sachsen"]
    types = ["A", "B", "C"]

    def sample(i):
        toks = [words[j] for j in rng.choice(len(words), size=4, replace=False)]
        ents = [Entity(j, j + 1, types[rng.integers(3)]) for j in range(int(rng.integers(0, 4)))]
        return Sample(f"s{i}", toks, None, ents)

    queries, demos = [sample(i) for i in range(5)], [sample(i) for i in range(3, 12)]
    for mode in ["mean", "sum"]:
        cfg = sel.DemoConfig(w_text=0.0, w_image=0.0, w_entity=1.0, entity_sim=mode)
        q, d = sel.features(queries, types, cfg), sel.features(demos, types, cfg)
        got = sel.similarity_parts(q, d, cfg)["total"]
        for i, qs in enumerate(queries):
            raw = []
            for ds in demos:
                pairs = [
                    float(
                        vocab[qs.name(a)]
                        @ vocab[ds.name(b)]
                        / np.linalg.norm(vocab[qs.name(a)])
                        / np.linalg.norm(vocab[ds.name(b)])
                    )
                    + 0.8 * (a.type == b.type)
                    for a in qs.entities
                    for b in ds.entities
                ]
                raw.append(sum(pairs) / (len(pairs) if mode == "mean" and pairs else 1))
            raw = np.array(raw)
            keep = np.array([ds.id != qs.id for ds in demos])
            lo, hi = raw[keep].min(), raw[keep].max()
            want = (raw - lo) / (hi - lo) if hi > lo else np.zeros_like(raw)
            assert np.allclose(got[i][keep], want[keep], atol=1e-5)
            assert np.all(np.isneginf(got[i][~keep]))


def test_the_pool_is_embedded_once_and_a_query_type_it_lacks_changes_nothing(monkeypatch):
    """embed_pool keeps the samples with an image and embeds them; choose then embeds only its queries. A
    query's entity of a type no pool sample has adds 0 to every entity similarity, so choosing over the
    pool's types ranks as the full type list does. Images are not read: w_image is 0."""
    rng = np.random.default_rng(1)
    vocab, embedded = {}, []

    def fake_embed(texts, encoder="", batch_size=64):
        embedded.extend(texts)
        for t in texts:
            vocab.setdefault(t, rng.normal(size=8))
        return np.array([vocab[t] / np.linalg.norm(vocab[t]) for t in texts], dtype=np.float32).reshape(-1, 8)

    monkeypatch.setattr(sel, "embed_texts", fake_embed)
    words = ["Leopard", "Tiger", "Kiel", "NATO", "Boxer", "Sachsen", "Puma"]

    def sample(i, types, image="x.jpg"):
        toks = [words[j] for j in rng.choice(len(words), size=4, replace=False)]
        ents = [Entity(j, j + 1, types[rng.integers(len(types))]) for j in range(int(rng.integers(1, 4)))]
        return Sample(f"s{i}", toks, image, ents)

    labelled = [sample(i, "AB") for i in range(8)] + [sample(8, "AB", image=None)]
    cfg = sel.DemoConfig(k=3, w_image=0.0)
    pool = sel.embed_pool(labelled, cfg)
    assert [s.id for s in pool.samples] == [f"s{i}" for i in range(8)] and pool.types == ["A", "B"]
    queries = [sample(i, "ABC") for i in range(20, 25)]
    embedded.clear()
    chosen = sel.choose(queries, pool)
    assert set(embedded) == {q.text for q in queries} | {q.name(e) for q in queries for e in q.entities}
    full = sel.features(queries, ["A", "B", "C"], cfg), sel.features(pool.samples, ["A", "B", "C"], cfg)
    want = rank(*full, cfg)
    assert [[pool.samples.index(x.sample) for x in row] for row in chosen] == want
    assert all(len(row) == 3 for row in chosen)


def test_pixel_descriptor_finds_a_resized_copy(tmp_path):
    yy, xx = np.mgrid[0:120, 0:160]
    scene = np.stack([xx * 1.5, yy * 2, 255 - xx], -1).clip(0, 255).astype(np.uint8)
    paths = []
    for name, img in [
        ("a", Image.fromarray(scene)),
        ("copy", Image.fromarray(scene).resize((400, 300))),
        ("other", Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), np.uint8))),
    ]:
        paths.append(str(tmp_path / f"{name}.jpg"))
        img.save(paths[-1])
    emb = sel.embed_images(paths + [None])
    assert np.allclose(np.linalg.norm(emb[:3], axis=1), 1, atol=1e-5) and not emb[3].any()
    sims = emb[0] @ emb[1:3].T
    assert sims[0] > 0.95 and sims[0] > sims[1] + 0.3


def test_clip_image_encoder_from_a_local_folder(tmp_path):
    """A tiny random CLIP built from a config: unit rows, zero row for no image, same image -> same row."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tiny = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = CLIPConfig(
        text_config=tiny, vision_config={**tiny, "image_size": 32, "patch_size": 16}, projection_dim=8
    )
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "r.jpg")
    Image.new("RGB", (64, 48), (10, 10, 200)).save(tmp_path / "b.jpg")
    p = [str(tmp_path / "r.jpg"), None, str(tmp_path / "b.jpg"), str(tmp_path / "r.jpg")]
    emb = sel.embed_images(p, image_encoder=str(tmp_path / "clip"))
    assert emb.shape == (4, 8) and not emb[1].any()
    assert np.allclose(np.linalg.norm(emb[[0, 2, 3]], axis=1), 1, atol=1e-5) and np.allclose(
        emb[0], emb[3], atol=1e-5
    )


def test_default_text_encoder_ranks_a_paraphrase_first():
    """The offline all-MiniLM-L6-v2, mean-pooled: unit rows, and a paraphrase beats an unrelated text."""
    emb = sel.embed_texts(
        [
            "Leopard 2 tanks on exercise",
            "Two Leopard 2 tanks drive through a field",
            "The frigate Sachsen leaves Kiel harbour",
        ]
    )
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
