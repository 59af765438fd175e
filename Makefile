# One-command set-up: `make demo` and `make test` create .venv/ on first use (idempotent)
# and fetch Fashion-MNIST into data/ (see scripts/get_fmnist.sh).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := data/FashionMNIST/raw/t10k-labels-idx1-ubyte
# pip prints one warning per package for this machine's unused local index entries
PIP_NOISE := is ignored: it is neither a file nor a directory

.PHONY: setup data demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml gradfilt/_kernels.cpp
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing gradfilt and its dependencies into $(VENV) ..."
	$(PY) -m pip install --quiet -e ".[all,dev]" 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@touch $@

data: $(FMNIST)

$(FMNIST): | $(STAMP)
	PY=$(PY) bash scripts/get_fmnist.sh data

demo: $(STAMP) $(FMNIST)
	PY=$(PY) bash scripts/classification/fmnist_demo.sh

test: $(STAMP) $(FMNIST)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) data runs .pytest_cache
