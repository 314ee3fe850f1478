# One task list for humans, the pre-stop hook and CI.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(BIN)/skin demo

# One worker per core; tests steal work so the long end-to-end runs spread out. Each worker has
# its own servers and Prefect home. (Three workers on this 2-core machine: 13 min 22 s against
# 12 min 30 s for two.)
XDIST ?= -n auto --dist worksteal

test: install
	$(BIN)/python -m pytest $(XDIST) --durations=20

test-fast: install
	$(BIN)/python -m pytest $(XDIST) -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python -m benchmarks --size full

bench-quick: install
	$(BIN)/python -m benchmarks --size quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
