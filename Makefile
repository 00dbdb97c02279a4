# `make run` and `make test` each create .venv when it is missing and install the project.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) run.py

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py
	$(PY) benchmarks/augment.py
	$(PY) benchmarks/imagefolder_cache.py
	$(PY) benchmarks/logging_overhead.py
	$(PY) benchmarks/checkpoint_cost.py
	$(PY) benchmarks/startup.py

clean:
	rm -rf outputs/runs outputs/multirun
