# supportloop's two commands: `make demo` and `make test`. CI runs `make test` (see .ci/run).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install model demo test test-fast clean

# torch is pinned here (2.13.0 is the CPU build on these machines); pyproject keeps a range.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

model: install
	$(BIN)/supportloop model pull

demo: model
	@echo "supportloop demo: open http://$(HOST):$(PORT)/ once it says ready (data in ./var)"
	SUPPORTLOOP_DATA_DIR=$${SUPPORTLOOP_DATA_DIR:-var} $(BIN)/supportloop serve --host $(HOST) --port $(PORT)

test: model
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not integration"

clean:
	rm -rf $(VENV) var .pytest_cache
