# edgesim: the README's commands. Each target sets up what it needs itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean venv compile

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The connect path compiled with mypyc (edge/compiled.py); skipped when up to date.
# Without a C compiler it says so and the edge runs its sources.
compile: $(STAMP)
	$(BIN)/python -m edge.compiled build

demo: compile
	$(BIN)/python -m devices.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The whole suite on the compiled modules, then the tests of those modules on their sources.
unit: compile
	$(BIN)/pytest -q
	EDGESIM_PURE_PYTHON=1 $(BIN)/pytest -q tests/tls tests/mqtt tests/core

test: lint typecheck unit

bench: compile
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .edgesim .build build *.egg-info
