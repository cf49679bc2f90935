"""The deploy/ helper scripts against stand-ins: bucket init on moto, SeaweedFS identities with a fake `weed`, the entrypoint."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.support import (
    BIN,
    REPO,
    load_script,
)


def test_bucket_init_creates_missing_buckets_and_leaves_existing_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    create_buckets = load_script("create_buckets")
    with moto.mock_aws():
        client = create_buckets.s3_client(None)
        assert create_buckets.ensure_bucket(client, "seqops-mlflow") is True
        assert create_buckets.ensure_bucket(client, "seqops-mlflow") is False
        create_buckets.ensure_buckets(client, ["seqops-mlflow", "seqops-dvc"])
        assert sorted(b["Name"] for b in client.list_buckets()["Buckets"]) == ["seqops-dvc", "seqops-mlflow"]


def fake_weed(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    weed = bindir / "weed"
    weed.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$WEED_ARGS"\n')
    weed.chmod(0o755)
    return bindir


S3_ROLES = ("admin", "mlflow", "dvc", "model_server")


def seaweedfs_env(tmp_path: Path, secret: str = "s3-secret-0123456789") -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{fake_weed(tmp_path)}{os.pathsep}{os.environ['PATH']}", "SECRETS_DIR": str(secrets),
           "SEAWEEDFS_S3_CONFIG": str(tmp_path / "s3.json"), "WEED_ARGS": str(tmp_path / "args")}
    for role in S3_ROLES:
        env[f"S3_{role.upper()}_ACCESS_KEY"] = f"key-{role}"
        (secrets / f"s3_{role}_secret_key").write_text(f"{secret}-{role}\n")
    return env


def test_seaweedfs_gives_each_client_its_own_identity_with_least_privilege(tmp_path: Path) -> None:
    env = seaweedfs_env(tmp_path)
    subprocess.run(["sh", str(REPO / "deploy" / "seaweedfs" / "start.sh")], env=env, check=True, timeout=30)
    identities = {i["name"]: i for i in json.loads((tmp_path / "s3.json").read_text())["identities"]}
    assert identities["admin"]["credentials"] == [{"accessKey": "key-admin", "secretKey": "s3-secret-0123456789-admin"}]
    assert identities["model-server"]["actions"] == ["Read:seqops-mlflow", "List:seqops-mlflow"]
    assert set(identities["dvc"]["actions"]) == {f"{a}:seqops-dvc" for a in ("Read", "List", "Tagging", "Write")}
    assert set(identities["mlflow"]["actions"]) == {f"{a}:seqops-mlflow" for a in ("Read", "List", "Tagging", "Write")}
    assert [name for name, i in identities.items() if "Admin" in i["actions"]] == ["admin"]
    assert os.stat(tmp_path / "s3.json").st_mode & 0o077 == 0
    argv = (tmp_path / "args").read_text().split()
    assert argv[0] == "server" and "-s3" in argv and f"-s3.config={tmp_path / 's3.json'}" in argv


def test_seaweedfs_start_refuses_keys_that_would_break_its_config(tmp_path: Path) -> None:
    env = seaweedfs_env(tmp_path)
    env["S3_DVC_ACCESS_KEY"] = 'bad"key'
    result = subprocess.run(["sh", str(REPO / "deploy" / "seaweedfs" / "start.sh")], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "double quotes" in result.stderr
    assert not (tmp_path / "args").exists()


def dvc_workspace(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / ".dvc").mkdir(parents=True)
    (root / ".dvc" / "config").write_text((REPO / ".dvc" / "config").read_text())
    return root


def test_entrypoint_makes_the_s3_remote_dvcs_default_without_writing_credentials(tmp_path: Path) -> None:
    root = dvc_workspace(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "SEQOPS_ROOT": str(root), "SEQOPS_HOME": str(root / ".seqops"),
           "DVC_REMOTE_URL": "s3://seqops-dvc/seqops", "DVC_S3_ENDPOINT_URL": "http://seaweedfs:8333",
           "AWS_SECRET_ACCESS_KEY": "change-me-secret-key"}
    result = subprocess.run(["sh", str(REPO / "deploy" / "entrypoint.sh"), "sh", "-c", "echo ran $0", "cmd"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran cmd"
    local = (root / ".dvc" / "config.local").read_text()
    config = configparser.ConfigParser()
    config.read_string(local)
    assert config["core"]["remote"] == "objectstore" and config["core"]["no_scm"] == "true"
    assert dict(config['\'remote "objectstore"\'']) == {"url": "s3://seqops-dvc/seqops",
                                                       "endpointurl": "http://seaweedfs:8333"}
    assert config["cache"]["dir"] == str(root / ".seqops" / "dvc-cache")
    assert "change-me-secret-key" not in local
    assert (root / ".dvc" / "config").read_text() == (REPO / ".dvc" / "config").read_text()


def test_entrypoint_leaves_dvc_alone_when_no_remote_is_configured(tmp_path: Path) -> None:
    root = dvc_workspace(tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "DVC_REMOTE_URL"}
    result = subprocess.run(["sh", str(REPO / "deploy" / "entrypoint.sh"), "true"],
                            env={**env, "SEQOPS_ROOT": str(root)}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not (root / ".dvc" / "config.local").exists()


def test_mlflow_start_refuses_an_s3_identity_without_its_secret_key(tmp_path: Path) -> None:
    """Without the file it started "healthy" and every artifact upload answered 500 (PartialCredentialsError)."""
    for name in ("mlflow_db_password", "mlflow_admin_password", "mlflow_flask_secret_key"):
        (tmp_path / name).write_text("s" * 32)
    env = {"PATH": os.environ["PATH"], "SECRETS_DIR": str(tmp_path), "AWS_ACCESS_KEY_ID": "key-mlflow",
           "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth" / "basic_auth.ini")}
    result = subprocess.run(["sh", str(REPO / "deploy" / "mlflow" / "start.sh")], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert "AWS_ACCESS_KEY_ID is set but" in result.stderr
    assert "s3_mlflow_secret_key is missing or empty" in result.stderr
    assert not (tmp_path / "auth").exists()  # stopped before writing anything
