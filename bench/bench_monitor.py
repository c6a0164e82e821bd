"""Benchmark: the nightly model monitor at fleet scale (issue 16).

On a fresh in-memory Azurite a fleet of N cars (one battery each) gets what the monitor reads on a night:
the 30 days of archived telemetry after a scored day (one compacted file a day, as after
compact_telemetry_archive), that day's stored scores of the champion and of a shadow (with their 30-day
forecasts), the car segments, and the two models in the registry. Then `nightly_monitor` runs in a fresh
subprocess, which reports its wall and CPU time and its own peak RSS (interpreter and imports included): it
judges both models' matured scores per segment, measures the drift of the last 14 days per segment, compares
the shadow, and records the decision. The thresholds are set out of reach (MONITOR_PSI_THRESHOLD,
MONITOR_DEGRADATION_MARGIN) so the night measures the monitor, not a retrain of 100,000 cars.

    nice -n 19 .venv/bin/python bench/bench_monitor.py --cars 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SCORED_ON = pd.Timestamp("2016-11-30")  # the day whose scores mature on the night measured
LAST_DAY = SCORED_ON + pd.Timedelta(days=30)
SETTINGS = {"MONITOR_PSI_THRESHOLD": "1000", "MONITOR_DEGRADATION_MARGIN": "1000"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cars", type=int, default=100_000)
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this (fresh) process
    parser.add_argument("--connection", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.step:
        _run_step(args)
        return
    from shared.devtools.azurite import running_azurite

    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as work, running_azurite() as azurite:
        model_dir = _train_model(Path(work) / "model")
        print(f"{args.cars:,} cars; {os.cpu_count()} CPUs")
        print(f"{'step':<9}{'wall s':>9}{'cpu s':>9}{'peak RSS MB':>13}  detail")
        for step in ("setup", "monitor"):
            result = _child(step, args.cars, azurite.connection_string, model_dir)
            print(f"{step:<9}{result['wall']:>9.1f}{result['cpu']:>9.1f}{result['peak_mb']:>13,.0f}  "
                  f"{result['detail']}", flush=True)  # fmt: skip
        print(f"load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}", flush=True)


def _child(step: str, cars: int, connection: str, model_dir: Path) -> dict:
    command = [sys.executable, __file__, "--step", step, "--cars", str(cars), "--connection", connection,
               "--model-dir", str(model_dir)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_step(args) -> None:
    """One step in this process; prints its figures as the last line of JSON."""
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    detail = {"setup": _setup, "monitor": _monitor}[args.step](args)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    print(json.dumps({"wall": time.perf_counter() - start, "cpu": cpu, "peak_mb": after.ru_maxrss / 1024,
                      "detail": detail}))  # fmt: skip


def _train_model(directory: Path) -> Path:
    """A small champion (the simulator's fleet): the monitor's cost is the fleet's, not the model's."""
    from shared.core.preparation import prepare_telemetry
    from shared.devtools.fleet_simulator import simulate_fleet
    from shared.models._lightgbm import train_model

    clean, quality = prepare_telemetry(simulate_fleet(40, "2015-01-01", "2016-06-30", seed=3).telemetry)
    train_model(clean, quality=quality.to_dict()).save(directory)
    return directory


def _services(args):
    from shared.bootstrap import build_services

    night = (LAST_DAY + pd.Timedelta(days=1, hours=3)).to_pydatetime().replace(tzinfo=UTC)
    environ = {"AzureWebJobsStorage": args.connection, "BATTERY_WORK_DIR": tempfile.mkdtemp(prefix="bench-mon-"),
               **SETTINGS}  # fmt: skip
    return build_services(environ, clock=lambda: night)


def _fleet(cars: int) -> dict[str, np.ndarray]:
    """Per-car constants: ids, wear rate, rated cycles, the counter on the scored day, and segments."""
    fixed = np.random.default_rng(16)
    ids = np.array([f"{n:06d}" for n in range(cars)], dtype=object)
    rated = fixed.choice([200.0, 300.0], cars)
    return {"battery": "B" + ids, "car": "CAR-" + ids, "rate": fixed.uniform(0.08, 0.2, cars), "rated": rated,
            "lifetime": rated - fixed.uniform(-2, rated * 0.5, cars),
            "make": fixed.choice(["Arcadia", "Borealis", "Corvane", "Dunmore", "Elektra"], cars),
            "region": fixed.choice(["Atlantic", "Continental", "Mediterranean", "Desert", "Nordic"], cars),
            "engine": fixed.choice(["BEV", "PHEV", "HEV"], cars)}  # fmt: skip


def _setup(args) -> str:
    from shared.adapters.archive import archive_telemetry
    from shared.adapters.monitor_store import write_car_segments
    from shared.adapters.registry import ModelRegistry
    from shared.adapters.score_store import write_scores
    from shared.core.monitoring import SHADOW
    from shared.core.risk import HORIZON_DAYS

    services, fleet, cars = _services(args), _fleet(args.cars), args.cars
    registry = ModelRegistry(services.blobs)
    registry.promote_if_better(Path(args.model_dir))
    shadow_dir = Path(tempfile.mkdtemp(prefix="bench-shadow-")) / "shadow"
    shutil.copytree(args.model_dir, shadow_dir)
    metadata = json.loads((shadow_dir / "metadata.json").read_text())
    (shadow_dir / "metadata.json").write_text(json.dumps({**metadata, "version": "shadow-1"}))
    registry.keep_shadow(registry.publish(shadow_dir), "benchmark")
    for offset in range(1, HORIZON_DAYS + 1):
        day = SCORED_ON + pd.Timedelta(days=offset)
        cycles = fleet["rate"] * np.random.default_rng([16, offset]).normal(1.0, 0.15, cars).clip(0.2)
        frame = pd.DataFrame({
            "Date": pd.Series(np.full(cars, day.to_datetime64()), dtype="datetime64[ns]"),
            "Battery_ID": fleet["battery"], "Car_ID": fleet["car"], "Battery_Age_Days": 400.0 + offset,
            "Number_Of_Trips": 5.0, "Daily_Trip_Duration": cycles / 0.00246, "Daily_Cycles_Used": cycles,
            "Lifetime_Cycles_Used": fleet["lifetime"] + fleet["rate"] * offset, "Battery_Rated_Cycles": fleet["rated"],
        })  # fmt: skip
        archive_telemetry(services.blobs, frame, (day + timedelta(hours=23)).to_pydatetime().replace(tzinfo=UTC),
                          batch_id="compacted")  # fmt: skip
    remaining = np.maximum(fleet["rated"] - fleet["lifetime"], 0)
    for version, role, bias in ((registry.champion_version(), "champion", 1.0), ("shadow-1", SHADOW, 1.1)):
        probability = np.clip(1.0 - remaining / (fleet["rate"] * bias * 30), 0, 1)
        scores = pd.DataFrame({"Battery_ID": fleet["battery"], "Car_ID": fleet["car"],
                               "failure_probability_30d": probability, "days_to_rated_life": remaining / fleet["rate"],
                               "Lifetime_Cycles_Used": fleet["lifetime"], "Battery_Rated_Cycles": fleet["rated"],
                               "alert": probability >= 0.8})  # fmt: skip
        forecast = np.repeat((fleet["rate"] * bias)[:, None], HORIZON_DAYS, axis=1)
        write_scores(services.blobs, SCORED_ON.date(), version, scores, forecast, role)
    segments = pd.DataFrame({"Car_ID": fleet["car"], "Make": fleet["make"], "Region": fleet["region"],
                             "Engine_Type": fleet["engine"]})  # fmt: skip
    write_car_segments(services.blobs, segments)
    return f"{HORIZON_DAYS} archive days × {cars:,} rows, 2 × {cars:,} stored scores, {cars:,} car segments"


def _monitor(args) -> str:
    from shared.handlers.monitoring import nightly_monitor

    summary = nightly_monitor(_services(args))
    return f"{len(summary['judged'])} accuracy tables written, retrain triggered: {summary['retrain']['triggered']}"


if __name__ == "__main__":
    main()
