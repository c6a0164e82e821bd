"""Benchmark: the local scoring endpoint (scoring/score.py under azmlinfsrv), as the Function App calls it.

For requests of 1, 100 and 1,000 batteries with 240 days of history each, against a server with one
and with two workers, it prints the latency p50/p99 of sequential requests, the share of it spent in
run() (azmlinfsrv's x-ms-run-fn-exec-ms header; the rest is HTTP, JSON parsing and Flask), and the
batteries per second with as many concurrent clients as workers. Targets (issue 3): 1,000 batteries
per request in ≤ 1 s; p99 for a single battery ≤ 50 ms.

    .venv/bin/python bench/bench_endpoint.py [--model-dir DIR] [--repeats N]

Without --model-dir it trains a small model first (about a minute). The machine's other load shows
in the figures: run it on an idle machine for numbers worth comparing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.battery_state import histories_for_request
from shared.forecasting import train_model
from shared.inference_server import running_endpoint
from shared.preparation import prepare_telemetry
from shared.simulation import simulate_fleet
from shared.telemetry import BATTERY_ID, DATE

HISTORY_DAYS = 240
SIZES = (1, 100, 1_000)
WORKERS = (1, 2)
# Sequential requests per size (more for the small ones, whose p99 needs a sample).
REQUESTS = {1: 200, 100: 30, 1_000: 8}


def build_bodies() -> dict[int, list[bytes]]:
    """Request bodies of each size: distinct batteries with their last 240 days, as JSON bytes."""
    fleet = simulate_fleet(1_500, "2016-01-01", "2016-12-31", seed=11)
    telemetry = fleet.truth  # one clean row per battery and day: 240 days are 240 rows
    last = telemetry.groupby(BATTERY_ID)[DATE].transform("max")
    recent = telemetry[(last == telemetry[DATE].max()) & (telemetry[DATE] > last - np.timedelta64(HISTORY_DAYS, "D"))]
    full = recent.groupby(BATTERY_ID)[DATE].transform("size") == HISTORY_DAYS
    items = histories_for_request(recent[full].sort_values([BATTERY_ID, DATE], kind="stable"))
    if len(items) < max(SIZES):
        raise SystemExit(f"only {len(items)} batteries with {HISTORY_DAYS} days; need {max(SIZES)}")
    bodies = {}
    for size in SIZES:
        chunks = [items[start : start + size] for start in range(0, len(items) - size + 1, size)]
        bodies[size] = [json.dumps({"data": chunk}).encode() for chunk in chunks]
    return bodies


def small_model(directory: Path) -> Path:
    fleet = simulate_fleet(60, "2015-01-01", "2016-12-31", seed=5)
    clean, quality = prepare_telemetry(fleet.telemetry)
    train_model(clean, quality=quality.to_dict()).save(directory)
    return directory


def measure(url: str, bodies: list[bytes], count: int, clients: int) -> dict[str, float]:
    """Latencies of `count` sequential requests, then throughput with `clients` concurrent clients."""
    session = requests.Session()
    headers = {"Content-Type": "application/json"}

    def send(body: bytes, session: requests.Session = session) -> tuple[float, float]:
        start = time.perf_counter()
        response = session.post(url, data=body, headers=headers, timeout=120)
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        return elapsed, float(response.headers["x-ms-run-fn-exec-ms"]) / 1000

    send(bodies[0])  # warm up: first request pays lazy imports and caches
    timings = [send(bodies[i % len(bodies)]) for i in range(count)]
    latency = np.array([t for t, _ in timings])
    in_run = np.array([r for _, r in timings])
    batteries = len(json.loads(bodies[0])["data"])

    sessions = [requests.Session() for _ in range(clients)]
    per_client = max(2, count // 2)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda k: [send(bodies[(k + i) % len(bodies)], sessions[k]) for i in range(per_client)],
                      range(clients)))  # fmt: skip
    wall = time.perf_counter() - start
    return {
        "p50_ms": 1000 * float(np.percentile(latency, 50)),
        "p99_ms": 1000 * float(np.percentile(latency, 99)),
        "run_share": float(statistics.median(in_run / latency)),
        "batteries_per_s": batteries * clients * per_client / wall,
        "body_mb": len(bodies[0]) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="model directory (default: train a small one)")
    parser.add_argument("--repeats", type=float, default=1.0, help="scale the number of requests")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or small_model(Path(scratch) / "model")
        bodies = build_bodies()
        print(f"requests: {', '.join(f'{s:,} batteries ({len(bodies[s][0]) / 1e6:.2f} MB)' for s in SIZES)}; "
              f"{HISTORY_DAYS} days of history each\n")  # fmt: skip
        print("| workers | batteries/request | p50 ms | p99 ms | in run() | batteries/s |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for workers in WORKERS:
            with running_endpoint(model_dir, workers=workers, timeout=300) as endpoint:
                for size in SIZES:
                    count = max(3, round(REQUESTS[size] * args.repeats))
                    figures = measure(endpoint.scoring_uri, bodies[size], count, clients=workers)
                    print(f"| {workers} | {size:,} | {figures['p50_ms']:.1f} | {figures['p99_ms']:.1f} | "
                          f"{figures['run_share']:.0%} | {figures['batteries_per_s']:,.0f} |", flush=True)  # fmt: skip
    print(f"\ntargets: 1,000 batteries/request p50 ≤ 1000 ms; 1 battery p99 ≤ 50 ms; load average now "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
