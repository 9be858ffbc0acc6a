# The two set-up commands of the README: `make install` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11

.PHONY: install test test-slow lint bench
install:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'

test:
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

test-slow:
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m slow

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench:
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done
