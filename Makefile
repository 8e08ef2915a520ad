# dualtrack — the two commands a newcomer runs:
#   make demo   runs the demo on this machine (no server needed)
#   make test   installs what the tests need and runs them all
# Each target sets itself up on a fresh machine: a virtual environment in .venv,
# the package with its extras, and (for tests) Debian's prometheus package.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint venv prometheus check-stack clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's prometheus package brings both `prometheus` and `promtool`.
prometheus:
	@tools/install-prometheus.sh

demo: $(STAMP)
	$(VENV)/bin/dualtrack demo $(DEMO_ARGS)

# Static checks: lint and import order, types, and the layering contract
# (docs/architecture.md). They run before the tests and fail the build.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: $(STAMP) prometheus lint
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis out
