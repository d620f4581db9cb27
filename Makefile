# Two commands for a fresh machine: `make run` and `make test` (README). Everything they need is
# installed from this repo's own files.
VENV ?= .venv
PYTHON ?= python3
# Debian packages `make run` needs (`python3 -m venv`; make itself must be there to read this).
RUN_PACKAGES ?= python3-venv
# And those the tests run for real; podman and mmdebstrap build and run the container image
# without a registry (tests/deploy/test_image.py), uidmap is podman's user-namespace helper.
# chromium is the browser Playwright drives through the console, with a font for its screenshots
# (tests/http/test_console_browser.py); openssl makes the console's TLS test certificate.
SYSTEM_PACKAGES ?= $(RUN_PACKAGES) redis-server prometheus podman mmdebstrap uidmap chromium fonts-dejavu-core openssl

.PHONY: setup run test lint system-deps audit soak bench

$(VENV)/.installed: pyproject.toml
	bash scripts/system-deps.sh $(RUN_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

$(VENV)/.bench: $(VENV)/.installed pyproject.toml
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	touch $@

# The benchmark (docs/benchmarks.md): everything on 127.0.0.1; BENCH_ARGS="--quick --runs 1" for a smoke run.
bench: $(VENV)/.bench
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

run: setup
	$(VENV)/bin/gateway demo

system-deps:
	bash scripts/system-deps.sh $(SYSTEM_PACKAGES)

lint: setup
	$(VENV)/bin/ruff check gateway tests scripts bench
	$(VENV)/bin/ruff format --check gateway tests scripts bench

# Known advisories in the installed packages fail the run; packages the advisory database could
# not be asked about are reported as unchecked (AUDIT_STRICT=1 fails on them): docs/security.md.
audit: setup
	$(VENV)/bin/python scripts/audit.py

# Bounded soak on loopback (docs/reliability.md): `make soak` or `make soak MINUTES=1`.
MINUTES ?= 2
soak: setup
	$(VENV)/bin/python scripts/soak.py --minutes $(MINUTES)

test: setup system-deps lint audit
	$(VENV)/bin/pytest
