# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The oldest supported versions of the dependencies, pinned in a constraints
# file; the pins have wheels for CPython 3.11, which this environment uses.
OLDEST_PYTHON ?= python3.11
OLDEST ?= .venv-oldest
OLDEST_BIN := $(OLDEST)/bin
OLDEST_PINS := .ci/constraints-oldest.txt
# Never compile a pinned library from source: a missing wheel is an error.
OLDEST_WHEELS := numpy,scipy,pandas,scikit-learn,pyarrow

.PHONY: demo test test-oldest lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,dask]"
	touch $(STAMP)

$(OLDEST)/.installed: pyproject.toml $(OLDEST_PINS)
	$(OLDEST_PYTHON) -m venv $(OLDEST)
	$(OLDEST_BIN)/python -m pip install --quiet --upgrade pip
	$(OLDEST_BIN)/python -m pip install --quiet --only-binary $(OLDEST_WHEELS) \
		-c $(OLDEST_PINS) -e ".[test]"
	touch $@

# The benchmarks' peers (dask-ml, ...) are heavy: installed only for them.
$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,dask,bench]"
	touch $@

# Sphinx and its extensions, for the documentation in docs/.
$(VENV)/.installed-docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,dask,docs]"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m sklearn_parpredict demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite on the current releases (the docs build included: it takes
# seconds, and it is how CI, which runs only `make test`, proves that the
# documentation still builds), then on the oldest supported ones.
test: lint docs
	$(BIN)/python -m pytest -q
	$(MAKE) test-oldest

# The declared minimum versions, proven: the whole suite on the pins of
# $(OLDEST_PINS).
test-oldest: $(OLDEST)/.installed
	$(OLDEST_BIN)/python -m pytest -q

# -E re-reads every page, so that warnings of pages unchanged since the last
# build are not hidden by Sphinx's cache.
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -E -q -b html docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(OLDEST) build *.egg-info docs/_build docs/generated
