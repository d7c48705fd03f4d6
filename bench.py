"""Quality and speed measurements of ReFineG, side by side with the peers a practitioner would use.

Sections (each prints a table and the command that reproduces it):
    python bench.py client        # llm.py: concurrency efficiency and per-call overhead on a fake server
    python bench.py tagger        # tagger.py vs AutoModelForTokenClassification (CCKS, Twitter-GMNER 10 %)
    python bench.py labels        # bench_labels.py: Twitter-GMNER 10 %, lever by lever (schedule, self-training)
    python bench.py speed         # bench_speed.py: prediction speed float/int8 vs the peer, and a profile
    python bench.py uncertainty   # uncertainty.py: AUROC and risk-coverage of entity uncertainty
    python bench.py selection     # grounding.py: demo selection quality and time (Twitter-GMNER)
    python bench.py eval          # eval.py: scoring speed on 10,000 samples
    python bench.py memory        # peak memory of training on a long text and of grounding (bench_memory.py)
    python bench.py gmner         # the whole method on Twitter-GMNER with a simulated MLLM of known accuracy
                                  # (bench_gmner.py)
    python bench.py synth         # synth.py with a real 0.5B LLM (llama-server), then the tagger (bench_synth.py)

Real data is read from ../shared/data/ (never shipped); a section skips with a
message when it is absent. Every number is measured on this machine in this run.
"""

import argparse
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent / "shared" / "data"
CCKS = SHARED / "ccks"
TWITTER = SHARED / "twitter-gmner"


def have(path: Path) -> bool:
    if not path.exists():
        print(f"skipped: {path} is absent (benchmarks read the team's shared data from there)")
        return False
    return True


# ---------------------------------------------------------------- client (llm.py)

def bench_client(args) -> None:
    """llm.py on the fake server (fake_server.py), nothing else on the wire.

    1. 64 requests to a server with a fixed 200 ms latency, by workers: wall time and efficiency =
       ideal / measured, ideal = ceil(64 / workers) x 0.2 s (what perfect threads would take).
    2. Per-call cost on a 0-latency server, one worker: a bare requests.Session.post of the same body
       (the floor: HTTP + the fake server itself), Client.chat without and with the cache file, and a
       cache hit; chat minus the bare post is the client's own overhead.
    """
    import json
    import math
    import tempfile
    import time

    import requests

    from llm import Client, ClientConfig
    from fake_server import FakeServer, reply

    def ask(i: int) -> dict:
        return {"messages": [{"role": "user", "content": f"question {i}: is it a vessel?"}]}

    print("command: python bench.py client" + (" --quick" if args.quick else ""))
    n, latency = 64, 0.2
    print(f"\n{n} requests, fake server latency {latency * 1000:.0f} ms")
    print(f"{'workers':>8} {'wall s':>8} {'ideal s':>8} {'efficiency':>10}")
    with FakeServer(latency=latency) as srv:
        for workers in (1, 4, 8, 16):
            if args.quick and workers == 1:
                continue
            client = Client(ClientConfig(base_url=srv.url, model="fake-model", workers=workers))
            t0 = time.perf_counter()
            out = client.map_chat([ask(i) for i in range(n)])
            wall = time.perf_counter() - t0
            assert all(r.content == "ok" for r in out), "a request failed"
            ideal = math.ceil(n / workers) * latency
            print(f"{workers:>8} {wall:>8.2f} {ideal:>8.2f} {ideal / wall:>10.2f}")

    calls = 200 if args.quick else 1000
    print(f"\nper call, 0-latency fake server, one worker, {calls} calls")
    print(f"{'what':<44} {'ms/call':>8}")
    with FakeServer(lambda body: reply({"answer": "yes"})) as srv, tempfile.TemporaryDirectory() as tmp:
        session, url = requests.Session(), srv.url + "/chat/completions"
        body = {**ask(0), "stream": False, "max_tokens": 2048, "temperature": 0.0, "model": "fake-model"}

        def per_call(fn) -> float:
            fn(-1)                                              # warm-up: open the keep-alive connection
            t0 = time.perf_counter()
            for i in range(calls):
                fn(i)
            return (time.perf_counter() - t0) / calls * 1000

        rows = [("bare requests.Session.post (floor)", per_call(lambda i: json.loads(
            session.post(url, json={**body, **ask(i)}, timeout=10).content)))]
        plain = Client(ClientConfig(base_url=srv.url, model="fake-model"))
        rows.append(("Client.chat, no cache", per_call(lambda i: plain.chat(**ask(i)))))
        cached = Client(ClientConfig(base_url=srv.url, model="fake-model", cache_path=f"{tmp}/cache.jsonl"))
        rows.append(("Client.chat, cache miss (appends a line)", per_call(lambda i: cached.chat(**ask(i)))))
        rows.append(("Client.chat, cache hit (no HTTP)", per_call(lambda i: cached.chat(**ask(i)))))
        assert cached.usage.cache_hits == calls + 1, cached.usage
        for what, ms in rows:
            print(f"{what:<44} {ms:>8.3f}")
        print(f"{'client overhead (no cache - floor)':<44} {rows[1][1] - rows[0][1]:>8.3f}")


# ---------------------------------------------------------------- tagger (tagger.py)

def _tagger_data(name: str, quick: bool) -> tuple[list, list | None, list, list[str], str]:
    """(train, dev, test, types, note) of one setting; dev None = keep the last epoch.

    CCKS (README protocol): test = gold 0-99; train = gold 100-399 (+ synthetic sentences,
    minus those containing a lower-cased entity string found in the test gold but in no
    training gold). No dev set: the pipeline trains without one, so the last epoch is kept.
    Twitter: train on lowres/10GMNER/train.txt (or the full train.txt), select the epoch on
    lowres/10GMNER/dev.txt, test on the full dev.txt (1,500 tweets, a superset of that dev).
    """
    from data import TWITTER_TYPES, read_conll, read_types
    if name.startswith("ccks"):
        gold = read_conll(CCKS / "gold.conll").samples
        test, seeds = gold[:100], gold[100:]
        types = read_types(CCKS / "types.txt")[0]
        if name == "ccks_gold":
            return seeds, None, test, types, "gold 100-399"

        def names(samples):
            return {tuple(t.lower() for t in s.tokens[e.start:e.end]) for s in samples for e in s.entities}
        leak = names(test) - names(seeds)
        synth = read_conll(CCKS / "synthetic.conll").samples
        keep = []
        for s in synth:
            low = [t.lower() for t in s.tokens]
            if not any(low[i:i + len(n)] == list(n) for n in leak for i in range(len(low) - len(n) + 1)):
                keep.append(s)
        if quick:
            keep = keep[:300]
        return seeds + keep, None, test, types, f"gold 100-399 + {len(keep)} of {len(synth)} synthetic"
    low = TWITTER / "lowres" / "10GMNER"
    train = read_conll(TWITTER / "train.txt" if name == "twitter_full" else low / "train.txt").samples
    dev, test = read_conll(low / "dev.txt").samples, read_conll(TWITTER / "dev.txt").samples
    if quick:
        train, test = train[:200], test[:300]
    return train, dev, test, TWITTER_TYPES, f"{len(train)} tweets"


def _tagger_peer(train: list, dev: list | None, types: list[str], cfg):
    """The practitioner's tagger: AutoModelForTokenClassification (softmax head, BIO, first-sub-token labels,
    -100 elsewhere, truncation at max_length), plain AdamW + linear warm-up/decay at the encoder lr,
    the same batching, epochs, clipping and dev selection as ours. Returns (history, predict function)."""
    import copy
    import time

    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification, get_linear_schedule_with_warmup

    import tagger as tg
    from data import Entity, Sample, spans_to_tags, tags_to_spans
    from eval import span_f1
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tok, _ = tg.load_encoder(cfg.encoder)
    labels = tg.tag_names(types, "BIO")
    model = AutoModelForTokenClassification.from_pretrained(
        tok.name_or_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={t: i for i, t in enumerate(labels)})

    def features(samples):
        enc = tok([s.tokens for s in samples], is_split_into_words=True, truncation=True, max_length=cfg.max_length)
        out = []
        for i, s in enumerate(samples):
            wids = enc.word_ids(i)
            firsts = [j for j, w in enumerate(wids) if w is not None and (j == 0 or wids[j - 1] != w)]
            tags = spans_to_tags(len(s.tokens), s.entities, "BIO")
            lab = [-100] * len(wids)
            for j in firsts:
                lab[j] = labels.index(tags[wids[j]])
            out.append((enc["input_ids"][i], lab, firsts, [wids[j] for j in firsts]))
        return out

    def pad(rows):
        width = max(len(r[0]) for r in rows)
        ids = torch.tensor([r[0] + [tok.pad_token_id] * (width - len(r[0])) for r in rows])
        lab = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
        return ids, (ids != tok.pad_token_id).long() if tok.pad_token_id is not None else torch.ones_like(ids), lab

    def predict(samples):
        model.eval()
        feats, out = features(samples), [None] * len(samples)
        with torch.inference_mode():
            for b in tg.length_batches([len(f[0]) for f in feats], 64):
                ids, attn, _ = pad([feats[i] for i in b])
                best = model(input_ids=ids, attention_mask=attn).logits.argmax(-1).tolist()
                for r, i in enumerate(b):
                    tags = ["O"] * len(samples[i].tokens)      # words cut off by truncation stay O
                    for j, w in zip(feats[i][2], feats[i][3]):
                        tags[w] = labels[best[r][j]]
                    ents = [Entity(a, e, t, source="tagger") for a, e, t in tags_to_spans(tags)]
                    out[i] = Sample(samples[i].id, samples[i].tokens, samples[i].image, ents)
        return out

    feats = features(train)
    per_epoch = min(cfg.epoch_size or len(train), len(train))
    total = cfg.epochs * -(-per_epoch // cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr_encoder)
    sched = get_linear_schedule_with_warmup(opt, max(1, int(cfg.warmup * total)), total)
    history, best_f1, best_state = [], -1.0, None
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        pick = rng.permutation(len(train))[:per_epoch].tolist() if per_epoch < len(train) else list(range(len(train)))
        for b in tg.length_batches([len(feats[i][0]) for i in pick], cfg.batch_size, rng):
            ids, attn, lab = pad([feats[pick[i]] for i in b])
            loss = model(input_ids=ids, attention_mask=attn, labels=lab).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
        row = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0, "sentences": per_epoch}
        if dev:
            row["dev_f1"] = span_f1(dev, predict(dev))
            if row["dev_f1"] > best_f1:
                best_f1, best_state = row["dev_f1"], copy.deepcopy(model.state_dict())
        history.append(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    return history, predict


def _tagger_child() -> None:
    """One setting in a fresh process (so its peak memory is its own): spec JSON on stdin, result JSON on stdout."""
    import json
    import time

    import torch

    import tagger as tg
    from eval import evaluate
    spec = json.loads(sys.stdin.read())
    train, dev, test, types, note = _tagger_data(spec["data"], spec["quick"])
    cfg = tg.TaggerConfig(**spec["config"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if spec["model"] == "ours":
        model = tg.train_tagger(train, types, cfg, dev)
        history = model.history

        def predict(samples):
            return tg.predict(model, samples, batch_size=64)
    else:
        history, predict = _tagger_peer(train, dev, types, cfg)
    m = evaluate(test, predict(test))["mner"]
    reps = test * (1 if spec["quick"] else -(-1000 // len(test)))   # at least 1,000 sentences for a stable speed
    t0 = time.perf_counter()
    predict(reps)
    infer = len(reps) / (time.perf_counter() - t0)
    status = Path("/proc/self/status").read_text()
    peak = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 1024
    best = max(history, key=lambda h: h.get("dev_f1", 0.0))["epoch"] if dev else len(history)
    print(json.dumps({"p": m["p"], "r": m["r"], "f1": m["f1"], "note": note, "train_n": len(train),
                      "epoch_size": history[0]["sentences"], "epochs": len(history), "best_epoch": best,
                      "train_sps": sum(h["sentences"] for h in history) / sum(h["seconds"] for h in history),
                      "infer_sps": infer, "peak_mb": peak}))


def _tagger_spawn(spec: dict) -> dict:
    import json
    import subprocess
    cmd = [sys.executable, "-c", "import bench; bench._tagger_child()"]
    done = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True, cwd=Path(__file__).parent)
    if done.returncode != 0:
        raise RuntimeError(f"tagger bench setting {spec['label']!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_tagger(args) -> None:
    """Our CRF tagger vs the softmax AutoModelForTokenClassification peer, each setting in its own process.

    Training length (the same for ours and the peer): TaggerConfig's defaults, 10 epochs of at most
    2,000 sentences drawn afresh each epoch: all 700 tweets per epoch on Twitter 10 %, and 20,000
    sentence passes (about 1.6 passes over ~12.8k sentences) on CCKS gold + synthetic. CCKS gold only
    (300 sentences) runs 20 epochs so that it is not under-trained; the peer on the full 7,000 tweets
    runs 3 epochs of all of them (HF Trainer's default).
    """
    import time

    import torch
    settings = []
    default = {"epochs": args.epochs} if args.epochs else {}
    gold = {"epochs": args.epochs or 20}
    if have(CCKS):
        settings += [("CCKS", "ours, gold+synthetic", "ours", "ccks", default),
                     ("CCKS", "ours, gold+synth, no shape", "ours", "ccks", {**default, "shape_features": False}),
                     ("CCKS", "peer, gold+synthetic", "peer", "ccks", default),
                     ("CCKS", "ours, gold only", "ours", "ccks_gold", gold),
                     ("CCKS", "peer, gold only", "peer", "ccks_gold", gold)]
    if have(TWITTER):
        settings += [("Twitter", "ours, 10%", "ours", "twitter", default),
                     ("Twitter", "ours, 10%, no shape features", "ours", "twitter",
                      {**default, "shape_features": False}),
                     ("Twitter", "peer, 10%", "peer", "twitter", default),
                     ("Twitter", "peer, full train (7,000)", "peer", "twitter_full",
                      {"epochs": args.epochs or 3, "epoch_size": 0})]
    if not settings:
        return
    if args.quick:
        settings = [(d, lab, m, data, {**c, "epochs": 1, "epoch_size": 0}) for d, lab, m, data, c in settings]
    rows = {}
    for dataset, label, model, data, config in settings:
        t0 = time.perf_counter()
        print(f"running {dataset}: {label} ...", file=sys.stderr, flush=True)
        spec = {"label": label, "model": model, "data": data, "quick": args.quick,
                "config": {"progress": False, **config}}
        rows[(dataset, label)] = r = _tagger_spawn(spec)
        print(f"  done in {time.perf_counter() - t0:.0f} s: F1 {r['f1']:.4f}", file=sys.stderr, flush=True)

    print(f"\nTagger: span P/R/F1 on the held-out test set; speed on this machine ({torch.get_num_threads()} torch "
          f"threads; the CPU is shared, so speeds are noisy); peak = VmHWM of the setting's own process.")
    print(f"{'data':<8}{'setting':<31}{'train data':<38}{'epochs':>8}{'P':>7}{'R':>7}{'F1':>7}"
          f"{'train/s':>9}{'infer/s':>9}{'peak MB':>9}")
    for (dataset, label), r in rows.items():
        ep = f"{r['best_epoch']}/{r['epochs']}"
        print(f"{dataset:<8}{label:<31}{r['note']:<38}{ep:>8}{r['p']:>7.3f}{r['r']:>7.3f}{r['f1']:>7.3f}"
              f"{r['train_sps']:>9.1f}{r['infer_sps']:>9.1f}{r['peak_mb']:>9.0f}")
    print("epochs = kept/run (kept = best dev epoch; CCKS has no dev: last); train/s and infer/s in sentences/s")
    print("\nratios ours/peer (same data):")
    for dataset, ours, peer in [("CCKS", "ours, gold+synthetic", "peer, gold+synthetic"),
                                ("CCKS", "ours, gold only", "peer, gold only"),
                                ("Twitter", "ours, 10%", "peer, 10%"),
                                ("Twitter", "ours, 10%", "peer, full train (7,000)")]:
        a, b = rows.get((dataset, ours)), rows.get((dataset, peer))
        if a and b and b["f1"] > 0:
            print(f"  {dataset:<8}{ours} / {peer}: F1 {a['f1'] / b['f1']:.3f}, "
                  f"train speed {a['train_sps'] / b['train_sps']:.2f}, "
                  f"inference speed {a['infer_sps'] / b['infer_sps']:.2f}")
    print("command: python bench.py tagger" + (" --quick" if args.quick else "")
          + (f" --epochs {args.epochs}" if args.epochs else ""))


# ---------------------------------------------------------------- uncertainty (uncertainty.py)

def bench_uncertainty(args) -> None:
    """AUROC and risk-coverage of entity uncertainty, on the tagger benchmark's splits.

    "Wrong" = the predicted entity is not an exact (span, type) match of a gold entity.
    Delegating the top x % most uncertain entities: the share of wrong entities caught, and
    the F1 a perfect corrector would reach (uncertainty.corrector_f1_curve), versus the same
    number of entities delegated at random (mean of 200 draws).
    """
    import time
    from dataclasses import replace

    import numpy as np

    import bench_unc_variants
    import tagger
    import uncertainty as unc

    cfg = unc.UncertaintyConfig(**({} if args.mc_passes is None else {"mc_passes": args.mc_passes}))
    rates = [0.1, 0.2, 0.3, 0.5]
    sets = ([("CCKS (gold 0-99; tagger on gold 100-399 + synthetic)", "ccks")] if have(CCKS) else []) + \
           ([("Twitter-GMNER 10 % (test: dev.txt; tagger on 10 % train)", "twitter")] if have(TWITTER) else [])
    sets = [(name, setting) for name, setting in sets if not args.only or setting in args.only.split(",")]
    for name, setting in sets:
        tg, dev, test = _unc_tagger(setting, args)
        t0 = time.perf_counter()
        pred = tagger.predict(tg, test)
        t1 = time.perf_counter()
        mc = tagger.predict(tg, test, mc_passes=cfg.mc_passes) if cfg.mc_passes else None
        t2 = time.perf_counter()
        wrong = np.array(unc.wrong_flags(pred, test))
        methods = {}
        for label, marg_from, method in [("marginal (default)", pred, "marginal"),
                                         (f"MC dropout, entropy (T={cfg.mc_passes})", mc, "mc_dropout"),
                                         (f"marginal of MC-mean marginals (T={cfg.mc_passes})", mc, "marginal")]:
            if marg_from is None:
                continue
            copies = [replace(p, entities=[replace(e) for e in p.entities], marginals=m.marginals)
                      for p, m in zip(pred, marg_from)]
            unc.score(copies, tg.tags, replace(cfg, method=method))
            methods[label] = np.array([e.score for s in copies for e in s.entities])
        methods["max-softmax of the emission layer (no CRF)"] = _unc_softmax_scores(tg, pred)
        methods.update(bench_unc_variants.variants(tg, pred, _tagger_data(setting, args.quick)[0], dev,
                                                   methods["marginal (default)"]))
        f1 = unc.corrector_f1_curve(pred, test, [])[0]
        print(f"\n{name}: {len(test)} test samples, {len(wrong)} predicted entities, {wrong.sum()} wrong "
              f"({wrong.mean():.1%}); tagger MNER F1 {f1:.3f}; predict {t1 - t0:.1f} s, "
              f"with MC dropout {t2 - t1:.1f} s")
        head = " | ".join(f"top {r:.0%}: caught, F1 ub" for r in rates)
        print(f"{'method':48s} AUROC | {head}")
        rng = np.random.default_rng(0)
        for label, scores in methods.items():
            order = list(np.argsort(-scores, kind="stable"))
            curve = unc.corrector_f1_curve(pred, test, order)
            cells = []
            for r in rates:
                k = round(r * len(order))
                cells.append(f"{wrong[order[:k]].sum() / max(wrong.sum(), 1):6.1%}, {curve[k]:.3f}")
            print(f"{label:48s} {_unc_auroc(scores, wrong):.3f} | " + " | ".join(f"{c:19s}" for c in cells))
        kinds = np.array([_unc_kind(e, t) for p, t in zip(pred, test) for e in p.entities])
        top = np.zeros(len(wrong), dtype=bool)
        top[np.argsort(-methods["marginal (default)"], kind="stable")[:round(0.2 * len(wrong))]] = True
        print("    default, top 20 % by kind (delegated/all): " + ", ".join(
            f"{k} {(top & (kinds == k)).sum()}/{(kinds == k).sum()}"
            for k in ("right", "type", "boundary", "spurious")))
        randoms = [unc.corrector_f1_curve(pred, test, list(rng.permutation(len(wrong)))) for _ in range(200)]
        cells = [f"{r:6.1%}, {np.mean([c[round(r * len(wrong))] for c in randoms]):.3f}" for r in rates]
        print(f"{'random delegation (200 draws; caught = rate)':48s} {0.5:.3f} | "
              + " | ".join(f"{c:19s}" for c in cells))
        everything = unc.corrector_f1_curve(pred, test, list(range(len(wrong))))[-1]
        print(f"(all delegated, perfect corrector: F1 {everything:.3f})")

        # calls at the chosen tau versus the authors' code (every sample with an entity, four images each)
        scored = [replace(p, entities=[replace(e) for e in p.entities]) for p in pred]
        unc.score(scored, tg.tags, cfg)
        rules = [("target_rate 0.2 (default, label-free, on the test predictions)",
                  unc.choose_threshold(scored, None, cfg))]
        if dev:
            dev_pred = tagger.predict(tg, dev)
            unc.score(dev_pred, tg.tags, cfg)
            rules.append((f"F1 rule on {len(dev)} dev samples", unc.choose_threshold(
                dev_pred, dev, replace(cfg, target_rate=None))))
        authors = sum(1 for s in pred if s.entities) / len(pred)
        default = methods["marginal (default)"]
        for label, (tau, how) in rules:
            calls = sum(1 for r in unc.route(scored, tau) if r) / len(pred)
            print(f"calls per sample, {label}: {calls:.3f} (tau {tau:.4f}; delegates {(default > tau).mean():.1%} "
                  f"of entities, catches {wrong[default > tau].sum() / max(wrong.sum(), 1):.1%} of the wrong ones); "
                  f"the authors' code: {authors:.3f} (x4 images)")
            print(f"    {how}")
        missed = [unc.missed_entity_score(p, tg.tags) for p in pred]
        has_missed = [any(all(min(g.end, e.end) <= max(g.start, e.start) for e in p.entities) for g in t.entities)
                      for p, t in zip(pred, test)]
        if 0 < sum(has_missed) < len(has_missed):
            print(f"missed-entity score: AUROC {_unc_auroc(np.array(missed), np.array(has_missed)):.3f} for "
                  f"'a gold entity overlaps no prediction' ({sum(has_missed)} of {len(pred)} samples)")
    print("\ncommand: python bench.py uncertainty" + (" --quick" if args.quick else "")
          + (f" --only {args.only}" if args.only else "")
          + (f" --mc-passes {args.mc_passes}" if args.mc_passes is not None else ""))


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
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inv]     # average 1-based ranks
    pos, neg = labels.sum(), (~labels).sum()
    if not pos or not neg:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _unc_softmax_scores(tg, pred: list):
    """1 - mean over the span of the max softmax of the emission scores: a token classifier's usual confidence."""
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
            probs = torch.softmax(tg.emissions(batch), dim=-1).max(-1).values.numpy()   # (B, T)
            for b, j in enumerate(rows):
                out += [(j, e.start, 1.0 - float(probs[b, e.start:e.end].mean())) for e in pred[j].entities]
    by = {(j, st): u for j, st, u in out}
    return np.array([by[(j, e.start)] for j, s in enumerate(pred) for e in s.entities])


UNC_CACHE = Path("/tmp/refineg_bench_taggers")   # trained taggers, reused across runs; never in the repo


def _unc_cache_path(setting: str, config: dict, types: list[str], train: list, dev: list | None) -> Path:
    """Where a tagger trained on these data with these TaggerConfig overrides is cached (bench_labels fills it too)."""
    import hashlib
    import json
    blob = json.dumps([setting, config, types, [(s.tokens, [(e.start, e.end, e.type) for e in s.entities])
                                                for s in train + (dev or [])]])
    return UNC_CACHE / f"{setting}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _unc_tagger(setting: str, args) -> tuple:
    """(tagger, dev, test) of one of bench_tagger's "ours" settings (same data, same TaggerConfig),
    trained once and cached under /tmp, keyed by the settings and the training data."""
    import tagger
    train, dev, test, types, _ = _tagger_data(setting, args.quick)
    config = {"progress": False, "epochs": args.epochs or 10, **({"epoch_size": 2000} if setting == "ccks" else {})}
    if args.quick:
        config.update(epochs=1, epoch_size=0)
    path = _unc_cache_path(setting, config, types, train, dev)
    if (path / "weights.pt").is_file():
        print(f"{setting}: cached tagger {path}", file=sys.stderr)
        return tagger.load(str(path)), dev, test
    print(f"{setting}: training the tagger on {len(train)} sentences ({config}); cached in {path}", file=sys.stderr)
    model = tagger.train_tagger(train, types, tagger.TaggerConfig(**config), dev)
    tagger.save(model, str(path))
    return model, dev, test


# ---------------------------------------------------------------- selection (grounding.py)

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

    from data import read_twitter
    from demos import features, rank_demos
    from grounding import GroundingConfig
    if not have(TWITTER):
        return
    queries = [s for s in read_twitter(TWITTER / "dev.txt", TWITTER / "xml").samples if s.entities]
    demos = read_twitter(TWITTER / "train.txt", TWITTER / "xml").samples
    if args.quick:
        queries, demos = queries[:300], demos[:1000]
    types = sorted({e.type for s in queries + demos for e in s.entities})
    ours = GroundingConfig(w_image=0.0)
    t0 = time.perf_counter()
    fq, fd = features(queries, types, ours), features(demos, types, ours)
    t_embed = time.perf_counter() - t0
    variants = {"ours: text .4 + entity .6 (pair mean)": ours,
                "authors: text .4 + entity .6 (pair sum)": replace(ours, entity_sim="sum"),
                "text only": replace(ours, w_entity=0.0)}
    rows = []
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        picks = rank_demos(fq, fd, cfg)
        dt = time.perf_counter() - t0
        rows.append((name, *_sel_quality(queries, demos, picks), dt))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    picks = [list(rng.choice(len(demos), ours.k, replace=False)) for _ in queries]
    dt = time.perf_counter() - t0
    rows.append(("random", *_sel_quality(queries, demos, picks), dt))
    print(f"demo selection, k={ours.k}: {len(queries)} Twitter-GMNER dev queries with entities x "
          f"{len(demos)} train demos")
    print(f"embedding (texts + entity names, {ours.encoder or 'all-MiniLM-L6-v2'}, CPU): {t_embed:.1f} s")
    print(f"{'selection':42s} {'types covered':>13s} {'groundable demos':>16s} {'entities/demo':>13s} {'time s':>7s}")
    for name, cover, ground, n_ent, dt in rows:
        print(f"{name:42s} {cover:13.3f} {ground:16.3f} {n_ent:13.2f} {dt:7.2f}")
    print("command: python bench.py selection" + (" --quick" if args.quick else ""))


# ---------------------------------------------------------------- eval (eval.py)

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
        tokens = [f"w{k % 7}" for k in range(24)]      # few distinct words: names repeat, as in tweets
        g, p = [], []
        for start in sorted(rng.sample(range(0, 24, 3), rng.randint(0, 4))):   # ~2 entities, 40 % grounded
            e = Entity(start, start + rng.randint(1, 2), rng.choice(types),
                       [box() for _ in range(rng.choice([1, 1, 2]))] if rng.random() < 0.4 else [])
            g.append(e)
            u = rng.random()     # the prediction: 70 % right, then a wrong type, a moved box, a miss
            if u < 0.7:
                p.append(Entity(e.start, e.end, e.type, list(e.boxes)))
            elif u < 0.8:
                p.append(Entity(e.start, e.end, rng.choice(types), list(e.boxes)))
            elif u < 0.9:
                p.append(Entity(e.start, e.end, e.type, [Box(b.x1 + 30, b.y1 + 30, b.x2 + 30, b.y2 + 30)
                                                         for b in e.boxes] or [box()]))
        if rng.random() < 0.2:   # a spurious entity (it may duplicate a right one)
            p.append(Entity(21, 22, rng.choice(types), [box()] if rng.random() < 0.5 else []))
        gold.append(Sample(str(i), tokens, None, g))
        pred.append(Sample(str(i), tokens, None, p))
    n_ents = sum(len(s.entities) for s in gold)
    print(f"eval.py scoring speed: {n:,} synthetic samples, {n_ents:,} gold entities "
          f"({sum(1 for s in gold for e in s.entities if e.boxes):,} grounded), best of 3 runs")
    print(f"{'match':<7}{'seconds':>9}{'samples/s':>12}{'GMNER F1':>10}{'MNER F1':>9}{'EEG F1':>8}")
    for match in ("span", "name"):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = evaluate(gold, pred, match)
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(f"{match:<7}{best:>9.3f}{n / best:>12,.0f}{r['gmner']['f1']:>10.3f}{r['mner']['f1']:>9.3f}"
              f"{r['eeg']['f1']:>8.3f}")
    print("command: python bench.py eval")


def bench_labels(args) -> None:
    import bench_labels
    bench_labels.bench_labels(args)


def bench_speed(args) -> None:
    import bench_speed
    bench_speed.bench_speed(args)


def bench_memory(args) -> None:
    """In its own file: bench_memory.py."""
    import bench_memory
    bench_memory.bench_memory(args)


def bench_gmner(args) -> None:
    """In its own file: bench_gmner.py."""
    import bench_gmner
    bench_gmner.bench_gmner(args)


def bench_synth(args) -> None:
    import bench_synth       # its own file: it starts a real server and trains the tagger
    bench_synth.main(args)


SECTIONS = {"client": bench_client, "tagger": bench_tagger, "labels": bench_labels, "speed": bench_speed,
            "uncertainty": bench_uncertainty, "selection": bench_selection, "eval": bench_eval,
            "memory": bench_memory, "gmner": bench_gmner, "synth": bench_synth}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=list(SECTIONS), help="which measurement to run")
    ap.add_argument("--epochs", type=int, default=None, help="tagger/uncertainty: training epochs (default: the section's own)")
    ap.add_argument("--synth-seeds", type=int, default=0,
                    help="synth: stop after this many seeds (0 = as many as 15 minutes allow; cached answers are free)")
    ap.add_argument("--quick", action="store_true", help="smaller data for a fast look (numbers then not comparable)")
    ap.add_argument("--only", default="", help="labels: settings, uncertainty: ccks and/or twitter; comma-separated (default: all)")
    ap.add_argument("--seeds", default="0,1,2", help="labels: comma-separated seeds")
    ap.add_argument("--mc-passes", type=int, default=None, help="uncertainty: MC dropout passes (0 skips those rows)")
    args = ap.parse_args()
    SECTIONS[args.section](args)
    sys.exit(0)
