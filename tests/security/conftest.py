"""Real dependencies of the security tests: PostgreSQL roles that are not superusers, each owning its databases."""

from __future__ import annotations

import secrets
import uuid
from contextlib import contextmanager
from typing import Iterator

from tests.orchestration.conftest import PG_HOST, PG_PORT, admin_connection


@contextmanager
def owned_databases(*purposes: str) -> Iterator[dict[str, str]]:
    """A fresh LOGIN role (no superuser, no CREATEDB) owning one fresh database per purpose; all dropped after.

    Yields {"user", "password", "host", "port", <purpose>: database name, ...}.
    """
    admin = admin_connection()
    suffix = uuid.uuid4().hex[:10]
    role, password = f"seqops_test_role_{suffix}", secrets.token_hex(16)
    names = {purpose: f"seqops_test_{purpose}_{suffix}" for purpose in purposes}
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s', (password,))
            for name in names.values():
                cursor.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
        yield {"user": role, "password": password, "host": PG_HOST, "port": str(PG_PORT), **names}
    finally:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()
