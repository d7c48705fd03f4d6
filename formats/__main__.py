"""python -m formats PATH [PATH ...]: read each dataset (any layout read_dataset knows, and a Label Studio
JSON export: labelling's reader, as every dataset flag of refineg.py reads it), print its stats."""

import json
import sys

from data import DataError
from formats import one_line_warnings, read_dataset, stats
from labelling.labelstudio import EXPORT

one_line_warnings()
for arg in sys.argv[1:] or ["examples/demo"]:
    try:
        print(arg, json.dumps(stats(read_dataset(arg, readers=[EXPORT])), indent=1))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
