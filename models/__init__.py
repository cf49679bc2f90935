"""seqops models: recurrent sequence models in pure PyTorch + Lightning (no MLflow, Prefect or DVC here)."""

from models.config import ModelConfig
from models.diagnostics import GradientExplosionError, GradientHealth, lag_profile, spectral_radii, spectral_radius
from models.heads import HEADS, activate, per_step_loss
from models.module import SequenceModel
from models.recurrent import CELLS, GATES, RecurrentCore, State, detach_state
from models.tbptt import TBPTTResult, Update, plan_updates, truncated_bptt
from models.topologies import (
    CONDITIONS,
    TOPOLOGIES,
    EncoderDecoder,
    ManyToMany,
    ManyToOne,
    OneToMany,
    build_topology,
)

__all__ = [
    "CELLS",
    "CONDITIONS",
    "GATES",
    "HEADS",
    "TOPOLOGIES",
    "EncoderDecoder",
    "GradientExplosionError",
    "GradientHealth",
    "ManyToMany",
    "ManyToOne",
    "ModelConfig",
    "OneToMany",
    "RecurrentCore",
    "SequenceModel",
    "State",
    "TBPTTResult",
    "Update",
    "activate",
    "build_topology",
    "detach_state",
    "lag_profile",
    "per_step_loss",
    "plan_updates",
    "spectral_radii",
    "spectral_radius",
    "truncated_bptt",
]
