# One virtualenv in .venv, made on first use; every target below depends on it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test test-slow bench mutate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev,sweep]"
	touch $(STAMP)

# The default experiment: nearest-ETF head on scikit-learn's bundled digits, offline, ~15 s on 2 CPU cores.
run: $(STAMP)
	$(BIN)/etf-train $(ARGS)

# The linter and the formatter's check (pyproject.toml [tool.ruff]), then the default test suite (pytest exit 5,
# "no tests collected", is not a failure).
test: $(STAMP)
	$(BIN)/ruff check etf_train hydra_plugins tests scripts
	$(BIN)/ruff format --check etf_train hydra_plugins tests scripts
	$(BIN)/python -m pytest -q $(ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(ARGS)

bench: $(STAMP)
	$(BIN)/python scripts/bench_solver.py $(ARGS)

# Mutation testing (docs/mutation.md), not part of `make test` nor of CI: mutmut over the modules in pyproject.toml
# [tool.mutmut], on a snapshot of HEAD in .mutate/; 42 minutes on 2 CPU cores (docs/mutation.md, run 5).
# ARGS="NAME ..." re-tests those mutants only, in the last run's .mutate/.
mutate: $(STAMP)
	scripts/mutate.sh $(ARGS)

clean:
	rm -rf $(VENV) outputs
