"""Benchmark: what training on a sample of batteries costs in backtest NRMSE, Brier and AP (issue 13).

A simulated fleet's trailing period (RETRAIN_HISTORY_DAYS, as nightly_retrain reads it) is prepared
once. For each sample size and seed, the batteries are drawn as nightly_retrain draws them
(`sample_batteries` on the raw telemetry, all lives of a sampled battery kept), the backtest model is
fitted and its risk calibrated on the sample, and it is evaluated on the WHOLE fleet's evaluation
origins, so every size is scored on the same batteries. "all" varies only the fit's seed: its spread is
the noise the sample's cost is compared with.

    .venv/bin/python bench/bench_training_sample.py [--cars 2000] [--sizes 250 500 1000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.config.settings import Settings
from shared.core.preparation import prepare_telemetry
from shared.core.windows import FleetHistory, build_history
from shared.devtools.fleet_simulator import simulate_fleet
from shared.models._lightgbm import fit_forecaster
from shared.models.backtest import run_backtest
from shared.models.training_sample import sample_batteries, trailing_period_start

LAST_DAY = "2017-06-30"
METRICS = ("nrmse", "brier", "average_precision")


def battery_rows(history: FleetHistory, rows: np.ndarray) -> FleetHistory:
    """The history of some batteries only, on the same calendar (so day indices still line up)."""
    per_battery = {f.name: getattr(history, f.name)[rows] for f in dataclasses.fields(history)
                   if f.name != "first_day"}  # fmt: skip
    return dataclasses.replace(history, **per_battery)


def measure(history: FleetHistory, sample_ids: np.ndarray | None, seed: int) -> dict:
    """Backtest metrics of a model fitted and calibrated on the sample, evaluated on the whole fleet."""
    if sample_ids is None:
        trained = history
    else:
        reported_id = np.array([str(b).split("#", 1)[0] for b in history.battery_id])  # lives after a replacement
        trained = battery_rows(history, np.flatnonzero(np.isin(reported_id, sample_ids)))
    result = run_backtest(trained, lambda h, last: fit_forecaster(h, last, seed=seed), evaluation_history=history)
    model = result.summary["metrics"]["model"]
    return {name: model[name] for name in METRICS} | {"batteries": len(trained.battery_id)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fleet-seed", type=int, default=11)
    parser.add_argument("--history-days", type=int, default=Settings().retrain_history_days)
    args = parser.parse_args()

    start = trailing_period_start(np.datetime64(LAST_DAY), args.history_days)
    print(
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
        f"{args.cars:,} cars, {start:%Y-%m-%d} to {LAST_DAY} ({args.history_days} days)",
        flush=True,
    )
    raw = simulate_fleet(args.cars, start.date(), LAST_DAY, seed=args.fleet_seed).telemetry
    clean, _ = prepare_telemetry(raw)
    history = build_history(clean)
    print(f"{raw['Battery_ID'].nunique():,} reported batteries, {len(history.battery_id):,} battery lives", flush=True)

    results: dict[str, list[dict]] = {}
    for size in [*args.sizes, None]:
        label = "all" if size is None else str(size)
        for seed in args.seeds:
            began = time.perf_counter()
            ids = None if size is None else sample_batteries(raw, size, seed=seed).battery_ids
            row = measure(history, ids, seed)
            results.setdefault(label, []).append(row)
            print(
                f"  {label:>5} seed {seed}: "
                + " ".join(f"{m} {row[m]:.4f}" for m in METRICS)
                + f" ({row['batteries']} lives, {time.perf_counter() - began:.0f} s)",
                flush=True,
            )

    print("\n| sample | " + " | ".join(f"{m} (mean ± sd)" for m in METRICS) + " |")
    print("| --- |" + " ---: |" * len(METRICS))
    for label, rows in results.items():
        cells = [f"{statistics.mean(r[m] for r in rows):.4f} ± {statistics.pstdev(r[m] for r in rows):.4f}"
                 for m in METRICS]  # fmt: skip
        print(f"| {label} | " + " | ".join(cells) + " |")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mb:,.0f} MB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
