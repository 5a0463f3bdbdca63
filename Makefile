# The two commands a new user runs: `make demo` and `make test`.
# Both build .venv/ in the repo root first (re-built when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit notebooks browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m arboris_nb.demo

lint: $(STAMP)
	$(PY) -m ruff check arboris_nb tests benchmarks
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest tests

test: lint unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
