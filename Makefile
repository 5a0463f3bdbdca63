# The two commands a new user runs: `make demo` and `make test`.
# Both build .venv/ in the repo root first (re-built when pyproject.toml changes).
PYTHON ?= python3
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# This machine's pip config names local mirror folders that may not exist; hide only those
# "Location … is ignored" warnings (pip's own exit status still decides, via pipefail).
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit notebooks browser notebook-outputs bench clean

# Strict nbval: every stored output is compared (volatile text sanitized by the cfg).
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip $(QUIET_PIP)
	$(PY) -m pip install --quiet -e '.[dev]' $(QUIET_PIP)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m arboris_nb.demo

lint: $(STAMP)
	$(PY) -m ruff check arboris_nb tests benchmarks scripts
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest tests -m "not browser"

notebooks: $(STAMP)
	$(PY) -m pytest notebooks $(NBVAL)

browser: $(STAMP)
	$(PY) -m pytest tests/browser

# Lint, then ONE pytest session: unit tests, every notebooks/*.ipynb under nbval, and
# the JupyterLab + Chromium test last (tests/browser/conftest.py sorts it to the end).
test: lint
	$(PY) -m pytest tests notebooks $(NBVAL)

# Re-execute the notebooks and save their outputs (after changing a notebook).
notebook-outputs: $(STAMP)
	$(PY) scripts/run_notebooks.py

# Benchmarks print ratios measured side by side (minutes; not part of `make test`).
bench: $(STAMP)
	$(PY) benchmarks/seed_table.py
	$(PY) benchmarks/ideal.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/fanout.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
