# One-command entry points. Each target creates (or reuses) the local venv in .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# the installs are redone when the package metadata or a requirements file changes
HASH   := $(shell cat pyproject.toml requirements/*.txt 2>/dev/null | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-$(HASH)
DEMO_STAMP := $(VENV)/.demo-$(HASH)
# every install here takes this machine's pins (the torch CPU wheel on disk; one agreeing botocore set)
PIP    := $(PY) -m pip install -q -c requirements/constraints.txt

.PHONY: install install-demo demo test test-fast lint docs bench clean browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# the demo needs Keras, a backend (TensorFlow here), scikit-learn and matplotlib: ~1.9 GB, not 4
$(DEMO_STAMP): pyproject.toml requirements/dev.txt | $(VENV)/bin/python
	$(PIP) -e ".[keras,probe,viz]" -r requirements/dev.txt
	rm -f $(VENV)/.demo-*
	touch $@

$(STAMP): pyproject.toml requirements/dev.txt | $(VENV)/bin/python
	$(PIP) -e ".[all,test,docs]" -r requirements/dev.txt
	# tf_keras (Keras 2) only writes legacy .h5 files in the tests; it declares `tensorflow`,
	# which tensorflow-cpu already provides, hence --no-deps
	$(PY) -m pip install -q --no-deps "tf_keras==2.21.0"
	rm -f $(VENV)/.installed-* $(VENV)/.demo-*
	touch $@ $(DEMO_STAMP)

install: $(STAMP)

install-demo: $(DEMO_STAMP)

demo: install-demo  ## train a tiny model on built-in data, trace it, print what it found
	$(VENV)/bin/rnnlens demo

# the viewer's browser tests run in Debian's chromium: make test fails without it instead of skipping them
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "make test: chromium is not installed, and the viewer's \
	browser tests need it. Install it (Debian/Ubuntu: sudo apt-get install chromium, as .ci/run does), or \
	run make test-fast, which skips them." >&2; exit 1; }

test: browser install  ## the full test suite (what CI runs), then the Keras suite on the JAX and PyTorch backends
	RNNLENS_REQUIRE_BROWSER=1 $(PY) -m pytest -n 2 --dist loadgroup -q
	KERAS_BACKEND=jax $(PY) -m pytest tests/keras -n 2 -q -p no:cacheprovider
	KERAS_BACKEND=torch $(PY) -m pytest tests/keras -n 2 -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not slow"

lint: install  ## ruff and mypy on src/
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

docs: install  ## the documentation site in site/, strict: a broken link or reference fails
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d site

bench: install  ## side-by-side speed ratios beside the peers (the bench extra), writes benchmarks/results/
	$(PIP) -e ".[bench]"
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .hypothesis
