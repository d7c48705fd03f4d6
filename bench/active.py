"""Which tweets to label next (labelling/suggest.py) against random labelling, on Twitter-GMNER.

    python -m bench active                                  # every row, seeds 0 1 2
    python -m bench active --only random,entity --seeds 0   # some rows
    python -m bench active --only mnlp --max-labelled 1400  # the first round only
    python -m bench active --device cuda --cache DIR        # the tagger on a GPU, rounds kept in DIR
    python -m bench active --report                         # the table of the rounds finished, no training
    R=entity+diversity+self-training                        # its three choosers, the first round:
    python -m bench active --only $R,$R-chooser-self-trained,$R-chooser-pool-out --seeds 0 --max-labelled 1400
    bash bench/active_gpu.sh                                # rows and seeds side by side on one GPU

Protocol: start from lowres/10GMNER/train.txt (700 tweets, labelled); the pool is the other 6,300
tweets of train.txt with their labels hidden. Each round adds 700 tweets, chosen by the row's
strategy, whose labels are then revealed from train.txt; up to --max-labelled (2,800). After each
round the tagger is trained as refineg.py trains it (default settings, no dev selection, the last
epoch) and scored on the full dev.txt. Rows: random selection, and labelling/suggest.py's strategies, chosen
by that same tagger (trained on every label, as refineg.py --suggest trains it); the "chooser on
70 %" row chooses with a second tagger trained on the 70 % that a held-out split leaves (what
refineg.py --suggest did before it trained on all labels). The "+self-training" rows train (and score) on
the chosen labels plus the rest of the pool as unlabelled text; their chooser is the tagger before
self-training (refineg.py's), the self-trained tagger itself (-chooser-self-trained: refineg.py before
it kept the chooser apart), or, with the pool left out of the chooser's self-training (-chooser-pool-out),
each half of the pool ranked by a tagger self-trained on the other half. A chosen round also records
how hard its tweets are for the tagger scored (its F1 on them against its F1 on the whole pool) and how
many were chosen with a doubt of 0. Each finished round is appended to
--cache/rounds.jsonl (default /tmp/refineg_bench_active), and a rerun skips what is there (delete
the folder to measure again). Real data is read from ../shared/data/.
"""

import json
import time
from pathlib import Path

import numpy as np

from bench import TWITTER, have

CACHE = Path("/tmp/refineg_bench_active")
DEVICE = "cpu"  # the tagger's torch device (--device)
ROUND = 700
ROWS = {  # row -> (strategy, diversity, self-training, share of the labels the chooser sees, the chooser)
    "random": ("random", 0.0, False, 1.0, "scored"),
    "entity": ("entity", 0.0, False, 1.0, "scored"),
    "entity+diversity": ("entity", 0.5, False, 1.0, "scored"),
    "entity+diversity-chooser70": ("entity", 0.5, False, 0.7, "scored"),
    "mnlp": ("mnlp", 0.0, False, 1.0, "scored"),
    "missed": ("missed", 0.0, False, 1.0, "scored"),
    "entity+diversity+self-training": ("entity", 0.5, True, 1.0, "supervised"),
    "entity+diversity+self-training-chooser-self-trained": ("entity", 0.5, True, 1.0, "scored"),
    "entity+diversity+self-training-chooser-pool-out": ("entity", 0.5, True, 1.0, "pool-out"),
}


def bench_active(args) -> None:
    global CACHE, DEVICE
    rows = args.only.split(",") if args.only else list(ROWS)
    seeds = [int(s) for s in args.seeds.split(",")]
    CACHE, DEVICE = Path(args.cache or CACHE), args.device
    print(
        f"command: python -m bench active --only {','.join(rows)} --seeds {args.seeds} "
        f"--max-labelled {args.max_labelled} --device {DEVICE}"
    )
    if not have(TWITTER):
        return
    from formats.twitter import read_conll

    start = read_conll(TWITTER / "lowres" / "10GMNER" / "train.txt")
    full = read_conll(TWITTER / "train.txt")
    dev = read_conll(TWITTER / "dev.txt").samples
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.report:
        report(finished(), rows, seeds)
        return
    done = finished()
    for seed in seeds:
        for row in rows:
            curve(row, seed, start, full, dev, done, max_labelled=args.max_labelled)
    report(finished(), rows, seeds)


def finished() -> dict[tuple[str, int, int], dict]:
    path = CACHE / "rounds.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {(r["row"], r["seed"], r["labelled"]): r for r in rows}


def record(result: dict) -> None:
    with open(CACHE / "rounds.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    shown = {k: v for k, v in result.items() if k != "next_ids"}
    print(json.dumps(shown) + f" (+{len(result['next_ids'])} chosen)", flush=True)


def curve(row: str, seed: int, start, full, dev, done: dict, max_labelled: int) -> None:
    """One row's rounds for one seed: train, score, choose the next 700, reveal their labels."""
    strategy, _, self_training, _, _ = ROWS[row]
    by_id = {s.id: s for s in full.samples}
    labelled = list(start.samples)
    chosen_ids: list[str] = []
    size = len(labelled)
    while size <= max_labelled:
        key = (row, seed, size)
        pool = [s for s in full.samples if s.id not in {x.id for x in labelled}]
        last = size + ROUND > max_labelled
        if key in done and (done[key]["next_ids"] or last):
            chosen_ids = done[key]["next_ids"]
        else:  # not measured, or measured as a last round and now to be continued
            t0 = time.perf_counter()
            models = None
            if key not in done or strategy != "random":  # random chooses without a model
                unlabelled = pool if self_training else []
                models = train(labelled, unlabelled, full.types, seed, size == len(start.samples))
            train_s = time.perf_counter() - t0
            f1 = score(models[0], dev) if models is not None else done[key]["f1"]
            chosen_ids, select_s, hard = [], 0.0, {}
            if not last:
                t0 = time.perf_counter()
                chosen = choose(row, seed, models, labelled, pool, full.types)
                select_s = time.perf_counter() - t0
                chosen_ids = [c.sample.id for c in chosen]
                hard = how_hard(models[0] if models else None, chosen, by_id, pool)
            entities = sum(len(s.entities) for s in labelled)
            record(
                {
                    "row": row,
                    "seed": seed,
                    "labelled": size,
                    "entities": entities,
                    "f1": f1,
                    "train_seconds": round(train_s) if key not in done else done[key]["train_seconds"],
                    "select_seconds": round(select_s, 1),
                    **hard,
                    "next_ids": chosen_ids,
                }
            )
            del models
        if not chosen_ids:
            return
        labelled = labelled + [by_id[i] for i in chosen_ids]  # the labels are revealed once chosen
        size = len(labelled)


def choose(row: str, seed: int, models: tuple | None, labelled: list, pool: list, types: list[str]) -> list:
    """The next ROUND tweets the row's strategy picks from the pool (suggest.Suggestion, best first).
    The chooser: the tagger scored, the tagger before self-training, one trained on `share` of the labels,
    or, for "pool-out", each half of the pool ranked by a tagger self-trained on the other half."""
    from labelling import suggest

    strategy, diversity, _, share, by = ROWS[row]
    config = suggest.SuggestConfig(strategy=strategy, diversity=diversity, seed=seed)
    if strategy == "random":
        return suggest.suggest(None, pool, ROUND, config, progress=False)
    scored, supervised = models
    if by == "pool-out":
        return pool_out(supervised, labelled, pool, types, seed, config)
    chooser = {"scored": scored, "supervised": supervised}[by]
    if share < 1.0:
        chooser = train(held_in(labelled, share, seed), [], types, seed)[0]
    return suggest.suggest(chooser, pool, ROUND, config, progress=False)


def pool_out(supervised, labelled: list, pool: list, types: list[str], seed: int, config) -> list:
    """Two-fold: each seeded half of the pool is scored by the tagger self-trained (from `supervised`) on
    the other half, so no chooser has learnt the pseudo labels of what it ranks; then the same greedy pick."""
    import selftrain
    import tagger
    from labelling import suggest

    order = np.random.default_rng(seed).permutation(len(pool))
    halves = [[pool[i] for i in sorted(order[k::2])] for k in (0, 1)]
    keep = config.pool_factor * ROUND
    candidates = []
    for scored_half, other in (halves, halves[::-1]):
        cfg = tagger.TaggerConfig(progress=False, seed=seed, device=DEVICE)
        chooser, _ = selftrain.self_train(labelled, other, types, cfg, start=supervised)
        candidates += suggest.score_pool(chooser, scored_half, keep, config)
        del chooser
    candidates = sorted(candidates, key=lambda c: c.score, reverse=True)[:keep]
    return suggest.diverse(candidates, ROUND, config)


def how_hard(model, chosen: list, by_id: dict, pool: list) -> dict:
    """How much the chosen tweets teach the tagger scored this round: its MNER F1 on them against their
    revealed gold (lower = more of its errors chosen) beside its F1 on the whole pool (a random pick's
    expectation), and how many were chosen with a doubt of 0 (a tie, not a choice)."""
    import tagger
    from eval import evaluate

    if model is None:
        return {}
    gold = [by_id[c.sample.id] for c in chosen]
    chosen_f1 = evaluate(gold, tagger.predict(model, gold))["mner"]["f1"]
    pool_f1 = evaluate(pool, tagger.predict(model, pool))["mner"]["f1"]
    zero = sum(c.score < 5e-4 and c.why != "random" for c in chosen)  # what suggested.jsonl prints as 0.0
    return {"chosen_f1": round(chosen_f1, 4), "pool_f1": round(pool_f1, 4), "zero_doubt": zero}


def held_in(labelled: list, share: float, seed: int) -> list:
    """The labels a tagger trained beside a held-out split sees: refineg.py's own seeded split."""
    from app.inputs import split

    return split(labelled, 1 - share, seed)[0]


def train(labelled: list, pool: list, types: list[str], seed: int, shareable: bool = False) -> tuple:
    """refineg.py's training: default settings, the last epoch, self-trained on `pool` when given (from the
    supervised tagger, as refineg.py does). Returns (the tagger scored, the tagger before self-training)."""
    import selftrain
    import tagger

    config = tagger.TaggerConfig(progress=False, seed=seed, device=DEVICE)
    supervised = cached(
        CACHE / f"start-seed{seed}" if shareable else None,
        lambda: tagger.train_tagger(labelled, types, config)[0],
    )
    if not pool:
        return supervised, supervised
    model = cached(
        CACHE / f"start-self-trained-seed{seed}" if shareable else None,
        lambda: selftrain.self_train(labelled, pool, types, config, start=supervised)[0],
    )
    return model, supervised


def cached(folder: Path | None, trained):
    """The tagger saved in `folder` (every row of a seed starts from the same 700 and the same pool), or
    `trained()`, saved there."""
    from app import store

    if folder is not None and (folder / "config.json").is_file():
        return store.load(str(folder), DEVICE)
    model = trained()
    if folder is not None:
        store.save(model, str(folder))
    return model


def score(model, dev: list) -> float:
    import tagger
    from eval import evaluate

    return round(evaluate(dev, tagger.predict(model, dev))["mner"]["f1"], 4)


def report(done: dict, rows: list[str], seeds: list[int]) -> None:
    """The learning curves (mean over the seeds measured), and the labels saved against random."""
    sizes = sorted({k[2] for k in done if k[0] in rows and k[1] in seeds})
    print(
        "\n| row | seeds | "
        + " | ".join(f"{n} labelled: F1 (entities)" for n in sizes)
        + " | select s / round |"
    )
    print("| --- | --- | " + " | ".join("---" for _ in sizes) + " | --- |")
    for row in rows:
        cells, measured = [], set()
        for n in sizes:
            got = [done[(row, s, n)] for s in seeds if (row, s, n) in done]
            measured |= {r["seed"] for r in got}
            cells.append(
                f"{np.mean([r['f1'] for r in got]):.3f} ({np.mean([r['entities'] for r in got]):.0f})"
                + (f" sd {np.std([r['f1'] for r in got]):.3f}" if len(got) > 1 else "")
                if got
                else "-"
            )
        select = [done[k]["select_seconds"] for k in done if k[0] == row and done[k]["next_ids"]]
        mean_select = f"{np.mean(select):.0f}" if select else "-"
        print(f"| {row} | {len(measured)} | " + " | ".join(cells) + f" | {mean_select} |")
    labels_saved(done, rows, seeds)
    choices(done, rows, seeds)


def choices(done: dict, rows: list[str], seeds: list[int]) -> None:
    """Per round chosen: the scored tagger's F1 on the chosen tweets (lower: more of its errors chosen)
    against its F1 on the whole pool, and how many were chosen with a doubt of 0."""
    measured = [done[k] for k in sorted(done) if k[0] in rows and k[1] in seeds and "chosen_f1" in done[k]]
    if not measured:
        return
    print("\n| row | seed | labelled | tagger F1 on the 700 chosen | on the pool | chosen with doubt 0 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in measured:
        cells = [
            r["row"],
            r["seed"],
            r["labelled"],
            f"{r['chosen_f1']:.3f}",
            f"{r['pool_f1']:.3f}",
            r["zero_doubt"],
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def random_curve(done: dict, seeds: list[int]) -> tuple[list[int], list[float]]:
    sizes = sorted({k[2] for k in done if k[0] == "random" and k[1] in seeds})
    means = [
        np.mean([done[("random", s, n)]["f1"] for s in seeds if ("random", s, n) in done]) for n in sizes
    ]
    return sizes, means


def labels_saved(done: dict, rows: list[str], seeds: list[int]) -> None:
    """How many random labels reach the F1 of 1,400 chosen ones (linear interpolation on the random curve)."""
    sizes, means = random_curve(done, seeds)
    if len(sizes) < 2:
        return
    print("\nrandom curve (mean over seeds): " + ", ".join(f"{n}: {f:.3f}" for n, f in zip(sizes, means)))
    for row in rows:
        got = [done[(row, s, 1400)]["f1"] for s in seeds if (row, s, 1400) in done]
        if row == "random" or not got:
            continue
        f1 = float(np.mean(got))
        if f1 >= means[-1]:
            print(
                f"{row}: 1,400 chosen reach F1 {f1:.3f}, at least what {sizes[-1]} random reach "
                f"({means[-1]:.3f})"
            )
            continue
        equal = float(np.interp(f1, np.maximum.accumulate(means), sizes))
        print(f"{row}: 1,400 chosen reach F1 {f1:.3f} = {equal:.0f} random labels (x{equal / 1400:.2f})")
