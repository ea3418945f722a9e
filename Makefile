# scilayers — common tasks. `make demo` and `make test` are the quick start.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SCILAYERS := $(VENV)/bin/scilayers

# Real data for the tests: $SCILAYERS_DATA_DIR when set, else ../shared/data when that
# folder exists next to the clone, else nothing (the tests that need real data then skip).
ifeq ($(strip $(SCILAYERS_DATA_DIR)),)
ifneq ($(wildcard ../shared/data/.),)
TEST_ENV := SCILAYERS_DATA_DIR=../shared/data
endif
endif

# The default study: the KS study at its quick preset (under 10 minutes on 2 cores);
# writes runs/ks-quick/{results.json,report.md,figures/}.
DEMO_CMD ?= $(SCILAYERS) run ks --preset quick --out runs/ks-quick

.PHONY: help venv install demo test test-all bench lint docs clean

help:
	@echo "make demo      create $(VENV), install, run the default study (DEMO_CMD)"
	@echo "make test      fast tests (real data from SCILAYERS_DATA_DIR, else ../shared/data if present)"
	@echo "make test-all  all tests, slow ones included"
	@echo "make bench     the benchmark suite (writes benchmarks/results.json)"
	@echo "make lint      ruff"
	@echo "make docs      build the documentation site into site/ (mkdocs --strict)"

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: $(PY)

# Install only when needed: an existing, working environment is left untouched.
install: $(PY)
	@$(PY) -c "import scilayers, pytest, xdist, exponax, ruff" 2>/dev/null \
		|| $(PIP) install -e ".[test]"

demo: install
	$(DEMO_CMD)

# The tests run in parallel, one worker per core (at most 4; pytest-xdist): most of their
# time is single-threaded XLA compilation. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --maxprocesses=4 --durations=25

test: install
	$(TEST_ENV) $(VENV)/bin/pytest -q $(XDIST)

test-all: install
	$(TEST_ENV) $(VENV)/bin/pytest -q $(XDIST) -m ""

bench: install
	$(SCILAYERS) bench

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

# The documentation site (MkDocs Material + mkdocstrings), warnings are errors.
docs: install
	@$(PY) -c "import mkdocs, material, mkdocstrings, griffe_public_redundant_aliases" \
		2>/dev/null || $(PIP) install -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf runs site .pytest_cache .ruff_cache
