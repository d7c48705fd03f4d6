"""python -m formats PATH [PATH ...]: read each dataset (any layout read_dataset knows), print its stats."""

import json
import sys

from formats import read_dataset, stats

for arg in sys.argv[1:] or ["examples/demo"]:
    print(arg, json.dumps(stats(read_dataset(arg)), indent=1))
