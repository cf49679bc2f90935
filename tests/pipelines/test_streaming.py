"""training.mode: stateful: the stream datamodule over a prepared series, read from disk in chunks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models import ModelConfig, SequenceModel
from pipelines.config import TimeSeriesTask
from pipelines.prepare.features import SeriesTransform
from pipelines.train.streaming import READ_ROWS, StatefulSeriesDataModule, StreamError

CONFIG = dict(topology="many_to_many", cell="gru", input_size=1, hidden_size=4, output_size=1, head="regression",
              lr=0.01, clip_algorithm=None)


def write_prepared(root: Path, lengths: list[int], validation: int = 5, holdout: int = 5,
                   difference: bool = False, row_group_size: int = 1000) -> Path:
    """A prepared/<task>/ folder as prepare writes it: series.parquet (series_id, split, target), transform.json."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids, splits, values = [], [], []
    for i, n in enumerate(lengths):
        ids += [f"s{i}"] * n
        splits += ["train"] * (n - validation - holdout) + ["validation"] * validation + ["holdout"] * holdout
        values.append(np.cumsum(rng.normal(size=n)))
    table = pa.table({"series_id": ids, "split": splits, "y": np.concatenate(values)})
    pq.write_table(table, root / "series.parquet", row_group_size=row_group_size)
    SeriesTransform.fit([v[:n - validation - holdout, None] for v, n in zip(values, lengths)], ["y"],
                        difference).save(root / "transform.json")
    return root


def datamodule(prepared: Path, steps: int, rows: int) -> StatefulSeriesDataModule:
    dm = StatefulSeriesDataModule(prepared, steps, rows)
    dm.setup("fit")
    return dm


def test_stateful_stream_with_k1_equal_k2_and_one_row_equals_one_full_sequence_tbptt_run(tmp_path):
    prepared = write_prepared(tmp_path / "p", [212], difference=True)  # 200 pairs: 5 batches, 10 updates
    dm = datamodule(prepared, steps=40, rows=1)
    stream = SequenceModel(ModelConfig(**CONFIG, k1=20, k2=20))
    whole = SequenceModel(ModelConfig(**CONFIG, k1=20, k2=20))
    whole.load_state_dict(stream.state_dict())
    losses = {"stream": [], "whole": []}
    for name, network in (("stream", stream), ("whole", whole)):
        network.optimizers = lambda opt=torch.optim.Adam(network.parameters(), lr=0.01): opt
        network.manual_backward = lambda loss, n=name: (losses[n].append(float(loss.detach())), loss.backward())
        network.log = lambda *a, **k: None
    for j, batch in enumerate(dm.train_dataloader()):
        stream.training_step(batch, j)
    z = torch.tensor(np.asarray(dm.values[:dm.spans[0].n_train]))  # [T, 1]
    whole.training_step({"x": z[None, :-1], "y": z[None, 1:, :1]}, 0)
    assert len(losses["stream"]) == len(losses["whole"]) == 10
    np.testing.assert_allclose(losses["stream"], losses["whole"], rtol=1e-5)
    for a, b in zip(stream.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b)


def test_state_after_each_batch_equals_a_single_pass_at_that_offset(tmp_path):
    prepared = write_prepared(tmp_path / "p", [130])  # 119 pairs: rows of 60 and 59
    dm = datamodule(prepared, steps=10, rows=2)
    checked = 0
    network = SequenceModel(ModelConfig(**CONFIG)).eval()
    z = torch.tensor(np.asarray(dm.values))  # [N, 1]
    pairs = dm.spans[0].n_train - 1
    row_length = -(-pairs // 2)
    with torch.no_grad():
        for j, batch in enumerate(dm.train_dataloader()):
            state = network._start_state("train", batch)
            _, network.carried_state["train"] = network.net(batch["x"], state)
            for r in range(2):
                if not batch["mask"][r].all():
                    continue  # the row's stream ended inside this batch: its state is reset before it is read again
                start = r * row_length
                end = start + (j + 1) * 10
                _, single = network.net(z[None, start:end])  # [1, t, 1]
                torch.testing.assert_close(network.carried_state["train"][:, r], single[:, 0], rtol=1e-5, atol=1e-6)
                checked += 1
    assert checked == 11


def test_a_row_that_reaches_the_end_of_its_stream_starts_its_next_piece_from_zero(tmp_path):
    prepared = write_prepared(tmp_path / "p", [45, 60])  # 34 and 49 training pairs: row 0 crosses a series end
    dm = datamodule(prepared, steps=8, rows=2)
    batches = list(dm.train_dataloader())
    network = SequenceModel(ModelConfig(**CONFIG)).eval()
    with torch.no_grad():
        network.carried_state["train"] = network.net(batches[0]["x"])[1]
        resets = [bool(b["reset"][0]) for b in batches[1:]]
        j = 1 + resets.index(True)
        for batch in batches[1:j]:
            network.carried_state["train"] = network.net(batch["x"], network._start_state("train", batch))[1]
        start = network._start_state("train", batches[j])
    assert batches[j - 1]["mask"][0].sum() < 8  # the first series ended inside the batch before
    assert torch.equal(start[:, 0], torch.zeros_like(start[:, 0]))
    assert start[:, 1].abs().sum() > 0  # the other row carries on


def test_epochs_after_the_first_shift_every_stream_offset(tmp_path):
    prepared = write_prepared(tmp_path / "p", [300])
    stream = datamodule(prepared, steps=16, rows=4).train_dataloader().dataset
    first, second = next(iter(stream))["x"], next(iter(stream))["x"]
    assert not torch.equal(first, second)
    assert torch.equal(first[0, :, 0], torch.tensor(np.asarray(stream.values[:16, 0])))


def test_validation_warms_over_the_training_history_and_scores_only_validation_targets(tmp_path):
    prepared = write_prepared(tmp_path / "p", [5000, 300], validation=20)
    batches = list(datamodule(prepared, steps=16, rows=4).val_dataloader())
    assert [b["reset"] for b in batches] == [True, False]  # one group of both series, warmed 4096 pairs at a time
    assert int(sum(b["mask"].sum() for b in batches)) == 2 * 20
    assert not batches[0]["mask"][0].any() and batches[0]["mask"][1].any()


def test_stream_rows_across_record_batches_equal_one_transform_of_the_whole_series(tmp_path):
    n, holdout = READ_ROWS + 3_000, 5  # the series crosses a record batch boundary
    prepared = write_prepared(tmp_path / "p", [n], holdout=holdout)
    raw = pq.read_table(prepared / "series.parquet").column("y").to_numpy()[:n - holdout, None]  # [T, 1]
    transform = SeriesTransform.fit([raw], ["y"], True, season=7, seasonal_difference=True)  # loses 8 steps
    transform.save(prepared / "transform.json")
    dm = datamodule(prepared, steps=64, rows=4)
    np.testing.assert_array_equal(np.asarray(dm.values), transform.to_inputs(raw))
    assert dm.spans[0].n_train == n - holdout - 5 - 8


# One pass over a prepared series in a fresh interpreter; prints its peak resident set (VmHWM, MB): what the
# benchmark's peak RSS measures, pyarrow's buffers and mapped file pages included (tracemalloc sees neither).
ONE_PASS = """
import sys
from pathlib import Path
from pipelines.train.streaming import StatefulSeriesDataModule
dm = StatefulSeriesDataModule(Path(sys.argv[1]), 512, 8)
dm.setup("fit")
for _ in dm.train_dataloader():
    pass
print(next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")).split()[1])
"""


def _one_pass_peak_mb(prepared: Path) -> float:
    done = subprocess.run([sys.executable, "-c", ONE_PASS, str(prepared)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1]) / 1024


def test_stream_memory_does_not_grow_with_the_series_length(tmp_path):
    # Each length in its own fresh process, so nothing another test allocated blurs the peak. The long series
    # is 10x the short (8 MB more network inputs, 16 MB more raw values); the reader before pre_buffer was
    # turned off and the memory map removed grew by ~20 MB here. Row groups as large as a record batch: the
    # Parquet footer grows with their number, which is not the stream's doing.
    short, long = (_one_pass_peak_mb(write_prepared(tmp_path / str(n), [n], row_group_size=READ_ROWS))
                   for n in (200_000, 2_000_000))
    assert long < short + 6, (short, long)


def test_too_short_a_stream_for_the_batch_names_the_key(tmp_path):
    prepared = write_prepared(tmp_path / "p", [20])
    with pytest.raises(StreamError, match="training.batch_size"):
        datamodule(prepared, steps=8, rows=64)


def test_stateful_mode_refuses_an_encoder_decoder_variant():
    task = {"kind": "timeseries", "source": "x.csv", "target": "y", "training": {"mode": "stateful"},
            "variants": [{"name": "ed", "cell": "gru", "topology": "encoder_decoder"}]}
    with pytest.raises(ValueError, match="training.mode: stateful"):
        TimeSeriesTask.model_validate(task)
