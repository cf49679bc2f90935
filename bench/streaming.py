"""Stateful streaming TBPTT against today's window mode on one long series: memory, speed, error.

One synthetic series per length (10^4 .. 10^7 steps) with a dependency longer than a chunk: a regime
(+1 / -1) switches every REGIME steps; every EVENT steps a precursor (+1 for 3 steps) announces a pulse of
10 steps whose sign is the regime. A pulse's first step is only predictable from the previous pulse, EVENT
steps back: longer than one window or one batch of the stream, so only a state carried across batches can
know it; its other nine steps follow from the first. Those first steps carry most of what a model without
the long dependency gets wrong: a window model that is perfect locally still pays 9 (raw units) on each, about
0.09 of its 0.15 network-space MSE at 10^6 steps, while knowing the previous pulse's sign brings the whole
series to about 0.07 (noise alone: 0.05). So the series was kept as it was: the long dependency already
carries most of the predictable signal, and `dependency_mse` (the holdout's first pulse steps alone) shows
directly whether a mode learnt it, against its two references (sign unknown, sign known).

Each (mode, length) trains one pass (one epoch) with the same variant in its own child process, so its peak
RSS (VmHWM, see `peak_rss_mb`) is its own: one LSTM layer, TBPTT(k1, k2), lr LR, and chrono-initialised gates
for MEMORY steps (`memory_steps`, twice the pulse gap: with PyTorch's default gates no setting tried learnt the
dependency in more than one seed of four to eight). A second child scores next-step MSE (network space) on the
validation steps and on the holdout, after warming the state over the WARM steps before each, the same for
both modes. Whether one pass picks the dependency up still depends on the seed (about a third of seeds at
10^7), so each mode trains SEEDS restarts and keeps the one of the lowest validation MSE, as a retrain
chooses among variants that differ only in their seed; every seed's scores are in the results.

neuralforecast's LSTM at the same hidden size runs on the 10^5 series in its own venv ($NF_PYTHON, default
/tmp/nf/bin/python). The speed ratio is taken between two amounts of work for each (`marginal_speed`), so the
fixed costs of a run cancel; whole-run rates are reported beside it.

Run: OMP_NUM_THREADS=1 python -m bench.streaming  ->  bench/results/streaming.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, pin_threads, table, write_result

LENGTHS = tuple(int(n) for n in os.environ.get("BENCH_LENGTHS", "10000,100000,1000000,10000000").split(","))
REGIME, EVENT, PULSE = 5_000, 500, 10
HIDDEN, STEPS, ROWS, K = 32, 256, 32, 64  # hidden size, steps a batch (= prepare.window), rows, k1 = k2
LR, MEMORY = 0.01, 2 * EVENT  # the variant's lr and memory_steps (chrono gates for twice the longest dependency)
SEEDS = tuple(range(int(os.environ.get("BENCH_SEEDS", "6"))))  # one-pass restarts per mode, chosen by validation
STRIDE = STEPS // 8  # window mode's derived stride
HOLDOUT_MAX, WARM = 20_000, 50_000
NF_LENGTH = 100_000
NF_STEPS = (300, 900)  # neuralforecast's optimizer steps: the benchmark's run, and a longer one for the rate
SPEED_PASSES, SPEED_REPEATS = (1, 5), 3  # stateful passes over the 10^5 series for the rate, each timed 3 times


def series(n: int, seed: int = 0) -> np.ndarray:
    """The long-dependency series [n]: noise, precursors and regime-signed pulses."""
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 0.1, n)
    regimes = rng.choice([-1.0, 1.0], size=n // REGIME + 1)
    for t0 in range(EVENT // 2, n - PULSE - 3, EVENT):
        y[t0:t0 + 3] += 1.0
        y[t0 + 3:t0 + 3 + PULSE] += 3.0 * regimes[(t0 + 3) // REGIME]
    return y


def holdout_of(n: int) -> int:
    return min(n // 10, HOLDOUT_MAX)


def validation_of(n: int) -> int:
    return max(ROWS, holdout_of(n) // 4)


def write_prepared(root: Path, n: int) -> None:
    """prepared/<task>/ as prepare writes it (series.parquet, transform.json), in row groups of 2^16."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.prepare.features import SeriesTransform

    root.mkdir(parents=True, exist_ok=True)
    y, holdout = series(n), holdout_of(n)
    n_val = validation_of(n)
    split = np.repeat(np.array(["train", "validation", "holdout"]), [n - holdout - n_val, n_val, holdout])
    table_ = pa.table({"series_id": pa.array(np.zeros(n, np.int8)).cast(pa.string()).dictionary_encode(),
                       "split": pa.array(split).dictionary_encode(), "y": y})
    pq.write_table(table_, root / "series.parquet", row_group_size=1 << 16)
    SeriesTransform.fit([y[:n - holdout - n_val, None]], ["y"], False).save(root / "transform.json")


def model_config(**fields):
    """The variant both modes train: one LSTM layer, TBPTT(K, K), chrono gates for MEMORY steps."""
    from models import ModelConfig

    return ModelConfig(topology="many_to_many", cell="lstm", input_size=1, hidden_size=HIDDEN, output_size=1,
                       head="regression", k1=K, k2=K, lr=LR, memory_steps=MEMORY, **fields)


def train_child(mode: str, prepared: Path, weights: Path, seed: int, epochs: int = 1) -> dict:
    """One pass in `mode` over `prepared`; returns its seconds and peak RSS (this process, imports included)."""
    pin_threads()
    import pytorch_lightning as pl

    from models import SequenceModel
    from pipelines.train.datamodules import SeriesDataModule
    from pipelines.train.streaming import StatefulSeriesDataModule

    if mode == "stateful":
        dm = StatefulSeriesDataModule(prepared, STEPS, ROWS)
    else:
        dm = SeriesDataModule(prepared, "many_to_many", STEPS, STRIDE, ROWS, 1)
    started = time.perf_counter()
    dm.setup("fit")
    pl.seed_everything(seed, verbose=False)
    network = SequenceModel(model_config())
    trainer = pl.Trainer(max_epochs=epochs, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         accelerator="cpu", devices=1)
    trainer.fit(network, datamodule=dm)
    seconds = time.perf_counter() - started
    import torch

    torch.save(network.state_dict(), weights)
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM, which belongs to its own address space. Not
    `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries that across exec, so a child reports its parent's peak
    when the parent was bigger (the parent here holds the whole series while writing the 10^7 steps)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def first_pulse_steps(n: int) -> np.ndarray:
    """Indices of every pulse's first step in series(n): the steps only the previous pulse, EVENT steps back,
    predicts (its sign); every other step is predictable from the last few steps."""
    return np.arange(EVENT // 2 + 3, n - PULSE, EVENT)


def next_step_errors(network, z) -> np.ndarray:
    """Squared next-step errors (network space) of every step of z [1, T, 1] after the first, the state carried
    from the first step, WARMUP_STEPS at a time (as serving warms a long history): error[i] is step i + 1's."""
    import torch

    from models import WARMUP_STEPS

    errors, state = [], None
    with torch.inference_mode():
        for a in range(0, z.shape[1] - 1, WARMUP_STEPS):
            b = min(a + WARMUP_STEPS, z.shape[1] - 1)
            pred, state = network.net(z[:, a:b], state)  # [1, b-a, 1]
            errors.append((pred[0, :, 0] - z[0, a + 1:b + 1, 0]) ** 2)  # [b-a]
    return torch.cat(errors).numpy()  # [T - 1]


def score_child(n: int, weights: Path, prepared: Path) -> dict:
    """Next-step MSE (network space) over the holdout and, to choose among seeds, over the validation steps
    before it, the state warmed over the WARM steps before each; the holdout MSE on its first pulse steps
    alone (`dependency_mse`), beside two references for those steps: predicting the pulse without its sign
    (raw 0, the best a model without the long dependency can do) and with the previous pulse's sign (the long
    dependency learnt)."""
    pin_threads()
    import torch

    from models import SequenceModel
    from pipelines.prepare.features import SeriesTransform

    network = SequenceModel(model_config())
    network.load_state_dict(torch.load(weights, weights_only=True))
    network.eval()
    transform = SeriesTransform.load(prepared / "transform.json")
    holdout, n_val, full = holdout_of(n), validation_of(n), series(n)

    def segment(stop: int, length: int) -> np.ndarray:
        """Errors of the `length` steps before `stop`, after a warm-up of up to WARM steps."""
        y = full[max(0, stop - length - WARM - 1):stop]
        z = torch.from_numpy(transform.to_inputs(y[:, None]))[None]  # [1, T, 1]
        return next_step_errors(network, z)[-length:]

    error = segment(n, holdout)  # [holdout]: the target of error[i] is full[n - holdout + i]
    firsts = first_pulse_steps(n)
    firsts = firsts[firsts >= n - holdout]
    target = transform.to_inputs(full[firsts, None])[:, 0]  # [P]
    unknown = transform.to_inputs(np.zeros((len(firsts), 1)))[:, 0]  # [P]
    known = transform.to_inputs(3.0 * np.sign(full[firsts - EVENT, None]))[:, 0]  # [P]
    return {"validation_mse": float(segment(n - holdout, n_val).mean()),
            "holdout_mse": float(error.mean()),
            "dependency_mse": float(error[firsts - (n - holdout)].mean()),
            "dependency_mse_sign_unknown": float(((target - unknown) ** 2).mean()),
            "dependency_mse_sign_known": float(((target - known) ** 2).mean())}


def nf_child(prepared: Path, max_steps: int = NF_STEPS[0], score: bool = True) -> dict:
    """neuralforecast's LSTM (same hidden size, input window STEPS) on the series: steps read per second in
    training (every window's STEPS + 1 steps count, re-read or not) and, with `score`, one-step MSE over the
    holdout (cross_validation, no refit), in network space."""
    import logging

    import pandas as pd
    import torch
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    meta = json.loads((prepared / "transform.json").read_text())
    n, holdout = NF_LENGTH, holdout_of(NF_LENGTH)
    y = (series(n) - meta["mean"][0]) / meta["std"][0]
    df = pd.DataFrame({"unique_id": "s", "ds": np.arange(n), "y": y})
    windows = ROWS
    model = LSTM(h=1, input_size=STEPS, encoder_hidden_size=HIDDEN, decoder_hidden_size=HIDDEN, max_steps=max_steps,
                 batch_size=1, windows_batch_size=windows, learning_rate=0.005, scaler_type=None,
                 enable_progress_bar=False, logger=False, accelerator="cpu", devices=1, random_seed=0)
    nf = NeuralForecast(models=[model], freq=1)
    started = time.perf_counter()
    nf.fit(df.iloc[:n - holdout])
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "timesteps_per_s": max_steps * windows * (STEPS + 1) / seconds,
              "max_steps": max_steps}
    if score:
        scored = min(holdout, 2_000)
        cv = nf.cross_validation(df.iloc[:n - holdout + scored], n_windows=scored, step_size=1, h=1, refit=False)
        result.update(holdout_mse=float(((cv["LSTM"] - cv["y"]) ** 2).mean()), scored_steps=scored)
    return result


def marginal_speed(prepared: Path, tmp: Path, nf_python: str) -> dict:
    """Steps per second between two amounts of work, for stateful mode and neuralforecast alike, so that each
    run's fixed costs (the trainer, the first batches' warm-up) cancel: a stateful pass over 10^5 steps lasts
    about a quarter second, half of it such costs, against about 11 s for neuralforecast's 300 steps, so
    whole-run rates at 10^5 compare fixed costs more than training. Stateful: SPEED_PASSES passes (seed 0),
    each timed SPEED_REPEATS times, medians; neuralforecast: NF_STEPS optimizer steps."""
    n_train = NF_LENGTH - holdout_of(NF_LENGTH) - validation_of(NF_LENGTH)
    seconds = {}
    for passes in SPEED_PASSES:
        runs = [_child("train", "stateful", str(prepared), str(tmp / "speed.pt"), "0", str(passes))
                for _ in range(SPEED_REPEATS)]
        if any("error" in r for r in runs):
            return {"error": next(r["error"] for r in runs if "error" in r)}
        seconds[passes] = float(np.median([r["seconds"] for r in runs]))
    low, high = SPEED_PASSES
    result = {"stateful_seconds": {str(k): v for k, v in seconds.items()},
              "stateful_timesteps_per_s": (high - low) * n_train / (seconds[high] - seconds[low])}
    if Path(nf_python).exists():
        nf = {steps: _child("nf", str(prepared), str(steps), "0", python=nf_python) for steps in NF_STEPS}
        if all("seconds" in r for r in nf.values()):
            low, high = NF_STEPS
            result.update(neuralforecast_seconds={str(k): r["seconds"] for k, r in nf.items()},
                          neuralforecast_timesteps_per_s=(high - low) * ROWS * (STEPS + 1)
                          / (nf[high]["seconds"] - nf[low]["seconds"]))
            result["ratio"] = result["stateful_timesteps_per_s"] / result["neuralforecast_timesteps_per_s"]
    return result


def _child(*args: str, python: str = sys.executable) -> dict:
    out = subprocess.run([python, "-m", "bench.streaming", *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                         cwd=Path(__file__).resolve().parent.parent)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


COLUMNS = ["mode", "length", "seed", "learnt", "seconds", "timesteps_per_s", "peak_rss_mb", "validation_mse",
           "holdout_mse", "dependency_mse"]


def learnt(run: dict) -> bool:
    """Whether a run picked up the long dependency: its first-pulse error nearer "sign known" than "unknown"."""
    return run["dependency_mse"] < (run["dependency_mse_sign_unknown"] + run["dependency_mse_sign_known"]) / 2


def train_seeds(mode: str, n: int, prepared: Path, tmp: Path) -> dict:
    """Every seed of SEEDS trained for one pass in `mode` and scored; the one of the lowest validation MSE is
    the mode's model, as a retrain chooses among variants that differ in their seed. Its row, with the median
    seconds and steps/s, the highest peak RSS, and every seed's scores."""
    trained = {}
    for seed in SEEDS:
        weights = tmp / f"{mode}-{n}-{seed}.pt"
        run = _child("train", mode, str(prepared), str(weights), str(seed))
        if "error" not in run:
            run["timesteps_per_s"] = (n - holdout_of(n) - validation_of(n)) / run["seconds"]
            run.update(_child("score", str(n), str(weights), str(prepared)))
        trained[seed] = run
    scored = {seed: run for seed, run in trained.items() if "validation_mse" in run}
    if not scored:
        return next(iter(trained.values()))
    seed = min(scored, key=lambda k: scored[k]["validation_mse"])
    return {**scored[seed], "seed": seed, "learnt": learnt(scored[seed]),
            "seconds": float(np.median([r["seconds"] for r in scored.values()])),
            "timesteps_per_s": float(np.median([r["timesteps_per_s"] for r in scored.values()])),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in scored.values()),
            "seeds_learnt": sum(learnt(r) for r in scored.values()),
            "seeds": {str(k): {key: r.get(key) for key in ("validation_mse", "holdout_mse", "dependency_mse", "error")
                               if key in r} for k, r in trained.items()}}


def main() -> None:
    pin_threads()
    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        for n in LENGTHS:
            prepared = Path(tmp) / str(n)
            write_prepared(prepared, n)
            for mode in ("stateful", "window"):
                runs[f"{mode}_{n}"] = run = train_seeds(mode, n, prepared, Path(tmp))
                rows.append({"mode": mode, "length": n, **run})
                print(table(rows[-1:], COLUMNS), flush=True)
            if n == NF_LENGTH:
                nf_python = os.environ.get("NF_PYTHON", "/tmp/nf/bin/python")
                runs["neuralforecast_lstm_100000"] = (_child("nf", str(prepared), python=nf_python)
                                                      if Path(nf_python).exists() else
                                                      {"skipped": f"no neuralforecast venv at {nf_python}"})
                print("neuralforecast LSTM:", runs["neuralforecast_lstm_100000"], flush=True)
                runs["speed_100000"] = marginal_speed(prepared, Path(tmp), nf_python)
                print("speed between two amounts of work:", runs["speed_100000"], flush=True)
    print(table(rows, COLUMNS))
    s = {n: runs.get(f"stateful_{n}", {}) for n in LENGTHS}
    w = {n: runs.get(f"window_{n}", {}) for n in LENGTHS}
    nf = runs.get("neuralforecast_lstm_100000", {})
    longest_both = max((n for n in LENGTHS if "holdout_mse" in w[n] and "holdout_mse" in s[n]), default=None)
    summary = {
        "stateful_peak_ratio_1e7_vs_1e4": (s[LENGTHS[-1]]["peak_rss_mb"] / s[LENGTHS[0]]["peak_rss_mb"]
                                           if "peak_rss_mb" in s[LENGTHS[-1]] else None),
        "long_dependency_length": longest_both,
        "stateful_holdout_mse": s[longest_both]["holdout_mse"] if longest_both else None,
        "window_holdout_mse": w[longest_both]["holdout_mse"] if longest_both else None,
        "stateful_vs_window_error_ratio": (s[longest_both]["holdout_mse"] / w[longest_both]["holdout_mse"]
                                           if longest_both else None),
        # the same length, on the first pulse steps only (what the long dependency predicts), and its references
        "stateful_dependency_mse": s[longest_both]["dependency_mse"] if longest_both else None,
        "window_dependency_mse": w[longest_both]["dependency_mse"] if longest_both else None,
        "dependency_mse_sign_unknown": s[longest_both]["dependency_mse_sign_unknown"] if longest_both else None,
        "dependency_mse_sign_known": s[longest_both]["dependency_mse_sign_known"] if longest_both else None,
        # how many of the SEEDS one-pass restarts picked the dependency up, per mode, at that length
        "stateful_seeds_learnt": s[longest_both].get("seeds_learnt") if longest_both else None,
        "window_seeds_learnt": w[longest_both].get("seeds_learnt") if longest_both else None,
        "seeds": len(SEEDS),
        # steps/s between two amounts of work at 10^5 (marginal_speed: fixed costs cancel), and whole-run rates
        "stateful_vs_neuralforecast_timesteps_per_s": runs.get("speed_100000", {}).get("ratio"),
        "stateful_vs_neuralforecast_timesteps_per_s_whole_runs": (
            s[NF_LENGTH]["timesteps_per_s"] / nf["timesteps_per_s"]
            if "timesteps_per_s" in nf and "timesteps_per_s" in s[NF_LENGTH] else None),
    }
    print(json.dumps(summary, indent=2))
    write_result("streaming", {"machine": machine(), "settings": {
        "hidden_size": HIDDEN, "steps_per_batch": STEPS, "rows": ROWS, "k1": K, "k2": K, "window_stride": STRIDE,
        "regime_steps": REGIME, "event_steps": EVENT, "holdout_max": HOLDOUT_MAX, "warm_steps": WARM,
        "lr": LR, "memory_steps": MEMORY, "seeds": list(SEEDS), "selection": "lowest validation MSE among the seeds",
        "speed": {"stateful_passes": list(SPEED_PASSES), "repeats": SPEED_REPEATS,
                  "neuralforecast_steps": list(NF_STEPS)},
        "epochs": 1, "threads": 1}, "runs": runs, "summary": summary})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        print(json.dumps(train_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]),
                                     int(sys.argv[6]) if len(sys.argv) > 6 else 1)))
    elif len(sys.argv) > 1 and sys.argv[1] == "score":
        print(json.dumps(score_child(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "nf":
        print(json.dumps(nf_child(Path(sys.argv[2]), *(int(a) for a in sys.argv[3:5]))))
    else:
        main()
