"""Measurement: what the LSTM contender's training costs on the small test fleet, and what it buys.

Trains `train_lstm` with its defaults (what `train --model lstm` runs, backtest included) on the
40-car fleet the tests use (tests/_models.py: 2015-01-01 to 2016-06-30, seed 3) and prints the CPU
and wall time, the epochs run, and the backtest NRMSE and Brier score against the two baselines.
CPU time is the figure to compare on a shared machine; wall time grows with the load.

    .venv/bin/python bench/bench_lstm.py [--cars 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.core.preparation import prepare_telemetry
from shared.devtools.fleet_simulator import simulate_fleet
from shared.models import _lstm as lstm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=40)
    parser.add_argument("--threads", type=int, default=lstm.TORCH_THREADS, help="torch CPU threads")
    args = parser.parse_args()
    lstm.TORCH_THREADS = args.threads
    clean, quality = prepare_telemetry(simulate_fleet(args.cars, "2015-01-01", "2016-06-30", 3).telemetry)
    cpu, wall = time.process_time(), time.perf_counter()
    model = lstm.train_lstm(clean, quality=quality.to_dict())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    params, metrics = model.metadata["lstm_params"], model.metadata["backtest"]["metrics"]
    print(
        f"train_lstm on {args.cars} cars, {args.threads} torch thread(s): {cpu:.1f} s CPU, {wall:.1f} s wall; "
        f"final fit {params['epochs_run']} of {params['epochs']} epochs (best {params['best_epoch']}), "
        f"{model.metadata['training_rows']} training rows"
    )
    for method, values in metrics.items():
        print(f"  {method:15s} NRMSE {values['nrmse']:.4f}  Brier {values['brier']:.2e}")


if __name__ == "__main__":
    main()
