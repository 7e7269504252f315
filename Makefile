# The two commands of the README: `make run` and `make test`. Each creates the virtual environment
# (and installs the system libraries Qt needs) when missing: `make run` the program, `make test` the
# program and its dev extra (tests, lint, Ray for the cluster tests).
#
# GPU=1 installs torch's CUDA build with every nvidia-*, cuda-* and triton package it asks for (the venv:
# 6.1 GB for run, 6.7 GB for test); GPU=0 the same pins less what only a GPU uses (triton, cuSOLVER...:
# 5.0 GB, 5.5 GB), torch on its CPU paths (the nvidia libraries torch's own libraries link stay: see
# scripts/install.sh). By default GPU=1 when the system shows an NVIDIA GPU (scripts/has-nvidia-gpu.sh),
# else 0; force it with `make run GPU=1` or `make test GPU=0`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ifndef GPU
GPU := $(shell bash scripts/has-nvidia-gpu.sh)
endif
STAMP := $(VENV)/.installed-gpu$(GPU)
INSTALL_INPUTS := pyproject.toml constraints.txt scripts/install.sh scripts/check_install.py

.PHONY: run test lint bench sysdeps clean-venv

# Another GPU= than the venv was installed with: the stamps of the other kind go, the install redoes it.
$(STAMP): $(INSTALL_INPUTS)
	@case "$(GPU)" in 0|1) ;; *) echo "GPU must be 0 or 1, not '$(GPU)'" >&2; exit 2;; esac
	bash scripts/install-system-deps.sh
	rm -f $(VENV)/.installed*
	PY=$(PY) bash scripts/install.sh $(VENV) $(GPU)
	touch $@

$(STAMP)-dev: $(STAMP)
	PY=$(PY) bash scripts/install.sh $(VENV) $(GPU) dev
	touch $@

run: $(STAMP)
	$(BIN)/retrieval-explorer $(or $(ARGS),gui resources/demo)

test: $(STAMP)-dev
	$(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)-dev
	$(BIN)/ruff check .

sysdeps:
	bash scripts/install-system-deps.sh

clean-venv:
	rm -rf $(VENV)
