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
# `make run CARS=60 START=2015-01-01 END=2016-06-30 SEED=3 REPLAY_DAYS=4`: a smaller main job. Unset
# variables keep the demo command's defaults (300 cars, 2014-01-01..2016-12-31, seed 7, 14 days replayed).
DEMO_ARGS = $(if $(CARS),--cars $(CARS)) $(if $(START),--start $(START)) $(if $(END),--end $(END)) \
            $(if $(SEED),--seed $(SEED)) $(if $(REPLAY_DAYS),--replay-days $(REPLAY_DAYS))

.PHONY: run test lint bench clean install

install: $(STAMP) $(NPM_STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-lstm.txt scoring/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(NPM_STAMP): package.json
	npm install --no-audit --no-fund --silent
	touch $@

run: install
	$(PY) -m shared demo --out $(RUN_DIR) $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

test: install lint
	$(PY) -m pytest

# Each benchmark prints its figures; they take minutes (core: 2,000 cars x 3 years, 100,000 batteries).
bench: install
	for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) node_modules data .pytest_cache
