"""The scorer (eval.py): scoring speed on 10,000 synthetic samples, span and name matching.

python -m bench eval
"""


def bench_eval(args) -> None:
    """eval.py's speed: score 10,000 synthetic samples held in memory, in span and in name mode."""
    import random
    import time

    from data import Box, Entity, Sample
    from eval import evaluate

    rng = random.Random(0)
    n = 1_000 if args.quick else 10_000
    types = ["PER", "LOC", "ORG", "OTHER"]

    def box() -> Box:
        x, y = rng.uniform(0, 400), rng.uniform(0, 300)
        return Box(x, y, x + rng.uniform(20, 200), y + rng.uniform(20, 200))

    gold, pred = [], []
    for i in range(n):
        tokens = [f"w{k % 7}" for k in range(24)]  # few distinct words: names repeat, as in tweets
        g, p = [], []
        for start in sorted(rng.sample(range(0, 24, 3), rng.randint(0, 4))):  # ~2 entities, 40 % grounded
            e = Entity(
                start,
                start + rng.randint(1, 2),
                rng.choice(types),
                [box() for _ in range(rng.choice([1, 1, 2]))] if rng.random() < 0.4 else [],
            )
            g.append(e)
            u = rng.random()  # the prediction: 70 % right, then a wrong type, a moved box, a miss
            if u < 0.7:
                p.append(Entity(e.start, e.end, e.type, list(e.boxes)))
            elif u < 0.8:
                p.append(Entity(e.start, e.end, rng.choice(types), list(e.boxes)))
            elif u < 0.9:
                p.append(
                    Entity(
                        e.start,
                        e.end,
                        e.type,
                        [Box(b.x1 + 30, b.y1 + 30, b.x2 + 30, b.y2 + 30) for b in e.boxes] or [box()],
                    )
                )
        if rng.random() < 0.2:  # a spurious entity (it may duplicate a right one)
            p.append(Entity(21, 22, rng.choice(types), [box()] if rng.random() < 0.5 else []))
        gold.append(Sample(str(i), tokens, None, g))
        pred.append(Sample(str(i), tokens, None, p))
    n_ents = sum(len(s.entities) for s in gold)
    print(
        f"eval.py scoring speed: {n:,} synthetic samples, {n_ents:,} gold entities "
        f"({sum(1 for s in gold for e in s.entities if e.boxes):,} grounded), best of 3 runs"
    )
    print(f"{'match':<7}{'seconds':>9}{'samples/s':>12}{'GMNER F1':>10}{'MNER F1':>9}{'EEG F1':>8}")
    for match in ("span", "name"):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = evaluate(gold, pred, match)
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(
            f"{match:<7}{best:>9.3f}{n / best:>12,.0f}{r['gmner']['f1']:>10.3f}{r['mner']['f1']:>9.3f}"
            f"{r['eeg']['f1']:>8.3f}"
        )
    print("command: python -m bench eval")
