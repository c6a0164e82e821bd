"""Benchmark: the model against the true failure probability on several simulated fleets (issue 17).

For each fleet of `shared.devtools.true_risk.COMPARISON_FLEETS` (the test fleet, other seeds, heavier
missing data, usage regime changes, a hot and a cold fleet, short histories): simulate, prepare, train as
`train` does (the test fleet's training-row cap by default), with the true probability of every evaluated
forecast computed by Monte Carlo over the simulator's future noise; print per fleet the model's NRMSE,
Brier and average precision, the truth's (± Monte Carlo standard error), the ratios, the baselines' Brier
ratios and the 80 % interval's coverage (with its standard error clustered by battery), then a Markdown
table for the README. Beside the truth, the data-only reference (`true_failure_probability(...,
usage_known=False)`: the car's usage scale drawn from its posterior given the minutes it reported in the
model's window) and its Brier score ÷ the truth's.

    .venv/bin/python bench/bench_truth.py [--cars 500] [--draws 20000] [--fleets "seed 21" ...] [--seeds 0 1 2]
                                          [--json out.json]

`--seeds` trains each fleet once per training seed (`train_model`'s seed) and prints each fleet's mean Brier ratio
over them: one training's ratio moves with its row sample by more than most changes under test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import CAR_ID
from shared.devtools.fleet_simulator import Fleet
from shared.devtools.true_risk import (
    COMPARISON_FLEETS,
    DRAWS,
    fleet_truth,
    simulate_comparison_fleet,
    true_failure_probability,
)
from shared.models._lightgbm import train_model


def measure(name: str, fleet: Fleet, clean: pd.DataFrame, draws: int, training_rows: int, seed: int) -> dict:
    """The backtest's figures against the truth on one comparison fleet (simulated, prepared), trained with `seed`."""
    model = train_model(clean, fleet.cars, max_training_rows=training_rows, seed=seed, truth=fleet_truth(fleet, draws))
    backtest = model.metadata["backtest"]
    metrics, truth = backtest["metrics"], backtest["truth"]
    evaluation = model.backtest.evaluation
    scored = evaluation["scored"].to_numpy()
    label = evaluation["label"].to_numpy()[scored]
    reference = true_failure_probability(fleet, evaluation[CAR_ID].to_numpy(), evaluation["origin"].to_numpy(),
                                         draws=draws, usage_known=False).probability[scored]  # fmt: skip
    reference_brier = float(np.mean((reference - label) ** 2))
    return {
        "fleet": name,
        "seed": seed,
        "positive": backtest["counts"]["positive"],
        "nrmse": metrics["model"]["nrmse"],
        "brier": metrics["model"]["brier"],
        "average_precision": metrics["model"]["average_precision"],
        "truth_brier": truth["metrics"]["brier"],
        "truth_brier_se": truth["standard_error"]["brier"],
        "truth_average_precision": truth["metrics"]["average_precision"],
        "truth_average_precision_se": truth["standard_error"]["average_precision"],
        "brier_to_truth": truth["ratios"]["model"]["brier_to_truth"],
        "average_precision_gap": truth["ratios"]["model"]["average_precision_gap"],
        "baseline_brier_to_truth": min(truth["ratios"][m]["brier_to_truth"] for m in ("seasonal_naive", "recent_mean")),
        "coverage_80": backtest["interval"]["coverage"],
        "coverage_80_se": backtest["interval"]["coverage_se"],
        "interval_batteries": backtest["interval"]["batteries"],
        "interval_judged": backtest["interval"]["judged"],
        "reference_brier": reference_brier,
        "reference_brier_to_truth": reference_brier / truth["metrics"]["brier"],
        "brier_to_reference": metrics["model"]["brier"] / reference_brier,
        "drawn": truth["drawn"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=500)
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument("--training-rows", type=int, default=60_000)
    parser.add_argument("--fleets", nargs="+", default=list(COMPARISON_FLEETS), choices=list(COMPARISON_FLEETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one training each)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.cars} cars, {args.draws:,} draws",
          flush=True)  # fmt: skip
    rows = []
    for name in args.fleets:
        fleet = simulate_comparison_fleet(COMPARISON_FLEETS[name], args.cars)
        clean, _ = prepare_telemetry(fleet.telemetry)
        for seed in args.seeds:
            began, cpu = time.perf_counter(), time.process_time()
            row = measure(name, fleet, clean, args.draws, args.training_rows, seed)
            rows.append(row)
            wall, used = time.perf_counter() - began, time.process_time() - cpu
            print(f"  {name}, seed {seed}: Brier ratio {row['brier_to_truth']:.3f}, AP gap "
                  f"{row['average_precision_gap']:.4f} ({wall:.0f} s wall, {used:.0f} s CPU)", flush=True)  # fmt: skip
        if len(args.seeds) > 1:
            ratios = [r["brier_to_truth"] for r in rows if r["fleet"] == name]
            print(f"  {name}: mean Brier ratio {np.mean(ratios):.3f} over seeds {args.seeds} "
                  f"(sd {np.std(ratios):.3f}, NRMSE {np.mean([r['nrmse'] for r in rows if r['fleet'] == name]):.4f})",
                  flush=True)  # fmt: skip
    print(
        "\n| fleet | seed | failures | NRMSE | Brier ÷ truth | better baseline's ÷ truth | AP | truth's AP | AP gap "
        "| truth's Brier (± MC s.e.) | 80 % interval coverage (± s.e. clustered by battery; forecasts from batteries) "
        "| data-only reference's Brier ÷ truth | Brier ÷ reference |"
    )
    print("| --- |" + " ---: |" * 12)
    for r in rows:
        coverage = (
            "n/a"
            if r["coverage_80_se"] is None
            else (
                f"{r['coverage_80']:.3f} (± {r['coverage_80_se']:.3f}; "
                f"{r['interval_judged']} from {r['interval_batteries']})"
            )
        )
        print(
            f"| {r['fleet']} | {r['seed']} | {r['positive']} | {r['nrmse']:.4f} | {r['brier_to_truth']:.3f} | "
            f"{r['baseline_brier_to_truth']:.2f} | {r['average_precision']:.4f} | {r['truth_average_precision']:.4f} | "
            f"{r['average_precision_gap']:.4f} | {r['truth_brier']:.5f} (± {r['truth_brier_se']:.1e}) | {coverage} | "
            f"{r['reference_brier_to_truth']:.3f} | {r['brier_to_reference']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mb:,.0f} MB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
