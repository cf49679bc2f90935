"""Least privilege in docker-compose.yml: networks, users, capabilities, memory, image pins."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILES = [REPO / "Dockerfile", *sorted((REPO / "deploy").glob("*/Dockerfile"))]


def networks(service: str) -> set[str]:
    return set(SERVICES[service].get("networks", []))


def test_model_servers_reach_only_mlflow_and_the_object_store() -> None:
    for server in ("serve-forecast", "serve-sentiment"):
        reachable = {name for name in SERVICES if name != server and networks(name) & networks(server)}
        assert reachable <= {"mlflow", "seaweedfs", "serve-forecast", "serve-sentiment"}, (server, reachable)


def test_databases_dask_and_store_internals_sit_on_internal_networks_only() -> None:
    internal = {name for name, spec in COMPOSE["networks"].items() if (spec or {}).get("internal")}
    assert {"backend", "models"} <= internal
    for service in ("postgres", "dask-scheduler", "dask-worker", "prefect-worker"):
        assert networks(service) <= internal and "ports" not in SERVICES[service], service


def test_every_published_port_binds_loopback() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_container_drops_privileges_and_has_a_memory_limit() -> None:
    for name, service in SERVICES.items():
        assert service.get("security_opt") == ["no-new-privileges:true"], name
        assert service.get("cap_drop") == ["ALL"], name
        assert re.fullmatch(r"\d+[mg]", str(service.get("mem_limit", ""))), name
        assert str(service.get("user", "")).split(":")[0] not in ("", "0", "root"), name
        assert "cap_add" not in service, f"{name} adds capabilities back"


def test_every_third_party_image_is_pinned_by_digest() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        if "build" in service or image.startswith(("seqops:", "seqops-mlflow:", "seqops-seaweedfs:")) and image in {
                s["image"] for s in SERVICES.values() if "build" in s}:
            continue
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{name}: pin {image} by digest"


def test_every_dockerfile_base_image_is_pinned_by_digest() -> None:
    for dockerfile in DOCKERFILES:
        bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
        assert bases, dockerfile
        for image in bases:
            assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{dockerfile.relative_to(REPO)}: pin {image} by digest"
