# Strata: `make run` runs the default study, `make test` runs the tests; both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
CORES ?= 2
CONFIG ?= configs/default.yaml
UI_PORT ?= 5000
# The study's folder, results/<study>/ (read from CONFIG once the venv exists): studies coexist. Each is read
# on first use only, then kept (`$(eval X := ...)$(X)`: a recipe uses STUDY_DIR several times).
STUDY_DIR = $(eval STUDY_DIR := $(or $(shell $(BIN)/python -m workflow.config $(CONFIG)),\
	$(error $(CONFIG) is not a valid study config)))$(STUDY_DIR)
DEFAULT_DIR = $(eval DEFAULT_DIR := $(shell $(BIN)/python -m workflow.config configs/default.yaml))$(DEFAULT_DIR)
CURVE_DIR = $(eval CURVE_DIR := $(shell $(BIN)/python -m workflow.config configs/curve.yaml))$(CURVE_DIR)
METHODS_DIR = $(eval METHODS_DIR := $(shell $(BIN)/python -m workflow.config configs/methods.yaml))$(METHODS_DIR)
CONFIRM_DIR = $(eval CONFIRM_DIR := $(shell $(BIN)/python -m workflow.config configs/confirm.yaml))$(CONFIRM_DIR)
export PATH := $(BIN):$(PATH)

.PHONY: setup run test report lint ui screenshots clean readme-results curve confirm methods

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "need Python 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: setup
	@$(BIN)/python docs/readme_results.py --stamp start --results $(STUDY_DIR)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
	@$(BIN)/python docs/readme_results.py --stamp end --results $(STUDY_DIR)
	@echo; echo "Tables: $(STUDY_DIR)/summary.md; figures: make report"; \
		$(BIN)/python -m workflow.verdict $(STUDY_DIR)/verdict.json

# The size sweep ("by how much", configs/curve.yaml): a study of its own, in its own folder.
curve: setup
	@$(MAKE) --no-print-directory run CONFIG=configs/curve.yaml
	@echo; cat $(CURVE_DIR)/curve.md

# The confirmatory run of the default study's design on fresh seeds (configs/confirm.yaml), in its own folder.
confirm: setup
	@$(MAKE) --no-print-directory run CONFIG=configs/confirm.yaml

# Does curation help every SSL method? {random, hkmeans} x seven methods (configs/methods.yaml), in its own folder.
methods: setup
	@$(MAKE) --no-print-directory run CONFIG=configs/methods.yaml

# Regenerate the README's results blocks and pictures from the studies that ran: `make run` (the default study),
# `make curve` (the size curve), `make confirm` (the confirmatory study) and `make methods` (every SSL method);
# a block whose study has not run is kept.
readme-results: setup
	$(BIN)/python docs/readme_results.py --readme README.md \
		$(if $(wildcard $(DEFAULT_DIR)/verdict.json),--results $(DEFAULT_DIR)) \
		$(if $(wildcard $(CURVE_DIR)/curve.md),--curve $(CURVE_DIR)) \
		$(if $(wildcard $(CONFIRM_DIR)/verdict.json),--confirm $(CONFIRM_DIR)) \
		$(if $(wildcard $(METHODS_DIR)/verdict.json),--methods $(METHODS_DIR))

test: setup
	$(BIN)/python -m pytest -q tests

report: setup
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report $(STUDY_DIR)/report.html
	@echo "report: $(STUDY_DIR)/report.html"

lint: setup
	$(BIN)/ruff check .

ui: setup
	$(BIN)/python -m workflow.ui --config $(CONFIG) --port $(UI_PORT)

# Screenshots of the MLflow UI and the report into $(STUDY_DIR)/screenshots/ (untracked); UPDATE_DOCS=1 replaces
# the README's pictures in docs/images/ instead.
screenshots: setup
	$(BIN)/python docs/screenshots.py --config $(CONFIG) $(if $(UPDATE_DOCS),--update-docs)

clean:
	rm -rf results .snakemake
