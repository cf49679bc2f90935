"""prefect.yaml: the `retrain` deployment names a real flow, its parameters, pool and schedule agree with compose."""

from __future__ import annotations

import ast
from typing import Any

import pytest

from tests.deploy.support import (
    PREFECT,
    REPO,
    command,
    dockerfile_instructions,
)


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
