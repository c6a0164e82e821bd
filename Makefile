# Two commands do everything on a fresh machine with Python 3.11+ and Node 20:
#   make run    the main job on local defaults (Azurite, local scoring endpoint, head-unit simulator)
#   make test   lint and the whole test suite (real Azurite, real azmlinfsrv)
# Both create .venv and install the npm packages on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
RUN_DIR ?= data/run

.PHONY: run test lint bench clean install

install: $(STAMP) $(NPM_STAMP)

$(STAMP): requirements.txt requirements-dev.txt scoring/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(NPM_STAMP): package.json
	npm install --no-audit --no-fund --silent
	touch $@

run: install
	$(PY) -m shared demo --out $(RUN_DIR)

lint: $(STAMP)
	$(PY) -m ruff check .

test: install lint
	$(PY) -m pytest

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) node_modules data .pytest_cache
