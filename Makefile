# Every target installs what it needs into .venv first: a fresh machine needs only python3 >= 3.11,
# make and Java 17. Settings are environment variables (see the README); these two have project defaults.
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; pyproject.toml changes trigger a reinstall.
INSTALLED := $(VENV)/.installed

export BACKFILLS_STORAGE_ROOT ?= $(CURDIR)/.data
export DAGSTER_HOME ?= $(CURDIR)/.dagster

# The demo has its own data root and Dagster instance, wiped at each start, so it never touches other data.
DEMO_ROOT := $(CURDIR)/.data/demo
DEMO_DAGSTER_HOME := $(CURDIR)/.dagster/demo
DEMO_ENV := BACKFILLS_STORAGE_ROOT=$(DEMO_ROOT) DAGSTER_HOME=$(DEMO_DAGSTER_HOME)

# Synthetic landing zone for the demo and for `make dev` on an empty storage root.
SAMPLE_DATA := --start 2025-01-01 --days 60 --customers 2000 --rows-per-day 10000

DEV_HOST ?= 127.0.0.1
DEV_PORT ?= 3000
BENCH_ARGS ?=

.PHONY: help install demo dev test bench clean java dagster-home

help:
	@echo "make demo     generate sample data, backfill 30 days of every feature table, print the batch"
	@echo "make dev      Dagster UI on http://$(DEV_HOST):$(DEV_PORT) (sample data generated if none)"
	@echo "make test     ruff, then the whole pytest suite"
	@echo "make bench    benchmarks/run.py, writes benchmarks/REPORT.md (extra options: BENCH_ARGS=...)"
	@echo "make install  create .venv and install the package with its dev extra"
	@echo "make clean    remove .venv, caches and the demo's data (keeps .data and .dagster)"

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	    || { echo "error: $(PYTHON) is older than Python 3.11; run with PYTHON=python3.11 (or newer)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

java:
	@[ -n "$${JAVA_HOME:-}" ] || command -v java >/dev/null \
	    || { echo "error: Spark needs Java 17: install a JDK or JRE 17 and put java on PATH or set JAVA_HOME" >&2; exit 1; }

dagster-home:
	@mkdir -p "$(DAGSTER_HOME)"
	@test -f "$(DAGSTER_HOME)/dagster.yaml" || cp orchestration/dagster.yaml "$(DAGSTER_HOME)/dagster.yaml"

demo: install java
	rm -rf "$(DEMO_ROOT)" "$(DEMO_DAGSTER_HOME)"
	mkdir -p "$(DEMO_DAGSTER_HOME)" && cp orchestration/dagster.yaml "$(DEMO_DAGSTER_HOME)/dagster.yaml"
	$(DEMO_ENV) $(BIN)/backfills generate $(SAMPLE_DATA)
	$(DEMO_ENV) $(BIN)/backfills backfill --start 2025-01-01 --end 2025-01-30 --requester demo-operator
	$(DEMO_ENV) $(BIN)/backfills batches

# Synthetic data is generated only into an empty local root, never into an s3:// root.
dev: install java dagster-home
	@case "$(BACKFILLS_STORAGE_ROOT)" in \
	    s3://*|s3a://*) ;; \
	    *) test -d "$(BACKFILLS_STORAGE_ROOT)/raw/transactions" || $(BIN)/backfills generate $(SAMPLE_DATA) ;; \
	esac
	$(BIN)/dagster dev -w workspace.yaml -h $(DEV_HOST) -p $(DEV_PORT)

test: install java
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: install java
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build spark-warehouse metastore_db derby.log \
	    benchmarks/.work "$(DEMO_ROOT)" "$(DEMO_DAGSTER_HOME)"
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
