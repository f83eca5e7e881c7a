# certman: the two commands are `make demo` and `make test` (both run as root on Debian).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all deps venv lint types unit test killsweep demo bench clean

all: test

deps:  ## Debian packages for the testbed (BIND, Unbound, Pebble, Postfix, PowerDNS, ...)
	contrib/testbed/install-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check certman tests contrib hooks
	$(VENV)/bin/ruff format --check certman tests
	$(VENV)/bin/lint-imports

types: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

# A private --basetemp: pytest prunes old basetemps, which must never include a live testbed's.
test: deps $(STAMP) lint types
	$(PY) -m pytest tests -m "not benchmark and not killsweep" -v --durations=15 --basetemp=$(CURDIR)/.pytest-tmp
	$(MAKE) killsweep

# SIGKILL at every write point of a rollover, with a DANE prober running (several minutes).
killsweep: deps $(STAMP)
	$(PY) -m pytest tests -m killsweep -v --durations=5 --basetemp=$(CURDIR)/.pytest-tmp-sweep

demo: deps $(STAMP)
	$(PY) contrib/demo/demo.py

bench: deps $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
