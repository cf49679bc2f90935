"""Training throughput: Lightning's TBPTT module vs a hand-written PyTorch TBPTT loop, side by side.

Both train the same network (models.SequenceModel's LSTM, same seed and initial weights) on the
same batches (one DataLoader) with the same chunking (k1 = k2 = K: forward a chunk from the
carried state, MSE, backward, clip the norm at 1.0, Adam step, detach the state), on one torch
thread. Lightning runs SequenceModel.training_step under pl.Trainer (manual optimization); the
raw loop is the textbook version.

The two are interleaved epoch by epoch: a callback runs one raw epoch after each Lightning epoch,
so a neighbour's burst of work lands on both sides, not on one whole run. The ratio is each side's
fastest epoch (timesteps/s, wall clock) after one warm-up pair: the epochs least disturbed by other
processes; the median of the per-pair ratios is kept beside it. Two sizes show what bounds the
ratio: Lightning's cost is a fixed amount per optimizer update, so it weighs less as an update's
compute grows.
Writes bench/results/train_throughput.json (ratio_vs_raw; target >= 0.95).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
from torch.utils.data import DataLoader, Dataset

from bench.common import machine, median, pin_threads, table, write_result

CONFIGS = {  # name: (hidden_size, batch, sequences, steps); the last one is the headline
    "hidden64_batch16": (64, 16, 128, 2048),
    "hidden128_batch32": (128, 32, 64, 2048),
}


class Waves(Dataset):
    """Noisy sine waves, next-step targets: x [T, 1], y [T, 1]."""

    def __init__(self, sequences: int, steps: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(steps + 1, dtype=torch.float32)  # [T+1]
        phase = torch.rand(sequences, 1, generator=g) * 6.28  # [N, 1]
        period = 20 + 80 * torch.rand(sequences, 1, generator=g)  # [N, 1]
        wave = torch.sin(t / period * 6.28 + phase) + 0.1 * torch.randn(sequences, steps + 1, generator=g)  # [N, T+1]
        self.x, self.y = wave[:, :-1, None], wave[:, 1:, None]  # [N, T, 1]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def build(hidden: int, k: int):  # noqa: ANN201 - a SequenceModel
    from models import ModelConfig, SequenceModel

    torch.manual_seed(0)
    return SequenceModel(ModelConfig(cell="lstm", input_size=1, hidden_size=hidden, topology="many_to_many",
                                     head="regression", output_size=1, k1=k, k2=k, clip_algorithm="norm",
                                     clip_value=1.0, lr=1e-3))


class RawLoop:
    """The hand-written TBPTT loop, on its own copy of the same network."""

    def __init__(self, hidden: int, k: int) -> None:
        model = build(hidden, k)
        self.net, self.params, self.k = model.net, list(model.parameters()), k
        self.optimizer = torch.optim.Adam(self.params, lr=1e-3)

    def epoch(self, loader: DataLoader) -> None:
        for batch in loader:
            x, y, state = batch["x"], batch["y"], None  # [B, T, 1]
            for s in range(0, x.shape[1], self.k):
                pred, state = self.net(x[:, s:s + self.k], state)  # [B, K, 1]
                loss = (pred - y[:, s:s + self.k]).pow(2).mean()
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                state = tuple(h.detach() for h in state)  # carried, cut from the graph


def paired_epochs(hidden: int, batch: int, sequences: int, steps: int, k: int, epochs: int) -> list[dict]:
    """Seconds of each Lightning epoch and of the raw epoch run right after it (wall and CPU)."""
    import pytorch_lightning as pl

    loader = DataLoader(Waves(sequences, steps), batch_size=batch, shuffle=False)
    raw = RawLoop(hidden, k)

    class Pairs(pl.Callback):
        def __init__(self) -> None:
            self.pairs: list[dict] = []
            self.wall = self.cpu = 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, module) -> None:
            lit_wall, lit_cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
            wall, cpu = time.perf_counter(), time.process_time()
            raw.epoch(loader)
            self.pairs.append({"lightning_s": lit_wall, "raw_s": time.perf_counter() - wall,
                               "lightning_cpu_s": lit_cpu, "raw_cpu_s": time.process_time() - cpu})

    pairs = Pairs()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[pairs])
    trainer.fit(build(hidden, k), train_dataloaders=loader)
    return pairs.pairs


def compare(name: str, hidden: int, batch: int, sequences: int, steps: int, k: int, epochs: int,
            warmup: int) -> dict:
    print(f"\n{name}: LSTM hidden {hidden}, batch {batch}, {sequences} sequences x {steps} steps, "
          f"TBPTT k1=k2={k}; {epochs} epoch pairs after {warmup} warm-up", flush=True)
    per_epoch, per_update = sequences * steps, batch * k
    rows = []
    for i, pair in enumerate(paired_epochs(hidden, batch, sequences, steps, k, warmup + epochs)[warmup:]):
        rows.append({"pair": i + 1, "raw_timesteps_per_s": per_epoch / pair["raw_s"],
                     "lightning_timesteps_per_s": per_epoch / pair["lightning_s"],
                     "ratio": pair["raw_s"] / pair["lightning_s"],
                     "ratio_cpu": pair["raw_cpu_s"] / pair["lightning_cpu_s"]})
    print(table(rows, list(rows[0])), flush=True)
    # Each side's fastest epoch: the one least disturbed by other processes (as timeit advises); the
    # interleaving gives both sides the same chances of a quiet epoch. The median pair ratio is kept beside it.
    raw, lit = max(r["raw_timesteps_per_s"] for r in rows), max(r["lightning_timesteps_per_s"] for r in rows)
    return {
        "setup": {"hidden_size": hidden, "batch": batch, "sequences": sequences, "steps": steps, "k": k,
                  "epoch_pairs": epochs, "warmup_pairs": warmup},
        "pairs": rows,
        "raw_timesteps_per_s": round(raw, 1),
        "lightning_timesteps_per_s": round(lit, 1),
        "raw_ms_per_update": round(per_update / raw * 1e3, 3),
        "overhead_ms_per_update": round(per_update * (1 / lit - 1 / raw) * 1e3, 3),
        "ratio_vs_raw": round(lit / raw, 4),
        "ratio_vs_raw_median_pair": round(median(r["ratio"] for r in rows), 4),
        "ratio_vs_raw_median_pair_cpu_time": round(median(r["ratio_cpu"] for r in rows), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8, help="timed epoch pairs per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    pin_threads()
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    configs = {name: compare(name, *shape, args.k, args.epochs, args.warmup) for name, shape in CONFIGS.items()}
    headline = list(CONFIGS)[-1]
    ratio = configs[headline]["ratio_vs_raw"]
    keys = ("raw_timesteps_per_s", "lightning_timesteps_per_s", "ratio_vs_raw", "ratio_vs_raw_median_pair",
            "raw_ms_per_update", "overhead_ms_per_update")
    summary = [{"config": n, **{key: c[key] for key in keys}} for n, c in configs.items()]
    print("\n" + table(summary, list(summary[0])))
    write_result("train_throughput", {
        "name": "train_throughput",
        "what": "timesteps/s of models.SequenceModel (manual-optimization TBPTT) under pl.Trainer vs a "
                "hand-written PyTorch TBPTT loop on the same network, batches and chunking, epochs interleaved",
        "chunking": f"TBPTT k1=k2={args.k}; clip norm 1.0; Adam lr 1e-3; LSTM; 1 torch thread",
        "machine": machine(),
        "headline_config": headline,
        "raw_timesteps_per_s": configs[headline]["raw_timesteps_per_s"],
        "lightning_timesteps_per_s": configs[headline]["lightning_timesteps_per_s"],
        "ratio_vs_raw": ratio,
        "target": ">= 0.95",
        "target_met": ratio >= 0.95,
        "configs": configs,
    })
    print(f"Lightning / raw PyTorch TBPTT ({headline}): {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
