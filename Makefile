# Two set-up commands on a fresh machine (see README): `make demo` and `make test`.
VENV := .venv
NNFLASH := $(VENV)/bin/nnflash

.PHONY: setup demo test test-fast lint typecheck bench

setup:
	@scripts/setup.sh

# The main job on the built-in local device.
demo: setup
	$(NNFLASH) run --quick

# The whole test suite (unit, integration, emulated; hardware tests skip without a device).
test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy
