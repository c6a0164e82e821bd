"""Measurement: does the fairness report find the planted cold-region gap, on more than one lucky seed?

For each seed, simulates a fleet and trains two models on it the way `train` does: the default model
(all car attributes) and one that cannot see the region (Region blanked in the car table it trains on).
Both are judged on their own backtest against the REAL regions. The simulator's cold region wears its
batteries much faster from the first hard frost (15 November, shared/devtools/fleet_simulator.py), a step the last
weeks of history do not show, so only a model that knows the region can see it coming; a backtest
whose evaluation origins cover the weeks before the frost should show the region-blind model warning
Nordic owners late (a Region recall gap over the limit) and the default model not.

    .venv/bin/python bench/bench_fairness.py [--cars 5000] [--end 2016-12-31] [--seeds 11 12 13]

Prints, per seed and model, the Region recall gap with its 90% bootstrap interval, whether it exceeds
the limit, the groups at either end, and each region's recall and failing batteries, then the CPU time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.core.preparation import prepare_telemetry
from shared.devtools.fleet_simulator import simulate_fleet
from shared.models._lightgbm import train_model
from shared.models.fairness import fairness_report

FAIRNESS_START, FAIRNESS_END = "2015-08-01", "2016-12-31"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=5000)
    parser.add_argument("--start", default=FAIRNESS_START)
    parser.add_argument("--end", default=FAIRNESS_END)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--training-rows", type=int, default=60_000)
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        fleet = simulate_fleet(args.cars, args.start, args.end, seed)
        clean, _ = prepare_telemetry(fleet.telemetry)
        for name, cars in (("default", fleet.cars), ("region-blind", fleet.cars.assign(Region=pd.NA))):
            started = time.process_time()
            model = train_model(clean, cars, max_training_rows=args.training_rows, seed=seed)
            report = fairness_report(model.backtest.evaluation, fleet.cars)
            gap = report.gaps.set_index(["attribute", "metric"]).loc[("Region", "recall")]
            region = report.groups[report.groups["attribute"] == "Region"].set_index("group")
            rows.append({
                "seed": seed, "model": name, "gap": gap["gap"],
                "interval": f"{gap['gap_low']:.3f}-{gap['gap_high']:.3f}", "exceeded": gap["exceeded"],
                "lowest": gap["lowest"], "highest": gap["highest"],
                **{f"{group[:4]} recall": region.loc[group, "recall"] for group in region.index},
                "Nordic failing": int(region.loc["Nordic", "positives"]),
                "fewest failing": int(region["positives"].min()),
                "cpu s": time.process_time() - started,
            })  # fmt: skip
            print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    print(
        f"\n{args.cars} cars, {args.start} to {args.end}; Region recall gap of each model "
        "(90% bootstrap interval over cars; exceeded = the whole interval above the 0.05 limit):"
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
