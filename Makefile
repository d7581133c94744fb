# Carechart: the two commands a newcomer runs are `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test install lint typecheck fhir-package definitions bench clean migration

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run the server on the embedded SQLite database under ./var (keys created on first run).
serve: install
	$(BIN)/carechart serve --demo

## The official FHIR R4 package (pinned, checksum-verified) for tests and the generators.
fhir-package: install
	$(BIN)/python tools/fhir_package.py

## Regenerate the committed definition tables from the official package.
definitions: fhir-package
	$(BIN)/python tools/gen_fhir_definitions.py

lint: install
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks

typecheck: install
	$(BIN)/mypy

## Lint, type-check and run the whole suite on SQLite and PostgreSQL.
test: install fhir-package lint typecheck
	$(BIN)/python -m pytest -n 2 -q

bench: install fhir-package
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

## Rebuild the initial migration from the declared tables (pre-release only).
migration: install
	$(BIN)/python tools/regen_initial_migration.py
	$(BIN)/ruff check --fix --quiet src/carechart/db/migrations
	$(BIN)/ruff format --quiet src/carechart/db/migrations
