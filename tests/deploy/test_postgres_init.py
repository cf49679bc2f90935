"""deploy/postgres/init-databases.sh, the compose postgres service's first-start init, run natively.

The script runs as the image runs it (psql as the superuser, passwords from secret files) against
the machine's PostgreSQL, with role and database names under a unique prefix: each service's role
is a plain login role (no superuser, no CREATEDB, no CREATEROLE) with the password from its file,
owns exactly its databases, and cannot even connect to the other service's. Rerunning is harmless.
Everything it made is dropped afterwards.
"""

from __future__ import annotations

import subprocess
import uuid
from typing import Iterator

import pytest
import yaml

from tests.conftest import REPO
from tests.orchestration.conftest import PG_HOST, PG_PASSWORD, PG_PORT, PG_USER, _pg_connect, admin_connection, base_env

SCRIPT = REPO / "deploy" / "postgres" / "init-databases.sh"


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Run the init script twice with a unique prefix; yield the names it was given; drop all after."""
    admin = admin_connection()
    prefix = f"seqops_init_{uuid.uuid4().hex[:8]}"
    names = {"MLFLOW_DB_USER": f"{prefix}_mlflow", "MLFLOW_DB": f"{prefix}_mlflow_db",
             "MLFLOW_AUTH_DB": f"{prefix}_mlflow_auth", "PREFECT_DB_USER": f"{prefix}_prefect",
             "PREFECT_DB": f"{prefix}_prefect_db"}
    secrets = tmp_path_factory.mktemp("postgres-secrets")
    (secrets / "mlflow_db_password").write_text("mlflow-db-Pw-0123456789\n")
    (secrets / "prefect_db_password").write_text("prefect-db-Pw-0123456789\n")
    env = base_env(**names, SECRETS_DIR=str(secrets), POSTGRES_USER=PG_USER, POSTGRES_DB="postgres",
                   PGHOST=PG_HOST, PGPORT=str(PG_PORT), **({"PGPASSWORD": PG_PASSWORD} if PG_PASSWORD else {}))
    try:
        for _ in range(2):  # the image runs it once; a second run (by hand, on a kept volume) must not fail
            done = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
        yield names
    finally:
        with admin.cursor() as cursor:
            for key in ("MLFLOW_DB", "MLFLOW_AUTH_DB", "PREFECT_DB"):
                cursor.execute(f'DROP DATABASE IF EXISTS "{names[key]}" WITH (FORCE)')
            for key in ("MLFLOW_DB_USER", "PREFECT_DB_USER"):
                cursor.execute(f'DROP ROLE IF EXISTS "{names[key]}"')
        admin.close()


def query(sql: str, *args: object) -> list[tuple]:
    connection = _pg_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()
    finally:
        connection.close()


def test_each_service_role_is_a_plain_login_role_with_its_password(initialised: dict[str, str]) -> None:
    for role in (initialised["MLFLOW_DB_USER"], initialised["PREFECT_DB_USER"]):
        rows = query("SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
                     "rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", role)
        assert rows == [(True, False, False, False, False, False, True)], (role, rows)


def test_each_role_owns_exactly_its_databases(initialised: dict[str, str]) -> None:
    owned = dict(query("SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE pg_get_userbyid(datdba) = ANY(%s)",
                       [initialised["MLFLOW_DB_USER"], initialised["PREFECT_DB_USER"]]))
    assert owned == {initialised["MLFLOW_DB"]: initialised["MLFLOW_DB_USER"],
                     initialised["MLFLOW_AUTH_DB"]: initialised["MLFLOW_DB_USER"],
                     initialised["PREFECT_DB"]: initialised["PREFECT_DB_USER"]}


def connect_as(role: str, database: str) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", role, "-d", database, "-tAc",
                           "SELECT current_user"], env=base_env(PGPASSWORD="unused-with-trust", PGCONNECT_TIMEOUT="5"),
                          capture_output=True, text=True, timeout=30)


def test_a_role_connects_to_its_own_database_and_not_to_the_others(initialised: dict[str, str]) -> None:
    mlflow, prefect = initialised["MLFLOW_DB_USER"], initialised["PREFECT_DB_USER"]
    own = connect_as(prefect, initialised["PREFECT_DB"])
    assert own.returncode == 0 and own.stdout.strip() == prefect, own.stderr
    for role, database in ((mlflow, initialised["PREFECT_DB"]), (prefect, initialised["MLFLOW_DB"]),
                           (prefect, initialised["MLFLOW_AUTH_DB"])):
        other = connect_as(role, database)
        assert other.returncode != 0 and "permission denied for database" in other.stderr, (role, database, other)


def test_the_script_tested_is_the_one_compose_mounts_as_the_init_script() -> None:
    postgres = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["postgres"]
    assert f"./{SCRIPT.relative_to(REPO)}:/docker-entrypoint-initdb.d/10-seqops-databases.sh:ro" in postgres["volumes"]
