"""Label efficiency of the tagger on Twitter-GMNER: what 10 % of the labels reach, lever by lever.

    python -m bench labels                                  # every setting, seeds 0 1 2
    python -m bench labels --only default,epochs20 --seeds 0

Protocol of `python -m bench tagger`: train on lowres/10GMNER/train.txt (700 tweets), keep the epoch of
best span F1 on lowres/10GMNER/dev.txt (150 tweets; the schedule is chosen on it too), test on
the full dev.txt (1,500 tweets; note that it contains those 150). Self-training reads the other
6,300 tweets of train.txt as text: their tags are dropped before the tagger sees them, and are
used only afterwards, to report how precise the kept pseudo labels were. A self-training row's
teacher is the labelled-only tagger of the same schedule and seed, reported beside it; with more
than one round, its last column also gives the test F1 after each round. The `st2-nodev` rows use no dev
at all, as `refineg.py` (which holds none out): every run keeps its last epoch. The `full` row trains on
all 7,000 labelled tweets (same dev and test): the ceiling, what the other 90 % of the labels buy.
Training seconds are wall time on the shared machine, pseudo-labelling included.
"""

import sys
import time

import numpy as np

DEFAULT = "10 % labelled, defaults (10 epochs, lr 5e-5)"
SETTINGS = {  # name: (label, TaggerConfig overrides, label of its teacher row when it is self-training)
    "default": (DEFAULT, {}, None),
    "epochs20": ("10 % labelled, 20 epochs", {"epochs": 20}, None),
    "lr1e-4": ("10 % labelled, encoder lr 1e-4", {"lr_encoder": 1e-4}, None),
    "lr1e-4-e20": ("10 % labelled, encoder lr 1e-4, 20 epochs", {"lr_encoder": 1e-4, "epochs": 20}, None),
    "st2-lr1e-4": (
        "10 % labelled + unlabelled text, encoder lr 1e-4, self-training (2 rounds)",
        {"lr_encoder": 1e-4, "self_train_rounds": 2},
        "10 % labelled, encoder lr 1e-4",
    ),
    "st3-lr1e-4": (
        "10 % labelled + unlabelled text, encoder lr 1e-4, self-training (3 rounds)",
        {"lr_encoder": 1e-4, "self_train_rounds": 3},
        "10 % labelled, encoder lr 1e-4",
    ),
    "st2-lr1e-4-tau0.2": (
        "10 % labelled + unlabelled text, encoder lr 1e-4, self-training (2 rounds), tau 0.2",
        {"lr_encoder": 1e-4, "self_train_rounds": 2, "self_train_tau": 0.2},
        "10 % labelled, encoder lr 1e-4",
    ),
    "st2-lr1e-4-5ep": (
        "10 % labelled + unlabelled text, encoder lr 1e-4, self-training (2 rounds of 5 epochs)",
        {"lr_encoder": 1e-4, "self_train_rounds": 2, "self_train_epochs": 5},
        "10 % labelled, encoder lr 1e-4",
    ),
    "st2": ("10 % labelled + unlabelled text, self-training (2 rounds, the defaults)", {}, DEFAULT),
    "st": (
        "10 % labelled + unlabelled text, self-training (1 round, +3 epochs)",
        {"self_train_rounds": 1},
        DEFAULT,
    ),
    "st-lr1e-4": (
        "10 % labelled + unlabelled text, encoder lr 1e-4, self-training (1 round)",
        {"lr_encoder": 1e-4, "self_train_rounds": 1},
        "10 % labelled, encoder lr 1e-4",
    ),
    "st2-nodev": (
        "10 % labelled + unlabelled text, 2 rounds, no dev: every last epoch kept, as refineg.py",
        {},
        "10 % labelled, defaults, no dev: the last epoch kept, as refineg.py",
    ),
    "full": ("100 % labelled (all 7,000 tweets): the ceiling", {}, None),  # what the other 90 % of labels buy
}


def _pseudo_precision(kept: list, gold_by_id: dict) -> tuple[float, float]:
    """Span P and R of the kept pseudo labels against the tags the bench dropped (a diagnostic only)."""
    from eval import evaluate

    gold = [gold_by_id[s.id] for s in kept]
    m = evaluate(gold, kept)["mner"]
    return m["p"], m["r"]


def _scores(model, history: list[dict], dev: list, test: list, seconds: float) -> dict:
    """Kept epoch (the last when no dev picked one), split-dev F1, full-dev P/R/F1 and training seconds."""
    import tagger as tg
    from eval import evaluate
    from tagger import span_f1

    picked = [h for h in history if "dev_f1" in h]
    best = max(picked, key=lambda h: h["dev_f1"]) if picked else history[-1]
    m = evaluate(test, tg.predict(model, test))["mner"]
    return {
        "split_dev_f1": span_f1(dev, tg.predict(model, dev)),
        "best_epoch": best["epoch"],
        "epochs": len(history),
        "p": m["p"],
        "r": m["r"],
        "f1": m["f1"],
        "train_seconds": seconds,
    }


def run_one(name: str, seed: int, overrides: dict, quick: bool = False) -> list[dict]:
    """Train one setting with one seed. A self-training setting gives two rows: its teacher (labelled only,
    the same schedule and seed) and the self-trained tagger."""
    import bench
    import selftrain
    import tagger as tg
    from bench import uncertainty as bench_uncertainty
    from data import Sample
    from formats.twitter import TWITTER_TYPES, read_conll

    low = bench.TWITTER / "lowres" / "10GMNER"
    train, dev = read_conll(low / "train.txt").samples, read_conll(low / "dev.txt").samples
    if name == "full":
        train = read_conll(bench.TWITTER / "train.txt").samples
    test = read_conll(bench.TWITTER / "dev.txt").samples
    if quick:
        train, test = train[:100], test[:200]
    label, config, teacher = SETTINGS[name]
    config = {"progress": False, **config, **overrides}
    cfg = tg.TaggerConfig(**{**config, "seed": seed})
    t0 = time.perf_counter()
    pick = None if name == "st2-nodev" else dev  # the set that picks each run's epoch
    model, history = tg.train_tagger(train, TWITTER_TYPES, cfg, pick)
    scores = _scores(model, history, dev, test, time.perf_counter() - t0)
    rows = [{"setting": teacher or label, "seed": seed, **scores}]
    cache = bench_uncertainty._unc_cache_path(
        "twitter", {"progress": False, "epochs": 10}, TWITTER_TYPES, train, dev
    )
    plain = (
        seed == 0
        and name not in ("full", "st2-nodev")
        and cfg == tg.TaggerConfig(progress=False)
        and not quick
    )
    if plain and not (cache / "weights.pt").is_file():
        tg.save(
            model, str(cache)
        )  # the very tagger `python -m bench uncertainty` and speed use: trained once
    if teacher:
        seen = {s.id for s in read_conll(low / "train.txt").samples}
        rest = [s for s in read_conll(bench.TWITTER / "train.txt").samples if s.id not in seen][
            : 300 if quick else None
        ]
        text = [Sample(s.id, s.tokens) for s in rest]  # the tags stay behind
        extra = []
        for _ in range(cfg.self_train_rounds):  # selftrain.self_train, with the diagnostics
            model, history, kept = selftrain.one_round(model, train, text, TWITTER_TYPES, pick)
            p, r = _pseudo_precision(kept, {s.id: s for s in rest})
            extra.append(f"{len(kept)} of {len(text)} tweets pseudo-labelled (entity P {p:.3f}, R {r:.3f})")
            if cfg.self_train_rounds > 1:
                extra[-1] += f", then F1 {_scores(model, history, dev, test, 0)['f1']:.3f}"
        scores = _scores(model, history, dev, test, time.perf_counter() - t0)
        rows.append({"setting": label, "seed": seed, **scores, "extra": "; ".join(extra)})
    return rows


def bench_labels(args) -> None:
    from bench import TWITTER, have

    if not have(TWITTER):
        return
    names = args.only.split(",") if args.only else list(SETTINGS)
    unknown = set(names) - set(SETTINGS)
    if unknown:
        raise SystemExit(f"--only: unknown settings {sorted(unknown)}; expected some of {list(SETTINGS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = {"epochs": args.epochs} if args.epochs else {}
    rows = []
    for name in names:
        for seed in seeds:
            print(f"running {name} seed {seed} ...", file=sys.stderr, flush=True)
            for r in run_one(name, seed, overrides, args.quick):
                rows.append(r)
                print(
                    "  "
                    + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
                    file=sys.stderr,
                    flush=True,
                )
    print(
        "\nTwitter-GMNER, trained on lowres/10GMNER (700 tweets), epoch kept on its dev (150), "
        "tested on the full dev.txt (1,500)"
    )
    print(
        f"{'setting':<56}{'seed':>5}{'epochs':>8}{'dev150':>8}{'P':>7}{'R':>7}{'F1':>7}{'train s':>9}  extra"
    )
    for r in rows:
        extra = r.get("extra", "")
        print(
            f"{r['setting']:<56}{r['seed']:>5}{r['best_epoch']:>4}/{r['epochs']:<3}"
            f"{r['split_dev_f1']:>8.3f}{r['p']:>7.3f}{r['r']:>7.3f}{r['f1']:>7.3f}"
            f"{r['train_seconds']:>9.0f}  {extra}"
        )
    print("\nmean over seeds " + ",".join(map(str, seeds)) + ":")
    for label in dict.fromkeys(r["setting"] for r in rows):
        got = [r for r in rows if r["setting"] == label]
        f1 = np.array([r["f1"] for r in got])
        print(
            f"  {label:<56} F1 {f1.mean():.3f} (sd {f1.std():.3f}, {len(got)} seeds), dev150 "
            f"{np.mean([r['split_dev_f1'] for r in got]):.3f}, train "
            f"{np.mean([r['train_seconds'] for r in got]):.0f} s"
        )
    print(
        f"command: python -m bench labels --only {','.join(names)} --seeds {args.seeds}"
        + (" --quick" if args.quick else "")
        + (f" --epochs {args.epochs}" if args.epochs else "")
    )
