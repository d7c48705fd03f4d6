"""Variants of the entity uncertainty, measured by `python -m bench uncertainty` beside the default.

Each function returns one score per predicted entity (flat, sample order; higher = more
doubtful), so the bench ranks them all the same way (AUROC, share of wrong entities in the top x %).

Label-free (usable at prediction time with nothing but the tagger and its training data):
- exact entity probability: 1 - P(the whole predicted entity | text), by a forward pass of the
  CRF with the entity's tags fixed (BIOES: its B..E or S tags) over the unconstrained one.
  Token marginals average the span's doubt; this is the probability of exactly that entity.
- unseen in training: the default score averaged with 1 when the entity's lower-cased string
  is no training entity of that type, 0 when it is (names the tagger has seen are rarely wrong).
Using the labelled dev split (150 tweets on Twitter):
- temperature-scaled marginals: the CRF's scores divided by the T that maximises the dev
  log-likelihood of the gold tags (grid 0.5-4), then the default score from those marginals.
- type prior: the default score averaged with the dev error rate of the predicted type.
"""

import copy
from dataclasses import replace

import numpy as np
import torch

import crf
import encoding
import tagger
import uncertainty as unc
from bench.oracle import wrong_flags
from data import spans_to_tags


def emissions(model, samples: list) -> list[torch.Tensor]:
    """(T, K) float64 emission scores per sample (empty samples: (0, K))."""
    enc = encoding.encode(model.tokenizer, [s.tokens for s in samples], model.config.max_length)
    out = [torch.zeros(0, len(model.tags), dtype=torch.float64) for _ in samples]
    todo = [i for i, s in enumerate(samples) if s.tokens]
    with torch.inference_mode():
        for b in encoding.length_batches([enc[i].size for i in todo], 64):
            rows = [todo[i] for i in b]
            em = model.emissions(
                encoding.collate([enc[i] for i in rows], model.pad_id, model.config.device)
            ).double()
            for j, i in enumerate(rows):
                out[i] = em[j, : len(samples[i].tokens)]
    return out


def _log_z(crf, em: torch.Tensor) -> torch.Tensor:
    """log partition of each row of em (R, T, K), all rows full length."""
    _, _, end = crf.scores()
    mask = torch.ones(em.shape[:2], dtype=torch.bool)
    return torch.logsumexp(crf._alphas(em, mask)[:, -1] + end, dim=1)


def exact_entity(model, pred: list, ems: list[torch.Tensor]) -> np.ndarray:
    index = {t: k for k, t in enumerate(model.tags)}
    out = []
    with torch.inference_mode():
        for s, em in zip(pred, ems):
            if not s.entities:
                continue
            rows = em[None].repeat(len(s.entities) + 1, 1, 1)  # (E + 1, T, K): row 0 unconstrained
            for r, e in enumerate(s.entities, 1):
                n = e.end - e.start
                for i, tag in enumerate(spans_to_tags(n, [replace(e, start=0, end=n)], model.config.scheme)):
                    keep = rows[r, e.start + i, index[tag]].clone()
                    rows[r, e.start + i] = crf.NEG
                    rows[r, e.start + i, index[tag]] = keep
            z = _log_z(model.crf, rows)
            out += (1.0 - torch.exp(z[1:] - z[0])).clamp(0, 1).tolist()
    return np.array(out)


def unseen(pred: list, train: list, default: np.ndarray) -> np.ndarray:
    seen = {(tuple(t.lower() for t in s.tokens[e.start : e.end]), e.type) for s in train for e in s.entities}
    flag = np.array(
        [
            (tuple(t.lower() for t in s.tokens[e.start : e.end]), e.type) not in seen
            for s in pred
            for e in s.entities
        ],
        dtype=float,
    )
    return (default + flag) / 2


def _scaled(crf, t: float):
    c = copy.deepcopy(crf)
    with torch.no_grad():
        for p in c.parameters():
            p /= t
    return c


def temperature(model, pred: list, ems: list, dev: list, dev_ems: list) -> tuple[np.ndarray, float]:
    """Default scores from marginals at the dev-fitted temperature, and that temperature."""
    index = {t: k for k, t in enumerate(model.tags)}
    gold = [
        (em, torch.tensor([index[t] for t in spans_to_tags(len(s.tokens), s.entities, model.config.scheme)]))
        for s, em in zip(dev, dev_ems)
        if s.tokens
    ]

    def dev_ll(t: float) -> float:
        crf = _scaled(model.crf, t)
        with torch.inference_mode():
            return sum(
                float(
                    crf.log_likelihood(em[None] / t, tags[None], torch.ones(1, len(tags), dtype=torch.bool))
                )
                for em, tags in gold
            )

    best = max(np.arange(0.5, 4.01, 0.25), key=dev_ll)
    crf = _scaled(model.crf, best)
    copies = []
    with torch.inference_mode():
        for s, em in zip(pred, ems):
            m = crf.marginals(em[None] / best, torch.ones(1, len(em), dtype=torch.bool))[0] if len(em) else em
            copies.append(replace(s, entities=[replace(e) for e in s.entities], marginals=m.float().numpy()))
    unc.estimate(copies, model.tags)
    return np.array([e.uncertainty for s in copies for e in s.entities]), float(best)


def type_prior(model, pred: list, dev: list, default: np.ndarray) -> np.ndarray:
    dev_pred = tagger.predict(model, dev)
    wrong = wrong_flags(dev_pred, dev)
    types = [e.type for s in dev_pred for e in s.entities]
    rate = {t: np.mean([w for w, u in zip(wrong, types) if u == t]) for t in set(types)}
    return (default + np.array([rate.get(e.type, 1.0) for s in pred for e in s.entities])) / 2


def other_taggers(pred: list, others: list[list], tags: list[str], default: np.ndarray) -> np.ndarray:
    """The mean of this tagger's entity scores (`default`) and those other taggers give the same entities
    from their own marginals (`others`: each one tagger's predictions of the same texts, e.g. another seed
    or the teacher of a self-trained tagger). Label-free; one more training and prediction per tagger."""
    scores = [default]
    for other in others:
        copies = [
            replace(p, entities=[replace(e) for e in p.entities], marginals=o.marginals)
            for p, o in zip(pred, other)
        ]
        unc.estimate(copies, tags)
        scores.append(np.array([e.uncertainty for s in copies for e in s.entities]))
    return np.mean(scores, axis=0)


def variants(model, pred: list, train: list, dev: list | None, default: np.ndarray) -> dict[str, np.ndarray]:
    ems = emissions(model, pred)
    out = {
        "exact entity probability (constrained forward)": exact_entity(model, pred, ems),
        "default + unseen in training, averaged": unseen(pred, train, default),
    }
    if dev:
        scores, t = temperature(model, pred, ems, dev, emissions(model, dev))
        out[f"temperature-scaled marginals (dev T = {t:.2f})"] = scores
        out["default + dev error rate of the type, averaged"] = type_prior(model, pred, dev, default)
    return out
