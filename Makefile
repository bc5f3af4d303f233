# tickstack — the two commands: `make up` (main job, local) and `make test` (whole suite).
# Both install what is missing first (Debian packages, Postgres extensions, Python deps) and
# skip installs that are already done.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: up test bench down clean install install-system install-previous install-python lint status env docs

# The real Binance day: ../shared/data's copy where it exists (the project's machines, CI), else
# the same day fetched from Binance's public archive into the download cache (a user's clone).
# DATA=path/to/files.zip overrides both.
DAY        := 2019-04-01
SHARED_DAY := ../shared/data/BTCUSDT-trades-$(DAY).zip
DATA       ?=
UP_INPUT    = $(or $(DATA),$(if $(wildcard $(SHARED_DAY)),$(SHARED_DAY),--fetch-day $(DAY)))

# The main job: start the local environment, then every stage (migrate, ingest, replicate, embed,
# retention dry-run + real, full backup, archive check), a summary table and the HTML report.
up: install
	@$(PY) -m infra.local up
	@$(if $(DATA),echo "make up: ingesting DATA=$(DATA)",$(if $(wildcard $(SHARED_DAY)),\
	  echo "make up: ingesting $(SHARED_DAY) (the real day in ../shared/data)",\
	  echo "make up: no $(SHARED_DAY): fetching BTCUSDT spot trades $(DAY) from Binance's public archive (cached)"))
	@eval "$$($(PY) -m infra.local env)" && $(PY) -m workers up $(UP_INPUT)

# Two pytest workers (pytest-xdist), a test file each at a time: each worker starts its own
# throwaway servers, and most integration tests wait on servers, not on the CPU.
# PYTEST_WORKERS=0 runs the suite in one process. The tests also need the build an in-place
# major upgrade starts from (the upgrade's proof).
PYTEST_WORKERS ?= 2
test: install-previous install-python lint
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# Every benchmark (bench/all.py), each on its own throwaway servers; figures (JSON, the month's
# PNG) in .tickstack/bench/. BENCH_ARGS=--month adds the generated month (~30 min here),
# BENCH_ARGS="--vectors 1000000" the million vectors. Never part of make test.
BENCH_ARGS ?=
bench: install
	$(PY) bench/all.py $(BENCH_ARGS)

down:
	@if [ -x $(PY) ]; then $(PY) -m infra.local down; else echo "nothing to stop"; fi

clean:
	@if [ -x $(PY) ]; then $(PY) -m infra.local clean --yes; else rm -rf .tickstack; fi

status: install-python
	$(PY) -m infra.local status

env: install-python
	@$(PY) -m infra.local env

# The generated references (docs/reference/settings.md from Settings and the stack config);
# tests/unit/test_docs.py fails when the committed page differs.
docs: install-python
	$(PY) -m infra.offline.reference

# ruff, hadolint, actionlint and the policy pack's tests (scripts/lint.sh).
lint: install-python
	@bash scripts/lint.sh

install: install-system install-python

# A local state that still holds a cluster of the previous PostgreSQL major (PG_VERSION) needs
# the previous build too: `make up` then upgrades it in place (docs/upgrading.md).
OLD_CLUSTER = $(shell cat .tickstack/primary/data/PG_VERSION .tickstack/replica/data/PG_VERSION 2>/dev/null \
                | grep -vx "$$(sed -n 's/^PG_MAJOR=//p' scripts/versions.env)" | head -n1)
install-system:
	@bash scripts/install_system.sh $(if $(OLD_CLUSTER),--with-previous)

install-previous:
	@bash scripts/install_system.sh --with-previous

install-python:
	@bash scripts/install_python.sh
