# Every target sets itself up in a project-local virtualenv (.venv).
# On a machine without torch, the pinned CPU-friendly build is installed first so that the
# `torch>=...` range in pyproject.toml does not pull a multi-GB CUDA build.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.prefopt-installed
export PYTHONUNBUFFERED = 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,tracking]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/prefopt demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not distributed"

lint: $(STAMP)
	$(BIN)/ruff check prefopt tests scripts benchmarks
	$(BIN)/ruff format --check prefopt tests scripts benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/core/test_import_rules.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
