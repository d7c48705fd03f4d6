"""Quality and speed measurements of ReFineG, side by side with the peers a practitioner would use.

Sections (each prints a table and the command that reproduces it; each lives in its own file):
    python bench.py client        # bench_client.py: llm.py's concurrency efficiency and per-call overhead (fake server)
    python bench.py tagger        # bench_tagger.py: tagger.py vs AutoModelForTokenClassification (CCKS, Twitter 10 %)
    python bench.py labels        # bench_labels.py: Twitter-GMNER 10 %, lever by lever (schedule, self-training)
    python bench.py speed         # bench_speed.py: prediction speed float/int8 vs the peer, and a profile
    python bench.py uncertainty   # bench_uncertainty.py: AUROC and risk-coverage of entity uncertainty
    python bench.py selection     # bench_selection.py: demo selection (demos.py) quality and time (Twitter-GMNER)
    python bench.py eval          # bench_eval.py: eval.py's scoring speed on 10,000 samples
    python bench.py memory        # bench_memory.py: peak memory of training on a long text and of grounding
    python bench.py gmner         # bench_gmner.py: the whole method on Twitter-GMNER with a simulated MLLM of
                                  # known accuracy
    python bench.py synth         # bench_synth.py: synth.py with a real 0.5B LLM (llama-server), then the tagger

This file is the dispatcher and holds what the sections share: where the data is and `have`.
Real data is read from ../shared/data/ (never shipped); a section skips with a
message when it is absent. Every number is measured on this machine in this run.
"""

import argparse
import importlib
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent / "shared" / "data"
CCKS = SHARED / "ccks"
TWITTER = SHARED / "twitter-gmner"


def have(path: Path) -> bool:
    """Whether the shared data at `path` exists; when it does not, say so (the section then skips)."""
    if not path.exists():
        print(f"skipped: {path} is absent (benchmarks read the team's shared data from there)")
        return False
    return True


# ---------------------------------------------------------------- sections, one file each

# Section NAME is the function bench_NAME in bench_NAME.py, imported only when it runs: a section's
# heavy imports (torch, a server binary) are paid by that section alone.
SECTIONS = ["client", "tagger", "labels", "speed", "uncertainty", "selection", "eval", "memory", "gmner", "synth"]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=SECTIONS, help="which measurement to run")
    ap.add_argument("--epochs", type=int, default=None, help="tagger/uncertainty: training epochs (default: the section's own)")
    ap.add_argument("--synth-seeds", type=int, default=0,
                    help="synth: stop after this many seeds (0 = as many as 15 minutes allow; cached answers are free)")
    ap.add_argument("--quick", action="store_true", help="smaller data for a fast look (numbers then not comparable)")
    ap.add_argument("--only", default="", help="labels: settings; uncertainty: ccks and/or twitter; gmner: row groups (refine, ground, whole); comma-separated (default: all)")
    ap.add_argument("--seeds", default="0,1,2", help="labels: comma-separated seeds")
    ap.add_argument("--mc-passes", type=int, default=None, help="uncertainty: MC dropout passes (0 skips those rows)")
    args = ap.parse_args()
    module = importlib.import_module(f"bench_{args.section}")
    getattr(module, f"bench_{args.section}")(args)
    sys.exit(0)
