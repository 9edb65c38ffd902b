# llmmesh — every target a person or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmmesh-installed
PROTOS := $(shell find protos -name '*.proto')
GEN    := gen/python
GEN_STAMP := $(GEN)/.generated

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help setup proto run test test-unit test-integration lint fmt bench lock clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

# The project itself goes in editable mode (the `llmmesh` command, and the repo root on sys.path),
# built by flit_core from the lock without any download; llmmesh.pth puts the generated stubs on sys.path.
$(STAMP): requirements/lock.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llmmesh needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --editable .
	$(PY) -c 'import site, pathlib; pathlib.Path(site.getsitepackages()[0], "llmmesh.pth").write_text(str(pathlib.Path.cwd() / "$(GEN)") + "\n")'
	touch $@

setup: $(STAMP) $(GEN_STAMP) ## Create the virtualenv with the pinned dependency set and generate the stubs

$(GEN_STAMP): $(STAMP) $(PROTOS) scripts/gen_proto.py
	$(PY) scripts/gen_proto.py
	touch $@

proto: $(STAMP) ## Regenerate the Python gRPC stubs from protos/ and lint the protos
	$(PY) scripts/gen_proto.py
	touch $(GEN_STAMP)
	cd protos && ../$(BIN)/buf lint

run: setup ## Start the whole mesh locally (Redis, memory, router, inference, gateway, Envoy)
	$(PY) -m services.stack

lint: setup ## buf lint, ruff (lint + format check), mypy, the import contracts (pyproject.toml)
	cd protos && ../$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services tests scripts examples bench deploy/k8s/render.py
	$(BIN)/lint-imports

fmt: setup ## Format and auto-fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test-unit: setup ## Unit tests only (fast; a Redis-protocol server, no engine)
	$(BIN)/pytest -m "not integration"

test-integration: setup ## Integration tests: the real stack through Envoy
	$(BIN)/pytest -m integration

test: lint ## Lint, then unit and integration tests
	$(BIN)/pytest

bench: setup ## Benchmarks: print figures, write JSON + plots to bench-results/ (never fails on a target)
	@command -v wrk >/dev/null || { echo "installing wrk (load generator)"; apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) -m bench $(BENCH)

lock: ## Re-resolve requirements/direct.txt into requirements/lock.txt (needs the network)
	$(PYTHON) scripts/lock.py

clean: ## Remove the virtualenv and generated code
	rm -rf $(VENV) gen .mypy_cache .ruff_cache .pytest_cache
