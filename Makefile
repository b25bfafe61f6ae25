# The quick start: `make demo` and `make test` work on a fresh clone with only
# python3 and make. Each creates .venv on first use and re-installs it when
# pyproject.toml changes (the stamp file is older than pyproject.toml).

PYTHON ?= python3
VENV ?= .venv
DEMO_DIR ?= .pgflow/demo
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean-demo

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

## demo: a batch of example runs through a real supervisor, on an embedded Postgres kept in $(DEMO_DIR)
demo: $(STAMP)
	$(VENV)/bin/pgflow demo --data-dir $(DEMO_DIR) $(ARGS)

## test: the whole test suite (PGFLOW_TEST_DATABASE_URL, else Docker, else an embedded Postgres)
test: $(STAMP)
	$(VENV)/bin/pytest $(ARGS)

## lint: ruff and mypy, as CI runs them
lint: $(STAMP)
	$(VENV)/bin/ruff check pgflow executor supervisor tests bench
	$(VENV)/bin/mypy pgflow executor supervisor

## clean-demo: stop the demo's Postgres if it is still running and remove $(DEMO_DIR)
clean-demo:
	@if [ -x $(VENV)/bin/pgflow ]; then $(VENV)/bin/pgflow demo --clean --data-dir $(DEMO_DIR); \
	else rm -rf $(DEMO_DIR); fi
