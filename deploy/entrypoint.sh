#!/bin/sh
# Entrypoint of the project image: when DVC_REMOTE_URL is set (compose sets it for the worker and
# the model servers), make that S3 remote DVC's default for this workspace, then exec the command.
#
#   DVC_REMOTE_URL        s3://<bucket>/<prefix>, e.g. s3://seqops-dvc/seqops
#   DVC_S3_ENDPOINT_URL   the S3-compatible endpoint (default: MLFLOW_S3_ENDPOINT_URL)
#   SEQOPS_ROOT           the checkout (default /app); SEQOPS_HOME holds the DVC cache
#
# Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment: nothing
# secret is written to disk. Everything goes to .dvc/config.local (git-ignored, never in the image),
# so the committed .dvc/config (a local remote for the embedded defaults) stays as it is.
set -eu

# Secrets arrive as files (compose `secrets:`); the clients inside (boto3, MLflow, Prefect) read them
# from these variables only, so each *_FILE given is read into its variable for this process alone.
for name in AWS_SECRET_ACCESS_KEY MLFLOW_TRACKING_PASSWORD PREFECT_API_AUTH_STRING; do
    file="$(eval "printf '%s' \"\${${name}_FILE:-}\"")"
    if [ -n "$file" ]; then
        value="$(cat "$file")"
        export "$name=$value"
        unset "${name}_FILE"
    fi
done

if [ -n "${DVC_REMOTE_URL:-}" ]; then
    root="${SEQOPS_ROOT:-/app}"
    endpoint="${DVC_S3_ENDPOINT_URL:-${MLFLOW_S3_ENDPOINT_URL:-}}"
    (
        cd "$root"
        # A container checkout has no .git (see .dockerignore): run DVC without an SCM.
        if ! git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
            dvc config --local core.no_scm true
        fi
        dvc remote add --local --default --force objectstore "$DVC_REMOTE_URL"
        if [ -n "$endpoint" ]; then
            dvc remote modify --local objectstore endpointurl "$endpoint"
        fi
        if [ -n "${SEQOPS_HOME:-}" ]; then
            dvc cache dir --local "$SEQOPS_HOME/dvc-cache"
        fi
    ) >&2
    echo "entrypoint: DVC remote 'objectstore' -> $DVC_REMOTE_URL${endpoint:+ at $endpoint}" >&2
fi

exec "$@"
