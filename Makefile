# supportloop's two commands: `make demo` and `make test`. CI runs `make test` (see .ci/run).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install model demo test test-fast check format clean chromium

# One install script for this and the Docker images (docker/install.sh: torch pinned there, 2.13.0, the CPU
# build on these machines; pyproject keeps a range).
$(STAMP): pyproject.toml docker/install.sh
	PYTHON=$(PYTHON) sh docker/install.sh $(VENV) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

model: install
	$(BIN)/supportloop model pull

demo: model
	@echo "supportloop demo: open http://$(HOST):$(PORT)/ once it says ready (data in ./var)"
	SUPPORTLOOP_DATA_DIR=$${SUPPORTLOOP_DATA_DIR:-var} $(BIN)/supportloop serve --host $(HOST) --port $(PORT)

# The checks run before the tests: ruff (lint + format) and mypy (strict on feedback/ and the runtime's interface).
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: model chromium check
	$(BIN)/python -m pytest

# The widget's browser tests drive Debian's chromium (never a browser download). As root, get it from the
# system package manager; otherwise those tests skip with a loud reason (CI always has it).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "*** chromium not installed (not root, or no apt-get): the widget's browser tests will be SKIPPED ***"; }

test-fast: install chromium check
	$(BIN)/python -m pytest -m "not integration"

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
