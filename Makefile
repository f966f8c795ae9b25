# Strata: `make run` runs the default study, `make test` runs the tests; both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
CORES ?= 2
CONFIG ?= configs/default.yaml
UI_PORT ?= 5000
export PATH := $(BIN):$(PATH)

.PHONY: setup run test report lint ui screenshots clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "need Python 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
	@echo; cat results/summary.md

test: setup
	$(BIN)/python -m pytest -q tests

report: setup
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report results/report.html
	@echo "report: results/report.html"

lint: setup
	$(BIN)/ruff check .

ui: setup
	$(BIN)/python -m workflow.ui --tracking-uri sqlite:///$(abspath results)/mlflow.db --port $(UI_PORT)

screenshots: setup
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf results .snakemake
