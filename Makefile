# The two commands of the README. Each sets up .venv (Python 3.10 + the pinned stack) first;
# the set-up does nothing when .venv is already up to date.
#
#   make run          the main job: the Beam pipeline on the bundled corpus
#   make test         the default test suite (what CI runs)
#   make test-slow    the slow tests too
#   make lint         ruff

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test files run in parallel, one worker per core (a file's tests stay together in one worker).
XDIST ?= -n auto --dist loadfile --no-loadscope-reorder

.PHONY: setup run test test-slow lint clean

setup:
	@tools/bootstrap.sh

run: setup
	$(PY) examples/beam-local-example.py

test: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest $(XDIST) -m "slow or not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf tfx_gpt2_output tfx_gpt2_airflow airflow_home .pytest_cache
