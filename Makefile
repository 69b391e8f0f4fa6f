# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The benchmarks' peers (dask-ml, ...) are heavy: installed only for them.
$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

# Sphinx and its extensions, for the documentation in docs/.
$(VENV)/.installed-docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,docs]"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m sklearn_parpredict demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The docs build is part of the tests: it takes seconds, and it is how CI
# (which runs only `make test`) proves that the documentation still builds.
test: lint docs
	$(BIN)/python -m pytest -q

# -E re-reads every page, so that warnings of pages unchanged since the last
# build are not hidden by Sphinx's cache.
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -E -q -b html docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info docs/_build docs/generated
