"""What a ReFineG run shows a person: the summary printed at its end and the pictures of --viz.

refineg.py runs the stages and hands their scores, counts, token usage and timings here. Input:
the run's metrics, notes and usage dicts, and predicted (and gold) samples. Output: the summary
text (a SIMULATION warning under its title when the MLLM was simulated, how many samples and gold
entities were scored, scores per stage, how many entities went to the MLLM, calls and tokens per
stage, what was skipped and why, which files were written), the one line each MLLM stage prints (and
grounding's line per image it could not use), what a tagger's training says when it ends
(`training_lines`), and JPEGs with predicted (red, solid) and gold (green, dashed) boxes named on
filled tags (`picture`, which also draws report.html's thumbnails, with numbers for names).

    python refineg.py --data examples/demo --out runs/demo-tagger --viz 5    # the summary; pictures in viz/

Left out on purpose: the per-sample page (page.py writes trace.jsonl and report.html), plots of scores
(metrics.json holds every number).
"""

import dataclasses
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import data
import eval as scorer
import grounding
import images
from app.rundir import NO_LLM, Run, simulated
from refinement import Outcome
from tagger import TaggerConfig

# eval's tasks in the order the stages earn them: the text (MNER), the boxes (EEG), both (GMNER); a task
# eval renames or adds fails here, at import, instead of leaving the summary and the page without its line
TASKS = sorted(scorer.TASKS, key=["mner", "eeg", "gmner"].index)
PRED = (205, 25, 25)  # a prediction's box and tag: red; white text on it has a contrast of 5 to 1
GOLD = (0, 120, 50)  # a gold box's dashes and tag: green, dark enough for white text on it
WHITE = (255, 255, 255)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont  # load_default's, by Pillow's build


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
    lines.append(written_line(run))
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
    if not simulated(m):
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
    if not simulated(mllm):
        return f"mllm: {name} at {url}"
    return (
        f"mllm: {name} at {url}: SIMULATED, its answers are derived from the gold (servers/simulated_mllm.py)"
    )


def refinement_line(notes: dict) -> str:
    """What the refinement stage did, in one line, from counts.refinement_counts (and tau): every key is
    read by indexing, so one that counts no longer gives is a KeyError here, never a silent 0."""
    n = notes
    keep, change_type, change_span = n[Outcome.KEEP], n[Outcome.CHANGE_TYPE], n[Outcome.CHANGE_SPAN]
    line = (
        f"refinement: {n['delegated']} of {n['entities']} entities delegated (uncertainty > tau "
        f"{n['tau']:.4g}), checked in {n['calls']} calls: {keep} kept, "
        f"{change_type + change_span} changed ({change_type} type, {change_span} span), "
        f"{n[Outcome.REJECT]} rejected"
    )
    if n["added"]:
        line += f", {n['added']} added"
    if n["kept_by_fallback"]:
        line += f", {n['kept_by_fallback']} kept by fallback (failed or invalid answers)"
    return line


def grounding_line(notes: dict, pred: list[data.Sample], never: list[str]) -> str:
    """What the grounding stage did, in one line, from app/counts.py's grounding_counts and its output."""
    n = notes
    never_l = {t.lower() for t in never}
    entities = sum(len(s.entities) for s in pred)
    unboxed = entities - n["entities_grounded"]
    not_asked = [e.type for s in pred for e in s.entities if e.type.lower() in never_l]
    line = (
        f"grounding: {n['calls'] + n['image_errors']} of {n['samples']} samples asked in {n['calls']} calls, "
        f"{n['boxes']} boxes drawn on {n['entities_grounded']} entities; "
        f"{unboxed} of {entities} entities left without a box"
    )
    if not_asked:
        line += f" ({len(not_asked)} of them {'/'.join(sorted(set(not_asked)))}, a type never grounded)"
    return line


def image_lines(traces: dict[str, grounding.GroundingTrace]) -> list[str]:
    """One line per image grounding could not use, from its traces: a sample's (no box) or a worked
    example's (not shown)."""
    samples = {t.error for t in traces.values() if t.outcome is grounding.Outcome.IMAGE_ERROR}
    examples = {why for t in traces.values() for why in t.dropped.values()}
    return [f"grounding: {why}; no box for its sample" for why in sorted(samples)] + [
        f"grounding: {why}; not shown as a worked example" for why in sorted(examples)
    ]


def training_lines(config: TaggerConfig, training: dict, pool: int) -> list[str]:
    """What a tagger's training says when it ends (`training`: refineg.train's dict): that few steps raised
    its epochs, and, with progress on, what each self-training round kept of the `pool` sentences."""
    rounds = training["self_training"][1:]  # round 0, the tagger before self-training, said its own
    if not rounds:
        return epochs_line(config, training["history"])
    lines = []
    more = dataclasses.replace(config, epochs=config.self_train_epochs)  # as selftrain.one_round trains
    for r in rounds:
        lines += epochs_line(more, r["history"])
        if config.progress:
            lines.append(
                f"self-training round {r['round']}: trained on {r['pseudo_sentences']} of {pool} unlabelled "
                f"sentences ({r['pseudo_entities']} entities)"
            )
    return lines


def epochs_line(config: TaggerConfig, history: list[dict]) -> list[str]:
    """One line when the training of `history` ran more epochs than `config.epochs` (tagger.epochs_to_run
    raised them to `config.min_steps` steps); none otherwise. Each history row is one epoch."""
    if len(history) <= config.epochs:
        return []
    steps = math.ceil(history[0]["sentences"] / config.batch_size)
    return [
        f"tagger: {config.epochs} epochs of {steps} steps are under the minimum of {config.min_steps} "
        f"steps (--tagger-min-steps): training {len(history)} epochs"
    ]


def scope_line(scope: dict) -> str:
    n, gold, test = scope["samples"], scope["gold_entities"], scope["test"]
    if not n and not test:
        return (
            "nothing scored: with --suggest and no --test, every labelled sample trained the tagger that "
            "chooses (pass the same --test each round to score the rounds on the same samples)"
        )
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
    g = run.notes.get("grounding")  # grounding_counts when the stage ran
    if g and g["no_image"]:
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


# What a written file is, where its name does not say it
WRITTEN_NOTES = {
    "predictions.refined.json": "before grounding",
    "predictions.json": "final",
    "predictions.txt": "Twitter-GMNER layout",
    "suggested/": "to label next",
    "gold/": "the held-out gold, for python -m app.score",
    "llm_cache.jsonl": "appended",
    "trace.jsonl": "every decision per sample",
    "report.html": "open it in a browser; thumbnails in report/",
    "labelstudio/": "the same, as a Label Studio project",
}


def written_line(run: Run) -> str:
    """The files this run wrote, in order (a reused tagger or synthesis was not written: not listed)."""
    names = [f"{n} ({WRITTEN_NOTES[n]})" if n in WRITTEN_NOTES else n for n in run.written]
    return f"written in {run.out}: {', '.join(names)}"


def draw(pred: list[data.Sample], gold: list[data.Sample] | None, folder: Path, n: int) -> None:
    """Boxes, names and types of the first n predictions with an image (red), gold in green."""
    folder.mkdir(parents=True, exist_ok=True)
    gold_by_id = {s.id: s for s in gold or []}
    done = 0
    for s in pred:
        if done >= n or not s.image:
            continue
        try:
            img = picture(s, gold_by_id.get(s.id))
        except images.ImageError as err:  # untrusted file: no picture for it, said once
            print(f"viz: {err}; not drawn")
            continue
        img.save(folder / f"{s.id}.jpg", quality=90)
        done += 1
    print(f"viz: {done} pictures in {folder} (prediction red, gold green)")


def picture(
    s: data.Sample,
    gold: data.Sample | None,
    max_side: int = 0,
    keys: dict[tuple[int, int], int] | None = None,
) -> Image.Image:
    """The sample's image with its predicted boxes (red, solid) and gold ones (green and white dashes, just
    outside the box), each tagged on a filled ground (prediction at its top-left corner, gold at its
    bottom-right) with its name and type, or with `keys` ({(start, end): number}, page.py's legend) with its
    number; unkeyed, a black band at the bottom names the predictions without a box. The long side is shrunk
    to `max_side` when that is given and smaller; images.ImageError when the image cannot be used."""
    img = images.open_image(s.image)
    img, scale = shrunk(img, max_side)
    pen = ImageDraw.Draw(img)
    side = max(img.size)
    font = ImageFont.load_default(size=max(16, round(side / 40)))  # Pillow's own TrueType font, any machine
    width = max(2, round(side / 300))
    for sample, is_gold in [(gold, True), (s, False)]:
        for e in [e for e in sample.entities if e.boxes] if sample is not None else []:
            text = str(keys[(e.start, e.end)]) if keys is not None else f"{sample.name(e)} ({e.type})"
            for b in e.boxes:
                xyxy = [v * scale for v in (b.x1, b.y1, b.x2, b.y2)]
                if is_gold:
                    dashed(pen, xyxy, width)
                else:
                    pen.rectangle(xyxy, outline=PRED, width=width)
                tag(pen, img.size, xyxy, text, font, is_gold)
    unboxed = [f"{s.name(e)} ({e.type})" for e in s.entities if not e.boxes]
    if unboxed and keys is None:
        band(pen, img.size, "no box: " + ", ".join(unboxed), font)
    return img


def shrunk(img: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """The image with its long side at most `max_side` (0: as it is), and the scale applied."""
    if not max_side or max(img.size) <= max_side:
        return img, 1.0
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS), scale


def dashed(pen: ImageDraw.ImageDraw, xyxy: list[float], width: int) -> None:
    """A gold box: green and white dashes `width` thick just outside `xyxy`, so a prediction drawn on the same
    box (inside its edges) leaves it whole, and the white shows it on dark or green ground alike."""
    x1, y1 = (round(v) - width for v in xyxy[:2])  # the corners pushed out by the line's width
    x2, y2 = (round(v) + width for v in xyxy[2:])
    dash = 3 * width
    for x in range(x1, x2 + 1, dash):
        colour = GOLD if (x - x1) // dash % 2 == 0 else WHITE
        pen.rectangle([x, y1, min(x + dash, x2), y1 + width - 1], fill=colour)  # top
        pen.rectangle([x, y2 - width + 1, min(x + dash, x2), y2], fill=colour)  # bottom
    for y in range(y1, y2 + 1, dash):
        colour = GOLD if (y - y1) // dash % 2 == 0 else WHITE
        pen.rectangle([x1, y, x1 + width - 1, min(y + dash, y2)], fill=colour)  # left
        pen.rectangle([x2 - width + 1, y, x2, min(y + dash, y2)], fill=colour)  # right


def tag(
    pen: ImageDraw.ImageDraw, size: tuple[int, int], xyxy: list[float], text: str, font: Font, gold: bool
) -> None:
    """`text` in white on the box's colour, inside its top-left corner (prediction) or bottom-right (gold),
    so the tags of a prediction and its gold on one box do not cover each other; kept inside the image."""
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 5)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    corner = (xyxy[2] - w, xyxy[3] - h) if gold else (xyxy[0], xyxy[1])
    x = min(max(corner[0], 0), size[0] - w)
    y = min(max(corner[1], 0), size[1] - h)
    pen.rectangle([x, y, x + w - 1, y + h - 1], fill=GOLD if gold else PRED)
    pen.text((x + pad - left, y + pad - top), text, fill=WHITE, font=font)


def band(pen: ImageDraw.ImageDraw, size: tuple[int, int], text: str, font: Font) -> None:
    """`text` in white on a black band across the bottom of the image."""
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 4)
    width, height = size
    y = height - (bottom - top) - 2 * pad
    pen.rectangle([0, y, width, height], fill=(0, 0, 0))
    pen.text((pad - left, y + pad - top), text, fill=WHITE, font=font)
