# Two commands matter: `make run` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Two test processes (pytest-xdist, one per core of the reference machine); a module's tests stay together so
# module-scoped process stacks start once. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: setup run test lint format clean bench loadtest deploy-tools browser js-tools js-peer test-deploy

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/ensure-build-deps.sh
	@scripts/ensure-build-deps.sh
	@test -x $(BIN)/python || $$(scripts/find-python.sh) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: setup
	$(BIN)/python -m supervisor

test: setup lint deploy-tools browser js-tools js-peer
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Node 22 (into .tools/node, from the npm registry) and the JavaScript clients the tests drive (the MCP
# conformance suite, the TypeScript SDK, the Tasks extension requester), installed from tests/js/package-lock.json.
JS_TOOLS_STAMP := tests/js/node_modules/.installed
js-tools: $(JS_TOOLS_STAMP)

$(JS_TOOLS_STAMP): tests/js/package.json tests/js/package-lock.json scripts/ensure-node.sh
	@PATH="$$(scripts/ensure-node.sh):$$PATH" && cd tests/js && npm ci --silent --no-audit --no-fund
	@touch $@

# js-libp2p (same Node) for the interop tests: a foreign peer in tests/js/libp2p, its packages pinned by its
# package-lock.json and installed there, never globally.
JS_PEER := tests/js/libp2p
JS_PEER_STAMP := $(JS_PEER)/node_modules/.installed
js-peer: $(JS_PEER_STAMP)

$(JS_PEER_STAMP): $(JS_PEER)/package.json $(JS_PEER)/package-lock.json scripts/ensure-node.sh
	@PATH="$$(scripts/ensure-node.sh):$$PATH" npm ci --silent --no-audit --no-fund --prefix $(JS_PEER)
	@touch $@

# systemd-analyze, for the unit checks in tests/test_deploy_files.py.
deploy-tools:
	@deploy/scripts/ensure-systemd-analyze.sh

# Debian's chromium for the dashboard's browser test (Playwright, from .[dev], drives it; it downloads nothing).
browser:
	@scripts/ensure-chromium.sh

# Real containers: the image, the Kubernetes pod (podman kube play), the compose file
# (podman-compose) and the systemd units' commands, each with an MCP call. See deploy/README.md.
test-deploy: setup
	deploy/scripts/test-deploy.sh

# trio ships its own annotations, but py-libp2p installs trio-typing, whose outdated trio-stubs would take
# precedence for mypy: a link to trio itself, in the folder mypy searches first ([tool.mypy] mypy_path), wins.
TYPING_OVERRIDES := $(VENV)/typing-overrides

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p $(TYPING_OVERRIDES) && ln -sfn "$$($(BIN)/python -c 'import os, trio; print(os.path.dirname(trio.__file__))')" $(TYPING_OVERRIDES)/trio
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# Every benchmark scenario against real processes on free ports; rewrites docs/benchmarks.md (about 5 minutes).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run_all

# Locust, headless, against a gateway + sidecar it starts; CSV and HTML land in loadtests/results/.
loadtest: setup
	$(BIN)/python -m loadtests.run $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis tests/js/node_modules $(JS_PEER)/node_modules
