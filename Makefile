# edgesim: the README's commands. Each target sets up what it needs itself.
#
# Installs come from uv.lock (exact versions with hashes): `uv sync --locked` fails
# when the lock no longer matches pyproject.toml, so a stale lock stops the build.
# `make lock` refreshes it; `make test-latest` runs the suite on the newest releases
# that pyproject.toml's ranges allow, in a venv of its own.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv itself, at the version the lock holds, in a venv of its own (.uv): the project's
# venv is synced exactly to the lock, which would otherwise remove or replace it.
UV_VERSION := $(shell awk '/^name = "uv"$$/ { getline; gsub(/"/, "", $$3); print $$3 }' uv.lock)
UV_DIR := .uv
UV := $(UV_DIR)/bin/uv
LATEST := .venv-latest

.PHONY: oracle-venv tls-audit-venv demo test test-latest lint typecheck unit bench clean venv compile lock wheel fuzz

$(UV): uv.lock
	$(PY) -m venv $(UV_DIR)
	$(UV_DIR)/bin/pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'
	touch $(UV)

$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --extra dev --python $(PY)
	touch $(STAMP)

venv: $(STAMP)

# sslyze (the TLS profile tests) in a venv of its own, from the same lock: it caps
# cryptography below the edge's (pyproject.toml, extra tls-audit). Only its command
# is used; the tests find it at $(SSLYZE).
SSLYZE_VENV := .venv-sslyze
SSLYZE := $(SSLYZE_VENV)/bin/sslyze
SSLYZE_STAMP := $(SSLYZE_VENV)/.installed
$(SSLYZE_STAMP): pyproject.toml uv.lock $(UV)
	UV_PROJECT_ENVIRONMENT=$(SSLYZE_VENV) $(UV) sync --locked --no-install-project --extra tls-audit --python $(PY)
	touch $(SSLYZE_STAMP)

tls-audit-venv: $(SSLYZE_STAMP)

# mqtt-codec (the differential oracle for MQTT 3.1.1 decoding, tests/fuzz) in a venv of
# its own, from hash-pinned requirements: its only release is a 2019 sdist that needs
# setuptools<58 to build, which uv.lock cannot hold beside this project's own build
# (tests/fuzz/oracle-requirements.txt says why). The test runs it as a subprocess.
ORACLE_VENV := .venv-oracle
ORACLE_STAMP := $(ORACLE_VENV)/.installed
$(ORACLE_STAMP): tests/fuzz/oracle-requirements.txt tests/fuzz/oracle-codec-requirements.txt
	rm -rf $(ORACLE_VENV)
	$(PY) -m venv $(ORACLE_VENV)
	$(ORACLE_VENV)/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps \
		-r tests/fuzz/oracle-requirements.txt
	$(ORACLE_VENV)/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps \
		--no-build-isolation -r tests/fuzz/oracle-codec-requirements.txt
	touch $(ORACLE_STAMP)

oracle-venv: $(ORACLE_STAMP)

# Refresh uv.lock after changing pyproject.toml (commit both together).
lock: $(UV)
	$(UV) lock

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
unit: compile $(SSLYZE_STAMP) $(ORACLE_STAMP)
	$(BIN)/pytest -q
	EDGESIM_PURE_PYTHON=1 $(BIN)/pytest -q tests/tls tests/mqtt tests/core

test: lint typecheck unit

# The same checks on the newest release of every dependency that the ranges allow,
# resolved afresh each time (the lock plays no part). The compiled build is shared
# with `make test` (it depends on the sources and the Python, not on the packages).
test-latest: $(UV) compile $(SSLYZE_STAMP) $(ORACLE_STAMP)
	rm -rf $(LATEST)
	$(UV) venv -q --python $(PY) $(LATEST)
	$(UV) pip install -q --python $(LATEST)/bin/python --refresh --resolution highest -e '.[dev]'
	$(UV) pip list --python $(LATEST)/bin/python
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/mypy
	$(LATEST)/bin/pytest -q
	EDGESIM_PURE_PYTHON=1 $(LATEST)/bin/pytest -q tests/tls tests/mqtt tests/core

# The sdist and the wheel (connect path compiled when a C compiler is here) into dist/.
wheel: $(STAMP)
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

bench: compile
	$(BIN)/python -m bench

# Longer fuzzing than `make test`'s smoke run: the hypothesis property tests with many
# more examples, then each atheris target for FUZZ_SECONDS on a working copy of its
# seed corpus (.fuzz/TARGET; copy finds worth keeping into tests/fuzz/corpus/TARGET).
# libFuzzer prints each target's executions ("Done N runs"); a crash stops the run and
# leaves its input in .fuzz/.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP) $(ORACLE_STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/pytest -q -p no:cacheprovider tests/fuzz -k "not atheris"
	mkdir -p .fuzz
	@for target in $$(ls tests/fuzz/corpus); do \
		mkdir -p .fuzz/$$target && cp -n tests/fuzz/corpus/$$target/* .fuzz/$$target/; \
		echo "== $$target ($(FUZZ_SECONDS) s)"; \
		EDGESIM_PURE_PYTHON=1 PYTHONPATH=. $(BIN)/python tests/fuzz/atheris_targets.py $$target \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=.fuzz/ \
			.fuzz/$$target > .fuzz/$$target.log 2>&1; rc=$$?; \
		grep -E "^Done|number_of_executed_units" .fuzz/$$target.log; \
		if [ $$rc -ne 0 ]; then tail -40 .fuzz/$$target.log; exit $$rc; fi; \
	done

clean:
	rm -rf $(VENV) $(LATEST) $(SSLYZE_VENV) $(ORACLE_VENV) $(UV_DIR) .edgesim .build build dist *.egg-info .fuzz .hypothesis
