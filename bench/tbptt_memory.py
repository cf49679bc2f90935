"""Peak memory of one training step vs sequence length: TBPTT(k=128) against full BPTT.

Each (mode, T) runs in a fresh subprocess: build SequenceModel (LSTM, hidden 64, batch 8), fit one
warm-up batch of T=128 under pl.Trainer (so Lightning's own allocations are already in the
high-water mark), then fit one batch of length T. Peak RSS is the process's high-water mark
(getrusage ru_maxrss); `delta` is what the length-T step added on top of the warm-up. Full BPTT
keeps every step's activations for one backward (memory grows with T); TBPTT keeps k steps.
Writes bench/results/tbptt_memory.json (tbptt_peak_ratio_65536_vs_1024; target <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

from bench.common import machine, pin_threads, table, write_result

LENGTHS = (1024, 4096, 16384, 65536)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(mode: str, steps: int, k: int, batch: int, hidden: int) -> dict:
    """One process, one measurement (run by the parent with --child)."""
    pin_threads()
    warnings.filterwarnings("ignore")
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from models import ModelConfig, SequenceModel

    def batches(length: int) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, length, 1, generator=g)  # [B, T, 1]
        return DataLoader([{"x": x[i], "y": x[i].roll(-1, 0)} for i in range(batch)], batch_size=batch)

    def fit(length: int) -> None:
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=0)
        trainer.fit(model, train_dataloaders=batches(length))

    window = k if mode == "tbptt" else None
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(cell="lstm", input_size=1, hidden_size=hidden, topology="many_to_many",
                                      head="regression", output_size=1, k1=window, k2=window))
    fit(k)
    baseline = _peak_mb()
    start = time.perf_counter()
    fit(steps)
    peak = _peak_mb()
    return {"mode": mode, "T": steps, "peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1),
            "delta_mb": round(peak - baseline, 1), "seconds": round(time.perf_counter() - start, 2)}


def measure(mode: str, steps: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.tbptt_memory", "--child", mode, str(steps), "--k", str(args.k),
               "--batch", str(args.batch), "--hidden", str(args.hidden)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} T={steps} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "T"))
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.k, args.batch, args.hidden)))
        return
    pin_threads()
    rows = []
    for mode in ("tbptt", "full"):
        for steps in LENGTHS:
            rows.append(measure(mode, steps, args))
            lines = table(rows, list(rows[0])).splitlines()
            print("\n".join(lines if len(rows) == 1 else lines[-1:]), flush=True)
    tbptt = {r["T"]: r for r in rows if r["mode"] == "tbptt"}
    full = {r["T"]: r for r in rows if r["mode"] == "full"}
    ratio = tbptt[LENGTHS[-1]]["peak_rss_mb"] / tbptt[LENGTHS[0]]["peak_rss_mb"]
    full_ratio = full[LENGTHS[-1]]["peak_rss_mb"] / full[LENGTHS[0]]["peak_rss_mb"]
    per_step_kb = ((full[LENGTHS[-1]]["delta_mb"] - full[LENGTHS[0]]["delta_mb"]) * 1024
                   / (LENGTHS[-1] - LENGTHS[0]))
    write_result("tbptt_memory", {
        "name": "tbptt_memory",
        "what": "peak RSS of one training step of SequenceModel under pl.Trainer, each in a fresh process",
        "setup": {"cell": "lstm", "hidden_size": args.hidden, "batch": args.batch, "k1": args.k, "k2": args.k,
                  "lengths": list(LENGTHS), "measure": "getrusage ru_maxrss; delta = above a T=k warm-up fit"},
        "machine": machine(),
        "rows": rows,
        "tbptt_peak_rss_mb": {str(t): r["peak_rss_mb"] for t, r in tbptt.items()},
        "full_bptt_peak_rss_mb": {str(t): r["peak_rss_mb"] for t, r in full.items()},
        "full_bptt_delta_mb": {str(t): r["delta_mb"] for t, r in full.items()},
        "tbptt_delta_mb": {str(t): r["delta_mb"] for t, r in tbptt.items()},
        "tbptt_peak_ratio_65536_vs_1024": round(ratio, 4),
        "full_bptt_peak_ratio_65536_vs_1024": round(full_ratio, 4),
        "full_bptt_kb_per_step": round(per_step_kb, 2),
        "target": "tbptt_peak_ratio_65536_vs_1024 <= 1.2",
        "target_met": ratio <= 1.2,
    })
    print(f"TBPTT(k={args.k}) peak RSS at T=65536 / T=1024: {ratio:.3f} (target <= 1.2); "
          f"full BPTT: {full_ratio:.2f} (~{per_step_kb:.1f} KB per step)")


if __name__ == "__main__":
    main()
