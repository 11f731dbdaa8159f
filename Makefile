# pagehint: `make demo` and `make test` each set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-slow lint protos protos-check bench clean compose-demo compose-test \
    readme-samples

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lab]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pagehint demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

protos: $(STAMP)
	$(PY) -m scripts.protos

protos-check: $(STAMP)
	$(PY) -m scripts.protos --check

# Lint, the generated-code check, the default test run, the slow tests, then the
# same stack in real containers (skipped, with the reason, where no engine can run).
# The container step installs Docker's packages and starts a daemon as root when
# they are missing (it says so first); `make test SKIP_DOCKER=1` skips it.
# The default tests run in $(WORKERS) pytest-xdist workers: they mostly wait on the
# processes they start (serially: 3.3 min of CPU in 8.2 min of wall time here).
WORKERS ?= 3

test: $(STAMP)
	$(MAKE) lint
	@if [ -f scripts/protos.py ]; then $(MAKE) protos-check; fi
	$(PY) -m pytest -q -n $(WORKERS) -m "not slow and not serial and not docker"
	$(PY) -m pytest -q -m "serial and not docker" || [ $$? -eq 5 ]
	$(PY) -m pytest -q -n $(WORKERS) -m "slow and not serial and not docker" || [ $$? -eq 5 ]
	$(MAKE) compose-test

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not serial and not docker" -x

# Real containers: install Docker's Debian packages and start an engine if none
# answers, build the image (offline when no registry is reachable), run host + 3
# guests, tear everything down. See deploy/compose.sh. SKIP_DOCKER=1 skips both
# (PAGEHINT_SKIP_DOCKER=1 in the environment does too).
SKIP_DOCKER ?=
COMPOSE_ENV = PYTHON=$(abspath $(PY)) $(if $(SKIP_DOCKER),PAGEHINT_SKIP_DOCKER=$(SKIP_DOCKER))

compose-demo: $(STAMP)
	$(COMPOSE_ENV) deploy/compose.sh demo

compose-test: $(STAMP)
	$(COMPOSE_ENV) deploy/compose.sh test

# Rerun every command whose output README.md shows and rewrite those samples (a
# few minutes on 2 cores). ONLY=loadtest,sweep reruns some; see scripts/readme_samples.py.
readme-samples: $(STAMP)
	$(PY) -m scripts.readme_samples $(if $(ONLY),--only $(ONLY))

# Every benchmark, each goal with min–max and a verdict; rewrites bench/results.json,
# bench/README.md's tables and the README's. ONLY=wire,roundtrip runs some.
bench: $(STAMP)
	$(PY) -m bench.run_all $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache runs
