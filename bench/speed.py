"""CPU prediction speed of the tagger: ours (float and int8) against the softmax peer, and a profile.

    python -m bench speed

The tagger is `python -m bench uncertainty`'s Twitter-GMNER 10 % tagger (trained once, cached under
/tmp); the test set is the full dev.txt (1,500 tweets). Ours = tagger.predict: Viterbi entities AND
forward-backward marginals.
The peer = AutoModelForTokenClassification on the same encoder weights, same length-sorted
batches of 64, argmax only (its head is untrained: speed does not depend on the weights).
Settings are measured in turns, two rounds, best round kept: the machine is shared, and
the best round is the one least disturbed by other work. Ratios are within this one run.

The profile wraps the pieces of tagger.predict with timers (no code in tagger.py changes):
tokenising + windowing (encode), padding (collate), the encoder, the CRF's Viterbi and
forward-backward; the rest of predict (shape features, emission layer, Python) is the remainder.
"""

import copy
import time
import warnings
from dataclasses import replace

import torch


def _peer(tg_model, types: list[str], int8: bool = False):
    """A predict function of the softmax peer on the same encoder (`python -m bench tagger`'s peer,
    inference part)."""
    from transformers import AutoModelForTokenClassification

    import tagger as tg

    tok = tg_model.tokenizer
    config = {k: v for k, v in tg_model.encoder.config.to_dict().items() if k not in ("id2label", "label2id")}
    model = AutoModelForTokenClassification.from_config(
        tg_model.encoder.config.__class__(**{**config, "num_labels": 1 + 2 * len(types)})
    )  # BIO tags
    weights = {
        k: v for k, v in tg_model.encoder.state_dict().items() if not k.startswith("pooler.")
    }  # no pooler
    model.base_model.load_state_dict(weights)
    model.eval()
    if int8:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, tg.INT8, dtype=torch.qint8)  # as ours

    def predict(samples):
        enc = tok(
            [s.tokens for s in samples],
            is_split_into_words=True,
            truncation=True,
            max_length=tg_model.config.max_length,
        )
        out = [None] * len(samples)
        with torch.inference_mode():
            for b in tg.length_batches([len(x) for x in enc["input_ids"]], 64):
                width = max(len(enc["input_ids"][i]) for i in b)
                ids = torch.tensor(
                    [enc["input_ids"][i] + [tok.pad_token_id] * (width - len(enc["input_ids"][i])) for i in b]
                )
                best = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits.argmax(-1)
                for r, i in enumerate(b):
                    wids = enc.word_ids(i)
                    out[i] = [
                        best[r, j].item()
                        for j, w in enumerate(wids)
                        if w is not None and (j == 0 or wids[j - 1] != w)
                    ]
        return out

    return predict


def _profile(model, samples) -> dict:
    """Seconds per piece of one tagger.predict call (timers wrapped around the pieces, then removed)."""
    import tagger as tg

    spent = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
            return out

        return wrapper

    saved = tg.encode, tg.collate
    tg.encode, tg.collate = (
        timed("tokenise + windows (encode)", tg.encode),
        timed("pad (collate)", tg.collate),
    )
    model.encoder.forward = timed("encoder", model.encoder.forward)
    model.crf.viterbi = timed("CRF Viterbi", model.crf.viterbi)
    model.crf.marginals = timed("CRF forward-backward", model.crf.marginals)
    try:
        t0 = time.perf_counter()
        tg.predict(model, samples)
        total = time.perf_counter() - t0
    finally:
        tg.encode, tg.collate = saved
        for m, name in ((model.encoder, "forward"), (model.crf, "viterbi"), (model.crf, "marginals")):
            del m.__dict__[name]
    spent["rest (shapes, emission layer, Python)"] = total - sum(spent.values())
    return {"total": total, **spent}


def bench_speed(args) -> None:
    import bench
    import tagger as tg
    from bench import uncertainty as bench_uncertainty
    from eval import evaluate

    if not bench.have(bench.TWITTER):
        return
    model, _, test = bench_uncertainty._unc_tagger("twitter", args)
    model.config = replace(model.config, int8=False)
    int8 = copy.deepcopy(model)
    tg.quantize(int8)
    reps, rounds = test, 1 if args.quick else 2
    peer, peer8 = _peer(model, model.types), _peer(model, model.types, int8=True)
    runs = {
        "ours, float32 (Viterbi + marginals)": lambda: tg.predict(model, reps),
        "ours, int8 encoder (Viterbi + marginals)": lambda: tg.predict(int8, reps),
        "peer, float32 (argmax)": lambda: peer(reps),
        "peer, int8 (argmax)": lambda: peer8(reps),
    }
    best = {k: float("inf") for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    f1 = {
        name: evaluate(test, tg.predict(m, test))["mner"]["f1"]
        for name, m in (
            ("ours, float32 (Viterbi + marginals)", model),
            ("ours, int8 encoder (Viterbi + marginals)", int8),
        )
    }
    print(
        f"\nprediction speed, {len(reps)} sentences (Twitter-GMNER dev x{len(reps) // len(test)}), "
        f"{torch.get_num_threads()} torch threads, best of {rounds} rounds"
    )
    peer_sps = len(reps) / best["peer, float32 (argmax)"]
    print(f"{'setting':<44}{'seconds':>9}{'sent/s':>9}{'vs peer':>9}{'MNER F1':>9}")
    for name, sec in best.items():
        f = f"{f1[name]:.4f}" if name in f1 else "-"
        print(f"{name:<44}{sec:>9.2f}{len(reps) / sec:>9.1f}{len(reps) / sec / peer_sps:>9.2f}{f:>9}")
    for name, m in (("ours, float32", model), ("ours, int8 encoder", int8)):
        prof = _profile(m, reps)
        print(f"\nwhere {name} prediction time goes ({prof['total']:.2f} s):")
        for piece, sec in prof.items():
            if piece != "total":
                print(f"  {piece:<40}{sec:>7.2f} s {sec / prof['total']:>6.1%}")
    print("command: python -m bench speed" + (" --quick" if args.quick else ""))
