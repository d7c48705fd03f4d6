"""Quality and speed measurements of ReFineG, side by side with the peers a practitioner would use.

Each section lives in its own file and prints a table and the command that reproduces it:

    python -m bench                 # lists the sections
    python -m bench tagger          # one section

Real data is read from ../shared/data/ (never shipped); a section skips with a message when it
is absent. Every number is measured on this machine in this run.
"""

from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CCKS = SHARED / "ccks"
TWITTER = SHARED / "twitter-gmner"


def have(path: Path) -> bool:
    """Whether the shared data at `path` exists; when it does not, say so (the section then skips)."""
    if not path.exists():
        print(f"skipped: {path} is absent (benchmarks read the team's shared data from there)")
        return False
    return True
