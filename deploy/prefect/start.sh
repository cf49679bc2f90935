#!/bin/sh
# Entrypoint of the prefect-server service: the API behind an auth string, with CSRF protection on and
# CORS limited to the UI's origin, on its own PostgreSQL role. Secrets come from files; Prefect reads
# its settings from the environment only, so they are exported to the server process and nowhere else.
#
#   SECRETS_DIR     where compose mounts the secrets (default /run/secrets):
#                   prefect_db_password, prefect_api_auth_string ("user:password")
#   PREFECT_DB_HOST, PREFECT_DB_PORT, PREFECT_DB_USER, PREFECT_DB
#   PREFECT_UI_ORIGIN   the one origin a browser may call the API from (default http://localhost:4200)
#
# Arguments are passed on to `prefect server start`.
set -eu

secrets="${SECRETS_DIR:-/run/secrets}"
PREFECT_SERVER_DATABASE_PASSWORD="$(cat "$secrets/prefect_db_password")"
PREFECT_SERVER_API_AUTH_STRING="$(cat "$secrets/prefect_api_auth_string")"
: "${PREFECT_SERVER_DATABASE_PASSWORD:?$secrets/prefect_db_password is empty: see .env.example}"
case "$PREFECT_SERVER_API_AUTH_STRING" in
    ?*:?*) ;;
    *) echo "prefect-server: $secrets/prefect_api_auth_string must be user:password" >&2; exit 1 ;;
esac

export PREFECT_SERVER_DATABASE_PASSWORD PREFECT_SERVER_API_AUTH_STRING
export PREFECT_SERVER_DATABASE_DRIVER=postgresql+asyncpg
export PREFECT_SERVER_DATABASE_HOST="${PREFECT_DB_HOST:-postgres}"
export PREFECT_SERVER_DATABASE_PORT="${PREFECT_DB_PORT:-5432}"
export PREFECT_SERVER_DATABASE_USER="${PREFECT_DB_USER:-prefect}"
export PREFECT_SERVER_DATABASE_NAME="${PREFECT_DB:-prefect}"
export PREFECT_SERVER_CSRF_PROTECTION_ENABLED=true
export PREFECT_SERVER_CORS_ALLOWED_ORIGINS="${PREFECT_UI_ORIGIN:-http://localhost:4200}"
exec prefect server start "$@"
