# Both targets create or reuse .venv and install what they need, on a machine with only Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint bench clean

$(VENV)/.core-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.core-installed pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.core-installed
	$(PY) -m t5kit demo

test: $(VENV)/.dev-installed
	$(PY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

bench: $(VENV)/.dev-installed
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/forward.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
