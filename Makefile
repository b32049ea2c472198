# The two commands: `make run` (set up, then the main job) and `make test` (set up, then the tests).
VENV ?= .venv
ARGS ?=
# the library is type-checked; clients/, server/, simulations/ and tests/ are linted and formatted
LINTED = fedpers clients server simulations tests

.PHONY: setup run test test-fast lint format bench

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/fedpers simulate --config simulations/scenarios/default.toml $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

# the edit loop: everything but the Ray and deployment-engine tests (`make test` runs them too)
test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow" $(ARGS)

# ruff (lint and format check), mypy on the library, and the layering contracts (import-linter)
lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy fedpers
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

bench: setup
	$(VENV)/bin/python -m simulations.bench_dp_step --write
	$(VENV)/bin/python -m simulations.bench_trunk --write
	$(VENV)/bin/python -m simulations.bench_scenarios --write
	$(VENV)/bin/python -m simulations.bench_secagg --write
	$(VENV)/bin/python -m simulations.bench_deploy --write
	$(VENV)/bin/python -m simulations.bench_levers --write
