# The project's vocabulary. Every target bootstraps what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export FILEIMPORT_DATA_DIR ?= ./var
# Local development fetches from loopback origins (make demo, curl examples).
DEV_ENV := FILEIMPORT_FETCH_ALLOWED_NETWORKS=$${FILEIMPORT_FETCH_ALLOWED_NETWORKS-127.0.0.0/8,::1/128}

.PHONY: help install serve test lint migrate demo bench clean

help:
	@echo "make serve   - set up and run the service on http://127.0.0.1:8000 (SQLite + ./var)"
	@echo "make test    - set up and run the test suite"
	@echo "make lint    - ruff and mypy"
	@echo "make demo    - import sample files from a loopback origin and show the result"
	@echo "make bench   - benchmarks (bench/results/latest.json)"
	@echo "make migrate - create/upgrade the database"

install: $(STAMP)

$(STAMP): pyproject.toml
	@./scripts/check-system.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

migrate: install
	$(BIN)/fileimport migrate

serve: migrate
	@$(BIN)/fileimport bootstrap
	$(DEV_ENV) $(BIN)/fileimport serve

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

demo: install
	$(BIN)/python scripts/demo.py

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
