"""Serving: `seqops serve` (the gateway) vs stock `mlflow models serve`, same registered model.

One registered forecast pyfunc (the forecast variant of params.yaml: LSTM, its hidden size and
serving limits; untrained weights cost the same), both servers up at once on loopback with one
worker and one torch thread. Two requests, each a 104-step history: horizon 1 (one forward pass,
~0.2 ms: the small-forward case the targets assume; the headline) and the default horizon (an
autoregressive forecast, ~1.5 ms of model time that both servers pay alike). Rounds alternate
which server goes first; each runs closed-loop keep-alive clients at concurrency 1 and 8
(bench/loadgen.py) and records throughput, p50/p99 latency and the server's CPU time per request
(robust to other processes on the machine). The model's own time is measured in-process: the
network's forecast for the request (forward_ms) and the whole pyfunc predict.
A third server, the gateway with serving.batching=false, runs beside them: the default request runs at
concurrency 1, 8 and 32 on all three (batching on and off side by side). The network's per-step cost
(models/inference.py's step) is timed against the bare torch.nn.LSTM step on the same weights.
Writes bench/results/serving.json (throughput_ratio_vs_stock_c8, target >= 2.0; p50_ms at
concurrency 1, target <= 2 x forward_ms + 2 ms; throughput_ratio_vs_stock_c8_h12 >= 3.0,
throughput_ratio_vs_stock_c32 >= 5.0, p99_ms_c8 <= 3 x p50 at c8, step_ratio_vs_bare_cell).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from bench.common import machine, median, pin_threads, table, write_result
from tests.support.loadgen import run_load
from tests.support.registered_models import register_forecast, set_champion, store_uri
from tests.support.servers import GatewayProcess, thread_env

HISTORY_STEPS = 104
REPO = Path(__file__).resolve().parent.parent


def request_body(steps: int, horizon: int) -> dict:
    t = np.arange(steps)
    history = 330.0 + 0.04 * t + 3.0 * np.sin(2 * math.pi * t / 52)  # CO2-like: trend and a yearly cycle
    return {"dataframe_records": [{"series_id": "mlo", "history": [round(float(v), 3) for v in history]}],
            "params": {"horizon": horizon}}


def model_times(uri: str, name: str, body: dict, calls: int = 1000) -> dict:
    """Median ms of the network's forward and of the whole pyfunc predict, in this process."""
    import mlflow
    import pandas as pd
    import torch

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model()
    record = body["dataframe_records"][0]
    horizon = body["params"]["horizon"]
    values = np.asarray(record["history"], dtype=np.float64)[:, None]  # [T, 1]
    frame = pd.DataFrame(body["dataframe_records"], dtype=object)

    def forward() -> None:
        inputs = torch.from_numpy(model.transform.to_inputs(values))  # [T-1, 1]
        model.stepper.forecast([inputs], [horizon])  # [H]

    rnn = model.network.net.core.rnn
    x, state = torch.zeros(1, 1, 1), tuple(torch.zeros(rnn.num_layers, 1, rnn.hidden_size) for _ in range(2))
    layers = [(torch.zeros(1, rnn.hidden_size), torch.zeros(1, rnn.hidden_size))]

    def bare_step() -> None:
        with torch.inference_mode():
            rnn(x, state)  # [1, 1, H]

    def our_step() -> None:
        with torch.inference_mode():
            model.stepper.step(x[0], layers)  # [1]

    def timed(fn) -> float:
        """The quietest of 5 blocks: each block's median, then the smallest (other jobs share the machine)."""
        for _ in range(50):
            fn()
        blocks = []
        for _ in range(5):
            samples = []
            for _ in range(calls // 5):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
            blocks.append(float(np.median(samples)))
        return round(min(blocks) * 1e3, 4)

    step, bare = timed(our_step), timed(bare_step)
    return {"forward_ms": timed(forward), "pyfunc_predict_ms": timed(lambda: model.predict(None, frame, body["params"])),
            "step_ms": step, "bare_cell_step_ms": bare, "step_ratio_vs_bare_cell": round(step / bare, 3)}


def _cpu_seconds(pid: int) -> float:
    process = psutil.Process(pid)
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(url: str, pid: int, body: dict, concurrency: int, seconds: float) -> dict:
    before = _cpu_seconds(pid)
    result = run_load(f"{url}/invocations", body, concurrency, seconds, warmup=1.0)
    cpu = _cpu_seconds(pid) - before
    summary = result.summary()
    summary["server_cpu_ms_per_request"] = round(cpu / max(summary["requests"], 1) * 1e3, 3)
    return summary


def run_requests(servers: dict, body: dict, rounds: int, seconds_c1: float, seconds_c8: float,
                 concurrencies: tuple[int, ...]) -> list[dict]:
    """Alternating rounds: each server at each concurrency; one row per (round, server, concurrency)."""
    rows = []
    for r in range(rounds):
        for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
            for concurrency in concurrencies:
                seconds = seconds_c1 if concurrency == 1 else seconds_c8
                rows.append({"round": r + 1, "server": name, **measure(*servers[name], body, concurrency, seconds)})
                lines = table(rows, COLUMNS).splitlines()
                print("\n".join(lines if len(rows) == 1 else lines[-1:]), flush=True)
    return rows


def summarize(rows: list[dict], times: dict, horizon: int, concurrencies: tuple[int, ...]) -> dict:
    def agg(server: str, concurrency: int) -> dict:
        picked = [r for r in rows if r["server"] == server and r["concurrency"] == concurrency]
        keys = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
        return {**{k: round(median(r[k] for r in picked), 3) for k in keys},
                "requests": sum(r["requests"] for r in picked), "errors": sum(r["errors"] for r in picked),
                "seconds": round(sum(r["seconds"] for r in picked), 1)}

    servers = {s: {f"c{c}": agg(s, c) for c in concurrencies} for s in sorted({r["server"] for r in rows})}
    ratio = servers["seqops"]["c8"]["throughput_rps"] / servers["stock"]["c8"]["throughput_rps"]
    p50, target = servers["seqops"]["c1"]["p50_ms"], 2 * times["forward_ms"] + 2
    return {
        "horizon": horizon,
        "forward_ms": times["forward_ms"],
        "pyfunc_predict_ms": times["pyfunc_predict_ms"],
        **{k: times[k] for k in ("step_ms", "bare_cell_step_ms", "step_ratio_vs_bare_cell")},
        "p50_ms": p50,
        "p99_ms": servers["seqops"]["c1"]["p99_ms"],
        "p50_target_ms": round(target, 3),
        "p50_target_met": p50 <= target,
        "throughput_ratio_vs_stock_c8": round(ratio, 3),
        "throughput_target_met": ratio >= 2.0,
        "cpu_per_request_ratio_stock_vs_seqops_c8": round(servers["stock"]["c8"]["server_cpu_ms_per_request"]
                                                          / servers["seqops"]["c8"]["server_cpu_ms_per_request"], 3),
        "servers": servers,
        "rounds": rows,
        **({f"throughput_ratio_vs_stock_c{c}_{s}": round(servers[s][f"c{c}"]["throughput_rps"]
                                                          / servers["stock"][f"c{c}"]["throughput_rps"], 3)
            for c in concurrencies for s in servers if s != "stock"}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds-c1", type=float, default=8.0)
    parser.add_argument("--seconds-c8", type=float, default=30.0,
                        help="per round, headline request; half that for the other")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="params.yaml override for `seqops serve`, e.g. serving.concurrency=2 (repeatable)")
    args = parser.parse_args()
    pin_threads()
    from pipelines.serving.process import ScoringServer

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    task = params["tasks"]["forecast"]
    hidden, limits = task["variants"][0]["hidden_size"], task["serving"]
    horizons = {"horizon_1": 1, f"horizon_{limits['default_horizon']}": limits["default_horizon"]}
    root = Path(tempfile.mkdtemp(prefix="seqops-bench-serving-"))
    results = {}
    try:
        (root / "params.yaml").write_text(yaml.safe_dump({**params, "tasks": {"forecast": task}}, sort_keys=False))
        version = register_forecast(root, "seqops-forecast", seed=0, hidden_size=hidden, limits=limits)
        set_champion(root, "seqops-forecast", version)
        uri = store_uri(root)
        times = {kind: model_times(uri, "seqops-forecast", request_body(HISTORY_STEPS, h))
                 for kind, h in horizons.items()}
        gateway = GatewayProcess("forecast", root, uri, overrides=tuple(args.overrides),
                                 log_path=root / "seqops.log").launch()
        unbatched = GatewayProcess("forecast", root, uri, overrides=(*args.overrides, "serving.batching=false"),
                                   log_path=root / "seqops-unbatched.log").launch()
        os.environ.update({k: v for k, v in thread_env().items() if k.endswith("_THREADS")})
        with ScoringServer("models:/seqops-forecast@champion", uri, log_path=root / "stock.log") as stock:
            gateway.wait_ready()
            unbatched.wait_ready()
            servers = {"stock": (stock.url, stock.process.pid), "seqops": (gateway.url, gateway.process.pid),
                       "seqops_unbatched": (unbatched.url, unbatched.process.pid)}
            for i, (kind, horizon) in enumerate(horizons.items()):
                print(f"\n{kind}: LSTM hidden {hidden}, {HISTORY_STEPS}-step history, horizon {horizon}; model "
                      f"forward {times[kind]['forward_ms']} ms, pyfunc predict {times[kind]['pyfunc_predict_ms']} ms",
                      flush=True)
                concurrencies = (1, 8) if horizon == 1 else (1, 8, 32)
                rows = run_requests(servers, request_body(HISTORY_STEPS, horizon), args.rounds, args.seconds_c1,
                                    args.seconds_c8 if i == 0 else args.seconds_c8 / 2, concurrencies)
                results[kind] = summarize(rows, times[kind], horizon, concurrencies)
            gateway.stop()
            unbatched.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    flat = [{"request": kind, "server": s, "concurrency": c[1:], **v}
            for kind, result in results.items() for s, by in result["servers"].items() for c, v in by.items()]
    print("\nmedians over rounds\n" + table(flat, ["request", "server", "concurrency", "throughput_rps", "p50_ms",
                                                  "p99_ms", "server_cpu_ms_per_request", "requests", "errors"]))
    headline = results["horizon_1"]
    default = results[f"horizon_{limits['default_horizon']}"]
    by = default["servers"]
    issue_13 = {
        "throughput_ratio_vs_stock_c8_h12": default["throughput_ratio_vs_stock_c8_seqops"],
        "throughput_ratio_vs_stock_c32": default["throughput_ratio_vs_stock_c32_seqops"],
        "p99_ms_c8": by["seqops"]["c8"]["p99_ms"], "p50_ms_c8": by["seqops"]["c8"]["p50_ms"],
        "c1_p50_ms_batching_on": by["seqops"]["c1"]["p50_ms"],
        "c1_p50_ms_batching_off": by["seqops_unbatched"]["c1"]["p50_ms"],
        "step_ratio_vs_bare_cell": default["step_ratio_vs_bare_cell"],
        "step_ms": default["step_ms"], "bare_cell_step_ms": default["bare_cell_step_ms"],
        "errors": sum(v["errors"] for r in results.values() for s in r["servers"].values() for v in s.values()),
    }
    write_result("serving", {
        "name": "serving",
        "what": "seqops serve (gateway, fast path) vs stock `mlflow models serve --env-manager local`, same "
                "registered model, loopback, closed-loop keep-alive clients, 1 worker, 1 torch thread each",
        "model": {"cell": "lstm", "hidden_size": hidden, "history_steps": HISTORY_STEPS},
        "gateway_overrides": args.overrides,
        "machine": machine(),
        "headline_request": "horizon_1 (one forward pass over the history: the small-forward case the target assumes)",
        **{k: v for k, v in headline.items() if k not in ("servers", "rounds")},
        "throughput_target": ">= 2.0",
        "p50_target": "<= 2 x forward_ms + 2 ms",
        **issue_13,
        "targets_issue_13": "c8_h12 >= 3.0; c32 >= 5.0 (batching); p99_ms_c8 <= 3 x p50_ms_c8; 0 errors; "
                            "c1 p50 batching on <= off + 0.3 ms",
        "requests": results,
    })
    for kind, r in results.items():
        print(f"{kind}: seqops / stock throughput at concurrency 8: {r['throughput_ratio_vs_stock_c8']:.2f} "
              f"(target >= 2.0); seqops p50 at concurrency 1: {r['p50_ms']} ms (target <= 2 x forward "
              f"{r['forward_ms']} ms + 2 = {r['p50_target_ms']:.2f} ms)")


COLUMNS = ["round", "server", "concurrency", "requests", "errors", "throughput_rps", "p50_ms", "p99_ms",
           "server_cpu_ms_per_request"]

if __name__ == "__main__":
    main()
