#!/bin/sh
# One-shot: register the deployments of prefect.yaml with the Prefect server (PREFECT_API_URL),
# creating the process work pool first; safe to rerun (`prefect deploy` updates in place).
#
# SEQOPS_TRAIN_ON_START=true also starts one `retrain` run when the deployment has never run
# (only scheduled runs so far): a fresh stack then trains and serves without waiting for 03:00 UTC.
set -eu
cd "${SEQOPS_ROOT:-/app}"

pool="${PREFECT_WORK_POOL:-seqops-process}"
if ! prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    prefect work-pool create "$pool" --type process
fi
prefect --no-prompt deploy --all --prefect-file prefect.yaml

if [ "${SEQOPS_TRAIN_ON_START:-false}" = "true" ]; then
    if python "$(dirname "$0")/never_ran.py" retrain/retrain; then
        prefect deployment run retrain/retrain
    else
        echo "retrain/retrain has run before: not starting another run"
    fi
fi
