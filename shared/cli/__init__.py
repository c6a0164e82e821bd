"""`python -m shared <command>`: the same functions the Function App uses, for people and scripts.

Each command is a small `add_<name>` function that declares its arguments and a `run_<name>` that calls
`shared/`. Exit codes: 0 done, 2 bad input (the message names the file, column and rows), 1 anything else.
The command names and flags of `simulate`, `train` and `score` are fixed: other checks call them exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.config.settings import SettingsError
from shared.core.telemetry import InputError
from shared.spark import cli as spark_cli

Command = tuple[Callable[[argparse._SubParsersAction], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]


def progress(message: str) -> None:
    """Progress for long steps goes to stderr, so stdout stays clean for data and reports."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- simulate -----------------------------------------------------------------------------------------


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


# --- prepare ------------------------------------------------------------------------------------------


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


# --- train --------------------------------------------------------------------------------------------


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
    parser.add_argument("--model", choices=["lightgbm", "lstm"], default="lightgbm",
                        help="model kind: the global LightGBM forecaster (default) or the PyTorch LSTM contender "
                        "(needs requirements-lstm.txt)")
    return parser


def run_train(args: argparse.Namespace) -> int:
    from shared.handlers.nightly import train_from_csv

    model, report_path = train_from_csv(args.data, args.model_dir, cars_path=args.cars, progress=progress,
                                        model_kind=args.model)
    backtest = model.metadata["backtest"]["metrics"]
    print(json.dumps({"version": model.version, "model_dir": str(args.model_dir), "backtest": backtest}, indent=2))
    print(f"report: {report_path}")
    return 0


# --- report -------------------------------------------------------------------------------------------


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


# --- explain ------------------------------------------------------------------------------------------


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
        raise InputError(f"{args.data}: no rows of battery {args.battery}"
                         + (f" on or before {args.as_of}" if args.as_of else ""))
    clean, _ = prepare_telemetry(raw)
    windows = build_windows(clean, as_of=None, window_days=model.window_days)
    windows = windows.take(np.flatnonzero(windows.as_of == windows.as_of.max())[-1:])  # the battery's newest life
    scores, forecast = score_windows(model, windows, explain_from=0.0)
    row = scores.iloc[0]
    print(f"battery {row[BATTERY_ID]} (car {row[CAR_ID]}) as of {row['As_Of']:%Y-%m-%d}: "
          f"P(rated life within 30 days) = {row['failure_probability_30d']:.3f}")
    for reason in row["reasons"]:
        print(f"  - {reason}")
    print("feature contributions to the forecast (ratio to the last-28-day level):")
    print(explain_battery(model, windows, forecast).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


# --- score --------------------------------------------------------------------------------------------


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
    parser.add_argument("--engine", choices=("pandas", "spark"), default="pandas",
                        help="in process (default), or the Spark job (shared/spark/job.py); same output")
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


# --- demo (the main job) ------------------------------------------------------------------------------


def add_demo(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "demo",
        help="the main job on local defaults: simulate, prepare, train, register, batch-score, stream, alert, report",
        description="Run the whole product locally on 127.0.0.1 (Azurite, the scoring endpoint under azmlinfsrv, "
        "a head-unit simulator, function_app.app under the local Functions host): simulate a fleet, archive its "
        "history, run one night (nightly_retrain: prepare, backtest, train, register the champion; "
        "nightly_batch_score), replay the last --replay-days days through score_telemetry and push_alert, and "
        "write summary.md with what every head unit received.",
    )
    parser.add_argument("--out", type=Path, default=Path("data/run"), help="working directory")
    parser.add_argument("--cars", type=int, default=300, help="fleet size to simulate")
    parser.add_argument("--start", default="2014-01-01")
    parser.add_argument("--end", default="2016-12-31")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--replay-days", type=int, default=14,
                        help="last days of the period streamed through score_telemetry (default 14)")
    return parser


def run_demo(args: argparse.Namespace) -> int:
    from shared.devtools.main_job import run_main_job

    summary_path = run_main_job(args.out, cars=args.cars, start=args.start, end=args.end, seed=args.seed,
                                replay_days=args.replay_days, progress=progress)
    print(summary_path.read_text())
    return 0


# --- registry -----------------------------------------------------------------------------------------

REGISTRY_ACTIONS = {
    "publish": "upload a model directory as a new version",
    "promote": "publish a model directory and make it champion if its backtest beats the champion's",
    "champion": "print the champion pointer (exit 1 when there is no champion)",
    "list": "list the published versions, marking the champion",
    "download": "download a version (default: the champion) into MODEL_DIR/<version>/, cached per version",
}


def add_registry(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "registry",
        help="publish, promote, list and download model versions in Blob storage",
        description="The model registry in Blob storage (container `models`): versions, the champion "
        "pointer, and the rule that moves it.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--connection", help="storage connection string (default: AzureWebJobsStorage or its "
                        "identity-based settings, else local Azurite)")  # fmt: skip
    common.add_argument("--container", default="models", help="registry container (default: models)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text in REGISTRY_ACTIONS.items():
        action_parser = actions.add_parser(action, parents=[common], help=help_text, description=help_text)
        if action in ("publish", "promote", "download"):
            action_parser.add_argument("--model-dir", type=Path, required=True, help="model directory")
        if action == "download":
            action_parser.add_argument("--version", help="version to download (default: the champion)")
    return parser


def run_registry(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from shared.adapters.registry import ModelRegistry, RegistryError
    from shared.adapters.storage import app_storage_connection, blob_service

    registry = ModelRegistry(blob_service(args.connection or app_storage_connection("blob")), args.container)
    try:
        if args.action == "publish":
            print(json.dumps({"version": registry.publish(args.model_dir)}))
        elif args.action == "promote":
            print(json.dumps(asdict(registry.promote_if_better(args.model_dir)), indent=2))
        elif args.action == "list":
            champion = registry.champion_version()
            for version in registry.versions():
                print(f"{version}\tchampion" if version == champion else version)
        elif args.action == "champion":
            champion = registry.champion()
            print(json.dumps(None if champion is None else champion.record, indent=2))
            return 0 if champion else 1
        else:
            version = args.version or registry.champion_version()
            if version is None:
                print("error: no champion yet; pass --version", file=sys.stderr)
                return 1
            print(registry.download(version, args.model_dir))
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


# --- headunit-sim -------------------------------------------------------------------------------------


def add_headunit_sim(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "headunit-sim",
        help="run a head-unit gateway simulator on 127.0.0.1 that verifies, de-duplicates and prints alerts",
        description="Stand in for the head-unit gateway: POST /vehicles/{car_id}/alerts checks the HMAC "
        "signature (401 if bad) and the Idempotency-Key (a repeat answers 200 duplicate and is not counted), "
        "then prints the alert. GET /vehicles/{car_id}/alerts lists what a car received; GET /vehicles, all. "
        "Runs until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=7072, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--signing-key-env", default="HEAD_UNIT_SIGNING_KEY",
                        help="environment variable holding the signing key (default: HEAD_UNIT_SIGNING_KEY)")
    return parser


def run_headunit_sim(args: argparse.Namespace) -> int:
    import contextlib
    import os
    import threading

    from shared.devtools.headunit_simulator import HeadUnitSimulator

    key = os.environ.get(args.signing_key_env, "")
    if not key:
        raise SettingsError(f"{args.signing_key_env} is not set: the simulator needs it to verify alerts")

    def show(car_id: str, alert: dict) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {car_id}: {alert.get('severity')} {alert.get('type')} "
              f"{alert.get('alert_id')}: {alert.get('message')}", flush=True)  # fmt: skip

    with HeadUnitSimulator(key, port=args.port, on_alert=show) as simulator:
        print(f"head-unit simulator listening on {simulator.url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


# --- serve --------------------------------------------------------------------------------------------


def add_serve(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "serve",
        help="run the scoring endpoint locally (scoring/score.py under azmlinfsrv)",
        description="Serve a model directory with the Azure ML entry script under Microsoft's azmlinfsrv, as "
        "Azure ML does; ready when GET / answers. Clients use SCORING_URI=http://127.0.0.1:PORT/score. "
        "Runs until Ctrl-C.",
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    parser.add_argument("--port", type=int, default=5001, help="port (default 5001, the SCORING_URI default)")
    parser.add_argument("--workers", type=int, default=1, help="azmlinfsrv worker processes (default 1)")
    return parser


def run_serve(args: argparse.Namespace) -> int:
    from shared.devtools.inference_server import serve

    if not args.model_dir.is_dir():
        raise InputError(f"--model-dir {args.model_dir}: no such directory")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    return serve(args.model_dir, args.port, args.workers)


# --- compliance ---------------------------------------------------------------------------------------


def add_compliance(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "compliance",
        help="component compliance: train the technician-note classifier, score a component catalogue",
        description="Component compliance (issue 6): a component made before 1995, in fair or poor condition, "
        "or made with plastic or iron is non-compliant. `train` fits the note classifier on a labelled "
        "components CSV and tracks the run in MLflow; `score` writes Component_ID, Car_ID, non_compliant, "
        "probability, needs_review, reason for each component.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train the classifier (tracked in MLflow)",
                               description="Hold out a quarter of the phrasings (the template column) to "
                               "evaluate, then train on every labelled note and write the model directory.")
    train.add_argument("--data", type=Path, required=True, help="components CSV with a label column")
    train.add_argument("--model-dir", type=Path, required=True, help="directory to write the model to")
    train.add_argument("--learning-rate", type=float, help="SGD step size (default 0.05)")
    train.add_argument("--alpha", type=float, help="L2 regularisation strength (default 1e-5)")
    train.add_argument("--epochs", type=int, help="passes over the training notes (default 30)")
    train.add_argument("--seed", type=int, help="seed of the held-out split and of SGD (default 0)")
    score = actions.add_parser("score", help="score components with a trained classifier",
                               description="Score a components CSV (Component_ID, Car_ID, text).")
    score.add_argument("--data", type=Path, required=True, help="components CSV")
    score.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    score.add_argument("--out", type=Path, required=True, help="results CSV to write")
    alerts = actions.add_parser("alerts", help="what the nightly compliance timer does, on local files",
                                description="Score a components CSV, write the results and one "
                                "component_compliance alert per car with non-compliant parts (JSON lines).")
    alerts.add_argument("--data", type=Path, required=True, help="components CSV (Component_ID, Car_ID, text)")
    alerts.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    alerts.add_argument("--out", type=Path, required=True, help="results CSV to write")
    alerts.add_argument("--alerts-out", type=Path, help="alerts to write, one JSON object a line")
    publish = actions.add_parser("publish", help="upload a trained classifier for the nightly timer to use",
                                 description="Upload the model directory to Blob container compliance-models "
                                 "and point champion.json at it (the timer uses the last published model).")
    publish.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    publish.add_argument("--connection", help="storage connection string (default: AzureWebJobsStorage or its "
                         "__serviceUri form)")
    return parser


def run_compliance(args: argparse.Namespace) -> int:
    import os

    from shared.compliance import classifier as compliance

    if args.action == "train":
        from shared.adapters.tracking import PROJECT_ROOT, tracking_uri

        given = {name: getattr(args, name) for name in ("learning_rate", "alpha", "epochs", "seed")}
        params = compliance.TrainingParams(**{name: value for name, value in given.items() if value is not None})
        model = compliance.train_from_csv(args.data, args.model_dir, params=params, progress=progress,
                                          tracking_uri=tracking_uri(os.environ, PROJECT_ROOT))  # fmt: skip
        print(json.dumps({"version": model.version, "model_dir": str(args.model_dir),
                          "mlflow_run_id": model.metadata["mlflow_run_id"], "held_out": model.metadata["metrics"]},
                         indent=2))  # fmt: skip
        return 0
    if args.action in ("alerts", "publish"):
        return _run_compliance_job(args)
    results = compliance.score_from_csv(args.data, args.model_dir, args.out)
    flagged = results[compliance.NON_COMPLIANT] == 1
    print(f"scored {len(results):,} components: {int(flagged.sum()):,} non-compliant on "
          f"{results.loc[flagged, 'Car_ID'].nunique():,} cars, {int(results[compliance.NEEDS_REVIEW].sum()):,} "
          f"need review")  # fmt: skip
    print(f"results: {args.out}")
    return 0


def _run_compliance_job(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from shared.compliance import classifier as compliance
    from shared.config.settings import load_settings
    from shared.handlers import compliance as compliance_job

    if args.action == "publish":
        from shared.adapters.storage import app_storage_connection, blob_service

        blobs = blob_service(args.connection or app_storage_connection("blob"))
        print(json.dumps({"version": compliance_job.publish_model(blobs, args.model_dir),
                          "container": compliance_job.MODELS_CONTAINER}))  # fmt: skip
        return 0
    model = compliance.load_model(args.model_dir)
    components = compliance.read_components_csv(args.data)
    results, batch = compliance_job.compliance_run(model, components, datetime.now(UTC),
                                                   load_settings().service_booking_url)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out, index=False)
    if args.alerts_out is not None:
        args.alerts_out.parent.mkdir(parents=True, exist_ok=True)
        args.alerts_out.write_text("".join(json.dumps(alert) + "\n" for alert in batch.alerts))
    print(json.dumps({**batch.summary, "results": str(args.out),
                      "alerts_out": None if args.alerts_out is None else str(args.alerts_out)}, indent=2))  # fmt: skip
    return 0


# --- azureml ------------------------------------------------------------------------------------------

AZUREML_ACTIONS = {
    "register-data": "prepare telemetry and register it as a new version of the MLTable data asset "
    "daily-battery-time-series",
    "submit-automl": "submit the lab's AutoML forecasting run (creates compute auto-ml-compute if missing)",
    "wrap-automl": "make an AutoML (MLflow) model a model directory score.py serves: calibrate its failure "
    "risk on telemetry after its training data",
    "register-model": "register a local model directory, or the best trial of an AutoML run",
    "deploy": "deploy a registered model to the managed online endpoint battery-cycles",
}


def add_azureml(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "azureml",
        help="Azure ML: register data, run AutoML, register and deploy models (each with --dry-run)",
        description="Azure ML with azure-ai-ml, in the workspace named by AZUREML_SUBSCRIPTION_ID, "
        "AZUREML_RESOURCE_GROUP and AZUREML_WORKSPACE (credentials: DefaultAzureCredential). --dry-run "
        "prints the YAML of what would be submitted and needs no workspace.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text in AZUREML_ACTIONS.items():
        action_parser = actions.add_parser(action, help=help_text, description=help_text)
        if action != "wrap-automl":  # the one local action: it submits nothing
            action_parser.add_argument("--dry-run", action="store_true", help="print the YAML, submit nothing")
        if action == "wrap-automl":
            source = action_parser.add_mutually_exclusive_group(required=True)
            source.add_argument("--mlflow-model", type=Path, help="a downloaded MLflow model folder (with MLmodel)")
            source.add_argument("--automl-job", help="AutoML parent job: download its best_model output")
            action_parser.add_argument("--data", type=Path, required=True,
                                       help="telemetry CSV (raw or clean) reaching 30+ days past --trained-until")
            action_parser.add_argument("--trained-until", required=True,
                                       help="last Date of the data the AutoML job trained on (YYYY-MM-DD)")
            action_parser.add_argument("--out", type=Path, default=Path("data/automl-model"),
                                       help="model directory to write (default data/automl-model)")
        elif action == "register-data":
            action_parser.add_argument("--data", type=Path, required=True, help="telemetry CSV (raw or clean)")
            action_parser.add_argument("--work-dir", type=Path, default=Path("data/azureml/mltable"),
                                       help="where to write the MLTable folder (default data/azureml/mltable)")
        elif action == "submit-automl":
            action_parser.add_argument("--data-version", help="data asset version (default: the latest)")
        elif action == "register-model":
            source = action_parser.add_mutually_exclusive_group(required=True)
            source.add_argument("--model-dir", type=Path, help="local model directory written by train")
            source.add_argument("--automl-job", help="AutoML parent job: register its best trial's model")
            action_parser.add_argument("--child-job", help="with --automl-job: this trial instead of the best")
        else:
            action_parser.add_argument("--model", required=True, help="registered model as NAME:VERSION")
            action_parser.add_argument("--model-dir", type=Path,
                                       help="the local directory that was registered; for a wrapped AutoML model "
                                       "its MLflow conda.yaml joins the environment")
            action_parser.add_argument("--deployment", default="blue", help="deployment name (default blue)")
            action_parser.add_argument("--auth-mode", choices=("aad_token", "key"), default="aad_token",
                                       help="endpoint auth: Entra ID tokens (default; set SCORING_AUTH=aad_token) "
                                       "or a key (SCORING_KEY)")
            action_parser.add_argument("--instance-type", default="Standard_DS3_v2")
            action_parser.add_argument("--work-dir", type=Path, default=Path("data/azureml/code"),
                                       help="where to stage scoring/ and shared/ (default data/azureml/code)")
    return parser


def run_azureml(args: argparse.Namespace) -> int:
    from shared.adapters import azureml
    from shared.config.settings import load_settings

    def client():
        return azureml.workspace_client(load_settings())

    if args.action == "register-data":
        from shared.core.preparation import prepare_telemetry
        from shared.core.telemetry import read_telemetry_csv

        progress(f"preparing {args.data}")
        clean, _ = prepare_telemetry(read_telemetry_csv(args.data))
        folder = azureml.write_mltable(clean, args.work_dir)
        entity = azureml.telemetry_data_asset(folder)
        if args.dry_run:
            print(azureml.to_yaml(entity) + f"---\n# {folder / 'MLTable'}\n" + (folder / "MLTable").read_text())
            return 0
        data = azureml.register_data(client(), folder)
        print(json.dumps({"data_asset": data.name, "version": data.version}))
    elif args.action == "submit-automl":
        if args.dry_run:
            print(azureml.to_yaml(azureml.compute_target(), azureml.automl_job(args.data_version)))
            return 0
        job = azureml.submit_automl(client(), args.data_version)
        print(json.dumps({"job": job.name, "experiment": job.experiment_name, "studio_url": job.studio_url}))
    elif args.action == "wrap-automl":
        from shared.core.preparation import prepare_telemetry
        from shared.core.telemetry import read_telemetry_csv
        from shared.handlers.nightly import parse_day
        from shared.models._mlflow import wrap_mlflow_model

        trained_until = str(parse_day(args.trained_until, "--trained-until"))
        source = {"mlflow_model": str(args.mlflow_model)} if args.mlflow_model else {"automl_job": args.automl_job}
        mlflow_model = args.mlflow_model or azureml.download_best_model(client(), args.automl_job,
                                                                       args.out.with_name(args.out.name + "-download"))
        progress(f"preparing {args.data}")
        clean, quality = prepare_telemetry(read_telemetry_csv(args.data))
        progress(f"calibrating {mlflow_model} on the telemetry after {trained_until}")
        model = wrap_mlflow_model(mlflow_model, clean, trained_until, args.out, quality=quality.to_dict(),
                                  source=source)
        print(json.dumps({"version": model.version, "model_dir": str(args.out),
                          "calibration_errors": model.calibration.n_errors,
                          "metrics": model.metadata["backtest"]["metrics"]}, indent=2))
    elif args.action == "register-model":
        if args.child_job and not args.automl_job:
            raise InputError("--child-job needs --automl-job")
        if args.model_dir is not None and not args.model_dir.is_dir():
            raise InputError(f"--model-dir {args.model_dir}: no such directory")
        ml_client = None if args.dry_run else client()
        if args.model_dir is not None:
            entity = azureml.model_asset(args.model_dir)
        elif args.dry_run:
            entity = azureml.automl_model_asset(args.child_job or "<best trial of " + args.automl_job + ">",
                                                args.automl_job)
        else:
            child = args.child_job or azureml.best_child_job(ml_client, args.automl_job)
            entity = azureml.automl_model_asset(child, args.automl_job)
        if args.dry_run:
            print(azureml.to_yaml(entity))
            return 0
        model = azureml.register_model(ml_client, entity)
        print(json.dumps({"model": model.name, "version": model.version}))
    else:
        name, _, version = args.model.partition(":")
        if not name or not version:
            raise InputError(f"--model must be NAME:VERSION, got {args.model!r}")
        environment = azureml.scoring_environment(args.model_dir)
        folder = azureml.stage_scoring_code(args.work_dir)
        deployment = azureml.online_deployment(f"azureml:{name}:{version}", folder, args.deployment,
                                               args.instance_type, environment=environment)
        if args.dry_run:
            print(azureml.to_yaml(azureml.online_endpoint(args.auth_mode), deployment))
            return 0
        print(json.dumps(dict(azureml.deploy(client(), deployment, args.auth_mode)), indent=2))
    return 0


# --- send-telemetry -----------------------------------------------------------------------------------


def add_send_telemetry(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "send-telemetry",
        help="act as the cars: send one day of telemetry to an Event Hub (partition key Car_ID)",
        description="Send every record of --day in a telemetry CSV to an Event Hub as the cars do: one JSON "
        "event per record, partition key Car_ID, packed into EventDataBatch batches within the hub's size "
        "limit. The connection is --connection, else the EventHubConnection setting (a connection string), "
        "else EventHubConnection__fullyQualifiedNamespace with DefaultAzureCredential.",
    )
    parser.add_argument("--connection", help="Event Hubs connection string (default: EventHubConnection)")
    parser.add_argument("--eventhub", default="car-telemetry", help="Event Hub name (default car-telemetry)")
    parser.add_argument("--data", type=Path, required=True, help="telemetry CSV")
    parser.add_argument("--day", required=True, help="the day to send, YYYY-MM-DD")
    return parser


def run_send_telemetry(args: argparse.Namespace) -> int:
    from azure.eventhub.exceptions import EventHubError

    from shared.adapters.eventhubs import producer_client, records_of_day, send_telemetry
    from shared.core.telemetry import read_telemetry_csv
    from shared.handlers.nightly import parse_day

    day = parse_day(args.day, "--day")
    telemetry = read_telemetry_csv(args.data)
    records = records_of_day(telemetry, day)
    if records.empty:
        first, last = telemetry["Date"].min(), telemetry["Date"].max()
        raise InputError(f"{args.data}: no records dated {day} (the file covers {first:%Y-%m-%d} to {last:%Y-%m-%d})")
    try:
        with producer_client(args.connection, args.eventhub) as producer:
            report = send_telemetry(producer, records, progress=progress)
    except EventHubError as error:  # its message names the failure, never the connection string
        print(f"error: sending to Event Hub {args.eventhub} failed: {error}", file=sys.stderr)
        return 1
    print(f"sent {report.events:,} events from {report.cars:,} cars in {report.batches:,} batches to {args.eventhub}")
    for record in report.oversize:
        print(f"not sent: event {record.position} of {record.car_id} is {record.size:,} bytes, "
              f"over the {record.limit:,}-byte batch limit", file=sys.stderr)  # fmt: skip
    return 1 if report.oversize else 0


COMMANDS: dict[str, Command] = {
    "simulate": (add_simulate, run_simulate),
    "prepare": (add_prepare, run_prepare),
    "train": (add_train, run_train),
    "score": (add_score, run_score),
    "explain": (add_explain, run_explain),
    "report": (add_report, run_report),
    "demo": (add_demo, run_demo),
    "registry": (add_registry, run_registry),
    "headunit-sim": (add_headunit_sim, run_headunit_sim),
    "serve": (add_serve, run_serve),
    "azureml": (add_azureml, run_azureml),
    "send-telemetry": (add_send_telemetry, run_send_telemetry),
    "compliance": (add_compliance, run_compliance),
    "spark": (spark_cli.add_spark, spark_cli.run_spark),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared",
        description="Battery alerting backend: simulate, prepare, train, score, serve and deploy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, run in COMMANDS.values():
        add(sub).set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (InputError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
