# Two commands for a fresh machine: `make run` and `make test` (README). Everything they need is
# installed from this repo's own files.
VENV ?= .venv
PYTHON ?= python3
# Debian packages the tests run for real.
SYSTEM_PACKAGES ?= redis-server prometheus

.PHONY: setup run test lint system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/gateway demo

system-deps:
	bash scripts/system-deps.sh $(SYSTEM_PACKAGES)

lint: setup
	$(VENV)/bin/ruff check gateway tests
	$(VENV)/bin/ruff format --check gateway tests

test: setup system-deps lint
	$(VENV)/bin/pytest
