# pagehint: `make demo` and `make test` each set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-slow lint protos protos-check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pagehint demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

protos: $(STAMP)
	$(PY) -m virtqueue.generate

protos-check: $(STAMP)
	$(PY) -m virtqueue.generate --check

# Lint, the generated-code check, the default test run, then the slow tests.
test: $(STAMP)
	$(MAKE) lint
	@if [ -f virtqueue/generate.py ]; then $(MAKE) protos-check; fi
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -x

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache runs
