"""Refinement stage of ReFineG: the tagger keeps what it is sure of, the MLLM judges the rest.

The small tagger (tagger.py) predicts entities with the CRF marginals P(tag_t = k | text).
From them every predicted entity gets an uncertainty in [0, 1] (`Entity.score`); the
entities above a threshold tau go, with the image and the text, to a multimodal LLM that
keeps, re-spans, re-types or rejects each of them. Confident entities are never touched,
so the MLLM's own idea of the domain cannot overwrite them ("domain knowledge conflict"),
and only samples with an uncertain entity cost a call (the authors' released code sends
every sample with an entity, with four images each).

Inputs: predicted Samples (entities from Viterbi, `.marginals` (T, K) in `tags` order), the
Dataset (types and their descriptions), an llm.Client. Outputs: new Samples whose entities
say where they came from (`source` = "tagger" | "mllm"), and a dict of counts.

    python bench.py uncertainty     # AUROC and risk-coverage of the uncertainty, CCKS + Twitter-GMNER

Left out on purpose: adding missed entities is off by default (`allow_add`); one image per
call (not four); no calibration of the marginals (routing only needs their ranking); no
pairwise CRF marginals (the exact probability of a whole span), since token marginals
already rank entities well and are all tagger.predict returns.
"""

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from data import Dataset, Entity, Sample, find_name, spans_to_tags
from eval import prf
from images import image_part
from llm import Client, LLMError, text_part

ACTIONS = ["keep", "change_span", "change_type", "reject"]


@dataclass
class UncertaintyConfig:
    method: str = "marginal"            # marginal (CRF, one pass) | mc_dropout (T x slower, no better in bench.py)
    tau: float | None = None            # delegate entities with score > tau; None = choose_threshold picks it
    target_rate: float | None = 0.2     # with tau None: share of entities to delegate (a call budget; no labels needed)
    target_gain: float = 0.9            # with target_rate None too: fewest delegations reaching this share of the
                                        # F1 gain a perfect corrector of every entity brings on labelled dev data
    mc_passes: int = 10                 # T dropout passes for mc_dropout (passed to tagger.predict by the caller)
    allow_add: bool = False             # may the MLLM add missed entities? off: adding is where domain conflict enters
    missed_tau: float = 0.5             # with allow_add: also route a sample whose missed-entity score exceeds this
    max_side: int = 1000                # longest image side sent to the MLLM, pixels
    max_reasoning: int = 1500           # schema bound on the reasoning field, characters (keeps answers short)


# ---------------------------------------------------------------- uncertainty from the marginals

def entity_uncertainty(marginals: np.ndarray, tags: list[str], e: Entity) -> tuple[float, float]:
    """(span uncertainty, type uncertainty) of one predicted entity from token marginals (T, K).

    Span: 1 - the mean, over the span's tokens, of the probability of the predicted ROLE
    (B/I/E/S summed over types), plus one position after the span whose predicted role is
    "does not continue" (in BIO a too-short entity is invisible inside its own span).
    Type: 1 - the mean over the span's tokens of the probability mass of the predicted type.
    """
    scheme = "BIOES" if any(t[:2] in ("E-", "S-") for t in tags) else "BIO"
    n = e.end - e.start
    pred = spans_to_tags(n, [Entity(0, n, e.type)], scheme)
    role = np.array([t[0] for t in tags])                   # (K,) B I E S O
    typ = np.array([t[2:] for t in tags])                   # (K,) type, "" for O
    p_role = [marginals[e.start + i, role == r[0]].sum() for i, r in enumerate(pred)]
    if e.end < len(marginals):
        p_role.append(1.0 - marginals[e.end, (role == "I") | (role == "E")].sum())
    u_span = 1.0 - float(np.mean(p_role))
    u_type = 1.0 - float(marginals[e.start:e.end, typ == e.type].sum(axis=1).mean())
    return min(max(u_span, 0.0), 1.0), min(max(u_type, 0.0), 1.0)


def span_entropy(marginals: np.ndarray, e: Entity) -> float:
    """Mean over the span's tokens of the normalised entropy H(p_t) / log K (UnCo's MC-dropout measure)."""
    p = np.clip(marginals[e.start:e.end], 1e-12, 1.0)      # (L, K)
    h = -(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])  # (L,)
    return float(np.clip(h.mean(), 0.0, 1.0))


def score(samples: list[Sample], tags: list[str], config: UncertaintyConfig = UncertaintyConfig()) -> None:
    """Set every predicted entity's `score` (uncertainty in [0, 1]) from `sample.marginals`.

    marginal: max(span, type uncertainty). An entity is wrong when its span is wrong OR its
    type is wrong; the max flags either doubt at full strength, where a mean would let a sure
    span hide an unsure type; the two doubts are also the two corrections the MLLM can make.
    mc_dropout: the caller ran tagger.predict(..., mc_passes=T), so the marginals are averaged
    over T dropout passes; the score is their normalised entropy over the span.
    """
    if config.method not in ("marginal", "mc_dropout"):
        raise ValueError(f"UncertaintyConfig.method: expected 'marginal' or 'mc_dropout', got {config.method!r}")
    for s in samples:
        if not s.entities:
            continue
        if s.marginals is None or s.marginals.shape != (len(s.tokens), len(tags)):
            got = None if s.marginals is None else s.marginals.shape
            raise ValueError(f"sample {s.id}: expected marginals of shape {(len(s.tokens), len(tags))}, got {got}")
        for e in s.entities:
            if config.method == "marginal":
                e.score = max(entity_uncertainty(s.marginals, tags, e))
            else:
                e.score = span_entropy(s.marginals, e)


def missed_entity_score(sample: Sample, tags: list[str]) -> float:
    """max over tokens outside every predicted entity of 1 - P(O): how likely the tagger missed one."""
    outside = np.ones(len(sample.tokens), dtype=bool)
    for e in sample.entities:
        outside[e.start:e.end] = False
    if sample.marginals is None or not outside.any():
        return 0.0
    return float((1.0 - sample.marginals[outside, tags.index("O")]).max())


# ---------------------------------------------------------------- threshold and routing

def wrong_flags(pred: list[Sample], gold: list[Sample]) -> list[bool]:
    """Per predicted entity (flat, sample order): not an exact (span, type) match of a gold entity."""
    _check_aligned(pred, gold)
    return [(e.start, e.end, e.type) not in {(g.start, g.end, g.type) for g in gs.entities}
            for ps, gs in zip(pred, gold) for e in ps.entities]


def corrector_f1_curve(pred: list[Sample], gold: list[Sample], order: list[int]) -> list[float]:
    """MNER F1 after a perfect corrector fixed the first k delegated entities, for k = 0..len(order).

    `order` indexes the flat predicted entities. A wrong delegated entity is replaced by the
    gold entity it overlaps most (if that one is still free), else removed; a right one stays.
    """
    _check_aligned(pred, gold)
    flat = [(i, e) for i, s in enumerate(pred) for e in s.entities]
    wrong = wrong_flags(pred, gold)
    tp = len(wrong) - sum(wrong)
    fp, fn = sum(wrong), sum(len(g.entities) for g in gold) - tp
    used = set()                                             # gold entities already given to a replacement
    curve = [prf({"tp": tp, "fp": fp, "fn": fn})["f1"]]
    for j in order:
        i, e = flat[j]
        if wrong[j]:
            fp -= 1
            over = [(min(e.end, g.end) - max(e.start, g.start), k) for k, g in enumerate(gold[i].entities)
                    if min(e.end, g.end) > max(e.start, g.start) and (i, k) not in used]
            if over:
                used.add((i, max(over)[1]))
                tp, fn = tp + 1, fn - 1
        curve.append(prf({"tp": tp, "fp": fp, "fn": fn})["f1"])
    return curve


def choose_threshold(pred: list[Sample], gold: list[Sample] | None,
                     config: UncertaintyConfig = UncertaintyConfig()) -> tuple[float, str]:
    """tau and a sentence saying how it was chosen. Entities with score > tau are delegated."""
    scores = _scores(pred)
    if config.tau is not None:
        return config.tau, f"tau = {config.tau} fixed by the configuration"
    if not scores:
        return 1.0, "no predicted entity: nothing to delegate"
    desc = sorted(scores, reverse=True)
    if config.target_rate is not None:
        if not 0.0 <= config.target_rate <= 1.0:
            raise ValueError(f"UncertaintyConfig.target_rate: expected a share in [0, 1], got {config.target_rate}")
        tau = _tau_for(desc, round(config.target_rate * len(desc)))
        rate = sum(x > tau for x in desc) / len(desc)
        return tau, (f"tau = {tau:.4f} delegates {rate:.1%} of {len(desc)} predicted entities "
                     f"(target {config.target_rate:.0%}; no labels used)")
    if gold is None:
        raise ValueError("choose_threshold: with tau and target_rate both None, labelled dev samples (gold) are "
                         "needed; call it on dev predictions and set config.tau")
    # A perfect corrector's F1 only grows with delegation, so its maximum delegates everything:
    # take the fewest delegations that reach `target_gain` of that maximal gain instead.
    curve = corrector_f1_curve(pred, gold, list(np.argsort([-x for x in scores], kind="stable")))
    goal = curve[0] + config.target_gain * (curve[-1] - curve[0])
    k = next(k for k, f in enumerate(curve) if f >= goal - 1e-12)
    tau = _tau_for(desc, k)
    return tau, (f"tau = {tau:.4f}: fewest delegations ({k}/{len(desc)}) reaching {config.target_gain:.0%} of the F1 "
                 f"gain of a perfect corrector on {len(gold)} labelled samples (upper bound: F1 {curve[0]:.3f} -> "
                 f"{curve[k]:.3f}; all delegated {curve[-1]:.3f})")


def route(samples: list[Sample], tau: float) -> list[list[Entity]]:
    """Per sample, the entities to delegate: those with uncertainty strictly above tau."""
    _scores(samples)
    return [[e for e in s.entities if e.score > tau] for s in samples]


# ---------------------------------------------------------------- the refinement call

SYSTEM = ("You check named entities in an image-text pair. A small tagger labelled the text; "
          "you judge only the entities it is unsure of, using the text and the image.")


def build_request(sample: Sample, uncertain: list[Entity], data: Dataset, config: UncertaintyConfig,
                  image: dict | None) -> dict:
    """The chat() kwargs of one refinement call: messages and a bounded JSON schema."""
    sure = [e for e in sample.entities if all(e is not u for u in uncertain)]
    types = data.type_text or "Entity types: " + ", ".join(data.types)
    lines = [types, "", f"Text: {sample.text}", "",
             "Entities the tagger is sure of (context only, do not judge them):"]
    lines += [f'- "{sample.name(e)}" ({e.type})' for e in sure] or ["- none"]
    lines += ["", "Entities to check:"]
    lines += [f'[{i}] "{sample.name(e)}" ({e.type})' for i, e in enumerate(uncertain, 1)] or ["- none"]
    lines += ["", "Think step by step for each entity to check:",
              "1. Is it a specific named entity of one of the types above (not a generic word)? If not: reject.",
              "2. Does the span cover the whole name and nothing more? If not: change_span, with the corrected "
              "span copied word for word from the text; it must overlap the old span.",
              "3. Is the type right, given the text and the image? If not: change_type.",
              "Otherwise: keep.",
              'Write your reasoning first, briefly. Then one decision per entity to check: "span" is the '
              'entity\'s text after your decision and "type" its type after your decision.']
    if config.allow_add:
        lines.append('If a specific named entity of these types is in neither list, put it in "added".')
    if image is None:
        lines.append("There is no image for this text: judge from the text alone.")
    content = ([image] if image is not None else []) + [text_part("\n".join(lines))]
    n = len(uncertain)
    decision = {"type": "object", "additionalProperties": False, "required": ["id", "action", "span", "type"],
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": max(n, 1)},
                               "action": {"type": "string", "enum": ACTIONS},
                               "span": {"type": "string", "maxLength": 200},
                               "type": {"type": "string", "enum": list(data.types)}}}
    props = {"reasoning": {"type": "string", "maxLength": config.max_reasoning},
             "decisions": {"type": "array", "items": decision, "minItems": n, "maxItems": n}}
    if config.allow_add:
        added = {k: v for k, v in decision["properties"].items() if k in ("span", "type")}
        props["added"] = {"type": "array", "maxItems": 5, "items": {
            "type": "object", "additionalProperties": False, "required": ["span", "type"], "properties": added}}
    schema = {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
            "schema": schema}


def merge(sample: Sample, uncertain: list[Entity], answer: object, types: list[str],
          allow_add: bool = False) -> tuple[Sample, Counter]:
    """Apply one answer (parsed JSON, or the call's LLMError) to a sample.

    Confident entities are untouched. A delegated entity whose decision is missing or invalid
    keeps the tagger's prediction, counted under `missing` or `invalid_<reason>`, and in
    `kept_by_fallback`. A changed entity gets source "mllm"; a kept one stays "tagger".
    """
    # The schema (llm.Client enforces it) guarantees a dict of decisions with an int id in 1..n, an action in ACTIONS,
    # a span string, a known type (additions too): those checks guard direct callers. Not: distinct ids, valid spans.
    c, decided = Counter(), {}                                  # entity number (1..n) -> its first decision
    if isinstance(answer, LLMError):
        c["failed_call"] += 1
    elif not isinstance(answer, dict) or not isinstance(answer.get("decisions"), list):
        c["bad_answer"] += 1
    else:
        for d in answer["decisions"]:
            i = d.get("id") if isinstance(d, dict) else None
            if type(i) is not int or not 1 <= i <= len(uncertain):
                c["unknown_entity"] += 1
            elif i in decided:
                c["duplicate_decision"] += 1
            else:
                decided[i] = d
    final: list[Entity | None] = [replace(e, boxes=list(e.boxes)) for e in sample.entities]   # None: rejected
    taken = np.zeros(len(sample.tokens), dtype=bool)            # tokens covered by a final entity
    for e in sample.entities:
        taken[e.start:e.end] = True
    # The decisions as (index in `final`, the one key; entity; decision or None) in the order they apply:
    # rejections first (they free tokens), span changes last (checked against the tokens still free).
    steps = [(next(k for k, x in enumerate(sample.entities) if x is e), e, decided.get(i))
             for i, e in enumerate(uncertain, 1)]
    act = [d.get("action") if d else None for _, _, d in steps]
    todo = ([x for x, a in zip(steps, act) if a == "reject"]
            + [x for x, a in zip(steps, act) if a not in ("reject", "change_span")]
            + [x for x, a in zip(steps, act) if a == "change_span"])
    for k, e, d in todo:
        taken[e.start:e.end] = False
        new, outcome = _decide(sample.tokens, e, d, types, taken)
        c[outcome] += 1
        c["kept_by_fallback"] += outcome == "missing" or outcome.startswith("invalid_")
        final[k] = new
        if new is not None:
            taken[new.start:new.end] = True
    added = answer.get("added") if allow_add and isinstance(answer, dict) else None
    for a in added if isinstance(added, list) else []:
        a = a if isinstance(a, dict) else {}
        span, why = _find_span(sample.tokens, a.get("span"), None, taken)
        if a.get("type") not in types:
            c["invalid_added_unknown_type"] += 1
        elif span is None:
            c[f"invalid_added_{why}"] += 1
        else:
            taken[span[0]:span[1]] = True
            final.append(Entity(span[0], span[1], a["type"], source="mllm"))
            c["added"] += 1
    return replace(sample, entities=sorted((e for e in final if e is not None), key=lambda e: e.start)), c


def _decide(tokens: list[str], e: Entity, d: dict | None, types: list[str],
            taken: np.ndarray) -> tuple[Entity | None, str]:
    """One delegated entity after its decision (None = rejected) and the outcome's name."""
    kept = replace(e, boxes=list(e.boxes))
    if d is None:
        return kept, "missing"
    action, new_type = d.get("action"), d.get("type")
    if action not in ACTIONS:
        return kept, "invalid_unknown_action"
    if action == "keep":
        return kept, "keep"
    if action == "reject":
        return None, "reject"
    if new_type not in types:
        return kept, "invalid_unknown_type"
    if action == "change_type":
        return (replace(e, type=new_type, source="mllm"), "change_type") if new_type != e.type else (kept, "keep")
    span, why = _find_span(tokens, d.get("span"), e, taken)
    if span is None:
        return kept, f"invalid_{why}"
    if span == (e.start, e.end) and new_type == e.type:
        return kept, "keep"
    return replace(e, start=span[0], end=span[1], type=new_type, source="mllm"), "change_span"


def refine(samples: list[Sample], data: Dataset, client: Client, config: UncertaintyConfig = UncertaintyConfig(),
           *, tau: float | None = None, tags: list[str] | None = None) -> tuple[list[Sample], dict]:
    """Delegate the entities of scored samples above `tau` to the MLLM (one call per routed sample).

    `tau`: refineg.py passes the one it chose; None chooses it here from `config` (no labels).
    `tags` (the tagger's tag names) is needed only to route whole samples by their
    missed-entity score, which is used only when `config.allow_add`.
    """
    tau, how = (tau, "passed by the caller") if tau is not None else choose_threshold(samples, None, config)
    delegated = route(samples, tau)
    counts = Counter()
    image_errors: dict[str, str] = {}               # sample id -> why its image cannot be used

    def request(s: Sample, unc: list[Entity]) -> dict:
        """Built in map_chat's workers, so only the requests in flight hold their base64 image."""
        image = None
        if s.image:
            try:
                image = image_part(s.image, config.max_side)[0]
            except OSError as err:                  # unreadable image (images.ImageError): ask on the text alone
                image_errors[s.id] = str(err)
        return build_request(s, unc, data, config, image)

    requests, where = [], []
    for i, (s, unc) in enumerate(zip(samples, delegated)):
        missed = config.allow_add and tags is not None and missed_entity_score(s, tags) > config.missed_tau
        if not unc and not missed:
            continue
        counts["missed_routed"] += bool(missed and not unc)
        requests.append(lambda s=s, unc=unc: request(s, unc))
        where.append(i)
    replies = client.map_chat(requests, desc="refine") if requests else []
    for sid, why in image_errors.items():
        print(f"uncertainty: sample {sid}: {why}; text-only call")
    counts["image_errors"] += len(image_errors)
    counts["text_only_calls"] += sum(not samples[i].image for i in where) + len(image_errors)
    # Unrouted samples are copied too, so the caller's predictions are never mutated.
    out = [replace(s, entities=[replace(e, boxes=list(e.boxes)) for e in s.entities]) for s in samples]
    for i, reply in zip(where, replies):
        answer = reply if isinstance(reply, LLMError) else reply.content
        out[i], c = merge(samples[i], delegated[i], answer, data.types, config.allow_add)
        counts.update(c)
    summary = {"tau": tau, "tau_how": how, "samples": len(samples), "entities": sum(len(s.entities) for s in samples),
               "delegated": sum(map(len, delegated)), "calls": len(requests),
               "calls_per_sample": len(requests) / max(len(samples), 1),
               "authors_calls": sum(1 for s in samples if s.entities), **dict(counts)}
    return out, summary


# ---------------------------------------------------------------- helpers

def _find_span(tokens: list[str], text: object, old: Entity | None,
               taken: np.ndarray) -> tuple[tuple[int, int] | None, str]:
    """The token span of `text` (overlapping `old` when given, not overlapping `taken`), or a reason."""
    if not isinstance(text, str) or not text.strip():
        return None, "span_not_in_text"
    hits = set(find_name(tokens, text))     # whitespace-insensitive: "Jay - Z" and "Jay-Z" are one name
    if not hits:
        return None, "span_not_in_text"
    if old is not None:
        hits = {h for h in hits if min(h[1], old.end) > max(h[0], old.start)}
        if not hits:
            return None, "span_not_overlapping"
        hits = {max(hits, key=lambda h: (min(h[1], old.end) - max(h[0], old.start), -h[0]))}
    free = sorted(h for h in hits if not taken[h[0]:h[1]].any())
    return (free[0], "") if free else (None, "overlaps_other")


def _tau_for(desc: list[float], k: int) -> float:
    """A threshold with (at most, under ties) the k largest of the descending scores strictly above it."""
    upper = desc[k - 1] if k > 0 else 1.0
    lower = desc[k] if k < len(desc) else -1e-9
    return (upper + lower) / 2


def _scores(samples: list[Sample]) -> list[float]:
    scores = [e.score for s in samples for e in s.entities]
    if any(x is None for x in scores):
        raise ValueError("an entity has no uncertainty (score is None): call uncertainty.score() first")
    return scores


def _check_aligned(pred: list[Sample], gold: list[Sample]) -> None:
    if len(pred) != len(gold) or any(p.id != g.id for p, g in zip(pred, gold)):
        raise ValueError(f"expected predictions and gold for the same samples in the same order, "
                         f"got {len(pred)} and {len(gold)} samples")
