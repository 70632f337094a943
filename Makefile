# `make quickstart` and `make test` set up .venv on first use, then run.
# Extra quickstart flags: make quickstart ARGS="--minutes 30 --output runs/qs30"
#
# The lock is the install: requirements/lock.txt pins every package (transitive ones too) at
# the version the suite last passed with; `make setup` installs exactly that. torch is pinned
# apart (requirements/torch.txt), so that a CUDA torch already installed is reused.
#   make lock         resolve the lock again after pyproject.toml changed, keeping other pins;
#                     LOCK_ARGS=--upgrade moves every pin, LOCK_ARGS="--upgrade-package NAME" one
#                     (then `make test`, and commit the lock with the suite's result)
#   make test-latest  the suite in a throwaway .venv-latest with the newest versions allowed
PYTHON ?= python3
# VENV_FLAGS=--system-site-packages reuses a torch (e.g. a CUDA build) installed for $(PYTHON).
VENV_FLAGS ?=
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := test,serve,lm-eval
LOCK_EXTRAS := $(EXTRAS),browser  # browser: `make test-browser` (selenium) is locked too
PIP := pip==25.3
PIP_TOOLS := pip-tools==7.5.2
LOCK := requirements/lock.txt
LOCK_ARGS ?=

$(BIN)/vist2: pyproject.toml $(LOCK) requirements/torch.txt requirements/assets.txt
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/pip install -q $(PIP)
	# The CPU wheel first, unless a torch (CUDA or CPU) is already importable.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q -r requirements/torch.txt
	$(BIN)/pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps -r requirements/assets.txt
	touch $(BIN)/vist2

setup: $(BIN)/vist2

quickstart: setup
	$(BIN)/vist2 quickstart $(ARGS)

test: setup
	VIST2_LOCK=$(LOCK) $(BIN)/python -m pytest

# The serve page in headless Chromium (needs: apt-get install -y chromium chromium-driver);
# CI=true makes a missing chromium fail the test instead of skipping it.
test-browser: setup
	$(BIN)/pip install -q -c $(LOCK) -e ".[browser]"
	CI=true $(BIN)/python -m pytest -m slow tests/test_serve_browser.py

# A deliberate change: re-resolve every pin, then run the suite before committing the new lock.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q $(PIP) $(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile -q $(LOCK_ARGS) --extra=$(subst $(comma),$(space)--extra=,$(LOCK_EXTRAS)) \
		--strip-extras --no-emit-find-links --no-emit-index-url --unsafe-package torch \
		--constraint requirements/torch.txt --output-file $(LOCK) pyproject.toml

# Upstream breakage before users see it: newest versions pyproject.toml allows, no lock.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q $(PIP)
	.venv-latest/bin/python -c "import torch" 2>/dev/null || .venv-latest/bin/pip install -q -r requirements/torch.txt
	.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]"
	.venv-latest/bin/pip install -q --no-deps -r requirements/assets.txt
	.venv-latest/bin/python scripts/lock_diff.py $(LOCK)
	.venv-latest/bin/python -m pytest

comma := ,
space := $(empty) $(empty)

.PHONY: setup quickstart test test-browser lock test-latest
