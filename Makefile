# Developer entry points. Each target creates the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/quickstart.yaml

.PHONY: run test lint format clean

$(BIN)/readiness-sidecar: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --editable '.[test,lint]'
	touch $@

## run: serve the quickstart config on 127.0.0.1:8558 until Ctrl-C
run: $(BIN)/readiness-sidecar
	$(BIN)/readiness-sidecar serve --config $(CONFIG) --log-format text

## test: the whole test suite, with branch coverage
test: $(BIN)/readiness-sidecar
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered --cov-fail-under=85

## lint: ruff and mypy, as CI runs them
lint: $(BIN)/readiness-sidecar
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(BIN)/readiness-sidecar
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .coverage .pytest_cache .mypy_cache .ruff_cache
