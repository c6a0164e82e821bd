"""The real Function App on real local services, as the integration tests of the functions drive it.

`AppHarness` sets the app settings in the environment the way the Functions host would, lets
`shared.bootstrap.current()` build the app's services from them, and runs `function_app.app` through
`FunctionsHost` on the session's Azurite. Two things are adjusted on the services the app built, both
of which would otherwise make tests slow or wall-clock dependent: the clock (a `SimClock` the test sets,
so cooldowns and the nightly "yesterday" mean the same on every run) and the scoring client's sleep
between retries (recorded, not slept; the retry count and timeouts are the app's own).

Test data is a few made-up batteries with straight-line usage (`battery_days`), whose fate is plain to a
reader: a battery at 201 of 200 cycles is past its rated life, one at 100 of 200 is nowhere near it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import numpy as np
import pandas as pd
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

import function_app
from shared import bootstrap
from shared.adapters.alert_store import ALERTS_TABLE
from shared.adapters.archive import DEADLETTER_CONTAINER, TELEMETRY_CONTAINER
from shared.adapters.scoring_client import ScoringClient
from shared.adapters.storage import blob_service, queue_service, table_service
from shared.bootstrap import Services
from shared.config.names import BATTERY_STATE_TABLE as STATE_TABLE
from shared.config.names import MONITORING_CONTAINER, OPEN_LABELS_TABLE
from shared.core.alerts import BATTERY_END_OF_LIFE, alert_id
from shared.core.telemetry import COLUMNS
from shared.devtools.functions_host import FunctionsHost
from shared.devtools.headunit_simulator import HeadUnitSimulator
from shared.handlers.nightly import SCORES_CONTAINER
from shared.handlers.telemetry import PARKED_CONTAINER

SIGNING_KEY = "test-signing-key"
ALERT_QUEUE = "maintenance-alerts"
POISON_QUEUE = "maintenance-alerts-poison"
LAST_DAY = "2016-03-10"  # the test telemetry's last day
NIGHT = datetime(2016, 3, 11, 3, 0, tzinfo=UTC)  # the night after it: the nightly batch scores LAST_DAY


class SimClock:
    """A settable clock: the app reads it as `services.clock`."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class AppHarness:
    """function_app.app on the session's Azurite, a head-unit simulator and a scoring endpoint."""

    host: FunctionsHost
    simulator: HeadUnitSimulator
    clock: SimClock
    connection: str
    monkeypatch: Any
    scoring_waits: list[float] = field(default_factory=list)  # the scoring client's skipped sleeps

    def configure(self, **settings: str | None) -> Services:
        """Set (or, with None, unset) app settings and let the app build its services again from them."""
        for name, value in settings.items():
            if value is None:
                self.monkeypatch.delenv(name, raising=False)
            else:
                self.monkeypatch.setenv(name, value)
        bootstrap.current.cache_clear()
        built = bootstrap.current()
        built.clock = self.clock
        options = {"retry": built.scoring.retry, "sleep": self.scoring_waits.append}
        built.scoring = ScoringClient.from_settings(built.settings, **options)
        return built

    @property
    def services(self) -> Services:
        return bootstrap.current()

    def send_alerts(self, alerts: list[dict | str]) -> None:
        """Put messages on the alert queue as the app's queue output binding writes them (base64 text)."""
        queue = queue_service(self.connection).get_queue_client(
            ALERT_QUEUE, message_encode_policy=TextBase64EncodePolicy()
        )
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
        for alert in alerts:
            queue.send_message(alert if isinstance(alert, str) else json.dumps(alert))

    def queued(self, queue_name: str = ALERT_QUEUE) -> list[Any]:
        """The messages waiting on a queue (left there), JSON-decoded where they are JSON."""
        queue = queue_service(self.connection).get_queue_client(
            queue_name, message_decode_policy=TextBase64DecodePolicy()
        )
        try:
            messages = queue.peek_messages(max_messages=32)
        except ResourceNotFoundError:  # nothing was ever written to it
            return []
        return [_json_or_text(message.content) for message in messages]


@contextlib.contextmanager
def app_harness(connection: str, scoring_uri: str, monkeypatch, work_dir: Path) -> Iterator[AppHarness]:
    """A harness on empty storage, with the settings of local.settings.json pointed at the test services."""
    wipe_storage(connection)
    with HeadUnitSimulator(SIGNING_KEY) as simulator:
        clock = SimClock(NIGHT)
        host = FunctionsHost(function_app.app, connection, clock=clock)  # events arrive on the simulated clock
        harness = AppHarness(host, simulator, clock, connection, monkeypatch)
        harness.configure(
            AzureWebJobsStorage=connection, SCORING_URI=scoring_uri, SCORING_KEY=None,
            HEAD_UNIT_GATEWAY_URL=simulator.url, HEAD_UNIT_SIGNING_KEY=SIGNING_KEY,
            ALERT_PROBABILITY_THRESHOLD="0.8", ALERT_COOLDOWN_DAYS="7",
            RETRAIN_SCHEDULE="0 0 2 * * *", BATCH_SCORE_SCHEDULE="0 0 3 * * *", COMPACTION_SCHEDULE="0 0 1 * * *",
            MONITOR_SCHEDULE="0 0 4 * * *",
            BATTERY_WORK_DIR=str(work_dir),
        )  # fmt: skip
        try:
            yield harness
        finally:
            bootstrap.current.cache_clear()


def wipe_storage(connection: str) -> None:
    """Delete the containers, tables and queues the app uses, so each test starts as a fresh deployment
    does (Azurite in memory lets a deleted name be created again at once). Other tests' names are left."""
    blobs, tables, queues = blob_service(connection), table_service(connection), queue_service(connection)
    for container in (
        TELEMETRY_CONTAINER,
        DEADLETTER_CONTAINER,
        PARKED_CONTAINER,
        SCORES_CONTAINER,
        "models",
        MONITORING_CONTAINER,
    ):
        with contextlib.suppress(ResourceNotFoundError):
            blobs.delete_container(container)
    for table in (ALERTS_TABLE, STATE_TABLE, OPEN_LABELS_TABLE):
        tables.delete_table(table)  # no error when missing
    for queue in (ALERT_QUEUE, POISON_QUEUE):
        with contextlib.suppress(ResourceNotFoundError):
            queues.delete_queue(queue)


# --- test telemetry -----------------------------------------------------------------------------------


def battery_days(
    battery_id: str, car_id: str, last_day: str, days: int, lifetime_at_end: float,
    rated: int = 200, cycles_per_day: float = 0.15,
) -> pd.DataFrame:  # fmt: skip
    """`days` daily records of one battery ending on `last_day`, using the same cycles every day, with
    the lifetime counter reaching `lifetime_at_end` on the last day (the telemetry columns, typed)."""
    dates = pd.date_range(end=last_day, periods=days, freq="D").astype("datetime64[ns]")
    return pd.DataFrame({
        "Date": dates, "Battery_ID": battery_id, "Car_ID": car_id,
        "Battery_Age_Days": np.arange(400, 400 + days, dtype=np.float64), "Number_Of_Trips": 5.0,
        "Daily_Trip_Duration": round(cycles_per_day / 0.00246, 2), "Daily_Cycles_Used": cycles_per_day,
        "Lifetime_Cycles_Used": np.round(lifetime_at_end - cycles_per_day * np.arange(days)[::-1], 4),
        "Battery_Rated_Cycles": float(rated),
    })[COLUMNS].astype({"Battery_ID": object, "Car_ID": object})  # fmt: skip


def record(row: pd.Series) -> dict[str, Any]:
    """One telemetry record as a car sends it (docs/contracts.md "Telemetry event")."""
    return {
        "Date": row["Date"].strftime("%Y-%m-%d"), "Battery_ID": row["Battery_ID"], "Car_ID": row["Car_ID"],
        "Battery_Age_Days": int(row["Battery_Age_Days"]), "Number_Of_Trips": int(row["Number_Of_Trips"]),
        "Daily_Trip_Duration": float(row["Daily_Trip_Duration"]),
        "Daily_Cycles_Used": float(row["Daily_Cycles_Used"]),
        "Lifetime_Cycles_Used": float(row["Lifetime_Cycles_Used"]),
        "Battery_Rated_Cycles": int(row["Battery_Rated_Cycles"]),
    }  # fmt: skip


def day_events(frame: pd.DataFrame) -> list[bytes]:
    """One event per record, as a car online every day sends them."""
    return [json.dumps(record(row)).encode() for _, row in frame.iterrows()]


def backlog_event(frame: pd.DataFrame) -> bytes:
    """One event holding all the records, as a car coming back online sends its backlog."""
    return json.dumps([record(row) for _, row in frame.iterrows()]).encode()


# --- the test fleet ----------------------------------------------------------------------------------

# On LAST_DAY, B-PAST is past its rated 200 cycles, B-SOON reaches them in about 20 days, B-SAFE is half way.
DAYS = 30
TELEMETRY = pd.concat([
    battery_days("B-PAST", "CAR-PAST", LAST_DAY, DAYS, lifetime_at_end=201.0),
    battery_days("B-SOON", "CAR-SOON", LAST_DAY, DAYS, lifetime_at_end=197.0),
    battery_days("B-SAFE", "CAR-SAFE", LAST_DAY, DAYS, lifetime_at_end=100.0),
], ignore_index=True)  # fmt: skip
AT_RISK = {"CAR-PAST": "B-PAST", "CAR-SOON": "B-SOON"}


def batteries(frame: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Days `first`..`last` (1-based, inclusive) of every battery."""
    position = frame.groupby("Battery_ID").cumcount() + 1
    return frame[position.between(first, last)]


def backlogs(frame: pd.DataFrame) -> list[bytes]:
    """One backlog event per battery."""
    return [backlog_event(rows) for _, rows in frame.groupby("Battery_ID")]


def expected_id(car: str, day: str = LAST_DAY) -> str:
    return alert_id(car, AT_RISK[car], BATTERY_END_OF_LIFE, day)


# --- a scoring endpoint that misbehaves on purpose ----------------------------------------------------


@contextlib.contextmanager
def stub_endpoint(
    status: int = 200,
    failing_batteries: frozenset[str] = frozenset(),
    refused_batteries: frozenset[str] = frozenset(),
    requests: list[list[str]] | None = None,
) -> Iterator[str]:
    """A loopback server speaking the scoring contract, for what the real model cannot be made to do:
    answer every request with `status` (an endpoint that is down), refuse (400) a request holding one of
    `refused_batteries`, or score every battery 0.95 except `failing_batteries`, which get a per-item
    `error`. Each request's battery ids are appended to `requests`. Yields its SCORING_URI."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(status, {"status": "stub"})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if requests is not None:
                requests.append([item["Battery_ID"] for item in request["data"]])
            if status != 200:
                self._answer(status, {"error": f"stub endpoint answers {status}"})
                return
            if refused_batteries & {item["Battery_ID"] for item in request["data"]}:
                self._answer(400, {"error": "stub refuses this request"})
                return
            predictions = [_stub_prediction(item, failing_batteries) for item in request["data"]]
            self._answer(200, {"model_version": "stub-1", "predictions": predictions})

        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    with scoring_uri_serving(Handler) as uri:
        yield uri


@contextlib.contextmanager
def scoring_uri_serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free loopback port, in a thread, while the block runs; yields its SCORING_URI."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/score"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _stub_prediction(item: dict, failing: frozenset[str]) -> dict:
    base = {"Battery_ID": item["Battery_ID"], "Car_ID": item["Car_ID"]}
    if item["Battery_ID"] in failing:
        return base | {"failure_probability_30d": None, "days_to_rated_life": None,
                       "forecast_daily_cycles": None, "error": "stub: cannot score this battery"}  # fmt: skip
    return base | {"failure_probability_30d": 0.95, "days_to_rated_life": 10.0,
                   "forecast_daily_cycles": [0.15] * 30, "error": None}  # fmt: skip


def _json_or_text(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content
