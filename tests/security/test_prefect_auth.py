"""`prefect server start` the way compose's prefect-server starts it (deploy/prefect/start.sh): an API auth
string, CSRF protection, CORS limited to the UI's origin, PostgreSQL through a role that is not the superuser."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import REPO
from tests.orchestration.conftest import Service, base_env, free_port, running
from tests.security.conftest import owned_databases

AUTH_STRING = "seqops:prefect-Pw-0123456789"
UI_ORIGIN = "http://localhost:4200"


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("prefect-auth")
    secrets = tmp / "secrets"
    secrets.mkdir()
    (secrets / "prefect_api_auth_string").write_text(AUTH_STRING)
    with owned_databases("prefect") as db:
        (secrets / "prefect_db_password").write_text(db["password"])
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = base_env(SECRETS_DIR=str(secrets), PREFECT_HOME=str(tmp / "home"), PREFECT_DB_HOST=db["host"],
                       PREFECT_DB_PORT=db["port"], PREFECT_DB_USER=db["user"], PREFECT_DB=db["prefect"],
                       PREFECT_UI_ORIGIN=UI_ORIGIN)
        server = Service("prefect server (auth string)",
                         ["sh", str(REPO / "deploy" / "prefect" / "start.sh"), "--host", "127.0.0.1", "--port", str(port)],
                         f"{api}/health", env, tmp / "prefect.log", startup_timeout=180)
        with running(server):
            yield api


def test_a_client_without_the_auth_string_is_rejected(prefect_api: str) -> None:
    user, _, password = AUTH_STRING.partition(":")
    assert httpx.get(f"{prefect_api}/admin/version", timeout=30).status_code == 401
    assert httpx.get(f"{prefect_api}/admin/version", auth=(user, "wrong"), timeout=30).status_code == 401
    assert httpx.get(f"{prefect_api}/admin/version", auth=(user, password), timeout=30).status_code == 200


def test_a_client_with_the_auth_string_works_through_csrf_protection(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    async def create_flow() -> str:
        async with get_client() as client:
            return str(await client.create_flow_from_name("seqops-auth-check"))

    with temporary_settings(updates={PREFECT_API_URL: prefect_api, PREFECT_API_AUTH_STRING: AUTH_STRING}):
        assert asyncio.run(create_flow())


def test_a_write_without_a_csrf_token_is_refused(prefect_api: str) -> None:
    user, _, password = AUTH_STRING.partition(":")
    response = httpx.post(f"{prefect_api}/flows/", json={"name": "no-csrf"}, auth=(user, password), timeout=30)
    assert response.status_code == 403 and "CSRF" in response.text


def test_browsers_from_other_origins_get_no_cors_grant(prefect_api: str) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(f"{prefect_api}/flows/filter", timeout=30, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})

    assert preflight(UI_ORIGIN).headers.get("access-control-allow-origin") == UI_ORIGIN
    assert "access-control-allow-origin" not in preflight("http://evil.example").headers
