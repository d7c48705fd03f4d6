"""The tagger (tagger.py) side by side with the practitioner's peer, AutoModelForTokenClassification.

    python -m bench tagger [--quick] [--epochs N]

CCKS and Twitter-GMNER 10 %, each setting in its own process (so its peak memory is its own): span
P/R/F1, training and prediction speed, peak memory, and the ratios ours/peer. Real data is read from
../shared/data/ (never shipped); a dataset that is absent is skipped with a message.
"""

import math
import sys
from pathlib import Path

from bench import CCKS, TWITTER, have


def _tagger_data(name: str, quick: bool) -> tuple[list, list | None, list, list[str], str]:
    """(train, dev, test, types, note) of one setting; dev None = keep the last epoch.

    CCKS (README protocol): test = gold 0-99; train = gold 100-399 (+ synthetic sentences,
    minus those containing a lower-cased entity string found in the test gold but in no
    training gold). No dev set: the pipeline trains without one, so the last epoch is kept.
    Twitter: train on lowres/10GMNER/train.txt (or the full train.txt), select the epoch on
    lowres/10GMNER/dev.txt, test on the full dev.txt (1,500 tweets, a superset of that dev).
    """
    from formats.ccks import read_types
    from formats.twitter import TWITTER_TYPES, read_conll

    if name.startswith("ccks"):
        gold = read_conll(CCKS / "gold.conll").samples
        test, seeds = gold[:100], gold[100:]
        types = read_types(CCKS / "types.txt")[0]
        if name == "ccks_gold":
            return seeds, None, test, types, "gold 100-399"

        def names(samples):
            return {tuple(t.lower() for t in s.tokens[e.start : e.end]) for s in samples for e in s.entities}

        leak = names(test) - names(seeds)
        synth = read_conll(CCKS / "synthetic.conll").samples
        keep = []
        for s in synth:
            low = [t.lower() for t in s.tokens]
            if not any(low[i : i + len(n)] == list(n) for n in leak for i in range(len(low) - len(n) + 1)):
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
    from encoding import load_encoder
    from tagger import span_f1

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tok, _ = load_encoder(cfg.encoder)
    labels = tg.tag_names(types, "BIO")
    model = AutoModelForTokenClassification.from_pretrained(
        tok.name_or_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={t: i for i, t in enumerate(labels)},
    )

    def features(samples):
        enc = tok(
            [s.tokens for s in samples], is_split_into_words=True, truncation=True, max_length=cfg.max_length
        )
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
        return (
            ids,
            (ids != tok.pad_token_id).long() if tok.pad_token_id is not None else torch.ones_like(ids),
            lab,
        )

    def predict(samples):
        model.eval()
        feats, out = features(samples), [None] * len(samples)
        with torch.inference_mode():
            for b in tg.length_batches([len(f[0]) for f in feats], 64):
                ids, attn, _ = pad([feats[i] for i in b])
                best = model(input_ids=ids, attention_mask=attn).logits.argmax(-1).tolist()
                for r, i in enumerate(b):
                    tags = ["O"] * len(samples[i].tokens)  # words cut off by truncation stay O
                    for j, w in zip(feats[i][2], feats[i][3]):
                        tags[w] = labels[best[r][j]]
                    ents = [Entity(a, e, t, source="tagger") for a, e, t in tags_to_spans(tags)]
                    out[i] = Sample(samples[i].id, samples[i].tokens, samples[i].image, ents)
        return out

    feats = features(train)
    per_epoch = min(cfg.epoch_size or len(train), len(train))
    total = cfg.epochs * math.ceil(per_epoch / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr_encoder)
    sched = get_linear_schedule_with_warmup(opt, int(tg.WARMUP * total), total)  # the same as tagger.py's
    history, best_f1, best_state = [], -1.0, None
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        pick = (
            rng.permutation(len(train))[:per_epoch].tolist()
            if per_epoch < len(train)
            else list(range(len(train)))
        )
        for b in tg.length_batches([len(feats[i][0]) for i in pick], cfg.batch_size, rng):
            ids, attn, lab = pad([feats[pick[i]] for i in b])
            loss = model(input_ids=ids, attention_mask=attn, labels=lab).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tg.MAX_GRAD_NORM)
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
    """One setting in a fresh process (so its peak memory is its own): spec JSON on stdin, result JSON on
    stdout."""
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
        model, history = tg.train_tagger(train, types, cfg, dev)

        def predict(samples):
            return tg.predict(model, samples, batch_size=64)
    else:
        history, predict = _tagger_peer(train, dev, types, cfg)
    m = evaluate(test, predict(test))["mner"]
    reps = test * (
        1 if spec["quick"] else math.ceil(1000 / len(test))
    )  # at least 1,000 sentences for a stable speed
    t0 = time.perf_counter()
    predict(reps)
    infer = len(reps) / (time.perf_counter() - t0)
    status = Path("/proc/self/status").read_text()
    peak = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 1024
    best = max(history, key=lambda h: h.get("dev_f1", 0.0))["epoch"] if dev else len(history)
    print(
        json.dumps(
            {
                "p": m["p"],
                "r": m["r"],
                "f1": m["f1"],
                "note": note,
                "train_n": len(train),
                "epoch_size": history[0]["sentences"],
                "epochs": len(history),
                "best_epoch": best,
                "train_sps": sum(h["sentences"] for h in history) / sum(h["seconds"] for h in history),
                "infer_sps": infer,
                "peak_mb": peak,
            }
        )
    )


def _tagger_spawn(spec: dict) -> dict:
    import json
    import subprocess

    cmd = [sys.executable, "-c", "from bench import tagger; tagger._tagger_child()"]
    done = subprocess.run(
        cmd, input=json.dumps(spec), capture_output=True, text=True, cwd=Path(__file__).parent.parent
    )
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
        settings += [
            ("CCKS", "ours, gold+synthetic", "ours", "ccks", default),
            ("CCKS", "ours, gold+synth, no shape", "ours", "ccks", {**default, "shape_features": False}),
            ("CCKS", "peer, gold+synthetic", "peer", "ccks", default),
            ("CCKS", "ours, gold only", "ours", "ccks_gold", gold),
            ("CCKS", "peer, gold only", "peer", "ccks_gold", gold),
        ]
    if have(TWITTER):
        settings += [
            ("Twitter", "ours, 10%", "ours", "twitter", default),
            (
                "Twitter",
                "ours, 10%, no shape features",
                "ours",
                "twitter",
                {**default, "shape_features": False},
            ),
            ("Twitter", "peer, 10%", "peer", "twitter", default),
            (
                "Twitter",
                "peer, full train (7,000)",
                "peer",
                "twitter_full",
                {"epochs": args.epochs or 3, "epoch_size": 0},
            ),
        ]
    if not settings:
        return
    if args.quick:
        settings = [(d, lab, m, data, {**c, "epochs": 1, "epoch_size": 0}) for d, lab, m, data, c in settings]
    rows = {}
    for dataset, label, model, data, config in settings:
        t0 = time.perf_counter()
        print(f"running {dataset}: {label} ...", file=sys.stderr, flush=True)
        spec = {
            "label": label,
            "model": model,
            "data": data,
            "quick": args.quick,
            "config": {"progress": False, **config},
        }
        rows[(dataset, label)] = r = _tagger_spawn(spec)
        print(f"  done in {time.perf_counter() - t0:.0f} s: F1 {r['f1']:.4f}", file=sys.stderr, flush=True)

    print(
        f"\nTagger: span P/R/F1 on the held-out test set; speed on this machine ({torch.get_num_threads()} "
        "torch "
        f"threads; the CPU is shared, so speeds are noisy); peak = VmHWM of the setting's own process."
    )
    print(
        f"{'data':<8}{'setting':<31}{'train data':<38}{'epochs':>8}{'P':>7}{'R':>7}{'F1':>7}"
        f"{'train/s':>9}{'infer/s':>9}{'peak MB':>9}"
    )
    for (dataset, label), r in rows.items():
        ep = f"{r['best_epoch']}/{r['epochs']}"
        print(
            f"{dataset:<8}{label:<31}{r['note']:<38}{ep:>8}{r['p']:>7.3f}{r['r']:>7.3f}{r['f1']:>7.3f}"
            f"{r['train_sps']:>9.1f}{r['infer_sps']:>9.1f}{r['peak_mb']:>9.0f}"
        )
    print(
        "epochs = kept/run (kept = best dev epoch; CCKS has no dev: last); train/s and infer/s in sentences/s"
    )
    print("\nratios ours/peer (same data):")
    for dataset, ours, peer in [
        ("CCKS", "ours, gold+synthetic", "peer, gold+synthetic"),
        ("CCKS", "ours, gold only", "peer, gold only"),
        ("Twitter", "ours, 10%", "peer, 10%"),
        ("Twitter", "ours, 10%", "peer, full train (7,000)"),
    ]:
        a, b = rows.get((dataset, ours)), rows.get((dataset, peer))
        if a and b and b["f1"] > 0:
            print(
                f"  {dataset:<8}{ours} / {peer}: F1 {a['f1'] / b['f1']:.3f}, "
                f"train speed {a['train_sps'] / b['train_sps']:.2f}, "
                f"inference speed {a['infer_sps'] / b['infer_sps']:.2f}"
            )
    print(
        "command: python -m bench tagger"
        + (" --quick" if args.quick else "")
        + (f" --epochs {args.epochs}" if args.epochs else "")
    )
