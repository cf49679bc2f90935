"""GPU smoke check: train every cell x topology a few steps on the GPU (bf16-mixed) and on the CPU (fp32).

Prints, for each combination and device, the first and last training loss and the throughput
(sequences per second, timed over all batches after the first, which pays for kernel selection).
Also runs the inference API on the device so a state created on the wrong device would fail here.
Where no CUDA device exists it says so and exits 0, so it is safe in any CI.

    python scripts/gpu_check.py                 # GPU vs CPU
    python scripts/gpu_check.py --cpu-only      # the CPU half only (checks this script on a CPU machine)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch

from models import CELLS, TOPOLOGIES, GradientHealth, ModelConfig, SequenceModel


class _Meter(pl.Callback):
    """Records each batch's loss and wall time (synchronising the GPU so the time is real)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs  # manual optimization wraps the step's return
        self.losses.append(float(loss))


def make_batches(topology: str, steps: int, batch_size: int, seq_len: int, features: int) -> list[dict[str, Any]]:
    """Synthetic regression batches with the shapes of the batch contract of each topology."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        x = torch.randn(batch_size, seq_len, features, generator=g)
        if topology == "many_to_many":
            batches.append({"x": x, "y": x[..., :1].cumsum(1) * 0.1})
        elif topology == "many_to_one":
            lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=g)
            batches.append({"x": x, "lengths": lengths, "y": x[..., 0].mean(1)})
        elif topology == "one_to_many":
            batches.append(
                {"x": x[:, 0], "y": x[:, :1, :1].expand(-1, seq_len, 1) * torch.linspace(0, 1, seq_len)[:, None]}
            )
        else:
            batches.append({"x": x, "y": x[:, -1:, :1].expand(-1, 8, 1).clone()})
    return batches


def check(cell: str, topology: str, accelerator: str, precision: str, args: argparse.Namespace) -> dict[str, float]:
    """Train one combination; return first/last loss and sequences per second."""
    pl.seed_everything(0, verbose=False)
    window = {"k1": args.seq_len // 4, "k2": args.seq_len // 2} if topology == "many_to_many" else {}
    config = ModelConfig(
        cell=cell,
        topology=topology,
        input_size=args.features,
        hidden_size=args.hidden_size,
        num_layers=2,
        lr=3e-3,
        **window,
    )
    model = SequenceModel(config)
    meter = _Meter()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[meter, GradientHealth(probe_every_n_steps=max(1, args.steps // 2))],
    )
    batches = make_batches(topology, args.steps, args.batch_size, args.seq_len, args.features)
    trainer.fit(model, train_dataloaders=BatchList(batches))
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    model.to(device)
    history = batches[0]["x"].to(device)
    if topology in ("many_to_many", "encoder_decoder"):
        out = model.forecast(history, horizon=4)
    elif topology == "many_to_one":
        out = model.predict_step({"x": history, "lengths": batches[0]["lengths"]})
    else:
        out = model.predict_step({"x": history, "horizon": 4})
    if out.device.type != device.type or not torch.isfinite(out).all():
        raise RuntimeError(
            f"{cell}/{topology} on {accelerator}: inference gave {out.device} finite={bool(torch.isfinite(out).all())}"
        )
    timed = meter.times[1:] or meter.times
    return {"first": meter.losses[0], "last": meter.losses[-1], "seq_per_s": args.batch_size * len(timed) / sum(timed)}


class BatchList:
    """A sized iterable over ready batches (a list would be taken for several dataloaders by Lightning)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU half (to check the script without CUDA)")
    parser.add_argument("--steps", type=int, default=8, help="training batches per combination")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--features", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads for torch (stalls with more on busy small machines)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [("cpu", "32-true")]
    if not args.cpu_only:
        if not torch.cuda.is_available():
            print("No CUDA device found: nothing to check on a GPU (run with --cpu-only to exercise the CPU half).")
            return 0
        runs.insert(0, ("gpu", "bf16-mixed"))
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    print(f"torch {torch.__version__}, lightning {pl.__version__}, CPU threads {torch.get_num_threads()}")
    print(f"batch {args.batch_size} x {args.seq_len} steps, hidden {args.hidden_size}, 2 layers, {args.steps} batches")
    print(f"{'cell':5} {'topology':16} " + " ".join(f"{acc + ' ' + prec:>34}" for acc, prec in runs))
    failures = 0
    for cell in CELLS:
        for topology in TOPOLOGIES:
            cells = []
            for accelerator, precision in runs:
                try:
                    r = check(cell, topology, accelerator, precision, args)
                except Exception as error:  # report every combination, then fail the run
                    failures += 1
                    cells.append(f"FAILED {type(error).__name__}: {error}")
                    continue
                cells.append(f"loss {r['first']:7.4f}->{r['last']:7.4f} {r['seq_per_s']:8.0f} seq/s")
            print(f"{cell:5} {topology:16} " + " ".join(f"{c:>34}" for c in cells), flush=True)
    print(f"{failures} failure(s)" if failures else "all combinations trained and predicted")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
