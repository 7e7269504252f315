# The two commands of the README: `make run` and `make test`. Each creates the virtual
# environment (and installs the system libraries Qt needs) when missing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench sysdeps clean-venv

$(STAMP): pyproject.toml constraints.txt
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/retrieval-explorer $(or $(ARGS),gui resources/demo)

test: $(STAMP)
	$(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

sysdeps:
	bash scripts/install-system-deps.sh

clean-venv:
	rm -rf $(VENV)
