"""seqops models: recurrent sequence models in pure PyTorch + Lightning (no MLflow, Prefect or DVC here).

The public names below load their module on first use (PEP 562), so that a light import such as
``models.rules`` (which the params.yaml schema calls) does not pull in torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "models.config",
    "GradientExplosionError": "models.diagnostics",
    "GradientHealth": "models.diagnostics",
    "lag_profile": "models.diagnostics",
    "spectral_radii": "models.diagnostics",
    "spectral_radius": "models.diagnostics",
    "HEADS": "models.heads",
    "activate": "models.heads",
    "per_step_loss": "models.heads",
    "SequenceModel": "models.module",
    "WARMUP_STEPS": "models.module",
    "CELLS": "models.recurrent",
    "GATES": "models.recurrent",
    "RecurrentCore": "models.recurrent",
    "State": "models.recurrent",
    "detach_state": "models.recurrent",
    "TBPTTResult": "models.tbptt",
    "Update": "models.tbptt",
    "plan_updates": "models.tbptt",
    "truncated_bptt": "models.tbptt",
    "CONDITIONS": "models.topologies",
    "TOPOLOGIES": "models.topologies",
    "EncoderDecoder": "models.topologies",
    "ManyToMany": "models.topologies",
    "ManyToOne": "models.topologies",
    "OneToMany": "models.topologies",
    "Topology": "models.topologies",
    "build_topology": "models.topologies",
    "encoder_weights": "models.transfer",
    "transfer_encoder": "models.transfer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name's module on first access and cache the name here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
