#!/bin/sh
# Run once by the postgres image on its first start (an empty data volume), from
# /docker-entrypoint-initdb.d/: one login role per service, none of them superuser, each owning
# only its own databases:
#
#   MLFLOW_DB_USER   owns MLFLOW_DB (runs, registry) and MLFLOW_AUTH_DB (the basic-auth users)
#   PREFECT_DB_USER  owns PREFECT_DB
#
# Passwords come from the secret files $SECRETS_DIR/mlflow_db_password and prefect_db_password.
# PUBLIC loses CONNECT on each database, so a role reaches only what it owns. Changing a name later
# needs a fresh volume (or the same statements by hand).
#
# The image may source this file instead of running it, so it neither exits nor sets -u.
set -e

secrets="${SECRETS_DIR:-/run/secrets}"

create_owned() {  # role, password file, database...
    role="$1"
    password="$(cat "$secrets/$2")"
    shift 2
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
         -v role="$role" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SQL
    for database in "$@"; do
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
             -v db="$database" -v owner="$role" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db')\gexec
SQL
    done
}

create_owned "${MLFLOW_DB_USER:-mlflow}" mlflow_db_password "${MLFLOW_DB:-mlflow}" "${MLFLOW_AUTH_DB:-mlflow_auth}"
create_owned "${PREFECT_DB_USER:-prefect}" prefect_db_password "${PREFECT_DB:-prefect}"
