# jaxdistill — the two set-up commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_LATEST := .venv-latest
export JAXDISTILL_DATA_DIR ?= $(CURDIR)/data
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONUNBUFFERED := 1
FMNIST_RAW := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN_DIR ?= runs/main-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

.PHONY: install data run full lint test test-latest bench notebooks lock clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements/lock.txt setup.cfg pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(FMNIST_RAW):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Prepare Fashion-MNIST as a real TFDS dataset, in file order, from Debian's original IDX files (offline), and
# check it equals what the NumPy IDX backend reads. offline.py (the builder) is a prerequisite, so a change to it
# re-runs the (idempotent) preparation: a dataset prepared in the older hashed order is then prepared again.
data: $(JAXDISTILL_DATA_DIR)/.fashion_mnist_prepared

$(JAXDISTILL_DATA_DIR)/.fashion_mnist_prepared: $(FMNIST_RAW) jaxdistill/data/offline.py | $(VENV)/.installed
	$(PY) -m jaxdistill.data.prepare fashion_mnist --backend tfds --data-dir $(JAXDISTILL_DATA_DIR)
	touch $@

# The main job: distill Fashion-MNIST (DM, IPC 10, reduced CPU protocol) and evaluate it next to a random subset.
run: install data
	$(PY) -m experiments.main --out $(RUN_DIR)

# One chunk (<= 9 min) of the paper protocol (DC, DSA, DM, MTT at IPC 1/10/50); run again to continue.
FULL_DIR ?= runs/full
full: install data
	$(PY) -m experiments.main --full --out $(FULL_DIR)

# ruff (pinned in requirements/lock.txt; rules in pyproject.toml): syntax errors and pyflakes' findings.
lint: install
	$(PY) -m ruff check jaxdistill experiments benchmarks tests

test: install data lint
	set -o pipefail; $(PY) -m pytest -q -rs $(PYTEST_ARGS) tests

$(VENV_LATEST)/.installed: requirements/latest.txt setup.cfg
	[ -x $(VENV_LATEST)/bin/python ] || $(PYTHON) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_LATEST)/bin/python -m pip install -q --upgrade -r requirements/latest.txt
	$(VENV_LATEST)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The same suite on the newest jax/flax/optax/chex (no neural-tangents: its tests skip with the reason).
test-latest: $(VENV_LATEST)/.installed data
	$(VENV_LATEST)/bin/python -c "import jax; print('jax', jax.__version__)"
	set -o pipefail; $(VENV_LATEST)/bin/python -m pytest -q -rs -m "not slow" $(PYTEST_ARGS) tests

bench: install data
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# Run every notebook in notebooks/ top to bottom (one kernel each) at its default CPU-sized settings and store it
# with its outputs (experiments/notebooks.py; a notebook whose run raises is not written); prints each one's seconds.
NOTEBOOK_ARGS ?=
notebooks: install data
	$(PY) -m experiments.notebooks $(NOTEBOOK_ARGS)

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v -i '^jaxdistill' > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

clean:
	rm -rf $(VENV) $(VENV_LATEST) *.egg-info
