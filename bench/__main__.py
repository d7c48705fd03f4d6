"""`python -m bench NAME [options]` runs one section; `python -m bench` lists them.

Section NAME is the function bench_NAME in bench/NAME.py, imported only when it runs: a section's
heavy imports (torch, a server binary) are paid by that section alone.
"""

import argparse
import importlib
import sys

SECTIONS = {
    "client": "llm.py's concurrency efficiency and per-call overhead (fake server)",
    "tagger": "tagger.py vs AutoModelForTokenClassification (CCKS, Twitter-GMNER 10 %)",
    "labels": "Twitter-GMNER 10 %, lever by lever (schedule, self-training)",
    "speed": "prediction speed float/int8 vs the peer, and a profile",
    "uncertainty": "AUROC and risk-coverage of entity uncertainty",
    "selection": "demo selection (demos.py) quality and time (Twitter-GMNER)",
    "eval": "eval.py's scoring speed on 10,000 samples",
    "memory": "peak memory of training on a long text and of grounding",
    "gmner": "the whole method on Twitter-GMNER with a simulated MLLM of known accuracy",
    "synth": "synth.py with a real 0.5B LLM (llama-server), then the tagger",
    "active": "which tweets to label next (labelling/suggest.py) against random labelling (Twitter-GMNER)",
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("section", choices=SECTIONS, help="which measurement to run")
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="tagger/uncertainty: training epochs (default: the section's own)",
    )
    ap.add_argument(
        "--synth-seeds",
        type=int,
        default=0,
        help="synth: stop after this many seeds (0 = as many as 15 minutes allow)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="smaller data for a fast look (numbers then not comparable)"
    )
    ap.add_argument(
        "--only",
        default="",
        help="labels: settings; active: rows; uncertainty: ccks and/or twitter; gmner: row groups "
        "(refine, ground, whole); comma-separated (default: all)",
    )
    ap.add_argument("--seeds", default="0,1,2", help="labels, active: comma-separated seeds")
    ap.add_argument("--max-labelled", type=int, default=2800, help="active: the last round's labelled tweets")
    ap.add_argument("--device", default="cpu", help="active: the tagger's torch device (cpu, cuda, ...)")
    ap.add_argument("--cache", default="", help="active: the folder of finished rounds (default: /tmp)")
    ap.add_argument("--report", action="store_true", help="active: the table of finished rounds, no training")
    ap.add_argument(
        "--mc-passes", type=int, default=None, help="uncertainty: MC dropout passes (0 skips those rows)"
    )
    return ap


def list_sections() -> None:
    print("usage: python -m bench NAME [options]   (python -m bench NAME --help for the options)\n")
    for name, what in SECTIONS.items():
        print(f"  {name:<12} bench/{name}.py: {what}")


if __name__ == "__main__":
    if len(sys.argv) == 1:
        list_sections()
        sys.exit(0)
    args = parser().parse_args()
    module = importlib.import_module(f"bench.{args.section}")
    getattr(module, f"bench_{args.section}")(args)
