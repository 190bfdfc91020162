# Two commands on a fresh machine (Python 3.11+ and make):
#   make run    the local stack on http://127.0.0.1:$${PORT:-3000}, until Ctrl-C
#   make test   lint, types, template checks, unit, integration, end-to-end and browser tests
# And: make test-long, make bench, make load, make reconcile.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-long bench load lint types check-template unit integration e2e browser browser-deps reconcile install clean

install: $(STAMP)

# Re-installs whenever the project's dependencies change.
$(STAMP): pyproject.toml local/pyproject.toml layers/shared/requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; install Python 3.11 or newer (or pass PYTHON=...)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { echo "make: $(PYTHON) is older than 3.11; pass PYTHON=python3.11 (or newer)" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "make: could not create $(VENV) (on Debian: apt-get install python3-venv)" >&2; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' -e ./local
	@touch $(STAMP)

run: $(STAMP)
	@$(PY) -m conduix_local

# Replays every org's ledger against its wallet: the running local stack's, or a deployed
# table's when BILLING_TABLE (and AWS credentials) are set. Non-zero on any discrepancy.
reconcile: $(STAMP)
	@STACK=$(STACK) $(PY) -m conduix_local.reconcile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

types: $(STAMP)
	$(VENV)/bin/mypy

check-template: $(STAMP)
	$(VENV)/bin/cfn-lint template.yaml

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration tests/local

e2e: $(STAMP)
	$(VENV)/bin/pytest -q tests/e2e

browser: $(STAMP) browser-deps
	$(VENV)/bin/pytest -q tests/browser

# Headless Chromium and its driver for the browser tests, from Debian's packages. Without
# root (or sudo) it says what to install; the browser tests then skip, except in CI.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing chromium and chromium-driver (Debian packages) for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-liberation >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-liberation >/dev/null; \
	else echo "make: the browser tests need chromium and chromium-driver (apt-get install chromium chromium-driver)" >&2; fi

test: lint types check-template browser-deps
	$(VENV)/bin/pytest -q tests

# The same suite with the long profiles (the ledger state machine runs 10,000+ steps).
test-long: lint types check-template browser-deps
	CONDUIX_PROFILE=long $(VENV)/bin/pytest -q tests

# Writes docs/benchmarks.md: DynamoDB requests and capacity units per path, billing CPU
# against a bare UpdateItem, cold-start imports against `import boto3`, the hottest item;
# then time to first token through the gateway against the upstream alone (bench/ttft.py).
bench: $(STAMP)
	$(PY) -m bench.run
	$(PY) -m bench.ttft
	$(PY) -m bench.hot_org

# A bounded load on loopback against the local stack, again after 50,000 ledger entries of
# history (writes that comparison into docs/benchmarks.md); fails on any overdraft or drift,
# or if the median billed request grew more than 1.3x.
load: $(STAMP)
	$(PY) -m bench.load

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .aws-sam test-artifacts
