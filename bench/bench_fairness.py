"""Measurement: does the fairness report find the planted cold-region gap?

Trains the default model (all car attributes) and one that cannot see the region (Region blanked in the
car table it trains on), both on the same simulated fleet, and prints each one's per-region alert
metrics on the backtest and the largest gaps, judged against the real regions. The simulator wears
Nordic batteries faster in winter (shared/simulation.py), so a model blind to the region should warn
Nordic owners late: a lower Nordic recall than the default model's.

    .venv/bin/python bench/bench_fairness.py [--cars 500] [--end 2016-12-15] [--seed 11]

An end date in winter puts the backtest's evaluation origins in the months where the cold region's
wear rises. Takes a few minutes (two trainings with their backtests).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.fairness import fairness_report
from shared.forecasting import train_model
from shared.preparation import prepare_telemetry
from shared.simulation import simulate_fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=500)
    parser.add_argument("--start", default="2015-06-01")
    parser.add_argument("--end", default="2016-12-15")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--training-rows", type=int, default=60_000)
    args = parser.parse_args()
    fleet = simulate_fleet(args.cars, args.start, args.end, args.seed)
    clean, _ = prepare_telemetry(fleet.telemetry)
    for name, cars in (("default", fleet.cars), ("without region", fleet.cars.assign(Region=pd.NA))):
        started = time.perf_counter()
        model = train_model(clean, cars, max_training_rows=args.training_rows)
        report = fairness_report(model.backtest.evaluation, fleet.cars)
        print(f"\n== {name} model ({time.perf_counter() - started:.0f} s) ==")
        region = report.groups[report.groups["attribute"] == "Region"].drop(columns="attribute")
        print(region.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        recall = report.gaps[report.gaps["metric"] == "recall"]
        print(recall[["attribute", "gap", "lowest", "highest", "exceeded"]].to_string(
            index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
