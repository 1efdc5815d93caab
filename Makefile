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
DEMO_ENV := BACKFILLS_STORAGE_ROOT=$(DEMO_ROOT) DAGSTER_HOME=$(DEMO_DAGSTER_HOME) BACKFILLS_APPROVERS=demo-approver

# Synthetic landing zone for the demo (fixed dates) and for `make dev` on an empty storage root (60 days
# ending yesterday, so that the Materialize dialog's default ranges have data).
SAMPLE_SIZE := --customers 2000 --rows-per-day 10000
SAMPLE_DATA := --start 2025-01-01 --days 60 $(SAMPLE_SIZE)
DEV_SAMPLE_DATA = --start $(shell date -u -d '60 days ago' +%F) --days 60 $(SAMPLE_SIZE)
# The demo's landing files for Jan 21..30 first arrive a fifth short; the complete files come later.
DEMO_OUTAGE := $(foreach day,21 22 23 24 25 26 27 28 29 30,--fault partial_delivery:2025-01-$(day))
DEMO_FEATURES := customer_daily_txn.txn_count,customer_txn_7d.amount_sum_usd_7d,customer_risk_profile.risk_tier
DEMO_REDELIVERY := --start 2025-01-21 --days 10 --customers 2000 --rows-per-day 10000

DEV_HOST ?= 127.0.0.1
DEV_PORT ?= 3000
BENCH_ARGS ?=
MUTANTS_ARGS ?=
# Modules for `make mutants`, by path or short name, comma-separated (tests/mutants.py --list); empty: all.
MODULES ?=

# The local Spark Connect server that `make dev` shares between all runs, so that no run starts its own JVM.
SPARK_CONNECT_PORT ?= 15002
SPARK_STATE_DIR ?= $(CURDIR)/.spark
CONNECT_SERVER := $(BIN)/python -m backfills.resources.connect_server
DAGSTER_DEV := $(BIN)/dagster dev -w workspace.yaml -h $(DEV_HOST) -p $(DEV_PORT)

.PHONY: help install demo dev test test-fast screenshots mutants bench bench-checks clean java dagster-home

help:
	@echo "make demo     the governed flow on sample data: backfill, checks, approval, promotion, fix, rollback, audit"
	@echo "make dev      Dagster UI on http://$(DEV_HOST):$(DEV_PORT) (sample data generated if none)"
	@echo "make spark-connect-start|stop|status   the local Spark Connect server (port SPARK_CONNECT_PORT)"
	@echo "make test     ruff, then the whole pytest suite"
	@echo "make test-fast  ruff, then the suite without the end-to-end, Spark Connect and crash tests"
	@echo "make screenshots  the browser test, saving the README's pictures of the Dagster UI in docs/images"
	@echo "make mutants  mutation testing of every safety module, report in tests/mutants/ (MODULES=a,b for some)"
	@echo "make bench    benchmarks/run.py, writes benchmarks/REPORT.md (extra options: BENCH_ARGS=...)"
	@echo "make bench-checks  benchmarks/checks.py, the quality gates against their floor (CHECKS_REPORT.md)"
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
	@echo; echo "== 1. Land 60 days of card transactions; an upstream outage cut Jan 21..30 short by a fifth"
	$(DEMO_ENV) $(BIN)/backfills generate $(SAMPLE_DATA) $(DEMO_OUTAGE)
	@echo; echo "== 2. Backfill 60 days of every feature table through Dagster into staging, checked"
	$(DEMO_ENV) $(BIN)/backfills backfill --start 2025-01-01 --end 2025-03-01 --requester demo-operator \
	    --batch-id history
	@echo; echo "== 3. Approve as demo-approver through the local approval channel, then promote"
	$(DEMO_ENV) $(BIN)/backfills approve history --as demo-approver
	$(DEMO_ENV) $(BIN)/backfills promote history --as demo-operator
	@echo; echo "== 3b. What models read now: a training set (point in time) and the online store (newest day)"
	@printf 'customer_id,event_ts,label\nC000042,2025-01-25T12:00:00Z,0\nC000042,2025-02-02T00:00:00Z,1\nC000007,2025-01-29T23:59:59.999Z,0\n' \
	    > $(DEMO_ROOT)/entities.csv
	$(DEMO_ENV) $(BIN)/backfills training-set --entities $(DEMO_ROOT)/entities.csv --features $(DEMO_FEATURES) \
	    --out $(DEMO_ROOT)/training/history.parquet
	$(DEMO_ENV) $(BIN)/backfills online get customer_txn_7d C000042 C000007
	@echo; echo "== 4. The complete files for Jan 21..30 arrive: recompute customer_daily_txn and its blast radius"
	$(DEMO_ENV) $(BIN)/backfills generate $(DEMO_REDELIVERY)
	$(DEMO_ENV) $(BIN)/backfills backfill --start 2025-01-21 --end 2025-01-30 --tables customer_daily_txn \
	    --downstream --requester demo-operator --batch-id jan-redelivery
	$(DEMO_ENV) $(BIN)/backfills approve jan-redelivery --as demo-approver
	$(DEMO_ENV) $(BIN)/backfills promote jan-redelivery --as demo-operator
	@echo "-- the same entities now get the corrected late-January values; the online store's day did not change"
	$(DEMO_ENV) $(BIN)/backfills training-set --entities $(DEMO_ROOT)/entities.csv --features $(DEMO_FEATURES) \
	    --out $(DEMO_ROOT)/training/corrected.parquet
	$(DEMO_ENV) $(BIN)/backfills online status
	@echo; echo "== 5. Roll the correction back in one step (say a downstream team asks for time)"
	$(DEMO_ENV) $(BIN)/backfills rollback --to previous --as demo-operator \
	    --reason "demo: the risk team asks to keep the old Jan 21..30 values until Monday"
	@echo "-- training sets are back to the first values (and --release rebuilds any earlier one)"
	$(DEMO_ENV) $(BIN)/backfills training-set --entities $(DEMO_ROOT)/entities.csv --features $(DEMO_FEATURES) \
	    --out $(DEMO_ROOT)/training/rolled_back.parquet
	$(DEMO_ENV) $(BIN)/backfills online get customer_txn_7d C000042 C000007
	@echo; echo "== 5b. A rollback drill: rehearse rolling back to the previous release on a shadow pointer"
	@echo "   (readers stay on production), verify every file it lists, time the restore"
	$(DEMO_ENV) $(BIN)/backfills drill --to previous
	$(DEMO_ENV) $(BIN)/backfills drills
	@echo; echo "== 6. The audit trail of one partition, and every release"
	$(DEMO_ENV) $(BIN)/backfills audit customer_daily_txn --date 2025-01-25
	$(DEMO_ENV) $(BIN)/backfills releases
	@echo; echo "Open the same state in the Dagster UI:"
	@echo "  make dev BACKFILLS_STORAGE_ROOT=$(DEMO_ROOT) DAGSTER_HOME=$(DEMO_DAGSTER_HOME)"

# Synthetic data is generated only into an empty local root, never into an s3:// root.
# Runs use the Spark Connect server named by BACKFILLS_SPARK_REMOTE, else a local one started here; a server
# started here is stopped when `dagster dev` exits, Ctrl-C included (one started before is left running).
dev: install java dagster-home
	@case "$(BACKFILLS_STORAGE_ROOT)" in \
	    s3://*|s3a://*) ;; \
	    *) test -d "$(BACKFILLS_STORAGE_ROOT)/raw/transactions" || $(BIN)/backfills generate $(DEV_SAMPLE_DATA) ;; \
	esac
	@# Partitions span the landed days of a local root (unless set): the dialog offers only days with data.
	@landed=$$(ls "$(BACKFILLS_STORAGE_ROOT)/raw/transactions" 2>/dev/null | sed -n 's/^date=//p' | sort); \
	if [ -n "$$landed" ]; then \
	    export BACKFILLS_PARTITIONS_START=$${BACKFILLS_PARTITIONS_START:-$$(echo "$$landed" | head -1)}; \
	    export BACKFILLS_PARTITIONS_END=$${BACKFILLS_PARTITIONS_END:-$$(echo "$$landed" | tail -1)}; \
	    echo "partitions $$BACKFILLS_PARTITIONS_START..$$BACKFILLS_PARTITIONS_END (the landed days)"; \
	fi; \
	if [ -n "$${BACKFILLS_SPARK_REMOTE:-}" ]; then \
	    echo "runs use the Spark Connect server at $$BACKFILLS_SPARK_REMOTE"; \
	    exec $(DAGSTER_DEV); \
	fi; \
	$(CONNECT_SERVER) status --state-dir "$(SPARK_STATE_DIR)" >/dev/null 2>&1 && started_here= || started_here=1; \
	remote=$$($(CONNECT_SERVER) start --port $(SPARK_CONNECT_PORT) --state-dir "$(SPARK_STATE_DIR)") || exit 1; \
	if [ -n "$$started_here" ]; then \
	    trap '$(CONNECT_SERVER) stop --state-dir "$(SPARK_STATE_DIR)"' EXIT; \
	    trap 'exit 130' INT TERM; \
	fi; \
	echo "runs use the Spark Connect server at $$remote"; \
	BACKFILLS_SPARK_REMOTE=$$remote $(DAGSTER_DEV)

.PHONY: spark-connect-start spark-connect-stop spark-connect-status

# Start (or reuse) the server and print its URL: export BACKFILLS_SPARK_REMOTE=<URL> in the shells that use it.
spark-connect-start: install java
	@$(CONNECT_SERVER) start --port $(SPARK_CONNECT_PORT) --state-dir "$(SPARK_STATE_DIR)"

spark-connect-stop: install
	@$(CONNECT_SERVER) stop --state-dir "$(SPARK_STATE_DIR)"

spark-connect-status: install
	@$(CONNECT_SERVER) status --state-dir "$(SPARK_STATE_DIR)"

# TEST_WORKERS=N spreads the test modules over N pytest-xdist processes, whole modules at a time
# (tests/conftest.py). The default runs them in this process: on 2 cores two workers were slower (40 min
# against about 33), as the Spark JVMs and the Dagster services of both compete for the same cores.
TEST_WORKERS ?= 0

test: install java
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_WORKERS) --no-loadscope-reorder

test-fast: install java
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not end_to_end and not spark_connect and not crash"

screenshots: install java
	BACKFILLS_SCREENSHOTS_DIR=docs/images $(BIN)/pytest tests/test_browser_ui.py

# Small deliberate bugs in a copy of the package, one at a time; names those no test notices in
# tests/mutants/REPORT.md and report.json, refreshing the entries of the modules run (see the README).
mutants: install java
	$(BIN)/python tests/mutants.py $(if $(MODULES),--modules $(MODULES)) $(MUTANTS_ARGS)

bench: install java
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

bench-checks: install java
	$(BIN)/python benchmarks/checks.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build spark-warehouse metastore_db derby.log \
	    benchmarks/.work "$(DEMO_ROOT)" "$(DEMO_DAGSTER_HOME)"
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
