"""Benchmark: the Function App's two hot functions, as the local host runs `function_app.app`.

- events per second through `score_telemetry`, delivered in Event Hub batches of 100 and of 500 events
  (host.json's `maxEventBatchSize` is 500), one event per car and day, against Azurite and the local
  scoring endpoint (azmlinfsrv, one worker). The batteries start with a full rolling window in the state
  table (`STATE_WINDOW_DAYS` days, seeded through `battery_state.update_states`, as weeks of streaming
  would leave it), so each batch reads, merges and writes real windows and sends them to the endpoint.
- alerts per second through `push_alert`: a queue of distinct alerts drained into the head-unit simulator
  (cooldown read, claim, signed POST, outcome and latest-alert records, queue delete, per alert).

Target (issue 4): ≥ 1,000 events/s, the ingress of one Event Hubs throughput unit.

    .venv/bin/python bench/bench_functions.py [--model-dir DIR] [--cars 1000] [--days 3] [--alerts 300]
    .venv/bin/python bench/bench_functions.py --profile     # where the time of a 500-event batch and its alerts goes

Without --model-dir it trains a small model first (about a minute). Each size is measured on its own
days (a day already streamed would be a repeat, which the state merge handles differently). The machine's
other load shows in the wall-clock figures: run it on an idle machine for numbers worth comparing. CPU
seconds per batch (and per alert) of the app process, the endpoint and Azurite are printed too, since
they count only this benchmark's work.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import TextBase64EncodePolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import function_app
from shared import bootstrap
from shared.adapters.battery_state import update_states
from shared.adapters.storage import queue_service
from shared.config.host import load_host_config
from shared.config.names import BATTERY_STATE_TABLE as STATE_TABLE
from shared.core.alerts import alerts_from_scores
from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import DATE
from shared.devtools.azurite import free_port, running_azurite
from shared.devtools.fleet_simulator import simulate_fleet
from shared.devtools.functions_host import FunctionsHost
from shared.devtools.headunit_simulator import HeadUnitSimulator
from shared.devtools.inference_server import running_endpoint
from shared.devtools.main_job import acceptable_records, app_environment, app_settings, day_events
from shared.handlers.telemetry import STATE_WINDOW_DAYS
from shared.models._lightgbm import train_model

BATCH_SIZES = (100, 500)
TARGET_EVENTS_PER_S = 1_000
FLEET_START, FLEET_END = "2016-01-01", "2016-07-31"
# A day's event bodies and their partition keys, as day_events gives, and when they arrive (early the next day).
DayEvents = tuple[list[bytes], list[str], datetime]


def train_small_model(directory: Path) -> Path:
    """A model good enough to score with: 60 cars, one year."""
    fleet = simulate_fleet(60, "2015-01-01", "2015-12-31", seed=13)
    clean, quality = prepare_telemetry(fleet.telemetry)
    train_model(clean, quality=quality.to_dict()).save(directory)
    return directory


def split_history(telemetry: pd.DataFrame, stream_days: int) -> tuple[pd.DataFrame, list[DayEvents]]:
    """The rows that fill the batteries' windows before streaming, and the events of the last
    `stream_days` days (one per car and day), day by day."""
    day = telemetry[DATE].dt.normalize()
    streamed = sorted(day.unique())[-stream_days:]
    first = streamed[0]
    history = telemetry[(day < first) & (day >= first - pd.Timedelta(days=STATE_WINDOW_DAYS))]
    arrival = [(value + pd.Timedelta(hours=25)).to_pydatetime().replace(tzinfo=UTC) for value in streamed]
    return history, [(*day_events(telemetry[day == value]), at) for value, at in zip(streamed, arrival, strict=True)]


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process ("app": the functions, the host emulator and the in-process
    head-unit simulator, every thread) and by the process trees of its children, by name: "endpoint"
    (azmlinfsrv and its gunicorn worker) and "azurite".

    On a shared 2-core machine wall time counts other people's work too; CPU time counts only ours.
    """
    tick = os.sysconf("SC_CLK_TCK")
    parent, used, command = {}, {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, …
            pid = int(stat.parent.name)
            parent[pid], used[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
            command[pid] = (stat.parent / "cmdline").read_bytes()
    totals = {"app": time.process_time(), "endpoint": 0.0, "azurite": 0.0}
    for pid, seconds in used.items():
        ancestor = pid
        while parent.get(ancestor, 0) not in (0, os.getpid()):
            ancestor = parent[ancestor]
        if parent.get(ancestor) == os.getpid():
            totals["endpoint" if b"azureml_inference_server_http" in command[ancestor] else "azurite"] += seconds
    return totals


def cpu_used(since: dict[str, float]) -> dict[str, float]:
    return {name: seconds - since[name] for name, seconds in cpu_seconds().items()}


def measure_events(host: FunctionsHost, days: list[DayEvents]) -> dict:
    """Deliver each day's events to score_telemetry; events/s over all, seconds per batch, and the CPU
    seconds per batch of the app, the endpoint and Azurite."""
    events, elapsed, per_batch, alerts = 0, 0.0, [], 0
    cpu = dict.fromkeys(cpu_seconds(), 0.0)
    for bodies, keys, arrived in days:
        cpu_began, began = cpu_seconds(), time.perf_counter()
        delivery = host.deliver_events("score_telemetry", bodies, keys, enqueued_time=arrived)
        took = time.perf_counter() - began
        cpu = {name: cpu[name] + seconds for name, seconds in cpu_used(cpu_began).items()}
        if delivery.failed_batches:
            raise RuntimeError(f"score_telemetry failed: {delivery.errors}")
        events, elapsed = events + delivery.events, elapsed + took
        per_batch += [took / len(delivery.batches)] * len(delivery.batches)
        alerts += sum(batch.enqueued.get(function_app.ALERT_QUEUE, 0) for batch in delivery.batches)
    return {"events": events, "seconds": round(elapsed, 2), "events_per_s": round(events / elapsed),
            "batch_s_mean": round(statistics.fmean(per_batch), 3), "alerts_queued": alerts,
            "cpu_per_batch": {name: round(seconds / len(per_batch), 3) for name, seconds in cpu.items()}}  # fmt: skip


def measure_alerts(host: FunctionsHost, connection: str, count: int) -> dict:
    """Queue `count` distinct alerts (as the functions' queue output writes them) and drain them."""
    scores = pd.DataFrame({
        "Battery_ID": [f"B{n}" for n in range(count)], "Car_ID": [f"BENCH-{n:05d}" for n in range(count)],
        "failure_probability_30d": 0.93, "days_to_rated_life": 12.5, "Lifetime_Cycles_Used": 190.0,
        "Battery_Rated_Cycles": 200, "As_Of": "2016-07-31", "model_version": "bench",
    })  # fmt: skip
    alerts = alerts_from_scores(scores, 0.8, datetime.now(UTC), "https://service.example/book")
    if host.config.message_encoding != "base64":
        raise RuntimeError("host.json messageEncoding is not base64: adapt the queue client here")
    host.drain_queue("push_alert")  # the alerts score_telemetry queued: delivered first, not measured
    queue = queue_service(connection).get_queue_client(
        function_app.ALERT_QUEUE, message_encode_policy=TextBase64EncodePolicy()
    )
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
    for alert in alerts:
        queue.send_message(json.dumps(alert))
    cpu_began, began = cpu_seconds(), time.perf_counter()
    drain = host.drain_queue("push_alert")
    elapsed = time.perf_counter() - began
    per_alert = {name: round(1000 * used / drain.succeeded, 2) for name, used in cpu_used(cpu_began).items()}
    return {"alerts": drain.succeeded, "failed_attempts": drain.failed_attempts, "seconds": round(elapsed, 2),
            "alerts_per_s": round(drain.succeeded / elapsed, 1), "cpu_ms_per_alert": per_alert}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="model directory (default: train a small one)")
    parser.add_argument("--cars", type=int, default=1_000, help="cars streaming (events per day)")
    parser.add_argument("--days", type=int, default=3, help="days streamed per batch size")
    parser.add_argument("--alerts", type=int, default=300, help="alerts drained through push_alert")
    parser.add_argument("--profile", action="store_true", help="profile a 500-event batch and its alerts")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}", flush=True)  # fmt: skip
    with contextlib.ExitStack() as stack:
        model_dir = args.model_dir
        if model_dir is None:
            print("training a small model…", flush=True)
            model_dir = train_small_model(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        fleet = simulate_fleet(args.cars, FLEET_START, FLEET_END, seed=17)
        telemetry = fleet.telemetry[acceptable_records(fleet.telemetry)]  # the records a batch would accept
        # one warm-up day, `days` per batch size, and a fresh day to profile
        history, streamed = split_history(telemetry, 1 + args.days * len(BATCH_SIZES) + 1)
        warm_up, streamed, profiled = streamed[0], streamed[1:-1], streamed[-1]

        azurite = stack.enter_context(running_azurite())
        gateway = stack.enter_context(HeadUnitSimulator(secrets.token_hex(32)))
        endpoint = stack.enter_context(running_endpoint(model_dir, port=free_port()))
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(app_environment(app_settings(azurite, gateway.url, endpoint.scoring_uri,
                                                         gateway.signing_key, work_dir)))  # fmt: skip
        app = bootstrap.current()

        print(f"filling {history['Battery_ID'].nunique():,} battery windows with {STATE_WINDOW_DAYS} days…",
              flush=True)  # fmt: skip
        update_states(app.tables.create_table_if_not_exists(STATE_TABLE), history, STATE_WINDOW_DAYS)

        config = load_host_config()
        hosts = {size: FunctionsHost(function_app.app, azurite.connection_string,
                                     config=dataclasses.replace(config, max_event_batch_size=size))
                 for size in BATCH_SIZES}  # fmt: skip
        measure_events(hosts[BATCH_SIZES[0]], [warm_up])  # connections, the endpoint's first requests
        results = {}
        for number, size in enumerate(BATCH_SIZES):
            results[size] = measure_events(hosts[size], streamed[number * args.days : (number + 1) * args.days])
        alert_result = measure_alerts(hosts[BATCH_SIZES[0]], azurite.connection_string, args.alerts)

        if args.profile:
            bodies, keys, arrived = profiled
            profile(
                "one batch of 500 events through score_telemetry",
                lambda: hosts[500].deliver_events("score_telemetry", bodies[:500], keys[:500], enqueued_time=arrived),
            )
            profile("push_alert draining the alerts that batch queued", lambda: hosts[500].drain_queue("push_alert"))

    print(f"\nscore_telemetry: {args.cars:,} cars, one event per car and day, windows of {STATE_WINDOW_DAYS} days")
    print("| batch size | events | seconds | events/s | seconds per batch | CPU s per batch: app / endpoint / "
          "Azurite | alerts queued |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, result in results.items():
        cpu = " / ".join(f"{seconds:.3f}" for seconds in result["cpu_per_batch"].values())
        print(f"| {size} | {result['events']:,} | {result['seconds']} | {result['events_per_s']:,} | "
              f"{result['batch_s_mean']} | {cpu} | {result['alerts_queued']} |")  # fmt: skip
    cpu = " / ".join(f"{ms}" for ms in alert_result["cpu_ms_per_alert"].values())
    print(
        f"\npush_alert: {alert_result['alerts']:,} alerts in {alert_result['seconds']} s = "
        f"{alert_result['alerts_per_s']} alerts/s ({alert_result['failed_attempts']} failed attempts); "
        f"CPU ms per alert, app / endpoint / Azurite: {cpu}"
    )
    print(f"load average during the run: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    best = max(result["events_per_s"] for result in results.values())
    verdict = "meets" if best >= TARGET_EVENTS_PER_S else "is BELOW"
    print(f"\nbest: {best:,} events/s, which {verdict} the target of {TARGET_EVENTS_PER_S:,} events/s")
    return 0


def profile(what: str, run: Callable[[], object]) -> None:
    """Print where the time of `run` goes (needs `pip install pyinstrument` in .venv, for profiling only)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("--profile needs pyinstrument: .venv/bin/python -m pip install pyinstrument", file=sys.stderr)
        return
    profiler = Profiler(interval=0.001)
    with profiler:
        run()
    print(f"\n--- profile: {what} ---")
    print(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    sys.exit(main())
