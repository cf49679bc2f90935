"""docker-compose.yml holds together: the compose specification, references, variables, secrets, dependencies.

No Docker engine here: the compose file is validated against the compose specification and its
references are resolved by hand. Fast and offline. Least privilege is tests/deploy/test_hardening.py,
the image test_image.py, the deployment test_prefect_deployment.py, the helper scripts test_deploy_scripts.py.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.deploy.support import (
    BIN,
    COMPOSE,
    PROJECT_IMAGE_PREFIX,
    REPO,
    SECRET_NAME,
    SERVICES,
    command,
    dependencies,
    env_example,
    environment,
    is_one_shot,
    strings,
    variables,
)


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(REPO / "docker-compose.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dependency_names_a_service_of_the_file() -> None:
    missing = {(service, dep) for service in SERVICES for dep in dependencies(service) if dep not in SERVICES}
    assert not missing


def test_every_named_volume_a_service_mounts_is_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for service in SERVICES.values():
        for mount in service.get("volumes", []):
            source = mount.get("source", "") if isinstance(mount, dict) else mount.split(":", 1)[0]
            if source and not source.startswith((".", "/", "~", "$")):
                used.add(source)
    assert used <= declared, f"undeclared: {used - declared}"
    assert declared <= used, f"declared but never mounted: {declared - used}"


def test_every_bind_mounted_file_exists_in_the_repository() -> None:
    for name, service in SERVICES.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith("./"):
                assert (REPO / source).is_file(), f"{name} mounts {source}, which does not exist"


def test_every_variable_is_defined_in_env_example_or_has_an_inline_default() -> None:
    defined = env_example()
    undefined = set()
    for text in strings(COMPOSE):
        for match in variables(text):
            name = match["braced"] or match["bare"]
            if name not in defined and match["op"] not in (":-", "-"):
                undefined.add(name)
    assert not undefined, f"add to .env.example: {sorted(undefined)}"


def test_inline_defaults_agree_with_env_example() -> None:
    defined = env_example()
    for text in strings(COMPOSE):
        for match in variables(text):
            if match["op"] in (":-", "-") and match["braced"] in defined:
                assert match["arg"] == defined[match["braced"]], match.group(0)


def test_secrets_reach_services_as_files_never_as_values() -> None:
    declared = set(COMPOSE["secrets"])
    for name in SERVICES:
        mounted = set(SERVICES[name].get("secrets", []))
        assert mounted <= declared, f"{name}: undeclared secrets {mounted - declared}"
        for key, value in environment(name).items():
            if SECRET_NAME.search(key) and not key.endswith(("ACCESS_KEY_ID", "ACCESS_KEY")):
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), f"{name}.{key} = {value!r}"
                assert value.removeprefix("/run/secrets/") in mounted, f"{name}.{key}: {value} is not mounted"


def test_every_long_running_service_has_a_healthcheck() -> None:
    long_running = [name for name in SERVICES if not is_one_shot(name)]
    assert {"postgres", "seaweedfs", "mlflow", "prefect-server", "prefect-worker"} <= set(long_running)
    assert [name for name in long_running if "test" not in SERVICES[name].get("healthcheck", {})] == []


def test_services_wait_for_healthy_services_and_completed_one_shots() -> None:
    for name in SERVICES:
        for dep, condition in dependencies(name).items():
            if is_one_shot(dep):
                assert condition == "service_completed_successfully", f"{name} -> {dep}: {condition}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"


def test_third_party_images_are_pinned_to_a_version() -> None:
    for name, service in SERVICES.items():
        image = service.get("image", "")
        if "build" in service:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"


def test_postgres_hands_the_init_script_every_database_name_it_reads() -> None:
    script = (REPO / "deploy" / "postgres" / "init-databases.sh").read_text()
    read = set(re.findall(r"\$\{?(MLFLOW_DB|PREFECT_DB|POSTGRES_USER|POSTGRES_DB)\b", script))
    assert read <= set(environment("postgres"))
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])


def test_mlflow_serves_postgres_backed_runs_behind_basic_auth_and_proxies_artifacts_to_the_store() -> None:
    cmd, env, service = command("mlflow"), environment("mlflow"), SERVICES["mlflow"]
    assert service["entrypoint"] == ["sh", "/deploy/mlflow-start.sh"]
    assert "./deploy/mlflow/start.sh:/deploy/mlflow-start.sh:ro" in service["volumes"]
    assert "exec mlflow server --app-name basic-auth" in (REPO / "deploy" / "mlflow" / "start.sh").read_text()
    assert env["MLFLOW_DB_USER"] == "mlflow" and env["MLFLOW_DB_HOST"] == "postgres"
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://${MLFLOW_BUCKET:-seqops-mlflow}/artifacts"
    assert "--serve-artifacts" in cmd
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--allowed-hosts") + 1] == "mlflow:*,localhost:*,127.0.0.1:*"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"


def test_prefect_server_keeps_its_state_in_postgres_behind_an_auth_string() -> None:
    service, env = SERVICES["prefect-server"], environment("prefect-server")
    assert service["entrypoint"] == ["sh", "/app/deploy/prefect/start.sh"] and command("prefect-server") == ["--host", "0.0.0.0"]
    script = (REPO / "deploy" / "prefect" / "start.sh").read_text()
    assert "exec prefect server start" in script and "PREFECT_SERVER_CSRF_PROTECTION_ENABLED=true" in script
    assert env["PREFECT_DB_USER"] == "prefect" and set(service["secrets"]) == {"prefect_db_password",
                                                                               "prefect_api_auth_string"}


def test_worker_and_model_servers_reach_mlflow_and_s3_each_with_its_own_identity() -> None:
    for name in ("prefect-worker", "serve-forecast", "serve-sentiment"):
        env = environment(name)
        assert SERVICES[name]["image"].startswith(PROJECT_IMAGE_PREFIX)
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY_FILE", "MLFLOW_S3_ENDPOINT_URL",
                "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD_FILE"} <= set(env)
    worker = environment("prefect-worker")
    assert worker["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["DVC_REMOTE_URL"].startswith("s3://${DVC_BUCKET")
    assert (worker["MLFLOW_TRACKING_USERNAME"], environment("serve-forecast")["MLFLOW_TRACKING_USERNAME"]) == (
        "pipeline", "model-server")
    assert "SEQOPS_SIGNING_KEY" in worker and "SEQOPS_VERIFY_KEY" in environment("serve-forecast")
    assert "SEQOPS_SIGNING_KEY" not in environment("serve-forecast")


@pytest.mark.parametrize("service, task, port", [("serve-forecast", "forecast", 5055),
                                                  ("serve-sentiment", "sentiment", 5056)])
def test_each_model_server_serves_its_task_and_is_probed_on_its_own_port(service: str, task: str, port: int) -> None:
    assert command(service) == ["seqops", "serve", task, "--host", "0.0.0.0", "--port", str(port)]
    assert f"127.0.0.1:{port}/ping" in " ".join(SERVICES[service]["healthcheck"]["test"])
    assert any(str(p).endswith(f":{port}") for p in SERVICES[service]["ports"])


def test_buckets_are_created_for_mlflow_artifacts_and_the_dvc_remote() -> None:
    cmd = command("buckets")
    assert cmd[:2] == ["python", "/app/deploy/create_buckets.py"]
    assert set(cmd[2:]) == {"${MLFLOW_BUCKET:-seqops-mlflow}", "${DVC_BUCKET:-seqops-dvc}"}


# --- .env.example ------------------------------------------------------------------------------------

def test_env_example_leaves_every_secret_empty_with_the_command_that_makes_it() -> None:
    lines = (REPO / ".env.example").read_text().splitlines()
    secrets = {key: value for key, value in env_example().items()
               if (SECRET_NAME.search(key) or key.endswith("AUTH_STRING")) and not key.endswith("ACCESS_KEY")}
    assert {"POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "PREFECT_API_AUTH_STRING", "S3_DVC_SECRET_KEY"} <= set(secrets)
    assert {key: value for key, value in secrets.items() if value} == {}
    for key in secrets:
        above = lines[lines.index(f"{key}=") - 1]
        assert above.startswith("# ") and "openssl rand" in above, f"{key}: no command above it"
    environment_sources = {spec["environment"] for spec in COMPOSE["secrets"].values() if "environment" in spec}
    assert environment_sources <= set(secrets)


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    """`secrets/` (the signing key, Dask's TLS keys) was copied into every image, a model server's too."""
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".env", "secrets", ".git", ".venv", ".seqops", ".dvc/config.local", ".dvc/cache"} <= ignored
    files = [entry["file"] for entry in COMPOSE["secrets"].values() if "file" in entry]
    assert files and all(f.startswith("./secrets/") for f in files)  # each under the folder the image leaves out
    assert "deploy" not in ignored and "prefect.yaml" not in ignored
