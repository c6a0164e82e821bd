# Two commands do everything on a fresh machine with Python 3.11+ and Node 20:
#   make run    the main job on local defaults (Azurite, local scoring endpoint, head-unit simulator)
#   make test   lint, the checkov scan of infra/ and the whole test suite (real Azurite, real azmlinfsrv)
# Both create .venv and install the npm packages on first use (make test also .checkov-venv).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
# checkov pins packaging<24, which pytest 9 outgrows: it gets a venv of its own.
CHECKOV_VENV  := .checkov-venv
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
RUN_DIR ?= data/run
# `make run CARS=60 START=2015-01-01 END=2016-06-30 SEED=3 REPLAY_DAYS=4`: a smaller main job. Unset
# variables keep the demo command's defaults (300 cars, 2014-01-01..2016-12-31, seed 7, 14 days replayed).
# CHECK=1 makes it fail when the summary's check against the simulator's truth fails (as .ci/run does).
DEMO_ARGS = $(if $(CARS),--cars $(CARS)) $(if $(START),--start $(START)) $(if $(END),--end $(END)) \
            $(if $(SEED),--seed $(SEED)) $(if $(REPLAY_DAYS),--replay-days $(REPLAY_DAYS)) \
            $(if $(CHECK),--check)

.PHONY: run test test-unit test-integration test-e2e test-browser lint format infra-scan bench clean install chromium

install: $(STAMP) $(NPM_STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-lstm.txt scoring/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(CHECKOV_STAMP): requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $@

$(NPM_STAMP): package.json
	npm install --no-audit --no-fund --silent
	touch $@

# Debian's chromium and chromium-driver for the browser test (tests/test_dashboard_browser.py), installed when
# missing: a clean CI machine gets them; Selenium drives /usr/bin/chromedriver and downloads nothing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; }

run: install
	$(PY) -m shared demo --out $(RUN_DIR) $(DEMO_ARGS)

# ruff check and ruff format --check: the layout is ruff format's (`make format` applies it).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .

# checkov on infra/ (Bicep): zero failed checks, every template parsed, each skip justified in place.
infra-scan: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/python infra/scan.py

test: install chromium lint infra-scan
	$(PY) -m pytest

# One group alone (tests/conftest.py assigns each test to one): pure code / real local services / the main job /
# headless Chromium on the dashboard.
test-unit test-integration test-e2e: test-%: install
	$(PY) -m pytest -m $*

test-browser: install chromium
	$(PY) -m pytest -m browser

# Each benchmark prints its figures; they take minutes (core: 2,000 cars x 3 years, 100,000 batteries).
bench: install
	for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules data .pytest_cache
