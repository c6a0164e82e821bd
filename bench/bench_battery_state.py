"""Benchmark: `battery_state.update_states` alone, the state step of `score_telemetry`, on a local Azurite.

A fleet whose batteries all have a full window (`STATE_WINDOW_DAYS` days) receives one new day per
battery, in batches of 100 and of 500 batteries, as the Event Hub function would merge them: once with
a `StateCache` (the Function App's way: a steady-state batch reads nothing) and once without (every
battery read first). Prints wall and CPU seconds per batch, this process's and Azurite's, since the
Table service is half the work and a busy machine shows in the wall time first.

    .venv/bin/python bench/bench_battery_state.py [--batteries 1000] [--days 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from azure.data.tables import TableServiceClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.adapters.battery_state import StateCache, update_states
from shared.core.telemetry import AGE_DAYS, BATTERY_ID, CAR_ID, COLUMNS, DAILY_CYCLES, DATE, LIFETIME_CYCLES
from shared.devtools.azurite import running_azurite
from shared.handlers.telemetry import STATE_WINDOW_DAYS

BATCH_SIZES = (100, 500)
FIRST_DAY = pd.Timestamp("2016-01-01")


def fleet_days(batteries: int, first: pd.Timestamp, days: int, seed: int) -> pd.DataFrame:
    """`days` daily records of each battery from `first`, typed as parse_events returns them."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"B{number:05d}" for number in range(batteries)], dtype=object)
    dates = pd.date_range(first, periods=days, freq="D")
    rows = batteries * days
    return pd.DataFrame({
        DATE: np.tile(dates.to_numpy("datetime64[ns]"), batteries),
        BATTERY_ID: np.repeat(ids, days),
        CAR_ID: np.repeat("CAR-" + ids, days),
        AGE_DAYS: np.tile(np.arange(days, dtype=np.float64), batteries) + 300 + (first - FIRST_DAY).days,
        "Number_Of_Trips": rng.integers(1, 9, rows).astype(np.float64),
        "Daily_Trip_Duration": rng.uniform(20, 120, rows).round(1),
        DAILY_CYCLES: rng.uniform(0.05, 0.3, rows).round(4),
        LIFETIME_CYCLES: rng.uniform(10, 200, rows).round(3),
        "Battery_Rated_Cycles": 200.0,
    })[COLUMNS]  # fmt: skip


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def azurite_pid(table_port: int) -> int:
    """The Azurite process serving Table on this port, found by its command line."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--tablePort" in arguments and str(table_port).encode() in arguments:
                return int(entry.name)
    raise RuntimeError(f"no Azurite process serves Table on port {table_port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batteries", type=int, default=1_000)
    parser.add_argument("--days", type=int, default=3, help="new days merged per batch size and mode")
    args = parser.parse_args()

    print("| cache | batch size | batches | wall s per batch | CPU s per batch (this process) | "
          "CPU s per batch (Azurite) | battery-days/s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    with running_azurite() as azurite:
        azurite_process = azurite_pid(azurite.table_port)
        service = TableServiceClient.from_connection_string(azurite.connection_string)
        for cached in (True, False):
            table = service.create_table(f"benchstate{'cached' if cached else 'plain'}")
            cache = StateCache() if cached else None
            update_states(table, fleet_days(args.batteries, FIRST_DAY, STATE_WINDOW_DAYS, 0), STATE_WINDOW_DAYS,
                          cache=cache)  # fmt: skip
            day = FIRST_DAY + pd.Timedelta(days=STATE_WINDOW_DAYS)
            for size in BATCH_SIZES:
                wall = cpu = azurite_cpu = 0.0
                batches = 0
                for seed in range(args.days):
                    records = fleet_days(args.batteries, day, 1, seed)
                    day += pd.Timedelta(days=1)
                    for start in range(0, len(records), size):
                        began, cpu_began = time.perf_counter(), time.process_time()
                        azurite_began = process_cpu_s(azurite_process)
                        update_states(table, records.iloc[start : start + size], STATE_WINDOW_DAYS, cache=cache)
                        wall += time.perf_counter() - began
                        cpu += time.process_time() - cpu_began
                        azurite_cpu += process_cpu_s(azurite_process) - azurite_began
                        batches += 1
                days_merged = args.batteries * args.days
                print(f"| {'yes' if cached else 'no'} | {size} | {batches} | {wall / batches:.3f} | "
                      f"{cpu / batches:.3f} | {azurite_cpu / batches:.3f} | {days_merged / wall:,.0f} |")  # fmt: skip
    print(f"\nload average at the end: {', '.join(f'{load:.1f}' for load in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
