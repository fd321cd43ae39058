# flaskrtc — the two commands a new user needs:
#   make run    create .venv, install flaskrtc, start the server (configs/config.ini)
#   make test   create .venv with the test extras, lint, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test lint pytest bench venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Reinstall whenever the package metadata changes.
$(STAMP): setup.py pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m flaskrtc $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check flaskrtc tests benchmarks
	$(PY) -m ruff format --check flaskrtc tests benchmarks
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest $(ARGS)

test: lint pytest

bench: $(STAMP)
	$(PY) benchmarks/signal_bench.py
	$(PY) benchmarks/turn_bench.py

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache dist
