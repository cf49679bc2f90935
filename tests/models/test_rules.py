"""Each rule is stated once (models/rules.py) and every topology offers what SequenceModel calls on it."""

import inspect
import math
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pydantic import ValidationError

from models import ModelConfig
from models.recurrent import RecurrentCore
from models.rules import check_dropout, check_memory_steps, check_tbptt_window
from models.topologies import TOPOLOGY_CLASSES, Topology
from pipelines.config import Variant
from tests.models.helpers import T, make_batch, make_model

MODULE_CALLS = ("build", "infer", "training_outputs", "fit_batch", "validation_outputs", "loss", "lag_profile")
FLAGS = ("causal", "accepts_tokens", "truncates", "forecasts", "per_sequence", "decodes_targets")
ROOT = Path(__file__).resolve().parents[2]


def rule_message(rule, *args) -> str:
    with pytest.raises(ValueError) as info:
        rule(*args)
    return str(info.value)


@pytest.mark.parametrize("name,cls", TOPOLOGY_CLASSES.items())
def test_every_topology_class_implements_what_the_module_calls_and_declares_its_flags(name, cls):
    assert issubclass(cls, Topology) and not inspect.isabstract(cls) and cls.name == name
    for method in MODULE_CALLS:
        assert callable(getattr(cls, method)), f"{name} lacks {method}"
    assert all(isinstance(getattr(cls, flag), bool) for flag in FLAGS)
    assert callable(getattr(cls, "forecast", None)) == cls.forecasts


@pytest.mark.parametrize("name", TOPOLOGY_CLASSES)
def test_every_topology_takes_its_updates_and_carries_state_only_when_it_truncates(name):
    pl.seed_everything(0, verbose=False)
    model = make_model(name, "regression", "gru", **({"k1": 3, "k2": 5} if name == "many_to_many" else {}))
    batch, losses = make_batch(name, "regression"), []
    loss, state = model.net.fit_batch(batch, model.config, losses.append, None)
    assert len(losses) == (math.ceil(T / 3) if model.net.truncates else 1)
    assert torch.isfinite(loss) and (state is not None) == model.net.truncates
    pred, val_state = model.net.validation_outputs(batch, None)
    assert torch.isfinite(model.net.loss("regression", pred, batch)) and (val_state is not None) == model.net.truncates
    assert torch.isfinite(model.gradient_lag_profile(batch)).all()


def test_variant_and_model_config_refuse_k2_below_k1_with_the_same_message():
    expected = rule_message(check_tbptt_window, 50, 10)
    with pytest.raises(ValueError) as from_models:
        ModelConfig(k1=50, k2=10)
    with pytest.raises(ValidationError) as from_params:
        Variant(name="v", cell="gru", k1=50, k2=10)
    assert str(from_models.value) == expected
    assert expected in str(from_params.value) and "k2 (10) must be >= k1 (50)" in expected


def test_variant_and_model_config_refuse_dropout_with_one_layer_with_the_same_message():
    expected = rule_message(check_dropout, 0.2, 1)
    with pytest.raises(ValueError) as from_models:
        ModelConfig(dropout=0.2, num_layers=1)
    with pytest.raises(ValidationError) as from_params:
        Variant(name="v", cell="gru", dropout=0.2)
    assert str(from_models.value) == expected and expected in str(from_params.value)


def test_variant_and_model_config_refuse_memory_steps_without_gates_with_the_same_message():
    expected = rule_message(check_memory_steps, "rnn", 1000)
    with pytest.raises(ValueError) as from_models:
        ModelConfig(cell="rnn", memory_steps=1000)
    with pytest.raises(ValidationError) as from_params:
        Variant(name="v", cell="rnn", memory_steps=1000)
    assert str(from_models.value) == expected and expected in str(from_params.value) and "lstm or gru" in expected


@pytest.mark.parametrize("cell,keep,opposite", [("lstm", slice(8, 16), slice(0, 8)), ("gru", slice(8, 16), None)])
def test_chrono_initialisation_starts_the_keep_gates_within_memory_steps(cell, keep, opposite):
    """Keep-gate biases log(u), u ~ U(1, T - 1): time constants 1 / (1 - sigmoid(b)) = u + 1 up to T."""
    torch.manual_seed(0)
    core = RecurrentCore(cell, 3, 8, num_layers=2, memory_steps=1000)
    default = RecurrentCore(cell, 3, 8, num_layers=2)
    for layer in (0, 1):
        ih, hh = getattr(core.rnn, f"bias_ih_l{layer}"), getattr(core.rnn, f"bias_hh_l{layer}")
        constants = 1 / (1 - torch.sigmoid(ih[keep]))  # [H]
        assert bool(((constants >= 2 - 1e-4) & (constants <= 1000 + 1e-2)).all()) and constants.max() > 50
        assert bool((hh[:16] == 0).all())
        if opposite is not None:
            assert torch.equal(ih[opposite], -ih[keep])
        default_constants = 1 / (1 - torch.sigmoid(getattr(default.rnn, f"bias_ih_l{layer}")[keep]
                                                   + getattr(default.rnn, f"bias_hh_l{layer}")[keep]))
        assert default_constants.max() < 3.1  # PyTorch's biases, U(-1/sqrt(H), 1/sqrt(H)) twice: at most ~3 steps
    torch.manual_seed(0)
    again = RecurrentCore(cell, 3, 8, num_layers=2, memory_steps=1000)
    assert all(torch.equal(a, b) for a, b in zip(core.state_dict().values(), again.state_dict().values()))


def test_models_never_import_pipelines():
    sources = (ROOT / "models").rglob("*.py")
    offenders = [p.name for p in sources if "import pipelines" in p.read_text() or "from pipelines" in p.read_text()]
    assert offenders == []


def test_the_params_schema_checks_model_rules_without_loading_torch():
    code = "import sys, pipelines.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0
