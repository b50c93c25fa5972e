# zhongtai developer commands. Quick start: `make serve` and `make test`.
# uv is bootstrapped into .tools/ when it is not on PATH; Python 3.11+ must be.

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTHON ?= python3
export UV_PYTHON_DOWNLOADS := never
# Bytecode is compiled at install and cached for our own sources: without it every
# `zhongtai` process recompiles its imports (seconds, not milliseconds).
unexport PYTHONDONTWRITEBYTECODE
export UV_PYTHON := $(shell $(PYTHON) -c "import sys; print(sys.executable)")
# The PostgreSQL server of the second test run; each test creates and drops its own database.
TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
# The Redis of the second run's rq queue driver; each test uses queue names of its own.
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: serve test test-sqlite test-postgres lint format typecheck check sync bench help

help:
	@echo "make serve      start zhongtai on http://127.0.0.1:8000 (embedded defaults)"
	@echo "make test       run the tests on SQLite, then on PostgreSQL"
	@echo "make lint       ruff (lint + format check) and mypy"
	@echo "make bench      run the benchmarks in bench/"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

sync: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --locked --quiet --compile-bytecode
	@# htmx and uPlot from the npm registry, as core/ui-assets/package-lock.json pins them
	@# (checked against its integrity hashes; nothing is downloaded once they are there).
	$(UV) run --no-sync python -m zhongtai.ui.vendor --quiet

serve: sync
	$(UV) run --no-sync zhongtai serve

test: test-sqlite test-postgres

test-sqlite: sync
	@echo "== tests on the embedded defaults (SQLite, local object store)"
	$(UV) run --no-sync pytest $(PYTEST_ARGS)

test-postgres: sync
	@if $(UV) run --no-sync python -c "import psycopg; psycopg.connect('$(TEST_POSTGRES_URL)', connect_timeout=3).close()" 2>/dev/null; then \
		if $(UV) run --no-sync python -c "import redis; redis.Redis.from_url('$(TEST_REDIS_URL)', socket_connect_timeout=3).ping()" 2>/dev/null; then \
			echo "== tests on PostgreSQL ($(TEST_POSTGRES_URL)) + Redis ($(TEST_REDIS_URL), rq queue driver)"; \
			ZHONGTAI_TEST_DATABASE_URL=$(TEST_POSTGRES_URL) ZHONGTAI_TEST_REDIS_URL=$(TEST_REDIS_URL) $(UV) run --no-sync pytest $(PYTEST_ARGS); \
		elif [ -n "$$ZHONGTAI_REQUIRE_POSTGRES" ]; then \
			echo "Redis is not reachable at $(TEST_REDIS_URL)" >&2; exit 1; \
		else \
			echo "== tests on PostgreSQL ($(TEST_POSTGRES_URL)); Redis not reachable, so the rq driver is not tested"; \
			ZHONGTAI_TEST_DATABASE_URL=$(TEST_POSTGRES_URL) $(UV) run --no-sync pytest $(PYTEST_ARGS); \
		fi; \
	elif [ -n "$$ZHONGTAI_REQUIRE_POSTGRES" ]; then \
		echo "PostgreSQL is not reachable at $(TEST_POSTGRES_URL)" >&2; exit 1; \
	else \
		echo "== PostgreSQL not reachable at $(TEST_POSTGRES_URL): skipping the PostgreSQL run"; \
		echo "   (start PostgreSQL or set TEST_POSTGRES_URL; CI always runs it)"; \
	fi

lint: sync
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync mypy

format: sync
	$(UV) run --no-sync ruff format .
	$(UV) run --no-sync ruff check --fix .

check: lint test

bench: sync
	bash bench/run.sh
