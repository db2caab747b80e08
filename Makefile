# make setup: idempotent virtualenv in .venv (reinstalls only when a requirements file changes)
# make run:   the main job
# make test:  the test suite
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip here is configured with local extra indexes that may not exist; their warnings are noise.
PIP_NOISE := ^WARNING: Location 'file://
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= all-minilm-l6-v2
VARIANTS ?= fp32,optimized,int8

.PHONY: setup run test lint prepare clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r requirements.txt -r requirements-dev.txt 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e . \
		2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@touch $@

run: setup
	$(BIN)/embench prepare --model $(MODEL) --variant $(VARIANTS)

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
