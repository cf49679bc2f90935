#!/bin/sh
# Entrypoint of the mlflow service: the tracking server behind MLflow's basic-auth app, configured
# from secret files so no password sits in the compose file, the container's configured environment or the
# process list (MLflow itself reads the database URI, the CSRF key and the S3 secret from the environment
# this script exports to the server process only).
#
#   SECRETS_DIR        where compose mounts the secrets (default /run/secrets):
#                      mlflow_db_password, mlflow_admin_password, mlflow_flask_secret_key (CSRF),
#                      s3_mlflow_secret_key (the artifact store's secret key: required when AWS_ACCESS_KEY_ID
#                      names an S3 identity, else MLflow starts healthy and every artifact upload fails)
#   MLFLOW_DB_HOST, MLFLOW_DB_PORT, MLFLOW_DB_USER, MLFLOW_DB, MLFLOW_AUTH_DB
#   MLFLOW_AUTH_CONFIG_PATH   where the auth app's ini is written (0600)
#
# Anyone reaching the server must authenticate; an identity that is not admin reads everything
# (default_permission READ) and writes only what it created (see deploy/mlflow/identities.py).
# Arguments are passed on to `mlflow server`.
set -eu

secrets="${SECRETS_DIR:-/run/secrets}"
db_password="$(cat "$secrets/mlflow_db_password")"
admin_password="$(cat "$secrets/mlflow_admin_password")"
: "${db_password:?$secrets/mlflow_db_password is empty: see .env.example}"
: "${admin_password:?$secrets/mlflow_admin_password is empty: see .env.example}"
# The auth app's CSRF protection signs its tokens with this key; MLflow reads it from the environment only.
MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$secrets/mlflow_flask_secret_key")"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?$secrets/mlflow_flask_secret_key is empty: see .env.example}"
export MLFLOW_FLASK_SERVER_SECRET_KEY
# The S3 identity `mlflow` (read/write on the artifact bucket), when the artifacts live in S3.
if [ -n "${AWS_ACCESS_KEY_ID:-}" ]; then
    AWS_SECRET_ACCESS_KEY="$(cat "$secrets/s3_mlflow_secret_key" 2>/dev/null || true)"
    : "${AWS_SECRET_ACCESS_KEY:?AWS_ACCESS_KEY_ID is set but $secrets/s3_mlflow_secret_key is missing or empty: every artifact upload would fail; see .env.example}"
    export AWS_SECRET_ACCESS_KEY
elif [ -f "$secrets/s3_mlflow_secret_key" ]; then
    AWS_SECRET_ACCESS_KEY="$(cat "$secrets/s3_mlflow_secret_key")"
    export AWS_SECRET_ACCESS_KEY
fi

database="postgresql+psycopg2://${MLFLOW_DB_USER:-mlflow}:${db_password}@${MLFLOW_DB_HOST:-postgres}:${MLFLOW_DB_PORT:-5432}"
config="${MLFLOW_AUTH_CONFIG_PATH:-/tmp/mlflow-auth/basic_auth.ini}"
mkdir -p "$(dirname "$config")"
umask 077
cat >"$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${database}/${MLFLOW_AUTH_DB:-mlflow_auth}
admin_username = ${MLFLOW_ADMIN_USER:-admin}
admin_password = ${admin_password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# A model download is one request per file, each a scrypt password check (~0.1-0.3 s of CPU) without this
# cache: a retrain's evaluation spent minutes of the server's CPU on it. Successful checks are cached per
# worker for ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60} s; a password changed through the API is dropped at once on
# the worker that handled it, on the others within the TTL (MLflow's own trade-off, basic_auth.ini).
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI

export MLFLOW_AUTH_CONFIG_PATH="$config"
export MLFLOW_BACKEND_STORE_URI="${database}/${MLFLOW_DB:-mlflow}"
exec mlflow server --app-name basic-auth "$@"
