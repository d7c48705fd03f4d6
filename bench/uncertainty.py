"""Entity uncertainty (uncertainty.py): AUROC and risk-coverage on the tagger benchmark's splits.

    python -m bench uncertainty [--quick] [--only ccks,twitter] [--mc-passes N]

Also keeps the trained taggers the other benches reuse (`_unc_tagger`, cached under /tmp, keyed by the
settings and the training data). On Twitter it also trains (once) two more taggers with seeds 1 and 2
and a tagger self-trained from the seed-0 one, to measure whether other taggers' scores of the same
entities find more of the wrong ones (about 12 minutes on 2 cores the first time). Real data is read
from ../shared/data/ (never shipped).
"""

import sys
from pathlib import Path

import numpy as np

from bench import CCKS, TWITTER, have
from bench.oracle import corrector_f1_curve, f1_rule, wrong_flags
from bench.tagger import _tagger_data


def bench_uncertainty(args) -> None:
    """AUROC and risk-coverage of entity uncertainty, on the tagger benchmark's splits.

    "Wrong" = the predicted entity is not an exact (span, type) match of a gold entity.
    Delegating the top x % most uncertain entities: the share of wrong entities caught, and
    the F1 a perfect corrector would reach (uncertainty.corrector_f1_curve), versus the same
    number of entities delegated at random (mean of 200 draws).
    """
    import time
    from dataclasses import replace

    import tagger
    import uncertainty as unc
    from bench import unc_variants as bench_unc_variants

    cfg = unc.UncertaintyConfig(**({} if args.mc_passes is None else {"mc_passes": args.mc_passes}))
    rates = [0.1, 0.2, 0.3, 0.5]
    sets = ([("CCKS (gold 0-99; tagger on gold 100-399 + synthetic)", "ccks")] if have(CCKS) else []) + (
        [("Twitter-GMNER 10 % (test: dev.txt; tagger on 10 % train)", "twitter")] if have(TWITTER) else []
    )
    sets = [(name, setting) for name, setting in sets if not args.only or setting in args.only.split(",")]
    for name, setting in sets:
        tg, dev, test = _unc_tagger(setting, args)
        t0 = time.perf_counter()
        pred = tagger.predict(tg, test)
        t1 = time.perf_counter()
        mc = tagger.predict(tg, test, mc_passes=cfg.mc_passes) if cfg.mc_passes else None
        t2 = time.perf_counter()
        wrong = np.array(wrong_flags(pred, test))
        methods = {}
        for label, marg_from, method in [
            ("marginal (default)", pred, "marginal"),
            (f"MC dropout, entropy (T={cfg.mc_passes})", mc, "mc_dropout"),
            (f"marginal of MC-mean marginals (T={cfg.mc_passes})", mc, "marginal"),
        ]:
            if marg_from is None:
                continue
            copies = [
                replace(p, entities=[replace(e) for e in p.entities], marginals=m.marginals)
                for p, m in zip(pred, marg_from)
            ]
            unc.estimate(copies, tg.tags, replace(cfg, method=method))
            methods[label] = np.array([e.uncertainty for s in copies for e in s.entities])
        methods["max-softmax of the emission layer (no CRF)"] = _unc_softmax_scores(tg, pred)
        methods.update(
            bench_unc_variants.variants(
                tg, pred, _tagger_data(setting, args.quick)[0], dev, methods["marginal (default)"]
            )
        )
        if setting == "twitter":  # independently trained taggers (seeds 1, 2): do they agree?
            others = [tagger.predict(_unc_tagger(setting, args, seed=s)[0], test) for s in (1, 2)]
            for k in (1, 2):
                methods[f"mean score of {k + 1} taggers (+ seed{'s 1, 2' if k == 2 else ' 1'})"] = (
                    bench_unc_variants.other_taggers(pred, others[:k], tg.tags, methods["marginal (default)"])
                )
        f1 = corrector_f1_curve(pred, test, [])[0]
        print(
            f"\n{name}: {len(test)} test samples, {len(wrong)} predicted entities, {wrong.sum()} wrong "
            f"({wrong.mean():.1%}); tagger MNER F1 {f1:.3f}; predict {t1 - t0:.1f} s, "
            f"with MC dropout {t2 - t1:.1f} s"
        )
        head = " | ".join(f"top {r:.0%}: caught, F1 ub" for r in rates)
        print(f"{'method':48s} AUROC | {head}")
        rng = np.random.default_rng(0)
        for label, scores in methods.items():
            order = list(np.argsort(-scores, kind="stable"))
            curve = corrector_f1_curve(pred, test, order)
            cells = []
            for r in rates:
                k = round(r * len(order))
                cells.append(f"{wrong[order[:k]].sum() / max(wrong.sum(), 1):6.1%}, {curve[k]:.3f}")
            print(f"{label:48s} {_unc_auroc(scores, wrong):.3f} | " + " | ".join(f"{c:19s}" for c in cells))
        kinds = np.array([_unc_kind(e, t) for p, t in zip(pred, test) for e in p.entities])
        top = np.zeros(len(wrong), dtype=bool)
        top[np.argsort(-methods["marginal (default)"], kind="stable")[: round(0.2 * len(wrong))]] = True
        print(
            "    default, top 20 % by kind (delegated/all): "
            + ", ".join(
                f"{k} {(top & (kinds == k)).sum()}/{(kinds == k).sum()}"
                for k in ("right", "type", "boundary", "spurious")
            )
        )
        randoms = [corrector_f1_curve(pred, test, list(rng.permutation(len(wrong)))) for _ in range(200)]
        cells = [f"{r:6.1%}, {np.mean([c[round(r * len(wrong))] for c in randoms]):.3f}" for r in rates]
        print(
            f"{'random delegation (200 draws; caught = rate)':48s} {0.5:.3f} | "
            + " | ".join(f"{c:19s}" for c in cells)
        )
        everything = corrector_f1_curve(pred, test, list(range(len(wrong))))[-1]
        print(f"(all delegated, perfect corrector: F1 {everything:.3f})")

        # calls at the chosen tau versus the authors' code (every sample with an entity, four images each)
        scored = [replace(p, entities=[replace(e) for e in p.entities]) for p in pred]
        unc.estimate(scored, tg.tags, cfg)
        rules = [
            (
                "target_rate 0.2 (default, label-free, on the test predictions)",
                unc.choose_threshold(scored, cfg),
            )
        ]
        if dev:
            dev_pred = tagger.predict(tg, dev)
            unc.estimate(dev_pred, tg.tags, cfg)
            rules.append((f"F1 rule on {len(dev)} dev samples", f1_rule(dev_pred, dev)))
        authors = sum(1 for s in pred if s.entities) / len(pred)
        default = methods["marginal (default)"]
        for label, (tau, how) in rules:
            unc.route(scored, tau)
            calls = sum(1 for s in scored if unc.delegated(s)) / len(pred)
            print(
                f"calls per sample, {label}: {calls:.3f} (tau {tau:.4f}; delegates "
                f"{(default > tau).mean():.1%} "
                f"of entities, catches {wrong[default > tau].sum() / max(wrong.sum(), 1):.1%} of the wrong "
                "ones); "
                f"the authors' code: {authors:.3f} (x4 images)"
            )
            print(f"    {how}")
        if setting == "twitter":
            _unc_rounds(tg, dev, test, args)
        missed = [unc.missed_entity_score(p, tg.tags) for p in pred]
        has_missed = [
            any(all(min(g.end, e.end) <= max(g.start, e.start) for e in p.entities) for g in t.entities)
            for p, t in zip(pred, test)
        ]
        if 0 < sum(has_missed) < len(has_missed):
            print(
                f"missed-entity score: AUROC {_unc_auroc(np.array(missed), np.array(has_missed)):.3f} for "
                f"'a gold entity overlaps no prediction' ({sum(has_missed)} of {len(pred)} samples)"
            )
    print(
        "\ncommand: python -m bench uncertainty"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
        + (f" --mc-passes {args.mc_passes}" if args.mc_passes is not None else "")
    )


def _unc_rounds(teacher, dev: list, test: list, args) -> None:
    """Agreement between self-training rounds: the tagger self-trained from `teacher` (`python -m bench
    labels`' "st"
    setting, seed 0; trained once and cached), its default score, and the variants that use its teacher."""
    import numpy as np

    import bench
    import selftrain
    import tagger
    import uncertainty as unc
    from app import store
    from bench import unc_variants as bench_unc_variants
    from data import Sample
    from formats.twitter import TWITTER_TYPES, read_conll

    low = bench.TWITTER / "lowres" / "10GMNER"
    train = read_conll(low / "train.txt").samples
    path = _unc_cache_path(
        "twitter-st", {"progress": False, "epochs": 10, "self_train_epochs": 3}, TWITTER_TYPES, train, dev
    )
    if (path / "weights.pt").is_file():
        student = store.load(str(path))
    elif args.quick:
        return
    else:
        seen = {s.id for s in train}
        text = [
            Sample(s.id, s.tokens)
            for s in read_conll(bench.TWITTER / "train.txt").samples
            if s.id not in seen
        ]
        print(
            f"twitter: self-training the cached tagger on {len(text)} tweets as text; cached in {path}",
            file=sys.stderr,
        )
        student, _, _ = selftrain.one_round(teacher, train, text, TWITTER_TYPES, dev)
        store.save(student, str(path))
    pred, before = tagger.predict(student, test), tagger.predict(teacher, test)
    unc.estimate(pred, student.tags)
    default = np.array([e.uncertainty for s in pred for e in s.entities])
    wrong = np.array(wrong_flags(pred, test))
    methods = {
        "default (the self-trained tagger's marginals)": default,
        "mean of its and its teacher's scores": bench_unc_variants.other_taggers(
            pred, [before], student.tags, default
        ),
    }
    print(
        f"  self-trained tagger (1 round, +3 epochs; F1 {corrector_f1_curve(pred, test, [])[0]:.3f}), "
        f"{len(wrong)} entities, {wrong.sum()} wrong; the second tagger is its teacher (the tagger above)"
    )
    for label, scores in methods.items():
        top = np.argsort(-scores, kind="stable")[: round(0.2 * len(wrong))]
        print(
            f"  {label:46s} AUROC {_unc_auroc(scores, wrong):.3f} | top 20 %: caught "
            f"{wrong[top].sum() / max(wrong.sum(), 1):6.1%}"
        )


def _unc_kind(e, gold) -> str:
    """right | type (span right) | boundary (overlaps a gold entity) | spurious (overlaps none)."""
    spans = {(g.start, g.end): g.type for g in gold.entities}
    if (e.start, e.end) in spans:
        return "right" if spans[(e.start, e.end)] == e.type else "type"
    return "boundary" if any(min(e.end, b) > max(e.start, a) for a, b in spans) else "spurious"


def _unc_auroc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2 (Mann-Whitney)."""
    import numpy as np

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inv]  # average 1-based ranks
    pos, neg = labels.sum(), (~labels).sum()
    if not pos or not neg:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _unc_softmax_scores(tg, pred: list):
    """1 - mean over the span of the max softmax of the emission scores: a token classifier's usual
    confidence."""
    import numpy as np
    import torch

    import encoding

    enc = encoding.encode(tg.tokenizer, [s.tokens for s in pred], tg.config.max_length)
    out = []
    with torch.inference_mode():
        for i in range(0, len(pred), 64):
            rows = [j for j in range(i, min(i + 64, len(pred))) if pred[j].tokens]
            if not rows:
                continue
            batch = encoding.collate([enc[j] for j in rows], tg.tokenizer.pad_token_id, tg.config.device)
            probs = torch.softmax(tg.emissions(batch), dim=-1).max(-1).values.numpy()  # (B, T)
            for b, j in enumerate(rows):
                out += [(j, e.start, 1.0 - float(probs[b, e.start : e.end].mean())) for e in pred[j].entities]
    by = {(j, st): u for j, st, u in out}
    return np.array([by[(j, e.start)] for j, s in enumerate(pred) for e in s.entities])


UNC_CACHE = Path("/tmp/refineg_bench_taggers")  # trained taggers, reused across runs; never in the repo


def _unc_cache_path(setting: str, config: dict, types: list[str], train: list, dev: list | None) -> Path:
    """Where a tagger trained on these data with these TaggerConfig overrides is cached (bench_labels fills
    it too)."""
    import hashlib
    import json

    blob = json.dumps(
        [
            setting,
            config,
            types,
            [(s.tokens, [(e.start, e.end, e.type) for e in s.entities]) for s in train + (dev or [])],
        ]
    )
    return UNC_CACHE / f"{setting}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _unc_tagger(setting: str, args, seed: int = 0) -> tuple:
    """(tagger, dev, test) of one of bench_tagger's "ours" settings (same data, same TaggerConfig),
    trained once and cached under /tmp, keyed by the settings and the training data."""
    import tagger
    from app import store

    train, dev, test, types, _ = _tagger_data(setting, args.quick)
    config = {
        "progress": False,
        "epochs": args.epochs or 10,
    }  # TaggerConfig's epoch_size (2,000) as in the pipeline
    if seed:
        config["seed"] = seed
    if args.quick:
        config.update(epochs=1, epoch_size=0)
    path = _unc_cache_path(setting, config, types, train, dev)
    if (path / "weights.pt").is_file():
        print(f"{setting}: cached tagger {path}", file=sys.stderr)
        return store.load(str(path)), dev, test
    print(
        f"{setting}: training the tagger on {len(train)} sentences ({config}); cached in {path}",
        file=sys.stderr,
    )
    model, _ = tagger.train_tagger(train, types, tagger.TaggerConfig(**config), dev)
    store.save(model, str(path))
    return model, dev, test
