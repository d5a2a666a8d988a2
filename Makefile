# Two commands set everything up on a fresh Debian machine (as root):
#   make run    virtualenv, install, start `lanalyze serve` on embedded defaults
#   make test   Python deps + every Debian package the tests use, then the whole suite
# `make check` runs the linters and the type checker.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Every Debian package the test suite drives as a real peer (see tests/README.md).
DEBIAN_PACKAGES := $(shell grep -v '^\#' packaging/debian-test-packages.txt)

# The RFC 7208 SPF test suite (BSD-style licence) ships in pyspf's sdist; fetched, not committed.
SPF_SUITE_VERSION := 2.0.14
SPF_SUITE := .cache/spf-suite/rfc7208-tests.yml

# What the benchmarks use beyond the test peers (bench/smtp_checked_bench.py's Postfix milters).
BENCH_PACKAGES := $(shell grep -v '^\#' packaging/debian-bench-packages.txt)

.PHONY: run test check venv debian-deps bench-deps spf-suite lint format clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(BIN)/lanalyze serve $(ARGS)

# Installs only what is missing, so a machine that has everything needs no network.
debian-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(SPF_SUITE): | $(STAMP)
	mkdir -p .cache/spf-suite
	$(BIN)/pip download --quiet --no-deps --no-binary :all: -d .cache/spf-suite \
	  pyspf==$(SPF_SUITE_VERSION)
	tar -xzf .cache/spf-suite/pyspf-$(SPF_SUITE_VERSION).tar.gz -C .cache/spf-suite \
	  --strip-components=2 pyspf-$(SPF_SUITE_VERSION)/test/rfc7208-tests.yml \
	  pyspf-$(SPF_SUITE_VERSION)/test/rfc7208-tests.LICENSE
	touch $(SPF_SUITE)

spf-suite: $(SPF_SUITE)

bench-deps: debian-deps
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BENCH_PACKAGES)

test: debian-deps venv spf-suite
	$(BIN)/pytest -n 2 --dist loadfile $(PYTEST_ARGS)

check: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .cache
