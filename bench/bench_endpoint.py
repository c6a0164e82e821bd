"""Benchmark: the local scoring endpoint (scoring/score.py under azmlinfsrv), as the Function App calls it.

For requests of 1, 100 and 1,000 batteries with 240 days of history each, against a server with one
and with two workers, it prints the latency p50/p99 of sequential requests, the share of it spent in
run() (azmlinfsrv's x-ms-run-fn-exec-ms header: with @rawhttp that includes reading and decoding the
body; the rest is HTTP and Flask), the server's CPU time per request (its processes' user + system
time, from /proc), and the batteries per second with as many concurrent clients as workers. Then, in
this process, the CPU time of each stage of `score_body` for one 1,000-battery request. Targets
(issue 3): 1,000 batteries per request in ≤ 1 s; p99 for a single battery ≤ 50 ms.

    .venv/bin/python bench/bench_endpoint.py [--model-dir DIR] [--repeats N]

Without --model-dir it trains a small model first (about a minute). The machine's other load shows
in the latencies (the load average is printed before and after); CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.core.battery_window import histories_for_request
from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import BATTERY_ID, DATE
from shared.devtools.fleet_simulator import simulate_fleet
from shared.devtools.inference_server import running_endpoint
from shared.endpoint.server import score_body
from shared.models._lightgbm import train_model
from shared.models.loader import load_model

HISTORY_DAYS = 240
SIZES = (1, 100, 1_000)
WORKERS = (1, 2)
# Sequential requests per size (more for the small ones, whose p99 needs a sample).
REQUESTS = {1: 200, 100: 30, 1_000: 8}
# The stages of score_body, by the function that does each: (file name, function name) as cProfile keys
# them, for their cumulative CPU time.
STAGES = {
    "decode the body (msgspec)": ("~", "<method 'decode' of 'msgspec.json.Decoder' objects>"),
    "check items, lay rows out as columns": ("server.py", "_flatten"),
    "coerce_telemetry + value checks": ("server.py", "_typed_rows"),
    "prepare_telemetry": ("preparation.py", "prepare_telemetry"),
    "build_windows": ("windows.py", "build_windows"),
    "score_windows (forecast, risk, reasons)": ("scoring.py", "score_windows"),
}


def build_bodies() -> dict[int, list[bytes]]:
    """Request bodies of each size: distinct batteries with their last 240 days, as JSON bytes.

    The values are the simulator's, rounded as a car reports them (61.2 minutes, 0.1506 cycles), so the
    body is the size a real one is: about 39 MB for 1,000 batteries.
    """
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


def server_cpu_seconds(port: int) -> float:
    """User + system CPU time so far of the server on `port`: azmlinfsrv and its gunicorn workers.

    running_endpoint starts azmlinfsrv in a session of its own, so its process group is the server.
    """
    clock = os.sysconf("SC_CLK_TCK")
    stats = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended while we looked
                continue
            stats[proc.name] = (cmdline, int(fields[2]), (int(fields[11]) + int(fields[12])) / clock)
    groups = {group for cmdline, group, _ in stats.values() if b"--port" in cmdline and str(port).encode() in cmdline}
    return sum(cpu for _, group, cpu in stats.values() if group in groups)


def measure(url: str, port: int, bodies: list[bytes], count: int, clients: int) -> dict[str, float]:
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
    cpu_before = server_cpu_seconds(port)
    timings = [send(bodies[i % len(bodies)]) for i in range(count)]
    cpu_per_request = (server_cpu_seconds(port) - cpu_before) / count
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
        "cpu_ms": 1000 * cpu_per_request,
        "batteries_per_s": batteries * clients * per_client / wall,
    }


def stage_breakdown(model_dir: Path, body: bytes, repeats: int = 3) -> None:
    """CPU time of each stage of score_body for one request, in this process (the fastest of `repeats`)."""
    model = load_model(model_dir)
    score_body(model, body)  # warm up
    best: dict[str, float] = {}
    for _ in range(repeats):
        profile = cProfile.Profile(time.process_time)
        start = time.process_time()
        profile.runcall(score_body, model, body)
        total = time.process_time() - start
        cumulative = {(Path(file).name, name): row[3] for (file, _, name), row in pstats.Stats(profile).stats.items()}
        missing = [label for label, function in STAGES.items() if function not in cumulative]
        if missing:
            raise SystemExit(f"STAGES names functions score_body no longer calls: {', '.join(missing)}")
        for label, function in [*STAGES.items(), ("score_body, all of it", None)]:
            seconds = total if function is None else cumulative[function]
            best[label] = min(best.get(label, float("inf")), seconds)
    print(f"\nCPU time of score_body for one request of {len(json.loads(body)['data']):,} batteries "
          "(in process, under cProfile, which adds a little):")  # fmt: skip
    print("| stage | CPU ms |\n| --- | ---: |")
    for label, seconds in best.items():
        print(f"| {label} | {1000 * seconds:.0f} |")


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
        print("| workers | batteries/request | p50 ms | p99 ms | in run() | server CPU ms/request | batteries/s |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for workers in WORKERS:
            with running_endpoint(model_dir, workers=workers, timeout=300) as endpoint:
                for size in SIZES:
                    count = max(3, round(REQUESTS[size] * args.repeats))
                    figures = measure(endpoint.scoring_uri, endpoint.port, bodies[size], count, clients=workers)
                    print(f"| {workers} | {size:,} | {figures['p50_ms']:.1f} | {figures['p99_ms']:.1f} | "
                          f"{figures['run_share']:.0%} | {figures['cpu_ms']:.1f} | "
                          f"{figures['batteries_per_s']:,.0f} |", flush=True)  # fmt: skip
        stage_breakdown(model_dir, bodies[max(SIZES)][0])
    print(f"\ntargets: 1,000 batteries/request p50 ≤ 1000 ms; 1 battery p99 ≤ 50 ms; load average now "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
