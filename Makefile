# tickstack — the two commands: `make up` (main job, local) and `make test` (whole suite).
# Both install what is missing first (Debian packages, Postgres extensions, Python deps) and
# skip installs that are already done.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: up test down clean install install-system install-python lint status env

# The real Binance day bundled in ../shared/data; DATA=path/to/files.zip overrides it.
DATA ?= ../shared/data/BTCUSDT-trades-2019-04-01.zip

# The main job: start the local environment, then every stage (migrate, ingest, replicate, embed,
# retention dry-run + real, full backup, archive check), a summary table and the HTML report.
up: install
	@$(PY) -m infra.local up
	@eval "$$($(PY) -m infra.local env)" && $(PY) -m workers up $(DATA)

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

down:
	@if [ -x $(PY) ]; then $(PY) -m infra.local down; else echo "nothing to stop"; fi

clean:
	@if [ -x $(PY) ]; then $(PY) -m infra.local clean --yes; else rm -rf .tickstack; fi

status: install-python
	$(PY) -m infra.local status

env: install-python
	@$(PY) -m infra.local env

# ruff, hadolint, actionlint and the policy pack's tests (scripts/lint.sh).
lint: install-python
	@bash scripts/lint.sh

install: install-system install-python

install-system:
	@bash scripts/install_system.sh

install-python:
	@bash scripts/install_python.sh
