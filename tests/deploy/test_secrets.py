"""Compose refuses placeholder secrets: deploy/check_secrets.py, run by the one-shot every service waits for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


def test_a_key_file_the_containers_user_cannot_read_is_named_not_a_traceback(tmp_path: Path) -> None:
    """Compose mounts `file:` secrets with the host's owner and mode: a 0600 key of the host user crashed the check
    (PermissionError) and every service waited on it."""
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        (folder / "mlflow_admin_password").write_text("3f9a" * 12)
        (folder / "model_signing_key").write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAw\n")
        (folder / "model_signing_key").chmod(0o600 if os.geteuid() == 0 else 0o000)
        python, script, as_other = sys.executable, CHECK, {}
        if os.geteuid() == 0:  # root reads anything: check as another user, with a Python and a copy it may read
            python = shutil.which("python3", path="/usr/local/bin:/usr/bin") or pytest.skip("no system python3")
            script = Path(shutil.copy(CHECK, folder / "check.py"))
            as_other = {"preexec_fn": lambda: os.setuid(65534), "cwd": "/"}
        result = subprocess.run([python, str(script), str(folder)], capture_output=True, text=True, timeout=60,
                                **as_other)
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "model_signing_key cannot be read by this container's user" in result.stderr
    assert "sudo chown -R 10001:10001 secrets" in result.stderr and "mlflow_admin_password" not in result.stderr


def test_the_host_check_names_key_files_the_containers_user_could_not_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("MLFLOW_ADMIN_PASSWORD=" + "3f9a" * 12 + "\n")
    (tmp_path / "secrets" / "dask").mkdir(parents=True)
    key = tmp_path / "secrets" / "dask" / "worker.key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    (tmp_path / "secrets" / "model-signing.pub.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    (tmp_path / "secrets" / "model-signing.pub.pem").chmod(0o644)  # readable by anyone: fine
    result = run_check("--env-file", str(env))
    assert result.returncode == 1
    assert f"worker.key.pem: owned by uid {os.geteuid()}, mode 0600" in result.stderr
    assert "model-signing.pub.pem" not in result.stderr
    os.chown(key, 10001, 10001) if os.geteuid() == 0 else key.chmod(0o644)
    assert run_check("--env-file", str(env)).returncode == 0
