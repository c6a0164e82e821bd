"""Data and model commands: simulate a fleet, prepare telemetry, train, score, explain, compare models.

The names and flags of `simulate`, `train` and `score` are fixed: other checks call them exactly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.cli.common import progress
from shared.core.telemetry import InputError


def add_simulate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "simulate",
        help="write a simulated fleet's telemetry.csv and cars.csv",
        description="Simulate a fleet of cars and their batteries, with the data problems real telemetry has "
        "(12-hour rows before 2015, duplicates, missing days, glitches), and write telemetry.csv and cars.csv.",
    )
    parser.add_argument("--cars", type=int, required=True, help="number of cars")
    parser.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same fleet)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    return parser


def run_simulate(args: argparse.Namespace) -> int:
    from shared.devtools.fleet_simulator import simulate_fleet, write_fleet

    if args.cars < 1:
        raise InputError(f"--cars must be at least 1, got {args.cars}")
    progress(f"simulating {args.cars} cars from {args.start} to {args.end} (seed {args.seed})")
    fleet = simulate_fleet(args.cars, args.start, args.end, args.seed)
    paths = write_fleet(fleet, args.out)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "prepare",
        help="clean raw telemetry into one row per battery and day, with a data-quality report",
        description="Drop duplicates, merge 12-hour rows, repair glitches, fill missing days against the "
        "lifetime counter, split silent replacements; write the clean CSV and print what changed.",
    )
    parser.add_argument("--data", type=Path, required=True, help="raw telemetry CSV")
    parser.add_argument("--out", type=Path, required=True, help="clean daily telemetry CSV to write")
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    from shared.core.preparation import prepare_telemetry
    from shared.core.telemetry import read_telemetry_csv

    progress(f"reading {args.data}")
    raw = read_telemetry_csv(args.data)
    progress(f"preparing {len(raw):,} rows")
    clean, quality = prepare_telemetry(raw)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    clean.to_csv(args.out, index=False, date_format="%Y-%m-%d")
    print(quality.to_markdown())
    print(f"\nclean telemetry: {args.out}")
    return 0


def add_train(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "train",
        help="prepare telemetry, backtest and train the 30-day battery forecaster into a model directory",
        description="Prepare the telemetry, backtest the global forecaster against seasonal-naive and "
        "recent-mean baselines, train it on all data, and write the model directory (model files, "
        "metadata.json with backtest metrics, report.md).",
    )
    parser.add_argument("--data", type=Path, required=True, help="telemetry CSV (raw or clean)")
    parser.add_argument("--cars", type=Path, help="car metadata CSV (adds Make/Region/... features)")
    parser.add_argument("--model-dir", type=Path, required=True, help="directory to write the model to")
    parser.add_argument(
        "--model",
        choices=["lightgbm", "lstm"],
        default="lightgbm",
        help="model kind: the global LightGBM forecaster (default) or the PyTorch LSTM contender "
        "(needs requirements-lstm.txt)",
    )
    return parser


def run_train(args: argparse.Namespace) -> int:
    from shared.handlers.nightly import train_from_csv

    model, report_path = train_from_csv(
        args.data, args.model_dir, cars_path=args.cars, progress=progress, model_kind=args.model
    )
    backtest = model.metadata["backtest"]["metrics"]
    print(json.dumps({"version": model.version, "model_dir": str(args.model_dir), "backtest": backtest}, indent=2))
    print(f"report: {report_path}")
    return 0


def add_report(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "report",
        help="compare trained model directories in one self-contained HTML page",
        description="Read each model directory's metadata.json and figures and write one HTML page: backtest "
        "metrics against the baselines, the best model by the champion rule, reliability and other figures "
        "(embedded), fairness and data quality.",
    )
    parser.add_argument("--model-dir", type=Path, nargs="+", required=True, help="model directories written by train")
    parser.add_argument("--out", type=Path, required=True, help="HTML file to write")
    return parser


def run_report(args: argparse.Namespace) -> int:
    from shared.models.comparison import write_comparison_report

    print(f"report: {write_comparison_report(args.model_dir, args.out)}")
    return 0


def add_explain(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "explain",
        help="what a model looks at overall, or why it scores one battery as it does",
        description="Without --battery: the model's global feature importance (share of split gain). With "
        "--battery and --data: that battery's plain-words reasons and each feature's path contribution "
        "to its forecast (as a ratio to its last-28-day level), as of --as-of or its last report.",
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    parser.add_argument("--battery", help="Battery_ID to explain (needs --data)")
    parser.add_argument("--data", type=Path, help="telemetry CSV holding the battery's history")
    parser.add_argument("--as-of", help="explain as of this day (YYYY-MM-DD); default: the battery's last report")
    return parser


def run_explain(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from shared.core.preparation import prepare_telemetry
    from shared.core.telemetry import BATTERY_ID, CAR_ID, DATE, read_telemetry_csv
    from shared.core.windows import build_windows
    from shared.handlers.nightly import parse_day
    from shared.models.explanation import explain_battery, feature_importance
    from shared.models.loader import load_model
    from shared.models.scoring import score_windows

    model = load_model(args.model_dir)
    if args.battery is None:
        print(f"model {model.version}: global feature importance (share of total split gain)")
        print(feature_importance(model).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return 0
    if args.data is None:
        raise InputError("--battery needs --data, the telemetry CSV with the battery's history")
    raw = read_telemetry_csv(args.data)
    raw = raw[raw[BATTERY_ID].astype(str) == str(args.battery)]
    if args.as_of:
        raw = raw[raw[DATE] < pd.Timestamp(parse_day(args.as_of)) + pd.Timedelta(days=1)]
    if raw.empty:
        raise InputError(
            f"{args.data}: no rows of battery {args.battery}" + (f" on or before {args.as_of}" if args.as_of else "")
        )
    clean, _ = prepare_telemetry(raw)
    windows = build_windows(clean, as_of=None, window_days=model.window_days)
    windows = windows.take(np.flatnonzero(windows.as_of == windows.as_of.max())[-1:])  # the battery's newest life
    scores, forecast = score_windows(model, windows, explain_from=0.0)
    row = scores.iloc[0]
    print(
        f"battery {row[BATTERY_ID]} (car {row[CAR_ID]}) as of {row['As_Of']:%Y-%m-%d}: "
        f"P(rated life within 30 days) = {row['failure_probability_30d']:.3f}"
    )
    for reason in row["reasons"]:
        print(f"  - {reason}")
    print("feature contributions to the forecast (ratio to the last-28-day level):")
    print(explain_battery(model, windows, forecast).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def add_score(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "score",
        help="batch-score every battery in service at a date",
        description="Score every battery in service at --as-of (reported within the last 14 days and not "
        "replaced) using only data up to that date: 30-day failure probability, days to rated life, alert.",
    )
    parser.add_argument("--data", type=Path, required=True, help="telemetry CSV")
    parser.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    parser.add_argument("--as-of", required=True, help="score as of this day, YYYY-MM-DD")
    parser.add_argument("--out", type=Path, required=True, help="scores CSV to write")
    parser.add_argument("--forecast-out", type=Path, help="also write the 30-day forecast per battery")
    parser.add_argument("--threshold", type=float, help="alert threshold (default ALERT_PROBABILITY_THRESHOLD)")
    parser.add_argument(
        "--engine",
        choices=("pandas", "spark"),
        default="pandas",
        help="in process (default), or the Spark job (shared/spark/job.py); same output",
    )
    parser.add_argument("--master", help="Spark master URL for --engine spark (default local[*])")
    return parser


def run_score(args: argparse.Namespace) -> int:
    from shared.handlers.nightly import score_from_csv

    scores = score_from_csv(
        args.data, args.model_dir, args.as_of, args.out,
        forecast_path=args.forecast_out, threshold=args.threshold, progress=progress,
        engine=args.engine, master=args.master,
    )  # fmt: skip
    print(f"scored {len(scores):,} batteries in service; {int(scores['alert'].sum()):,} over the threshold")
    print(f"scores: {args.out}")
    if args.forecast_out:
        print(f"forecast: {args.forecast_out}")
    return 0
