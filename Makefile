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
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

# Every speed benchmark in its --quick form, inputs built from nothing. `make bench
# PEER=VENV` (VENV from ../shared/peer/install.sh) adds the audiolm-pytorch comparison;
# without it, or without ../shared/peer, that part is skipped with a note. Full runs and
# their options: each script's --help; figures: docs/results.md.
PEER ?=
bench:
	for f in benchmarks/bench_*.py; do \
	  echo "== $$f --quick"; \
	  MUSICLM_PEER=$(PEER) HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) $$f --quick || exit 1; \
	done
