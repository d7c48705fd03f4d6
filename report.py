"""What a ReFineG run shows a person: the summary printed at its end and the pictures of --viz.

refineg.py runs the stages and hands their scores, counts, token usage and timings here. Input:
the run's metrics, notes and usage dicts, and predicted (and gold) samples. Output: the summary
text (a SIMULATION warning first when the MLLM was simulated, how many samples and gold entities were
scored, scores per stage, how many entities went to the MLLM, calls and tokens per stage, what was
skipped and why, which files were written), the one line each MLLM stage prints, and JPEGs with
predicted (red) and gold (green) boxes.

    python refineg.py --data examples/demo --out runs/demo --viz 5    # the summary; pictures in viz/

Left out on purpose: HTML reports, plots of scores (metrics.json holds every number).
"""

from pathlib import Path

import data
import images
from rundir import NO_LLM, Run

TASKS = ("mner", "eeg", "gmner")


def summary_text(run: Run, warn_share: float = 0.1) -> str:
    """The lines printed at the end of a run: a warning when many calls of a stage failed, what was scored,
    scores per stage, uncertainty routing, MLLM usage, times, skipped stages and the files written."""
    usage = run.usage()
    lines = ["", headline(usage, warn_share), *simulation_lines(run), scope_line(run.scope)]
    lines += score_lines(run)
    lines += note_lines(run)
    for stage, c in usage.items():
        lines.append(
            f"{stage:>11}: {c['calls']} MLLM calls, {c['cache_hits']} cache hits, {c['prompt_tokens']} "
            f"prompt + {c['completion_tokens']} completion tokens, {c['failures']} failures"
        )
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()))
    lines += skipped_lines(run.skipped)
    lines.append(written_line(run.out))
    return "\n".join(lines)


def headline(usage: dict, warn_share: float) -> str:
    """The summary's first line, with a warning when a stage lost more than `warn_share` of its calls."""
    failed = [
        f"{c['failures']} of {c['calls']} {stage} calls failed"
        for stage, c in usage.items()
        if c["calls"] and c["failures"] > warn_share * c["calls"]
    ]
    if not failed:
        return "== ReFineG summary"
    return f"== ReFineG summary: WARNING {'; '.join(failed)} (their samples fell back; see usage.json)"


def simulation_lines(run: Run) -> list[str]:
    """The summary's warning, right under its title, when the MLLM was simulated (rundir.served_model)."""
    m = run.mllm
    if not m.get("simulated"):
        return []
    a = m.get("accuracy")
    how = f"right {a:.0%} of the time" if a is not None else f"right as often as its name says ({m['model']})"
    synth = "synthesis" in run.notes
    return [
        f"SIMULATION: the MLLM's answers were derived from the gold, {how}; these scores are not a model's",
        f"  ({m['model']}, servers/simulated_mllm.py"
        + ("; its synthetic sentences recombine the seeds by rule, without the gold" if synth else "")
        + "; the tagger rows score the tagger alone)",
    ]


def mllm_line(mllm: dict, url: str) -> str:
    """What answers the MLLM calls, printed before any stage runs."""
    name = mllm["model"] or f"one of {mllm['listed']}"
    if not mllm["simulated"]:
        return f"mllm: {name} at {url}"
    return (
        f"mllm: {name} at {url}: SIMULATED, its answers are derived from the gold (servers/simulated_mllm.py)"
    )


def refinement_line(notes: dict) -> str:
    """What the refinement stage did, in one line, from refinement.refine's counts."""
    n = notes
    c = {
        k: n.get(k, 0) for k in ("keep", "change_type", "change_span", "reject", "added", "kept_by_fallback")
    }
    line = (
        f"refinement: {n['delegated']} of {n['entities']} entities delegated (uncertainty > tau "
        f"{n['tau']:.4g}), checked in {n['calls']} calls: {c['keep']} kept, "
        f"{c['change_type'] + c['change_span']} changed ({c['change_type']} type, {c['change_span']} span), "
        f"{c['reject']} rejected"
    )
    if c["added"]:
        line += f", {c['added']} added"
    if c["kept_by_fallback"]:
        line += f", {c['kept_by_fallback']} kept by fallback (failed or invalid answers)"
    return line


def grounding_line(notes: dict, pred: list[data.Sample], never: list[str]) -> str:
    """What the grounding stage did, in one line, from grounding.ground's counts and its output."""
    n = notes
    never_l = {t.lower() for t in never}
    entities = sum(len(s.entities) for s in pred)
    unboxed = entities - n.get("entities_grounded", 0)
    not_asked = [e.type for s in pred for e in s.entities if e.type.lower() in never_l]
    asked = n.get("calls", 0) + n.get("image_errors", 0)
    line = (
        f"grounding: {asked} of {n['samples']} samples asked in {n.get('calls', 0)} calls, "
        f"{n.get('boxes', 0)} boxes drawn on {n.get('entities_grounded', 0)} entities; "
        f"{unboxed} of {entities} entities left without a box"
    )
    if not_asked:
        line += f" ({len(not_asked)} of them {'/'.join(sorted(set(not_asked)))}, a type never grounded)"
    return line


def scope_line(scope: dict) -> str:
    n, gold, test = scope["samples"], scope["gold_entities"], scope["test"]
    if gold is None:  # only a --test folder can lack gold: a hold-out is part of the labelled data
        return f"not scored: the {n} samples of --test {test} have no gold (no entity.json)"
    if test:
        return f"scored on {n} samples of --test {test} with {gold} gold entities"
    return (
        f"scored on {n} held-out samples with {gold} gold entities "
        f"(a seeded {scope['test_share']:.0%} of --data; --test DIR scores another folder)"
    )


def score_lines(run: Run) -> list[str]:
    lines = []
    for stage, m in run.metrics.items():
        for name in (t for t in TASKS if t in m):
            r = m[name]
            lines.append(
                f"{stage:>11} {name.upper():<6} P {r['p']:.3f}  R {r['r']:.3f}  F1 {r['f1']:.3f}  "
                f"(tp {r['tp']}, fp {r['fp']}, fn {r['fn']})"
            )
    if run.metrics and "refinement" in run.skipped and "grounding" in run.skipped:
        lines.append(
            "  these are the tagger's scores alone: no MLLM refined its entities or drew a box, so EEG "
            "and GMNER credit only the entities gold leaves without a box"
        )
    return lines


def note_lines(run: Run) -> list[str]:
    lines = []
    g = run.notes.get("grounding", {})
    if g.get("no_image"):
        lines.append(
            f"  grounding: {g['no_image_entities']} entities stayed ungroundable for lack of an image "
            f"({g['no_image']} samples without image; --images DIR adds image folders)"
        )
    u = run.notes["uncertainty"]
    sent = "; none sent, refinement was skipped" if "refinement" in run.skipped else ""
    lines.append(
        f"uncertainty: {u['delegated']} of {u['entities']} predicted entities above tau ({u['how']}){sent}"
    )
    return lines


def skipped_lines(skipped: dict[str, str]) -> list[str]:
    lines = []
    for stage, why in skipped.items():
        more = "; every entity is ungroundable (no box)" if stage == "grounding" else ""
        lines.append(f"skipped {stage}: {why}{more}")
    if NO_LLM in skipped.values():
        lines.append(
            "  (to run them, pass --llm-url URL --llm-model NAME of an OpenAI-compatible server, "
            "e.g. vLLM or llama-server; see README)"
        )
    return lines


def written_line(out: Path) -> str:
    written = f"{out}/predictions.json (final)"
    if (out / "predictions.txt").is_file():
        written += ", predictions.txt + xml/ (Twitter-GMNER layout)"
    if (out / "suggested").is_dir():
        written += ", suggested/ + suggested.jsonl (to label next)"
    return (
        f"written: {written}, predictions.refined.json (before grounding), "
        "metrics.json, usage.json, config.json"
    )


def draw(pred: list[data.Sample], gold: list[data.Sample] | None, folder: Path, n: int) -> None:
    """Boxes, names and types of the first n predictions with an image (red), gold in green."""
    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    gold_by_id = {s.id: s for s in gold or []}
    done = 0
    for s in pred:
        if done >= n or not s.image:
            continue
        try:
            img = images.open_image(s.image)
        except images.ImageError as err:  # untrusted file: no picture for it, said once
            print(f"viz: {err}; not drawn")
            continue
        pen = ImageDraw.Draw(img)
        layers = [(gold_by_id.get(s.id), (40, 200, 40), 0), (s, (230, 30, 30), 12)]
        for sample, colour, dy in layers:
            if sample is None:
                continue
            for e in sample.entities:
                for b in e.boxes:
                    pen.rectangle([b.x1, b.y1, b.x2, b.y2], outline=colour, width=2)
                    pen.text((b.x1 + 2, b.y1 + 2 + dy), f"{sample.name(e)} ({e.type})", fill=colour)
        unboxed = [f"{s.name(e)} ({e.type})" for e in s.entities if not e.boxes]
        if unboxed:
            pen.text((4, img.height - 14), "no box: " + ", ".join(unboxed), fill=(230, 30, 30))
        img.save(folder / f"{s.id}.jpg", quality=90)
        done += 1
    print(f"viz: {done} pictures in {folder} (prediction red, gold green)")
