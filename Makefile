# Two commands do all the set-up and work on a fresh clone:
#   make demo   build the generated paired benchmark, train and evaluate the embedded default
#   make test   run the whole test suite
#   make lint   the linter and the formatter's check (ruff.toml), run by CI before the tests
# Both create the virtual environment .venv (python3 -m venv) and install the package into it
# when it is missing or setup.py or this Makefile (e.g. the libtpu pin below) changed.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
WORKDIR ?= workdir/demo
# The XLA:TPU compiler that `python -m fognet_jax.tools.tpu_fit` (and its test) compiles the
# train step with, no TPU needed: the version jax's `tpu` extra pins for jax 0.10.2. Installed
# beside the packages, not among them: JAX tries to start a TPU with any libtpu it can import,
# which would print libtpu's start-up lines and cost a second in every CPU run.
LIBTPU_VERSION ?= 0.0.42.1
export TF_CPP_MIN_LOG_LEVEL ?= 2
# TensorFlow 2.21 on AVX-512 CPUs logs a oneDNN line at import that the level above does not hide.
export TF_ENABLE_ONEDNN_OPTS ?= 0
# The demo's host allocator: glibc's transparent huge pages for large buffers (1.2x the demo's
# steps/s on 2 CPU cores; docs/training.md, "Host memory: huge pages"). glibc before 2.35 and
# other C libraries ignore it; `make demo DEMO_GLIBC_TUNABLES=` runs with glibc's defaults.
DEMO_GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: demo test lint format venv clean

$(VENV)/.installed: setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --upgrade --no-deps --target $(VENV)/libtpu libtpu==$(LIBTPU_VERSION)
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	GLIBC_TUNABLES=$(DEMO_GLIBC_TUNABLES) $(PY) -m fognet_jax.main --config=configs/synthetic.py \
	    --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --durations=15 tests

# The linter and the formatter's check (ruff.toml); CI runs it before the tests.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Sorts the imports and formats the tree in place.
format: $(VENV)/.installed
	$(VENV)/bin/ruff check --select I --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) workdir *.egg-info
