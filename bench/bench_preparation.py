"""Benchmark: data preparation (`shared.core.preparation.prepare_telemetry`) at the sizes it is used at.

Scenarios, each on simulated telemetry:
  fleet     2,000 cars × 3 years of dirty telemetry (12-hour rows until 2015; ~2.9M rows): the nightly
            retrain. Target (issue): well under 20 s.
  wide      100,000 cars × 120 days of dirty telemetry (~12M rows): many short histories.
  endpoint  1,000 batteries × 240 clean days (240k rows): one scoring request's worth.
For each it prints rows in and out, wall and CPU seconds (CPU is the steadier figure on a shared
machine), rows per CPU second and, with --memory, the peak memory preparation allocated (a second,
traced run: tracing slows it, so its time is not reported).

    .venv/bin/python bench/bench_preparation.py [--scenarios fleet,wide,endpoint] [--memory]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.core.preparation import prepare_telemetry
from shared.devtools.fleet_simulator import simulate_fleet

SCENARIOS = {
    "fleet": lambda: simulate_fleet(2_000, "2014-01-01", "2016-12-31", seed=7).telemetry,
    "wide": lambda: simulate_fleet(100_000, "2016-09-03", "2016-12-31", seed=5).telemetry,
    "endpoint": lambda: _last_days(simulate_fleet(1_000, "2016-05-06", "2016-12-31", seed=3).truth, 240),
}


def _last_days(truth: pd.DataFrame, days: int) -> pd.DataFrame:
    return truth[truth["Date"] > truth["Date"].max() - pd.Timedelta(days=days)].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (a second, traced run)")
    args = parser.parse_args()
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")

    header = ("scenario", "rows in", "rows out", "wall s", "cpu s", "rows/cpu s", "peak MB")
    print(f"{header[0]:<10}" + "".join(f"{title:>13}" for title in header[1:]))
    for name in names:
        raw = SCENARIOS[name]()
        wall, cpu = time.perf_counter(), time.process_time()
        clean, _ = prepare_telemetry(raw)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = "-"
        if args.memory:
            tracemalloc.start()
            prepare_telemetry(raw)
            peak = f"{tracemalloc.get_traced_memory()[1] / 2**20:,.0f}"
            tracemalloc.stop()
        print(f"{name:<10}{len(raw):>13,}{len(clean):>13,}{wall:>13.2f}{cpu:>13.2f}{len(raw) / cpu:>13,.0f}{peak:>13}")
        del raw, clean


if __name__ == "__main__":
    main()
