# One-command entry points. Each target creates (or reuses) the local venv in .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements/*.txt 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[all,test,bench]"
	# tf_keras (Keras 2) only writes legacy .h5 files in the tests; it declares `tensorflow`,
	# which tensorflow-cpu already provides, hence --no-deps
	$(PY) -m pip install -q --no-deps "tf_keras==2.21.0"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install  ## train a tiny model on built-in data, trace it, print what it found
	$(VENV)/bin/rnnlens demo

test: install  ## the full test suite (what CI runs), then the Keras suite on the JAX and PyTorch backends
	$(PY) -m pytest -n 2 --dist loadgroup -q
	KERAS_BACKEND=jax $(PY) -m pytest tests/keras -n 2 -q -p no:cacheprovider
	KERAS_BACKEND=torch $(PY) -m pytest tests/keras -n 2 -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not slow"

lint: install  ## ruff and mypy on src/
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: install  ## side-by-side speed ratios, writes benchmarks/results/
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
