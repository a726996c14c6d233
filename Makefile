# The two commands of the README. Each one sets itself up on a fresh machine.
#   make run   - create .venv, install, migrate, start web + worker + beat (Ctrl-C stops all)
#   make test  - create .venv, install, run every quality gate and the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HOST ?= 127.0.0.1
export PORT ?= 8000

.PHONY: run test lint format check-python

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		|| { echo "Python 3.11 or newer is needed (found: $$($(PYTHON) --version 2>&1))."; exit 1; }

$(BIN)/python: | check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The local embedding backend (requirements-local.txt) is optional: installed where it can be had.
LOCAL_EXTRA = $(BIN)/pip install --quiet -r requirements-local.txt \
	|| echo "note: local embedding backend not installed (requirements-local.txt); its tests will skip"

$(VENV)/.run-deps: requirements.txt requirements-local.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	@$(LOCAL_EXTRA)
	@touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt requirements-local.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	@$(LOCAL_EXTRA)
	@touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py memory_import_entries
	$(BIN)/python manage.py ensure_admin
	exec $(BIN)/python manage.py runstack

test: $(VENV)/.dev-deps
	@bash scripts/test.sh

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(VENV)/.dev-deps
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
