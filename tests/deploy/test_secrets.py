"""Compose refuses placeholder secrets: deploy/check_secrets.py, run by the one-shot every service waits for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SERVICES = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
CHECK = REPO / "deploy" / "check_secrets.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("value, why", [("", "is empty"), ("change-me", "is a placeholder"),
                                        ("change-me-secret-key", "is a placeholder"), ("short1", "is shorter than")])
def test_an_empty_or_placeholder_secret_fails_the_check(tmp_path: Path, value: str, why: str) -> None:
    (tmp_path / "mlflow_admin_password").write_text(value)
    (tmp_path / "prefect_db_password").write_text("f" * 48)
    result = run_check(str(tmp_path))
    assert result.returncode == 1
    assert f"mlflow_admin_password {why}" in result.stderr and "prefect_db_password" not in result.stderr


def test_real_secrets_pass_the_check(tmp_path: Path) -> None:
    (tmp_path / "mlflow_admin_password").write_text("3f9a" * 12)
    assert run_check(str(tmp_path)).returncode == 0


def test_env_example_as_shipped_fails_the_host_side_check() -> None:
    result = run_check("--env-file", str(REPO / ".env.example"))
    assert result.returncode == 1 and "POSTGRES_PASSWORD is empty" in result.stderr
    assert "S3_DVC_ACCESS_KEY" not in result.stderr  # access key ids name identities; they are not secrets


def test_every_service_waits_for_the_secrets_check_which_sees_every_secret() -> None:
    check = SERVICES["secrets-check"]
    assert check["command"] == ["python", "/app/deploy/check_secrets.py", "/run/secrets"]
    assert check["restart"] == "no" and check["network_mode"] == "none"
    declared = set(yaml.safe_load((REPO / "docker-compose.yml").read_text())["secrets"])
    assert set(check["secrets"]) == declared
    for name, service in SERVICES.items():
        if name != "secrets-check":
            condition = service["depends_on"]["secrets-check"]["condition"]
            assert condition == "service_completed_successfully", name
