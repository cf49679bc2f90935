#!/bin/sh
# Run once by the postgres image on its first start (an empty data volume), from
# /docker-entrypoint-initdb.d/: one server, one database each for MLflow and Prefect,
# both owned by POSTGRES_USER. Changing MLFLOW_DB / PREFECT_DB later needs a fresh volume
# (or a manual CREATE DATABASE).
#
# The image may source this file instead of running it, so it neither exits nor sets -u.
set -e

for database in "${MLFLOW_DB:-mlflow}" "${PREFECT_DB:-prefect}"; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
         -v db="$database" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
done
