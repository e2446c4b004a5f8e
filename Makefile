# fedrisk — the two Quickstart commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedrisk-installed
PYTEST_ARGS ?=
# one test worker per usable core (nproc follows CPU affinity), at most 4: beyond that the longest files set the time
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: demo test lint install system-deps sandbox-deps bench clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)  ## create .venv and install fedrisk with test extras

system-deps:  ## Debian packages for the sandbox and the report's browser test (needs root; skipped otherwise)
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		missing=""; for p in bubblewrap chromium iproute2; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || echo "warning: could not install$$missing"; fi; \
	else echo "system-deps: not root or no apt-get; bubblewrap/chromium tests will say they were skipped"; fi

sandbox-deps:  ## bubblewrap for the scoring sandbox (needs root; the scorer refuses to serve without a sandbox)
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! command -v bwrap >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null || echo "warning: could not install bubblewrap"; \
	fi

demo: $(STAMP) sandbox-deps  ## run a whole local federation over gRPC+TLS on loopback
	$(BIN)/fedrisk demo

test: $(STAMP) system-deps lint  ## check style and types (make lint), then run the test suite
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff format check and ruff lint (syntax, pyflakes, raise-from) on fedrisk/benchmarks/tests, mypy on fedrisk, strict on crypto/ and audit/ (settings in pyproject.toml)
	$(BIN)/ruff format --check fedrisk benchmarks tests
	$(BIN)/ruff check fedrisk benchmarks tests
	$(BIN)/mypy

bench: $(STAMP)  ## run every benchmark in quick mode
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b --quick; done

clean:  ## remove the virtualenv and run folders
	rm -rf $(VENV) runs .pytest_cache
