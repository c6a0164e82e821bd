"""Benchmark: the core path — simulate, prepare, train (with its backtest), load, and batch scoring.

Targets (issue), on this 2-core machine:
  training  2,000 cars × 3 years, backtest included: ≤ 120 s
  scoring   100,000 batteries, build_windows included: ≤ 60 s
  loading   a model directory: well under a second

The scoring fleet is the 2,000-car fleet's last 91 clean days copied under new battery and car ids until
there are 100,000 batteries (9.1M rows): simulating 100,000 cars directly takes minutes and would only
measure the simulator. Copies score at the same cost as originals (the car ids are unknown to the model,
which takes the same trees' "missing" branches).
Each step prints wall and CPU seconds; CPU is the steadier figure when other work shares the machine.

    .venv/bin/python bench/bench_core.py [--cars 2000] [--batteries 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.core.preparation import prepare_telemetry
from shared.core.windows import DEFAULT_WINDOW_DAYS, build_windows
from shared.devtools.fleet_simulator import simulate_fleet
from shared.models._lightgbm import train_model
from shared.models.loader import load_model
from shared.models.scoring import score_fleet, score_windows

START, END = "2014-06-01", "2017-05-31"


@contextmanager
def timed(label: str, figures: dict):
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures[label] = wall
    print(f"{label:<44}{wall:>9.1f} s wall{cpu:>9.1f} s cpu", flush=True)


def wide_fleet(clean: pd.DataFrame, batteries: int) -> pd.DataFrame:
    """`batteries` batteries of DEFAULT_WINDOW_DAYS days each, copied from the last days of `clean`."""
    last = clean[clean["Date"] > clean["Date"].max() - pd.Timedelta(days=DEFAULT_WINDOW_DAYS)]
    last = last[last.groupby("Battery_ID")["Date"].transform("size") == DEFAULT_WINDOW_DAYS]
    per_copy = last["Battery_ID"].nunique()
    copies = -(-batteries // per_copy)
    frame = pd.concat([last] * copies, ignore_index=True)
    copy = np.repeat(np.arange(copies), len(last)).astype(str)
    frame["Battery_ID"] = (frame["Battery_ID"].astype(str) + "~" + copy).astype(object)
    frame["Car_ID"] = (frame["Car_ID"].astype(str) + "~" + copy).astype(object)
    keep = frame["Battery_ID"].isin(pd.unique(frame["Battery_ID"])[:batteries])
    return frame[keep].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cars", type=int, default=2_000, help="cars in the training fleet")
    parser.add_argument("--batteries", type=int, default=100_000, help="batteries in the scoring fleet")
    args = parser.parse_args()
    figures: dict[str, float] = {}

    with timed(f"simulate {args.cars:,} cars × 3 years", figures):
        fleet = simulate_fleet(args.cars, START, END, seed=7)
    with timed(f"prepare {len(fleet.telemetry):,} rows", figures):
        clean, quality = prepare_telemetry(fleet.telemetry)
    with timed(f"train incl. backtest ({len(clean):,} battery-days)", figures):
        model = train_model(clean, fleet.cars, quality=quality.to_dict())
    with tempfile.TemporaryDirectory() as directory:
        model.save(directory)
        with timed("load the model directory", figures):
            model = load_model(directory)

    metrics = model.metadata["backtest"]["metrics"]
    for method, values in metrics.items():
        print(
            f"  backtest {method:<15} nrmse {values['nrmse']:.4f}  brier {values['brier']:.5f}  "
            f"average precision {values['average_precision']:.4f}"
        )

    wide = wide_fleet(clean, args.batteries)
    as_of = wide["Date"].max().date()
    print(f"scoring fleet: {wide['Battery_ID'].nunique():,} batteries, {len(wide):,} rows, as of {as_of}")
    with timed("  build_windows", figures):
        windows = build_windows(wide, as_of=as_of, window_days=model.window_days)
    with timed("  score_windows", figures):
        score_windows(model, windows)
    with timed("  score_fleet end to end (selection included)", figures):
        scores, _ = score_fleet(model, wide, as_of)
    total = figures["  build_windows"] + figures["  score_windows"]
    end_to_end = figures["  score_fleet end to end (selection included)"]
    print(
        f"batch scoring throughput: {len(windows) / total:,.0f} batteries/s (build_windows + score_windows, "
        f"{total:.1f} s for {len(windows):,}); score_fleet: {len(scores) / end_to_end:,.0f} batteries/s"
    )


if __name__ == "__main__":
    main()
