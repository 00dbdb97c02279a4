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

# Two workers (pytest-xdist) on the two cores, a test file per worker at a time (--dist
# loadfile): a module's trained run is made once, and the SLURM tests share one cluster.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Every script in benchmarks/, results in benchmarks/RESULTS.md; QUICK=1 (or
# RUNNER_BENCH_QUICK=1) for the quick settings (about 10-15 minutes on 2 CPU cores).
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(if $(QUICK),--quick)

clean:
	rm -rf outputs/runs outputs/multirun
