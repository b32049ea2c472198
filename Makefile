# The two commands: `make run` (set up, then the main job) and `make test` (set up, then the tests).
VENV ?= .venv
ARGS ?=

.PHONY: setup run test bench

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/fedpers simulate --config simulations/scenarios/default.toml $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

bench: setup
	$(VENV)/bin/python -m simulations.bench_dp_step --write
	$(VENV)/bin/python -m simulations.bench_scenarios --write
	$(VENV)/bin/python -m simulations.bench_secagg --write
	$(VENV)/bin/python -m simulations.bench_deploy --write
