"""models/inference.py: batched forecasts of histories of different lengths and horizons equal
SequenceModel.forecast row by row, for every cell; a passed deadline stops the work."""

from __future__ import annotations

import time

import pytest
import torch

from models import ModelConfig, SequenceModel
from models.inference import DeadlineExceeded, stepper_for


def _model(cell: str, layers: int) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(cell=cell, input_size=2, hidden_size=16, num_layers=layers,
                                     topology="many_to_many", head="regression", output_size=1, k1=8, k2=8)).eval()


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("gru", 2), ("rnn", 1)])
def test_batched_forecast_equals_the_row_by_row_forecast(cell: str, layers: int) -> None:
    model = _model(cell, layers)
    histories = [torch.randn(n, 2, dtype=torch.float64) for n in (5, 60, 1, 31)]
    horizons = [3, 12, 1, 7]
    futures = [None, torch.randn(11, 2), None, torch.randn(6, 2)]
    batched = stepper_for(model).forecast(histories, horizons, futures)
    for history, horizon, future, got in zip(histories, horizons, futures, batched):
        alone = model.forecast(history[None], horizon, None if future is None else future[None])[0, :, 0]
        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)


def test_a_passed_deadline_stops_the_forecast() -> None:
    with pytest.raises(DeadlineExceeded):
        stepper_for(_model("lstm", 1)).forecast([torch.randn(10, 2)], [5], deadline=time.monotonic() - 1)


def test_only_autoregressive_networks_are_stepped() -> None:
    encoder = SequenceModel(ModelConfig(cell="gru", input_size=1, hidden_size=8, topology="encoder_decoder",
                                        head="regression", output_size=1))
    assert stepper_for(encoder) is None and stepper_for(None) is None
