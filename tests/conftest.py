"""Tests import the flat modules at the repository root (data, llm, fake_server, ...) and tests/hostile.py by name."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
