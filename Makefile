# flaskrtc — the two commands a new user needs:
#   make run    create .venv, install flaskrtc, start the server (configs/config.ini)
#   make test   create .venv with the test extras, lint, run the whole test suite
# Release binaries (PyInstaller, one file each; see README "Download"):
#   make linux | darwin | windows   bin/flaskrtc-<os>-<arch>[.exe], on that OS only
#   make all       every target this host can build;   make release   all + the zip
#   make upx       rebuild this host's binary with upx-compressed libraries
PYTHON ?= python3
VENV   ?= .venv
ifeq ($(OS),Windows_NT)
PY     := $(VENV)/Scripts/python.exe
else
PY     := $(VENV)/bin/python
endif
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
ARGS   ?=

# --- release builds --------------------------------------------------------------------------
# PyInstaller runs from the venv; a CI runner that installed '.[build]' into its own Python
# may pass PYI_PYTHON=python instead.
PYI_PYTHON ?= $(PY)
PYI_WORK   := .pyi-work
VERSION    := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' flaskrtc/__init__.py)
ifeq ($(OS),Windows_NT)
HOST_OS    := windows
else
HOST_OS    := $(shell uname -s | tr '[:upper:]' '[:lower:]')
endif
HOST_ARCH  := $(subst x86_64,amd64,$(subst aarch64,arm64,$(shell uname -m | tr '[:upper:]' '[:lower:]')))
TARGETS    := linux darwin windows
BINARY      = bin/flaskrtc-$(1)-$(HOST_ARCH)$(if $(filter windows,$(1)),.exe)
RELEASE_ZIP := flaskrtc-bin-$(VERSION).zip
# Where each target is built, for the message on any other host.
WHERE_linux   := on Linux
WHERE_darwin  := on macOS
WHERE_windows := on Windows

.PHONY: run test lint pytest bench fuzz soak mutation venv clean $(TARGETS) all release zip upx pyinstaller

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Reinstall whenever the package metadata changes. The build extra brings PyInstaller, which
# the slow test of the release binary needs.
$(STAMP): setup.py pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test,build]'
	touch $(STAMP)

# `make run` needs flaskrtc alone, not the test tools and browsers' drivers.
$(RUN_STAMP): setup.py pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $(RUN_STAMP)

venv: $(STAMP)

run: $(RUN_STAMP)
	$(PY) -m flaskrtc $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check flaskrtc tests benchmarks build tools
	$(PY) -m ruff format --check flaskrtc tests benchmarks build tools
	$(PY) -m mypy
	$(PY) -m check_jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

pytest: $(STAMP)
	$(PY) -m pytest $(ARGS)

test: lint pytest

# A longer fuzzing campaign (tools/fuzz/run.py): atheris when it installs, else hypothesis
# with a large budget. FUZZ_MINUTES in all (10), FUZZ_ARGS e.g. "--targets turn-machine".
FUZZ_MINUTES ?= 10
FUZZ_ARGS    ?=
fuzz: $(STAMP)
	@$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install atheris || \
	  echo "make fuzz: atheris did not install: hypothesis instead"
	$(PY) tools/fuzz/run.py --minutes $(FUZZ_MINUTES) $(FUZZ_ARGS)

# Mutation testing of the sans-I/O cores (tools/mutate.py); not part of `make test`.
# MUTATION_ARGS e.g. "--module flaskrtc/turn/stun.py --max-mutants 50 --report survivors.txt".
MUTATION_ARGS ?=
mutation: $(STAMP)
	$(PY) tools/mutate.py $(MUTATION_ARGS)

# N minutes of mixed load against a real server; fds and RSS must return to their baseline.
SOAK_MINUTES ?= 10
SOAK_ARGS    ?=
soak: $(STAMP)
	$(PY) benchmarks/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/signal_bench.py
	$(PY) benchmarks/turn_bench.py
	$(PY) benchmarks/workers_bench.py
	$(PY) benchmarks/cluster_bench.py
	@test -f $(call BINARY,$(HOST_OS)) || $(MAKE) --no-print-directory $(HOST_OS)
	$(PY) benchmarks/release_bench.py --binary $(call BINARY,$(HOST_OS))

# PyInstaller cannot cross-build: a target for another OS stops here, before any work.
$(TARGETS):
	@if [ "$@" != "$(HOST_OS)" ]; then \
	  echo "make $@: cannot build $(call BINARY,$@) on $(HOST_OS): PyInstaller does not cross-build; build it $(WHERE_$@) (the release workflow builds each OS on its own runner)." >&2; \
	  exit 2; \
	fi
	@$(MAKE) --no-print-directory pyinstaller BIN_NAME=$(notdir $(call BINARY,$@))

# Not called directly: the OS targets above check the host first.
pyinstaller: $(if $(filter $(PY),$(PYI_PYTHON)),$(STAMP))
	FLASKRTC_BIN_NAME=$(BIN_NAME) $(PYI_PYTHON) -m PyInstaller --noconfirm --clean \
	  --distpath bin --workpath $(PYI_WORK) build/flaskrtc.spec
	@echo "built bin/$(BIN_NAME) (flaskrtc $(VERSION))"

all:
	@if [ -z "$(filter $(HOST_OS),$(TARGETS))" ]; then \
	  echo "make all: no release target builds on $(HOST_OS) (linux, darwin and windows build on their own OS)" >&2; \
	  exit 2; \
	fi
	@$(MAKE) --no-print-directory $(HOST_OS)
	@echo "make all: built $(call BINARY,$(HOST_OS)); not built on this host (PyInstaller does not cross-build): $(foreach t,$(filter-out $(HOST_OS),$(TARGETS)),$(t) builds $(WHERE_$(t)),) as the release workflow does"

release: all
	@$(MAKE) --no-print-directory zip

# The release zip of whatever bin/ holds (the workflow fills bin/ from every runner first).
zip:
	$(PYTHON) build/release_zip.py $(RELEASE_ZIP)

upx:
	@command -v upx >/dev/null 2>&1 || { \
	  echo "make upx: upx is not installed (Debian 13 or Ubuntu: apt-get install upx-ucl; macOS: brew install upx; Windows: choco install upx)" >&2; \
	  exit 2; }
	@FLASKRTC_UPX=1 $(MAKE) --no-print-directory $(HOST_OS)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache dist .setuptools-build $(PYI_WORK) bin flaskrtc-bin-*.zip
