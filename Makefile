# The README's two commands: `make quickstart` and `make test`. Both create the environment first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
UV_VERSION := 0.13.9
# A uv on PATH is used as is; otherwise it is installed from PyPI into .uv/ (no root, no global change).
UV := $(or $(shell command -v uv 2>/dev/null),.uv/bin/uv)
PYTEST_ARGS ?=
# make test spreads the test files over this many processes (pytest-xdist; a file's tests stay in one process, so
# its module fixtures are built once). Most of a test's time is single-threaded Python (tracing, Keras), so two
# processes use both cores of a 2-core machine. TEST_WORKERS=0 runs in this process, one test after another.
TEST_WORKERS ?= 2

# uv installs packages without their bytecode (.pyc), and where PYTHONDONTWRITEBYTECODE is set (as on our CI
# machine) Python then compiles TensorFlow's ~3,600 modules from source in every process: `import tfrecsys` took
# 8 CPU-seconds instead of 2.5, paid by every CLI start, test worker, server and Beam worker. So every installed
# module is compiled once, here (~15 s on 2 cores).
compile_bytecode = $(1)/bin/python -m compileall -q -j 0 "$$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null

.PHONY: env peers-env quickstart test test-slow test-all bench lock clean help

help:
	@echo "make quickstart  create .venv, then simulate -> train -> export -> serve -> query -> Beam score"
	@echo "make test        create .venv, then run the test suite without the tests marked slow"
	@echo "make test-slow   create .venv, then run only the tests marked slow (end-to-end, multi-process, load)"
	@echo "make test-all    create .venv, then run every test, the slow end-to-end ones included"
	@echo "make bench       create .venv, then run the benchmarks (figures go to bench/RESULTS.md by hand)"
	@echo "make peers-env   create .venv-peers: the project's environment plus DeepCTR 0.9.4, for peer benchmarks only"
	@echo "make lock        regenerate requirements.lock from pyproject.toml"

env: $(VENV)/.installed

.uv/bin/uv:
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: requirements.lock pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet -r requirements.lock
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet --no-deps -e .
	$(call compile_bytecode,$(VENV))
	touch $@

# The peer benchmarks (bench/bench_*_peers.py) run our models and DeepCTR's in one process on the same rows, so
# their environment is the project's plus DeepCTR 0.9.4 (installed without its dependencies: it would pull in
# another TensorFlow) and bench/requirements-peers.txt (scikit-learn and LightGBM for bench_census_ceiling). None
# of it is a dependency of the project.
PEERS_VENV := .venv-peers
peers-env: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: requirements.lock pyproject.toml bench/requirements-peers.txt | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(PEERS_VENV)
	VIRTUAL_ENV=$(PEERS_VENV) $(UV) pip install --quiet -r requirements.lock
	VIRTUAL_ENV=$(PEERS_VENV) $(UV) pip install --quiet --no-deps -e . deepctr==0.9.4
	VIRTUAL_ENV=$(PEERS_VENV) $(UV) pip install --quiet -r bench/requirements-peers.txt -c requirements.lock
	$(call compile_bytecode,$(PEERS_VENV))
	touch $@

quickstart: env
	$(VENV)/bin/tfrecsys-quickstart --workdir=runs/quickstart

test: env
	$(VENV)/bin/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

# test-slow is the other half of test-all: CI runs test, then test-slow, so a fast failure is reported first.
test-slow: env
	$(VENV)/bin/python -m pytest -q -m slow $(PYTEST_ARGS) tests

test-all: env
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests

bench: env
	$(VENV)/bin/python -m bench.run_all

lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 --quiet -o requirements.lock

clean:
	rm -rf runs .pytest_cache
