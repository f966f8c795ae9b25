# Strata: `make run` runs the default study, `make test` runs the tests; both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
CORES ?= 2
CONFIG ?= configs/default.yaml
UI_PORT ?= 5000
CURVE_DIR ?= runs/curve
export PATH := $(BIN):$(PATH)

.PHONY: setup run test report lint ui screenshots clean readme-results curve

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "need Python 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: setup
	@$(BIN)/python docs/readme_results.py --stamp start --results results
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
	@$(BIN)/python docs/readme_results.py --stamp end --results results
	@echo; echo "Tables: results/summary.md; figures: make report"; $(BIN)/python -m workflow.verdict results/verdict.json

# The size sweep ("by how much", configs/curve.yaml) in its own folder, so it does not replace the default study.
curve: setup
	@$(BIN)/python docs/readme_results.py --stamp start --results $(CURVE_DIR)/results
	$(BIN)/snakemake --cores $(CORES) --snakefile $(abspath Snakefile) --configfile $(abspath configs/curve.yaml) --directory $(CURVE_DIR)
	@$(BIN)/python docs/readme_results.py --stamp end --results $(CURVE_DIR)/results
	@echo; cat $(CURVE_DIR)/results/curve.md

# Regenerate the README's results blocks and pictures from a fresh `make run` (and `make curve`, if it ran).
readme-results: setup
	$(BIN)/python docs/readme_results.py --results results --readme README.md \
		$(if $(wildcard $(CURVE_DIR)/results/curve.md),--curve $(CURVE_DIR)/results)

test: setup
	$(BIN)/python -m pytest -q tests

report: setup
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report results/report.html
	@echo "report: results/report.html"

lint: setup
	$(BIN)/ruff check .

ui: setup
	$(BIN)/python -m workflow.ui --config $(CONFIG) --port $(UI_PORT)

screenshots: setup
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf results .snakemake
