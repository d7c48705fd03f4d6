"""python -m formats PATH [PATH ...]: read each dataset (any layout read_dataset knows), print its stats."""

import json
import sys

from data import DataError, one_line_warnings
from formats import read_dataset, stats

one_line_warnings()
for arg in sys.argv[1:] or ["examples/demo"]:
    try:
        print(arg, json.dumps(stats(read_dataset(arg)), indent=1))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
