"""Local commands: the main job, the head-unit simulator, the scoring endpoint, and acting as the cars.

The devtools they run are local only (not deployed), so each is imported inside its command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shared.cli.common import progress
from shared.config.names import TELEMETRY_EVENT_HUB
from shared.config.settings import SettingsError
from shared.core.telemetry import InputError


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
    parser.add_argument(
        "--replay-days",
        type=int,
        default=14,
        help="last days of the period streamed through score_telemetry (default 14)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the check against the simulator's truth fails: recall or share of "
        "right alerts below the bounds summary.md states, no battery due, an alert received or "
        "sent twice, or one received within the cooldown",
    )
    return parser


def run_demo(args: argparse.Namespace) -> int:
    from shared.devtools.main_job import DASHBOARD_FILE, check_failures, run_main_job

    summary_path = run_main_job(
        args.out,
        cars=args.cars,
        start=args.start,
        end=args.end,
        seed=args.seed,
        replay_days=args.replay_days,
        progress=progress,
    )
    print(summary_path.read_text())
    print(f"dashboard: {summary_path.parent / DASHBOARD_FILE}")
    if not args.check:
        return 0
    problems = check_failures(json.loads((summary_path.parent / "summary.json").read_text())["check"])
    for problem in problems:
        print(f"check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


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
    parser.add_argument(
        "--signing-key-env",
        default="HEAD_UNIT_SIGNING_KEY",
        help="environment variable holding the signing key (default: HEAD_UNIT_SIGNING_KEY)",
    )
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
    parser.add_argument("--eventhub", default=TELEMETRY_EVENT_HUB, help="Event Hub name (default car-telemetry)")
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
