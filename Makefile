# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: run test check lint typecheck bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@# The distribution was called "durable" before it became "durable-core": drop a .venv's
	@# editable install of the old name, or both would stay installed over the same files.
	if ls $(VENV)/lib/python*/site-packages/__editable__.durable-[0-9]*.pth >/dev/null 2>&1; then \
		$(BIN)/python -m pip uninstall --quiet --yes durable && rm -rf src/durable.egg-info; fi
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python examples/quickstart.py

# The TypeScript peer app's node packages (tests/peer_ts), installed again when the lockfile
# changes. Without npm the peer tests skip themselves, except under CI=true, where it fails.
PEER_TS := tests/peer_ts
PEER_TS_STAMP := $(PEER_TS)/node_modules/.installed

$(PEER_TS_STAMP): $(PEER_TS)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(PEER_TS) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	elif [ "$$CI" = "true" ]; then \
		echo "npm is missing: the TypeScript peer tests need node and npm" >&2; exit 1; \
	else echo "npm is missing: the TypeScript peer tests will be skipped"; fi

# Debian's chromium for the dashboard's browser tests (tests/dashboard), installed when missing
# and this runs as root; otherwise those tests skip, saying how, except under CI=true.
CHROMIUM := /usr/bin/chromium

chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
		apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	elif [ "$$CI" = "true" ]; then \
		echo "$(CHROMIUM) is missing: the dashboard tests need it (sudo apt-get install -y chromium)" >&2; exit 1; \
	else echo "$(CHROMIUM) is missing: the dashboard tests will be skipped (sudo apt-get install -y chromium)"; fi

# The suite runs in TEST_WORKERS parallel processes (its tests mostly wait on I/O; `loadgroup`
# keeps the tests that share a module-scoped server on one process, see tests/conftest.py), then
# the tests marked `serial` run alone: one restarts PostgreSQL, the others need a lease not to
# lapse under load.
TEST_WORKERS ?= 4
test: $(STAMP) $(PEER_TS_STAMP) chromium
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not serial"
	$(BIN)/python -m pytest -q -m serial

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_sqlite.py

clean:
	rm -rf $(VENV) .durable .mypy_cache .ruff_cache .pytest_cache
