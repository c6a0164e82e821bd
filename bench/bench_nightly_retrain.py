"""Benchmark: nightly_retrain's wall time, CPU and peak RSS on a streaming-style archive (issue 13).

A simulated fleet is archived on Azurite the way the streaming path leaves it (one CSV blob per batch
of 500 cars and record day), then `nightly_retrain` runs once, the night after the last day, in a child
process of its own so its peak RSS is its alone. `--code DIR` runs the child on another checkout (e.g. a
worktree of the commit before this change) for the before/after comparison; the settings
RETRAIN_HISTORY_DAYS and RETRAIN_MAX_BATTERIES are passed through from the environment.

    .venv/bin/python bench/bench_nightly_retrain.py --cars 2000 [--years 2] [--code /path/to/other/checkout ...]

The machine is shared: the load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.adapters.archive import archive_telemetry
from shared.adapters.storage import blob_service
from shared.core.telemetry import CAR_ID
from shared.devtools.azurite import running_azurite
from shared.devtools.fleet_simulator import simulate_fleet
from shared.devtools.main_job import acceptable_records

ROOT = Path(__file__).resolve().parent.parent
CARS_PER_BLOB = 500
LAST_DAY = "2017-06-30"

# The child: the app's own services from the environment, the clock at the night after LAST_DAY.
CHILD = """
import json, sys, time
from datetime import datetime, UTC
from shared import bootstrap
from shared.handlers.nightly import nightly_retrain
services = bootstrap.current()
services.clock = lambda: datetime.fromisoformat(sys.argv[1]).replace(tzinfo=UTC)
began, cpu = time.perf_counter(), time.process_time()
outcome = nightly_retrain(services)
print(json.dumps({"wall_s": time.perf_counter() - began, "cpu_s": time.process_time() - cpu, "outcome": outcome},
                 default=str))
"""


def archive_fleet(connection: str, cars: int, years: int) -> dict:
    """Simulate and archive the fleet in batches of CARS_PER_BLOB cars; return what was archived."""
    first = (pd.Timestamp(LAST_DAY) - pd.DateOffset(years=years) + pd.Timedelta(days=1)).date()
    telemetry = simulate_fleet(cars, first, LAST_DAY, seed=11).telemetry
    telemetry = telemetry[acceptable_records(telemetry)]
    blobs = blob_service(connection)
    car_number = pd.factorize(telemetry[CAR_ID], sort=True)[0]
    began, names = time.perf_counter(), 0
    for batch, rows in telemetry.groupby(car_number // CARS_PER_BLOB):
        names += len(archive_telemetry(blobs, rows, datetime.now(UTC), batch_id=f"cars-{batch}"))
    return {"rows": len(telemetry), "blobs": names, "first_day": str(first), "archive_s": time.perf_counter() - began}


def run_retrain(code: Path, connection: str, work_dir: Path) -> dict:
    """nightly_retrain in a child process on checkout `code`: its wall, CPU, peak RSS and outcome."""
    night = (pd.Timestamp(LAST_DAY) + timedelta(days=1, hours=2)).isoformat()
    env = {**os.environ, "AzureWebJobsStorage": connection, "BATTERY_WORK_DIR": str(work_dir),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work_dir / 'mlflow.db'}", "PYTHONPATH": str(code)}  # fmt: skip
    load_before = os.getloadavg()
    child = subprocess.Popen([sys.executable, "-c", CHILD, night], cwd=code, env=env, stdout=subprocess.PIPE)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise RuntimeError(f"nightly_retrain on {code} failed (status {status})")
    result = json.loads(output.decode().strip().splitlines()[-1])
    return {**result, "peak_rss_mb": usage.ru_maxrss / 1024, "load": [*load_before, *os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=2000)
    parser.add_argument("--years", type=int, default=2)
    parser.add_argument("--code", type=Path, nargs="+", default=[ROOT], help="checkouts to run nightly_retrain on")
    args = parser.parse_args()
    with running_azurite() as azurite, tempfile.TemporaryDirectory() as scratch:
        archived = archive_fleet(azurite.connection_string, args.cars, args.years)
        print(
            f"{args.cars:,} cars x {args.years} years: {archived['blobs']:,} blobs, {archived['rows']:,} rows "
            f"from {archived['first_day']} (archived in {archived['archive_s']:.0f} s)",
            flush=True,
        )
        for number, code in enumerate(args.code):
            work_dir = Path(scratch) / f"run-{number}"
            work_dir.mkdir()
            result = run_retrain(code.resolve(), azurite.connection_string, work_dir)
            outcome = result["outcome"]
            print(
                f"  {code}: wall {result['wall_s']:.1f} s, CPU {result['cpu_s']:.1f} s, "
                f"peak RSS {result['peak_rss_mb']:,.0f} MB, load average {result['load'][0]:.1f} -> "
                f"{result['load'][3]:.1f}; trained {outcome.get('trained')} on "
                f"{json.dumps(outcome.get('training_data', 'the whole archive'))}",
                flush=True,
            )


if __name__ == "__main__":
    main()
