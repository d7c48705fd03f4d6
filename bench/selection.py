"""Demo selection (demos.py) on Twitter-GMNER: quality and time of the similarity variants.

    python -m bench selection

Real data is read from ../shared/data/ (never shipped); skipped with a message when absent.
"""

from bench import TWITTER, have


def _sel_quality(queries: list, demos: list, picks: list[list[int]]) -> tuple[float, float, float]:
    """Per query, averaged: share of its gold types present in the demos, share of demos with a groundable
    entity, and entities per demo (the raw pair sum's bias shows here)."""
    cover, groundable, n_ent = [], [], []
    for q, row in zip(queries, picks):
        want = {e.type for e in q.entities}
        have_types = {e.type for j in row for e in demos[j].entities}
        cover.append(len(want & have_types) / len(want))
        groundable.append(sum(any(e.boxes for e in demos[j].entities) for j in row) / len(row))
        n_ent.append(sum(len(demos[j].entities) for j in row) / len(row))
    return sum(cover) / len(cover), sum(groundable) / len(groundable), sum(n_ent) / len(n_ent)


def bench_selection(args) -> None:
    """Demo selection on Twitter-GMNER: dev queries (their GOLD entities stand in for predicted ones) against
    train demos; text + entity similarity only (the data has no images)."""
    import time
    from dataclasses import replace

    import numpy as np

    from demos import DemoConfig, best, features, similarity_parts
    from formats.twitter import read_twitter

    if not have(TWITTER):
        return
    queries = [s for s in read_twitter(TWITTER / "dev.txt", TWITTER / "xml").samples if s.entities]
    demos = read_twitter(TWITTER / "train.txt", TWITTER / "xml").samples
    if args.quick:
        queries, demos = queries[:300], demos[:1000]
    types = sorted({e.type for s in queries + demos for e in s.entities})
    ours = DemoConfig(w_image=0.0)
    t0 = time.perf_counter()
    fq, fd = features(queries, types, ours), features(demos, types, ours)
    t_embed = time.perf_counter() - t0
    variants = {
        "ours: text .4 + entity .6 (pair mean)": ours,
        "authors: text .4 + entity .6 (pair sum)": replace(ours, entity_sim="sum"),
        "text only": replace(ours, w_entity=0.0),
    }
    rows = []
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        picks = best(similarity_parts(fq, fd, cfg)["total"], cfg.k)
        dt = time.perf_counter() - t0
        rows.append((name, *_sel_quality(queries, demos, picks), dt))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    picks = [list(rng.choice(len(demos), ours.k, replace=False)) for _ in queries]
    dt = time.perf_counter() - t0
    rows.append(("random", *_sel_quality(queries, demos, picks), dt))
    print(
        f"demo selection, k={ours.k}: {len(queries)} Twitter-GMNER dev queries with entities x "
        f"{len(demos)} train demos"
    )
    print(f"embedding (texts + entity names, {ours.encoder or 'all-MiniLM-L6-v2'}, CPU): {t_embed:.1f} s")
    print(
        f"{'selection':42s} {'types covered':>13s} {'groundable demos':>16s} {'entities/demo':>13s} "
        f"{'time s':>7s}"
    )
    for name, cover, ground, n_ent, dt in rows:
        print(f"{name:42s} {cover:13.3f} {ground:16.3f} {n_ent:13.2f} {dt:7.2f}")
    print("command: python -m bench selection" + (" --quick" if args.quick else ""))
