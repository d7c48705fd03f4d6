#!/usr/bin/env bash
# Build the real Label Studio that tests/real/test_labelstudio_real.py talks to: the PyPI package
# `label-studio` (pinned) in a virtual environment of its own, since it pins Django and ~150 other packages
# that must not meet the project's Python.
#
#   make label-studio            # = PY=python3 bash tests/labelstudio/build.sh
#
# Idempotent: a second run takes a second. All outputs live in $REFINEG_LABELSTUDIO_CACHE (default
# ~/.cache/refineg-labelstudio), outside the repository:
#   venv-VERSION/      the virtual environment; bin/label-studio is the server
#   labelstudio.json   written last: the paths the test reads (its absence means "not built")
#
# Env: REFINEG_LABELSTUDIO_CACHE, PY (the Python that creates the venv: 3.10 to 3.13). Needs PyPI.
# Left out on purpose: PostgreSQL (the test uses Label Studio's default SQLite), the ML backend, any front-end
# build (the wheel ships the compiled front end).
set -euo pipefail

CACHE="${REFINEG_LABELSTUDIO_CACHE:-$HOME/.cache/refineg-labelstudio}"
PY="${PY:-python3}"
LS_VERSION="1.23.2"   # the latest on PyPI when this was written; the export/import format is Label Studio's JSON
VENV="$CACHE/venv-$LS_VERSION"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock" && flock 9   # two builds at once (two shells, two checkouts) take turns
t0=$(date +%s)
step() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
export PIP_ROOT_USER_ACTION=ignore   # CI runs as root; the warning is noise there
export PIP_DISABLE_PIP_VERSION_CHECK=1

step "venv: $VENV (python: $PY)"
if [[ ! -f "$VENV/.installed" ]]; then
  # Built in place (a venv's scripts carry its absolute path, so it cannot be built aside and moved);
  # .installed, written last, marks it done, and a venv without it is built again from nothing.
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "label-studio==$LS_VERSION" 2> >(grep -v "WARNING: Location" >&2)
  touch "$VENV/.installed"
fi
"$VENV/bin/python" -c "import label_studio; print('label-studio', label_studio.__version__)"

"$VENV/bin/python" - "$CACHE/labelstudio.json" "$VENV" "$LS_VERSION" <<'PYEOF'
import json, os, sys
path, venv, version = sys.argv[1:]
info = {"label_studio": os.path.join(venv, "bin", "label-studio"), "version": version}
with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=1)
os.replace(path + ".tmp", path)
PYEOF
step "done: $CACHE/labelstudio.json ($(du -sh "$VENV" | cut -f1))"
