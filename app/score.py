"""The scorer's command line: score a prediction file against gold files with eval.evaluate.

    python -m app.score --gold examples/demo --pred examples/demo [--match span|name] [--json metrics.json]

`--gold` is any dataset read_dataset reads (a CCKS folder, Twitter-GMNER or CoNLL, a Label Studio export),
as every dataset flag of refineg.py reads it. `--pred` is a CCKS folder (its entity.json is read against
the gold texts), a CCKS-layout entity.json, or a Twitter-GMNER/CoNLL file. Samples missing from the
prediction count as empty predictions, reported in one warning line; predicted ids absent from gold are
an error. A predicted record that cannot be placed (a name not in its text, a label outside the gold's
types: an MLLM's invention) is a false positive in every task, counted and reported in one warning line,
never a reason to refuse the file; gold files stay strict. Bad inputs end the run with one line
`error: ...` and exit code 2, before anything is printed. The table goes to stdout; `--json` also writes
the metrics with the command's inputs. Left out on purpose: the scoring itself (eval.py, which reads no file).
"""

import argparse
import json
import sys
from pathlib import Path

from data import DataError, Dataset, Sample
from eval import TASKS, evaluate
from formats import one_line_warnings, read_dataset
from formats.ccks import read_ccks_predictions
from labelling.labelstudio import EXPORT


def read_prediction(path: str, gold: Dataset) -> tuple[list[Sample], list[tuple[str, str, str, str]]]:
    """The predicted samples and the unplaceable records (id, name, label, reason) of a prediction file.

    A CCKS folder or entity.json is read against the gold texts and types; a Twitter/CoNLL
    file carries its own tokens. Unplaceable records are reported in one warning line.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "entity.json").is_file():
            raise DataError(f"{p}: a prediction folder needs an entity.json (CCKS layout)")
        p = p / "entity.json"
    if p.suffix != ".json":
        return read_dataset(p).samples, []
    pred, unplaced = read_ccks_predictions(p, gold.samples, gold.types)
    if unplaced:
        n_name = sum(1 for u in unplaced if u[3] == "name")
        examples = "; ".join(f"{sid}: {name!r} ({label})" for sid, name, label, _ in unplaced[:3])
        print(
            f"warning: {p}: {len(unplaced)} predicted records scored as false positives: {n_name} with a "
            "name "
            f"not in the text, {len(unplaced) - n_name} with a label outside the gold types {gold.types} "
            f"(e.g. {examples})",
            file=sys.stderr,
        )
    return pred, unplaced


def unpredicted(pred_path: str, gold: list[Sample], pred: list[Sample]) -> list[Sample]:
    """The gold samples whose id the prediction file does not hold (they are scored as misses)."""
    p = Path(pred_path)
    p = p / "entity.json" if p.is_dir() else p
    if p.suffix == ".json":
        held = set(json.loads(p.read_text(encoding="utf-8-sig")))
    else:
        held = {s.id for s in pred}
    return [g for g in gold if g.id not in held]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m app.score", description="Score GMNER / MNER / EEG predictions against gold data."
    )
    ap.add_argument(
        "--gold", required=True, help="gold data: CCKS folder, Twitter-GMNER txt (xml/ beside it) or CoNLL"
    )
    ap.add_argument(
        "--pred", required=True, help="predictions: CCKS folder or entity.json, or a Twitter/CoNLL file"
    )
    ap.add_argument(
        "--match",
        choices=["span", "name"],
        default="span",
        help="entity identity: token span (default) or surface string (set semantics per sample)",
    )
    ap.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    one_line_warnings()
    try:  # the I/O boundary: bad files end the run with one line naming them, exit code 2
        check_paths(args.gold, args.pred, args.json)
        gold_data = read_dataset(args.gold, readers=[EXPORT])
        gold = gold_data.samples
        pred, unplaced = read_prediction(args.pred, gold_data)
        missing = unpredicted(args.pred, gold, pred)
        result = evaluate(gold, pred, args.match, unplaced)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if missing:
        entities = sum(len(g.entities) for g in missing)
        print(
            f"warning: {len(missing)} of {len(gold)} gold samples have no prediction in {args.pred}, "
            f"so their {entities} gold entities are scored as misses (e.g. {[g.id for g in missing[:3]]}); "
            "a held-out run's own gold is in its gold/ folder",
            file=sys.stderr,
        )
    print(f"gold {args.gold}  pred {args.pred}  match {args.match}  samples {len(gold)}")
    print(table(result))
    if args.json:
        meta = {
            "gold": args.gold,
            "pred": args.pred,
            "match": args.match,
            "samples": len(gold),
            "unplaced_predictions": len(unplaced),
            "unpredicted_samples": len(missing),
        }
        try:
            Path(args.json).write_text(json.dumps({**meta, **result}, indent=1) + "\n", encoding="utf-8")
        except OSError as err:  # checked before scoring; a full disk or a permission can still refuse it
            print(f"error: --json {args.json}: cannot write it: {err.strerror or err}", file=sys.stderr)
            return 2
    return 0


def table(result: dict) -> str:
    """A readable table: one block per task, the micro row first, then one row per type."""
    lines = [f"{'':<16}{'P':>7}{'R':>7}{'F1':>7}{'TP':>7}{'FP':>7}{'FN':>7}"]
    for task in TASKS:
        rows = [(task.upper(), result[task])] + [(f"  {k}", v) for k, v in result[task]["per_type"].items()]
        for name, m in rows:
            lines.append(
                f"{name:<16}{m['p']:>7.3f}{m['r']:>7.3f}{m['f1']:>7.3f}{m['tp']:>7}{m['fp']:>7}{m['fn']:>7}"
            )
    return "\n".join(lines)


def check_paths(gold: str, pred: str, json_path: str | None) -> None:
    """The inputs exist and --json can be created, checked before anything is read or printed."""
    for flag, path in (("--gold", gold), ("--pred", pred)):
        if not Path(path).exists():
            raise DataError(f"{flag} {path}: no such file or folder")
    if json_path is None:
        return
    target = Path(json_path)
    if target.is_dir():
        raise DataError(f"--json {target}: is a folder; expected the name of a file to write the metrics to")
    if not target.parent.is_dir():
        raise DataError(f"--json {target}: its folder {target.parent} does not exist (create it first)")


if __name__ == "__main__":
    sys.exit(main())
