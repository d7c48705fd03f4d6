"""The scorer of ReFineG: GMNER, MNER and EEG micro precision / recall / F1, the paper's metrics.

Three tasks, each a set of predicted items matched one to one against gold items:
- MNER:  (span, type)          the text part only;
- EEG:   (span, region)        entity extraction and grounding, type ignored;
- GMNER: (span, type, region)  everything.

Region rule (the GMNER benchmark's, Yu et al. 2023): a predicted entity's region is right when (a) the gold
entity is ungroundable and the prediction has no box, or (b) the gold entity has boxes and some predicted
box has IoU >= 0.5 with some gold box of that entity, so a prediction with several boxes is scored by its
best box. Each gold item is matched at most once (a maximum matching per sample): a duplicated prediction,
and a prediction on a sample with no gold entity, are false positives.

Identity of an entity ("span" above):
- `match="span"` (default): the token span [start, end); gold and prediction must carry the same tokens.
- `match="name"`: the surface string without whitespace (data.without_spaces: "F-35" and "F - 35" are one
  name), for data whose entities have no position, like CCKS's entity.json. Set semantics: a (name, type)
  occurring several times in a sample counts once, with the union of its boxes, in gold and prediction
  alike (so in this mode a duplicated prediction collapses instead of counting as FP).

    import eval; print(eval.evaluate(gold_samples, predicted_samples)["gmner"]["f1"])
    python -m app.score --gold examples/demo --pred examples/demo    # from files, as a table

Left out on purpose: reading files (formats/ and app/score.py do, so the scorer vendors with data.py alone),
partial-overlap credit, and macro averages.
"""

from collections import Counter, defaultdict

from data import Box, DataError, Sample, without_spaces

IOU_THRESHOLD = 0.5  # the GMNER benchmark's threshold; exactly 0.5 counts
TASKS = ("gmner", "mner", "eeg")
RATES = ("p", "r", "f1")  # prf's keys: the rates, then the counts they come from
COUNTS = ("tp", "fp", "fn")
USES = {"mner": (True, False), "eeg": (False, True), "gmner": (True, True)}  # task -> (type, region)

Item = tuple[object, str, list[Box]]  # (identity: span tuple or name string, type, boxes)


def region_ok(gold_boxes: list[Box], pred_boxes: list[Box], threshold: float = IOU_THRESHOLD) -> bool:
    """The region rule: both ungroundable, or the best pair of boxes overlaps by IoU >= threshold."""
    if not gold_boxes:
        return not pred_boxes
    return any(p.iou(g) >= threshold for p in pred_boxes for g in gold_boxes)


def items(sample: Sample, match: str) -> list[Item]:
    """The scored items of one sample under the identity rule `match`."""
    if match == "span":
        return [((e.start, e.end), e.type, e.boxes) for e in sample.entities]
    merged: dict[tuple[str, str], list[Box]] = {}
    for e in sample.entities:
        boxes = merged.setdefault((without_spaces(sample.name(e)), e.type), [])
        boxes.extend(b for b in e.boxes if b not in boxes)
    return [(name, typ, boxes) for (name, typ), boxes in merged.items()]


def max_matching(cands: list[list[int]], n_gold: int) -> list[int]:
    """Kuhn's augmenting paths: owner[i] = the prediction matched to gold i, or -1.

    Greedy matching would do when each identity has one gold item, but in name
    mode "Tiger" can be gold twice (aircraft and other), and the best pairing
    then depends on the order; the maximum matching does not.
    """
    owner = [-1] * n_gold

    def augment(j: int, seen: set) -> bool:
        for i in cands[j]:
            if i not in seen:
                seen.add(i)
                if owner[i] < 0 or augment(owner[i], seen):
                    owner[i] = j
                    return True
        return False

    for j, c in enumerate(cands):
        if c:
            augment(j, set())
    return owner


def prf(c: dict) -> dict:
    """Micro P/R/F1 of counts {"tp", "fp", "fn"} (0 where undefined), with the counts."""
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"p": p, "r": r, "f1": f1, "tp": c["tp"], "fp": c["fp"], "fn": c["fn"]}


def align(gold: list[Sample], pred: list[Sample], match: str) -> list[tuple[Sample, Sample | None]]:
    """Pairs (gold sample, its prediction or None); predicted ids unknown to gold are an error."""
    by_id = {}
    for s in pred:
        if s.id in by_id:
            raise DataError(f"prediction: sample id {s.id!r} occurs twice")
        by_id[s.id] = s
    gold_ids = {s.id for s in gold}
    unknown = [sid for sid in by_id if sid not in gold_ids]
    if unknown:
        raise DataError(f"prediction: {len(unknown)} sample ids are not in the gold data, e.g. {unknown[:5]}")
    pairs = []
    for g in gold:
        p = by_id.get(g.id)
        if match == "span" and p is not None and p.entities and p.tokens != g.tokens:
            raise DataError(
                f"sample {g.id!r}: predicted tokens differ from gold tokens; spans are token "
                f"offsets, so they need the same tokens (or use match='name')"
            )
        pairs.append((g, p))
    return pairs


def evaluate(gold: list[Sample], pred: list[Sample], match: str = "span", unplaced: list[tuple] = ()) -> dict:
    """Micro P/R/F1 of GMNER, MNER and EEG, with per-type rows: MNER and GMNER by the shared type; EEG
    ignores types when matching, so its rows count TP and FN under the gold type and FP under the predicted
    type. A gold sample missing from `pred` counts as an empty prediction. `unplaced`: predicted records that
    could not be placed in their text (a name not in it, a label outside the gold's types), (id, name, label,
    ...) as read_ccks_predictions returns them; each is a false positive of every task.

    Returns {"gmner"|"mner"|"eeg": {"p", "r", "f1", "tp", "fp", "fn", "per_type": {type: {...same...}}}}.
    """
    if match not in ("span", "name"):
        raise ValueError(f"expected match 'span' or 'name', got {match!r}")
    total = {t: Counter() for t in TASKS}  # {"tp", "fp", "fn"}: a missing count is 0
    per_type = {t: defaultdict(Counter) for t in TASKS}
    for g, p in align(gold, pred, match):
        gi = items(g, match)
        pi = items(p, match) if p is not None else []
        owners = matchings(gi, pi)
        for task in TASKS:
            owner = owners[task]
            matched = set(owner)
            for i, j in enumerate(owner):
                kind = "tp" if j >= 0 else "fn"
                total[task][kind] += 1
                per_type[task][gi[i][1]][kind] += 1
            for j, (_, typ, _) in enumerate(pi):
                if j not in matched:
                    total[task]["fp"] += 1
                    per_type[task][typ]["fp"] += 1
    for _, _, label, *_ in unplaced:
        for task in TASKS:
            total[task]["fp"] += 1
            per_type[task][label]["fp"] += 1
    return {
        t: {**prf(total[t]), "per_type": {k: prf(per_type[t][k]) for k in sorted(per_type[t])}} for t in TASKS
    }


def matchings(gi: list[Item], pi: list[Item]) -> dict[str, list[int]]:
    """The maximum matching of one sample's items per task: owner[i] = the predicted item matched to gold
    item i, or -1."""
    by_key = defaultdict(list)
    for i, (key, _, _) in enumerate(gi):
        by_key[key].append(i)
    # the pairs that share an identity, with their type and region verdicts, computed once
    pairs = [
        [(i, gi[i][1] == typ, region_ok(gi[i][2], boxes)) for i in by_key.get(key, ())]
        for key, typ, boxes in pi
    ]
    owners = {}
    for task, (need_type, need_region) in USES.items():
        cands = [
            [
                i
                for i, same_type, same_region in row
                if (same_type or not need_type) and (same_region or not need_region)
            ]
            for row in pairs
        ]
        owners[task] = max_matching(cands, len(gi))
    return owners
