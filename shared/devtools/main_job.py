"""The main job: the whole product running locally, end to end, on loopback (`python -m shared demo`, `make run`).

Why it exists: one command that shows a person (and a test) that the parts work together. It runs the
real `function_app.app`, driven by `shared.devtools.functions_host` (no Azure Functions Core Tools needed) against
real local services: Azurite for Blob, Queue and Table, the scoring endpoint (scoring/score.py under
azmlinfsrv) and the head-unit simulator, which verifies signatures and records what each car received.

The story it plays, with R = `end` − `replay_days`, the last day already in the archive:

1. simulate a fleet and write fleet/telemetry.csv and fleet/cars.csv;
2. start Azurite and the head-unit simulator (its signing key is random per run and never printed);
3. archive the telemetry up to day R in Blob, as if `score_telemetry` had ingested it: only the records it
   would have accepted (the others are counted);
4. the night after R: fire `nightly_retrain` (trains on the archive, registers the champion), start the
   scoring endpoint on the champion, fire `nightly_batch_score` (which scores as of R, the last complete
   day), and drain the alert queue into `push_alert`;
5. replay days R+1..end through `score_telemetry`, one event per car and day as the cars send them at the
   end of their day, plus a few deliberately bad events on the first day to show dead-lettering; each day
   is followed by draining the alert queue;
   After every drain, the head units answer the alerts they received (in turn: seen, service booked,
   dismissed, no answer) through `alert_feedback`, signed as a head unit signs; the summary
   counts the later alerts those answers held back, and the outcome labels (booked, replaced since);
6. write summary.md (a person's report), summary.json (the same figures, for scripts and tests),
   model_report.md, and dashboard.html: the operations page as GET /api/dashboard served it at the end.

Simulated time: the app reads the time only through `Services.clock`. The job sets the app settings in the
environment (the app reads them there, as in Azure), lets `bootstrap.current()` build the app's services
from them exactly as an invocation would, then points that object's `clock` at a `SimulatedClock` that it
moves forward. Production code has no fake-time switch that could be left on in Azure; the override is one
visible line here and lasts as long as the environment block, whose exit clears the cached services.

The figures come from where an operator would find them: dead letters and parked requests from Blob, what
the cars received from the head-unit simulator, the summary each function logs per invocation (its fields
are what Application Insights holds as custom dimensions), collected by a log handler during the run, and
the app's OpenTelemetry counters, read from an in-memory MeterProvider (`observability.in_memory`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

import pandas as pd

import function_app
from shared import bootstrap
from shared.adapters import observability
from shared.adapters.alert_store import ALERTS_TABLE
from shared.adapters.archive import archive_telemetry, list_dead_letters
from shared.adapters.car_profiles import write_profiles
from shared.adapters.feedback_store import outcome_counts
from shared.adapters.lifecycle_store import write_time_zones
from shared.adapters.monitor_store import write_car_segments
from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import AzuriteEndpoints, list_blob_names
from shared.config.names import STORAGE_CONNECTION_SETTING
from shared.config.settings import Settings
from shared.core.alerts import COOLDOWN, SEVERITY_RANK
from shared.core.events import DEFAULT_MAX_BODY_BYTES, DeadLetter
from shared.core.feedback import DISMISSED, SEEN, SERVICE_BOOKED, SNOOZED
from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import (
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DAILY_CYCLES,
    DATE,
    INTEGER_COLUMNS,
    LIFETIME_CYCLES,
    TRIP_MINUTES,
    InputError,
    implausible_values,
)
from shared.devtools.azurite import free_port, running_azurite
from shared.devtools.fleet_simulator import TWELVE_HOUR_UNTIL, Fleet, simulate_fleet, write_fleet
from shared.devtools.functions_host import EventDelivery, FunctionsHost, Invocation, QueueDrain
from shared.devtools.headunit_simulator import Attempt, HeadUnitSimulator
from shared.devtools.inference_server import running_endpoint
from shared.handlers.nightly import Progress
from shared.handlers.telemetry import PARKED_CONTAINER, PARKED_PREFIX
from shared.models.report import training_report

DEFAULT_REPLAY_DAYS = 14
MIN_HISTORY_DAYS = 120  # archived days before the replay: enough for the backtest and a 91-day window
RETRAIN_HOUR, BATCH_SCORE_HOUR = 2, 3  # the app's default schedules (02:00 and 03:00 UTC)
REPORT_HOUR = 23  # a car sends its day's record at the end of the day
MLFLOW_STORE = "mlflow/mlflow.db"  # under the run's work directory
SHOWN_ALERTS = 200  # rows of the head-unit table in summary.md (summary.json has them all)
# What `demo --check` demands of a run's check against the simulator's truth (the default run reaches 14/14
# and 46/47; a small run's few due batteries leave room for one miss or one wrong alert in four or five).
MIN_RECALL, MIN_PRECISION = 0.75, 0.8

# The functions the job drives (names in function_app.app) and the names their log summaries carry.
RETRAIN, BATCH_SCORE, SCORE_TELEMETRY, PUSH_ALERT = (
    "nightly_retrain_timer", "nightly_batch_score_timer", "score_telemetry", "push_alert",
)  # fmt: skip
RETRAIN_LOG, BATCH_SCORE_LOG = "nightly_retrain", "nightly_batch_score"
FEEDBACK = "alert_feedback"
DASHBOARD = "dashboard"
DASHBOARD_FILE = "dashboard.html"  # the page as a static file in the run's directory (no server needed to read it)
# What the head units answer, in turn as their alerts arrive (by car within a drain): a quarter each sees,
# books a service, dismisses, or does not answer; a booked appointment is BOOKING_LEAD later.
FEEDBACK_ROTATION = (SEEN, SERVICE_BOOKED, DISMISSED, None)
BOOKING_LEAD = timedelta(days=3)

# Settings that would send the app somewhere other than the local services (Azure ML training, a keyed
# endpoint): removed from the environment for the run, with every identity-based storage setting.
CLEARED_SETTINGS = (
    "SCORING_KEY", "SCORING_AUTH", "AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE",
)  # fmt: skip


# --- simulated time, settings, the functions' own summaries ---------------------------------------------


class SimulatedClock:
    """The time the app's services see during the run; the job moves it. Called like `bootstrap.utc_now`."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, day: date, hour: int) -> None:
        self.now = at_hour(day, hour)


def at_hour(day: date, hour: int) -> datetime:
    return datetime.combine(day, time_of_day(hour), tzinfo=UTC)


def app_settings(azurite: AzuriteEndpoints, gateway_url: str, scoring_uri: str, signing_key: str,
                 work_dir: Path) -> dict[str, str]:  # fmt: skip
    """The app settings of a local run: the local services, and the defaults of everything else.

    Training runs are tracked in an MLflow store of the run's own (`work_dir`/mlflow/mlflow.db), never in
    a store the environment points at. ALERT_PROBABILITY_THRESHOLD and ALERT_COOLDOWN_DAYS keep a value
    set in the environment, so a person can try another policy (`ALERT_PROBABILITY_THRESHOLD=0.6 make run`).
    """
    defaults = Settings()
    return {
        STORAGE_CONNECTION_SETTING: azurite.connection_string,
        "SCORING_URI": scoring_uri,
        "HEAD_UNIT_GATEWAY_URL": gateway_url,
        "HEAD_UNIT_SIGNING_KEY": signing_key,
        "BATTERY_WORK_DIR": str(work_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{(Path(work_dir) / MLFLOW_STORE).resolve().as_posix()}",
        "RETRAIN_SCHEDULE": defaults.retrain_schedule,
        "BATCH_SCORE_SCHEDULE": defaults.batch_score_schedule,
        "COMPLIANCE_SCHEDULE": defaults.compliance_schedule,
        "COMPACTION_SCHEDULE": defaults.compaction_schedule,
        "MONITOR_SCHEDULE": defaults.monitor_schedule,
        "ALERT_PROBABILITY_THRESHOLD": os.environ.get("ALERT_PROBABILITY_THRESHOLD")
        or str(defaults.alert_probability_threshold),
        "ALERT_COOLDOWN_DAYS": os.environ.get("ALERT_COOLDOWN_DAYS") or str(defaults.alert_cooldown_days),
    }


@contextlib.contextmanager
def app_environment(values: Mapping[str, str], cleared: Iterable[str] = CLEARED_SETTINGS) -> Iterator[None]:
    """The app settings in `os.environ` for the block (where the app reads them, as in Azure), then restored.

    `cleared` settings and identity-based storage settings (`AzureWebJobsStorage__…`) are removed for the
    block. The app's cached services are dropped on entry and exit, so they are built from these settings
    and nothing built from them outlives the block.
    """
    names = {*values, *cleared, *(name for name in os.environ if name.startswith(f"{STORAGE_CONNECTION_SETTING}__"))}
    saved = {name: os.environ.get(name) for name in names}
    for name in names - set(values):
        os.environ.pop(name, None)
    os.environ.update(values)
    bootstrap.current.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        bootstrap.current.cache_clear()


class FunctionLog(logging.Handler):
    """Collects the summary each function of the app logs per invocation (`observability.log_summary`)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.summaries: dict[str, list[dict]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        if (summary := observability.summary_of(record)) is not None:
            self.summaries[summary[0]].append(summary[1])

    def of(self, step: str) -> list[dict]:
        return self.summaries.get(step, [])


@contextlib.contextmanager
def collecting(handler: FunctionLog) -> Iterator[FunctionLog]:
    """`handler` on function_app's logger for the block (the logger's level raised to INFO meanwhile)."""
    logger = function_app.log
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- events ---------------------------------------------------------------------------------------------


def acceptable_records(telemetry: pd.DataFrame) -> pd.Series:
    """Rows the streaming path accepts: no blank cell and no impossible value (shared.core.events' rules)."""
    return telemetry[COLUMNS].notna().all(axis=1) & implausible_values(telemetry).isna()


def day_events(rows: pd.DataFrame) -> tuple[list[bytes], list[str]]:
    """A day's telemetry rows as the cars send them: one Event Hub body per car (its record as a JSON
    object, or an array when it sent more than one, e.g. a duplicate) and the car as partition key.

    Dates as YYYY-MM-DD, integer columns as JSON integers, blank cells as null (docs/contracts.md, "Telemetry event").
    """
    records = rows[COLUMNS].assign(
        **{
            DATE: rows[DATE].dt.strftime("%Y-%m-%d"),
            **{column: rows[column].astype("Int64") for column in INTEGER_COLUMNS},
        }
    )
    by_car: dict[str, list[dict]] = defaultdict(list)
    for record in json.loads(records.to_json(orient="records")):
        by_car[record[CAR_ID]].append(record)
    bodies = [json.dumps(sent[0] if len(sent) == 1 else sent).encode() for sent in by_car.values()]
    return bodies, list(by_car)


@dataclass(frozen=True)
class BadEvent:
    """An event the job sends on purpose to show dead-lettering: what is wrong with it, and its bytes."""

    problem: str
    body: bytes
    car_id: str


def bad_events(record: Mapping[str, Any]) -> list[BadEvent]:
    """Broken copies of one real record (as `day_events` writes it): one of each kind the streaming path
    must dead-letter with a reason while the rest of the batch goes on."""
    car = record[CAR_ID]

    def body(**changes: Any) -> bytes:
        return json.dumps({**record, **changes}).encode()

    one = body()
    oversize = b"[" + b",".join([one] * (DEFAULT_MAX_BODY_BYTES // len(one) + 1)) + b"]"
    return [
        BadEvent("not JSON (cut off mid-object)", one[: len(one) // 2], car),
        BadEvent(f"missing field {LIFETIME_CYCLES}",
                 json.dumps({k: v for k, v in record.items() if k != LIFETIME_CYCLES}).encode(), car),
        BadEvent(f"wrong type: {TRIP_MINUTES} as a string", body(**{TRIP_MINUTES: str(record[TRIP_MINUTES])}), car),
        BadEvent(f"negative {DAILY_CYCLES}", body(**{DAILY_CYCLES: -0.4}), car),
        BadEvent(f"absurd {TRIP_MINUTES} (10,000 minutes in a day)", body(**{TRIP_MINUTES: 10_000}), car),
        BadEvent(f"oversize body ({len(oversize):,} bytes)", oversize, car),
    ]  # fmt: skip


def with_bad_events(bodies: list[bytes], keys: list[str], bad: list[BadEvent]) -> tuple[list[bytes], list[str]]:
    """The day's events with the bad ones spread among them, so good events surround each bad one."""
    bodies, keys = list(bodies), list(keys)
    step = max(1, len(bodies) // (len(bad) + 1))
    for number, event in enumerate(bad, start=1):
        position = min(len(bodies), number * step + number - 1)
        bodies.insert(position, event.body)
        keys.insert(position, event.car_id)
    return bodies, keys


# --- the run ----------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What the run produced, for the summary; filled in step by step as the job goes."""

    fleet: Fleet
    last_archived: date
    replayed: list[date] = field(default_factory=list)
    archived_rows: int = 0
    left_out_of_archive: int = 0
    function_log: FunctionLog = field(default_factory=FunctionLog)
    batch_score: Invocation | None = None
    deliveries: list[EventDelivery] = field(default_factory=list)
    drains: list[QueueDrain] = field(default_factory=list)
    bad: list[BadEvent] = field(default_factory=list)
    replayed_bad_records: int = 0  # replayed telemetry records with a blank or impossible value
    dead_letters: list[DeadLetter] = field(default_factory=list)
    parked: int = 0
    received: dict[str, list[dict]] = field(default_factory=dict)
    gateway_attempts: list[Attempt] = field(default_factory=list)
    cooldown_days: int = 0  # the app's ALERT_COOLDOWN_DAYS during the run
    champion: dict | None = None
    local_services: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)  # the app's OpenTelemetry instruments (observability)
    feedback: list[dict] = field(default_factory=list)  # the head units' answers, with the app's reply
    outcome_labels: dict[str, int] = field(default_factory=dict)  # feedback_store.outcome_counts at the end


def run_main_job(
    out_dir: Path,
    *,
    cars: int = 300,
    start: str = "2014-01-01",
    end: str = "2016-12-31",
    seed: int = 7,
    replay_days: int = DEFAULT_REPLAY_DAYS,
    progress: Progress | None = None,
) -> Path:
    """Run the product end to end on local services (see the module docstring); the path of summary.md.

    Raises `InputError` for arguments that cannot make a run, and `RuntimeError` when a nightly function
    fails (its error in the message). Every process it starts is stopped when it returns or raises.
    """
    out_dir = Path(out_dir)
    last_archived = _check_arguments(cars, start, end, replay_days)
    night = last_archived + timedelta(days=1)
    timings: dict[str, float] = {}

    say = progress or (lambda message: None)

    @contextlib.contextmanager
    def step(name: str, message: str) -> Iterator[None]:
        say(message)
        began = time.monotonic()
        yield
        timings[name] = round(time.monotonic() - began, 1)

    with step("simulate", f"simulating {cars} cars from {start} to {end} (seed {seed})"):
        fleet = simulate_fleet(cars, start, end, seed)
        write_fleet(fleet, out_dir / "fleet")
    record = RunRecord(fleet, last_archived, timings=timings)
    telemetry_day = fleet.telemetry[DATE].dt.normalize()
    signing_key = secrets.token_hex(32)

    with contextlib.ExitStack() as stack:
        with step("start", "starting Azurite and the head-unit simulator"):
            azurite = stack.enter_context(running_azurite())
            gateway = stack.enter_context(HeadUnitSimulator(signing_key))
        scoring_port = free_port()
        scoring_uri = f"http://127.0.0.1:{scoring_port}/score"
        work_dir = out_dir / "work"
        (work_dir / MLFLOW_STORE).parent.mkdir(parents=True, exist_ok=True)
        settings = app_settings(azurite, gateway.url, scoring_uri, signing_key, work_dir)
        stack.enter_context(app_environment(settings))
        stack.enter_context(collecting(record.function_log))
        metrics = stack.enter_context(observability.in_memory())
        host = FunctionsHost(function_app.app, azurite.connection_string)
        app = bootstrap.current()
        clock = SimulatedClock(at_hour(last_archived, REPORT_HOUR))
        app.clock = clock  # the one override: the app's services keep the simulated time
        record.cooldown_days = app.settings.alert_cooldown_days
        write_profiles(app.tables, fleet.cars)  # the cars' languages (by Region) and channels, as the app reads them
        write_car_segments(app.blobs, fleet.cars)  # the segments the model monitor judges accuracy by
        write_time_zones(app.tables, fleet.cars)  # and their time zones, for quiet hours
        record.local_services = {
            "azurite_ports": [azurite.blob_port, azurite.queue_port, azurite.table_port],
            "scoring_endpoint": scoring_uri, "head_unit_gateway": gateway.url,
            "mlflow_tracking_uri": settings["MLFLOW_TRACKING_URI"],
        }  # fmt: skip

        with step("archive", f"archiving the telemetry up to {last_archived} in Blob"):
            history = fleet.telemetry[telemetry_day <= pd.Timestamp(last_archived)]
            accepted = acceptable_records(history)
            archive_telemetry(app.blobs, history[accepted], clock.now, batch_id="simulated-history")
            record.archived_rows, record.left_out_of_archive = int(accepted.sum()), int((~accepted).sum())

        with step("retrain", f"night of {night}: nightly_retrain (prepare, backtest, train, register)"):
            clock.set(night, RETRAIN_HOUR)
            _succeeded(host.fire_timer(RETRAIN))
            registry = ModelRegistry(app.blobs)
            model_dir = registry.download_champion(work_dir / "endpoint")
            if model_dir is None:
                raise RuntimeError(f"nightly_retrain registered no champion: {record.function_log.of(RETRAIN_LOG)}")
            record.champion = registry.champion_metadata()

        with step("endpoint", f"starting the scoring endpoint on {scoring_uri}"):
            stack.enter_context(running_endpoint(model_dir, port=scoring_port))

        with step("batch_score", f"night of {night}: nightly_batch_score as of {last_archived}, then push_alert"):
            clock.set(night, BATCH_SCORE_HOUR)
            record.batch_score = _succeeded(host.fire_timer(BATCH_SCORE))
            record.drains.append(host.drain_queue(PUSH_ALERT))
            record.feedback += answer_new_alerts(host, gateway, clock.now, record.feedback)

        with step("replay", f"replaying {replay_days} days through score_telemetry, then push_alert each day"):
            for day in (night + timedelta(days=offset) for offset in range(replay_days)):
                rows = fleet.telemetry[telemetry_day == pd.Timestamp(day)]
                record.replayed_bad_records += int((~acceptable_records(rows)).sum())
                bodies, keys = day_events(rows)
                if not record.bad:
                    [example], _ = day_events(rows[acceptable_records(rows)].head(1))
                    record.bad = bad_events(json.loads(example))
                    bodies, keys = with_bad_events(bodies, keys, record.bad)
                clock.set(day, REPORT_HOUR)
                record.deliveries.append(host.deliver_events(SCORE_TELEMETRY, bodies, keys, enqueued_time=clock.now))
                record.drains.append(host.drain_queue(PUSH_ALERT))
                record.feedback += answer_new_alerts(host, gateway, clock.now, record.feedback)
                record.replayed.append(day)
                delivered = _delivered_so_far(record.function_log)
                say(f"  {day}: {len(bodies)} events; {delivered} alerts delivered so far")

        record.dead_letters = list_dead_letters(app.blobs)
        record.parked = len(list_blob_names(app.blobs.get_container_client(PARKED_CONTAINER), PARKED_PREFIX))
        record.received = gateway.received_by_car()
        record.gateway_attempts = gateway.attempts
        record.counters = observability.readings(metrics)
        record.outcome_labels = outcome_counts(app.tables.get_table_client(ALERTS_TABLE))
        dashboard = host.call_http(DASHBOARD)  # the operations page as GET /api/dashboard serves it now
        if dashboard.status_code != 200:
            raise RuntimeError(f"{DASHBOARD} answered {dashboard.status_code}: {dashboard.get_body()[:500]!r}")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / DASHBOARD_FILE).write_bytes(dashboard.get_body())

    summary = summarise(record, cars=cars, start=start, end=end, seed=seed)
    model_report = training_report(record.champion)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model_report.md").write_text(model_report)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary_path = out_dir / "summary.md"
    summary_path.write_text(render_summary(summary, model_report))
    return summary_path


def answer_new_alerts(host: FunctionsHost, gateway: HeadUnitSimulator, now: datetime,
                      answered: list[dict]) -> list[dict]:  # fmt: skip
    """Let the head units answer the alerts they received since the last call (`answered` lists the earlier
    ones), through the app's feedback function, signed; one row per alert: car, alert, action, the reply."""
    done = {row["alert_id"] for row in answered}
    rows: list[dict] = []
    for car_id, alerts in sorted(gateway.received_by_car().items()):
        for alert in (alert for alert in alerts if alert["alert_id"] not in done):
            action = FEEDBACK_ROTATION[(len(answered) + len(rows)) % len(FEEDBACK_ROTATION)]
            row = {"car_id": car_id, "alert_id": alert["alert_id"], "action": action, "status": None}
            if action is not None:
                booking = {"booking_ref": f"WS-{alert['alert_id'][:8]}", "service_at": now + BOOKING_LEAD}
                body, headers = gateway.feedback_request(alert["alert_id"], action, now, timestamp=int(now.timestamp()),
                                                         **(booking if action == SERVICE_BOOKED else {}))  # fmt: skip
                response = host.call_http(FEEDBACK, "POST", headers=headers, body=body,
                                          route_params={"car_id": car_id, "alert_id": alert["alert_id"]})  # fmt: skip
                row["status"] = response.status_code
            rows.append(row)
    return rows


def _check_arguments(cars: int, start: str, end: str, replay_days: int) -> date:
    """The last archived day R, or `InputError` naming the argument that cannot make a run."""
    if isinstance(cars, bool) or not isinstance(cars, int) or cars < 1:
        raise InputError(f"--cars must be a whole number ≥ 1, got {cars!r}")
    if isinstance(replay_days, bool) or not isinstance(replay_days, int) or replay_days < 1:
        raise InputError(f"--replay-days must be a whole number ≥ 1, got {replay_days!r}")
    days = {}
    for name, text in (("--start", start), ("--end", end)):
        try:
            days[name] = date.fromisoformat(str(text))
        except ValueError:
            raise InputError(f"{name} must be a day as YYYY-MM-DD, got {text!r}") from None
    last_archived = days["--end"] - timedelta(days=replay_days)
    history_days = (last_archived - days["--start"]).days + 1
    if history_days < MIN_HISTORY_DAYS:
        raise InputError(
            f"--start {start} to --end {end} leaves {history_days} days before the {replay_days} "
            f"replayed days; training needs at least {MIN_HISTORY_DAYS}"
        )
    first_daily = pd.Timestamp(TWELVE_HOUR_UNTIL).date()
    if last_archived + timedelta(days=1) < first_daily:
        raise InputError(
            f"the replayed days must start on or after {first_daily}: before that the simulated "
            "cars report every 12 hours, and an event carries one record per day"
        )
    return last_archived


def _succeeded(invocation: Invocation) -> Invocation:
    """The invocation, or `RuntimeError` with its error when every attempt failed (the night cannot go on)."""
    if not invocation.succeeded:
        raise RuntimeError(f"{invocation.function} failed after {invocation.attempts} attempt(s): {invocation.error}")
    return invocation


def _delivered_so_far(log: FunctionLog) -> int:
    return sum(outcome.get("state") == "delivered" for outcome in log.of(PUSH_ALERT))


# --- the summary ------------------------------------------------------------------------------------------


def summarise(record: RunRecord, *, cars: int, start: str, end: str, seed: int) -> dict[str, Any]:
    """The run's figures as one JSON-ready dict (summary.json); `render_summary` words it for people."""
    log = record.function_log
    fleet = record.fleet
    streaming = log.of(SCORE_TELEMETRY)
    batches = [batch for delivery in record.deliveries for batch in delivery.batches]
    bodies = {letter.body.encode("utf-8") for letter in record.dead_letters if letter.body_encoding == "utf-8"}
    reasons = {letter.body: letter.reason for letter in record.dead_letters}
    injected = [
        {"problem": event.problem, "dead_lettered": event.body in bodies,
         "reason": reasons.get(event.body.decode("utf-8", "replace"))}
        for event in record.bad
    ]  # fmt: skip
    injected_dead = sum(event["dead_lettered"] for event in injected)
    outcomes = Counter(outcome.get("state") for outcome in log.of(PUSH_ALERT))
    held_back = Counter(outcome.get("reason") for outcome in log.of(PUSH_ALERT) if outcome.get("state") == "suppressed")
    answers = Counter(row["action"] for row in record.feedback if row["action"] is not None)
    batch_summary = (log.of(BATCH_SCORE_LOG) or [{}])[-1]
    received = received_table(record.received, fleet.batteries)
    queued_batch = record.batch_score.enqueued.get(function_app.ALERT_QUEUE, 0)
    queued_streaming = sum(batch.enqueued.get(function_app.ALERT_QUEUE, 0) for batch in batches)
    unique = all(len({a["alert_id"] for a in alerts}) == len(alerts) for alerts in record.received.values())
    return {
        "run": {
            "cars": cars,
            "start": start,
            "end": end,
            "seed": seed,
            "telemetry_rows": len(fleet.telemetry),
            "batteries": len(fleet.batteries),
            "last_archived_day": record.last_archived,
            "replayed_days": record.replayed,
        },
        "archive": {"rows": record.archived_rows, "left_out_blank_or_impossible": record.left_out_of_archive},
        "retrain": (log.of(RETRAIN_LOG) or [{}])[-1],
        "model_version": (record.champion or {}).get("version"),
        "events": {
            "delivered": sum(delivery.events for delivery in record.deliveries),
            "batches": len(batches),
            "failed_batches": [batch.error for batch in batches if not batch.succeeded],
            "records_accepted": sum(s.get("records", 0) for s in streaming),
            "dead_lettered": len(record.dead_letters),
            "injected_bad": len(record.bad),
            "injected_dead_lettered": injected_dead,
            "telemetry_dead_lettered": len(record.dead_letters) - injected_dead,
            "telemetry_bad_records_replayed": record.replayed_bad_records,
            "injected": injected,
            "scoring_errors": sum(s.get("scoring_errors", 0) for s in streaming),
            "parked_for_rescoring": record.parked,
        },
        "scoring": {
            "batch_as_of": batch_summary.get("as_of"),
            "batch_scored": batch_summary.get("scored", 0),
            "streaming_scored": sum(s.get("batteries", 0) for s in streaming),
        },
        "alerts": {
            "queued": queued_batch + queued_streaming,
            "queued_batch": queued_batch,
            "queued_streaming": queued_streaming,
            "outcomes": dict(outcomes),
            "delivered": outcomes.get("delivered", 0),
            "suppressed_by_cooldown": held_back.get(COOLDOWN, 0),
            "held_back_by_feedback": {
                action: held_back.get(action, 0) for action in (DISMISSED, SNOOZED, SERVICE_BOOKED)
            },
            "already_delivered": outcomes.get("duplicate", 0),
            "rejected": outcomes.get("rejected", 0),
            "malformed": outcomes.get("malformed", 0),
            "failed_attempts": sum(drain.failed_attempts for drain in record.drains),
            "poisoned": sum(drain.poisoned for drain in record.drains),
            "received_by_head_units": len(received),
            "unique_per_car": unique,
        },
        "feedback": {
            "answers": {action: answers.get(action, 0) for action in (SEEN, DISMISSED, SERVICE_BOOKED)},
            "refused": sum(row["status"] not in (None, 200) for row in record.feedback),
            "unanswered": sum(row["action"] is None for row in record.feedback),
            "outcome_labels": record.outcome_labels,
        },
        "check": alert_check(fleet.batteries, received, record.last_archived)
        | delivery_check(log.of(PUSH_ALERT), received, record.gateway_attempts, record.cooldown_days),
        "head_units": received.to_dict(orient="records"),
        "counters": record.counters,
        "local_services": record.local_services,
        "timings_s": record.timings,
    }


def received_table(received: Mapping[str, list[dict]], batteries: pd.DataFrame) -> pd.DataFrame:
    """One row per alert a head unit received, with the simulator's truth about its battery.

    The real battery is the car's battery reporting that id and installed by the alert's day (the newer
    one after a silent replacement, which keeps the old id). `truth` says when it reaches rated life.
    """
    columns = ["car_id", "battery_id", "severity", "failure_probability_30d", "days_to_rated_life", "created_at",
               "message", "alert_id"]  # fmt: skip
    alerts = pd.DataFrame([alert for car in sorted(received) for alert in received[car]], columns=columns)
    alerts["day"] = pd.to_datetime(alerts["created_at"], utc=True).dt.tz_localize(None).dt.normalize()
    known = batteries.rename(columns={BATTERY_ID: "real_battery_id", CAR_ID: "car_id", "Reported_ID": "battery_id"})
    known = known[["car_id", "battery_id", "real_battery_id", "Installed", "Rated_Life_Reached"]]
    matched = alerts.merge(known, on=["car_id", "battery_id"], how="left")
    matched = matched[matched["Installed"].isna() | (matched["Installed"] <= matched["day"])]
    matched = matched.sort_values("Installed", kind="stable").drop_duplicates("alert_id", keep="last")
    matched = alerts[["alert_id"]].merge(matched, on="alert_id", how="left")  # every alert, in arrival order
    reached = matched["Rated_Life_Reached"]
    matched["rated_life_reached"] = reached.dt.strftime("%Y-%m-%d").astype(object).where(reached.notna(), None)
    matched["right_to_alert"] = ((reached - matched["day"]).dt.days <= HORIZON_DAYS).fillna(False).astype(bool)
    matched = matched.drop(columns=["Installed", "Rated_Life_Reached", "day"])
    return matched.astype(object).where(matched.notna(), None)  # JSON-ready: None, never NaN


def alert_check(batteries: pd.DataFrame, received: pd.DataFrame, last_archived: date) -> dict[str, Any]:
    """How the alerts compare with the simulator's truth, as of R = the last archived day.

    due: batteries in service at R that reach rated life within 30 days after R; past: in service at R and
    already past it. Recall is the share of due batteries whose car received an alert about them.
    """
    r = pd.Timestamp(last_archived)
    reached = batteries["Rated_Life_Reached"]
    in_service = (batteries["Installed"] <= r) & (batteries["Replaced"].isna() | (batteries["Replaced"] > r))
    due = batteries[in_service & (reached > r) & (reached <= r + pd.Timedelta(days=HORIZON_DAYS))]
    past = batteries[in_service & (reached <= r)]
    alerted = set(received["real_battery_id"].dropna())
    due_alerted = due[BATTERY_ID].isin(alerted)
    missed = due[~due_alerted]
    return {
        "due_within_30_days": len(due),
        "due_alerted": int(due_alerted.sum()),
        "recall": round(float(due_alerted.mean()), 3) if len(due) else None,
        "past_rated_life": len(past),
        "past_alerted": int(past[BATTERY_ID].isin(alerted).sum()),
        "alerts_received": len(received),
        "alerts_right": int(received["right_to_alert"].sum()),
        "missed": [
            {"car_id": car, "battery_id": battery, "rated_life_reached": f"{day:%Y-%m-%d}"}
            for car, battery, day in zip(
                missed[CAR_ID], missed["Reported_ID"], missed["Rated_Life_Reached"], strict=True
            )
        ],
    }


def delivery_check(outcomes: list[dict], received: pd.DataFrame, attempts: list[Attempt],
                   cooldown_days: int) -> dict[str, Any]:  # fmt: skip
    """Whether what push_alert says it delivered is what the head units got, each alert once, within the policy.

    `outcomes` are push_alert's logged outcomes, `received` is `received_table`, `attempts` the gateway's
    answered POSTs. An alert POSTed again after it was received (answered "duplicate") was sent twice even
    though the simulator shows it once. A cooldown breach is a car receiving an alert of the same type
    less than `cooldown_days` after its previous one without a rise in severity (the simulated clock does
    not move between queueing and delivery, so `created_at` is the delivery time).
    """
    delivered = {outcome["alert_id"] for outcome in outcomes if outcome.get("state") == "delivered"}
    got = Counter(received["alert_id"])
    posted = Counter(attempt.idempotency_key for attempt in attempts if attempt.status in (200, 201))
    breaches = []
    for car, alerts in received.groupby("car_id", sort=True):
        times = pd.to_datetime(alerts["created_at"], utc=True)
        ranks = alerts["severity"].map(SEVERITY_RANK)
        order = times.argsort(kind="stable")
        times, ranks = times.iloc[order], ranks.iloc[order]
        soon = (times.diff() < pd.Timedelta(days=cooldown_days)) & (ranks.diff() <= 0)
        breaches += [{"car_id": car, "alert_id": alert} for alert in alerts["alert_id"].iloc[order][soon]]
    return {
        "delivered_not_received": sorted(delivered - set(got)),
        "received_not_delivered": sorted(set(got) - delivered),
        "received_twice": sorted(alert for alert, count in got.items() if count > 1),
        "sent_again": sorted(alert for alert, count in posted.items() if count > 1),
        "cooldown_breaches": breaches,
    }


def check_failures(check: Mapping[str, Any], min_recall: float = MIN_RECALL,
                   min_precision: float = MIN_PRECISION) -> list[str]:  # fmt: skip
    """What makes a run's check against the truth fail (`demo --check`): empty when it passes.

    A run with no battery due has no recall to judge, which fails too: such a run proves nothing.
    """
    problems = []
    if check["recall"] is None:
        problems.append("no battery was due to reach rated life within 30 days: nothing to check")
    elif check["recall"] < min_recall:
        problems.append(f"recall {check['due_alerted']}/{check['due_within_30_days']} is below {min_recall}")
    received, right = check["alerts_received"], check["alerts_right"]
    if received and right / received < min_precision:
        problems.append(f"{right} of {received} alerts right, below {min_precision}")
    for key, what in (("received_twice", "received twice"), ("sent_again", "sent again after it was received"),
                      ("delivered_not_received", "delivered but not received"),
                      ("received_not_delivered", "received but not logged as delivered"),
                      ("cooldown_breaches", "received within the cooldown")):  # fmt: skip
        if check[key]:
            problems.append(f"{len(check[key])} alert(s) {what}")
    return problems


def render_summary(summary: dict[str, Any], model_report: str) -> str:
    """summary.md: what ran, the figures, the check against the truth, what each head unit received."""
    run, events, alerts, check = summary["run"], summary["events"], summary["alerts"], summary["check"]
    scoring, retrain = summary["scoring"], summary["retrain"]
    feedback = summary["feedback"]
    labels = feedback["outcome_labels"]
    first, last = run["replayed_days"][0], run["replayed_days"][-1]
    figures = [
        ("events delivered to score_telemetry", events["delivered"]),
        ("… in batches", events["batches"]),
        ("… batches that failed every retry", len(events["failed_batches"])),
        ("records accepted and archived", events["records_accepted"]),
        ("dead-lettered (events or records, with reasons, in Blob)", events["dead_lettered"]),
        ("… the injected bad events", f"{events['injected_dead_lettered']} of {events['injected_bad']}"),
        ("… records of the fleet's own telemetry (blank or impossible values)",
         f"{events['telemetry_dead_lettered']} (the replayed days hold {events['telemetry_bad_records_replayed']})"),
        ("items the endpoint could not score", events["scoring_errors"]),
        ("batches parked for re-scoring", events["parked_for_rescoring"]),
        (f"batteries scored by nightly_batch_score (as of {scoring['batch_as_of']})", scoring["batch_scored"]),
        ("batteries scored by score_telemetry (summed over batches)", scoring["streaming_scored"]),
        ("alerts queued", f"{alerts['queued']} ({alerts['queued_batch']} nightly, "
                          f"{alerts['queued_streaming']} streaming)"),
        ("… delivered", alerts["delivered"]),
        ("… suppressed by cooldown", alerts["suppressed_by_cooldown"]),
        *((f"… held back by the owner's answer: {action.replace('_', ' ')}", count)
          for action, count in alerts["held_back_by_feedback"].items()),
        ("… already delivered (same alert again)", alerts["already_delivered"]),
        ("… rejected by the gateway", alerts["rejected"]),
        ("… malformed", alerts["malformed"]),
        ("failed delivery attempts (retried by the queue)", alerts["failed_attempts"]),
        ("poisoned (maintenance-alerts-poison)", alerts["poisoned"]),
        ("alerts received by head units", alerts["received_by_head_units"]),
        ("head units' answers (seen, dismissed, service booked)",
         ", ".join(str(count) for count in feedback["answers"].values())),
        ("… refused by the feedback endpoint", feedback["refused"]),
        ("batteries answered about: booked, replaced since (outcome labels)",
         f"{labels.get('answered', 0)}: {labels.get('booked', 0)} booked, {labels.get('replaced', 0)} replaced "
         f"({labels.get('booked_replaced', 0)} of them booked)"),
    ]  # fmt: skip
    recall = "n/a" if check["recall"] is None else f"{check['recall']:.0%}"
    consistent = (
        alerts["delivered"] == alerts["received_by_head_units"]
        and alerts["unique_per_car"]
        and not any(
            check[key] for key in ("delivered_not_received", "received_not_delivered", "received_twice", "sent_again")
        )
    )
    problems = check_failures(check)
    lines = [
        f"# Main job: {run['cars']} cars, {run['start']} to {run['end']} (seed {run['seed']})",
        "",
        f"The telemetry up to {run['last_archived_day']} was archived in Blob ({summary['archive']['rows']:,} "
        f"records; {summary['archive']['left_out_blank_or_impossible']:,} with blank or impossible values left "
        "out, as the streaming path dead-letters them). The night after, `nightly_retrain` trained model "
        f"`{retrain.get('trained')}` ({'promoted' if retrain.get('promoted') else 'not promoted'}: "
        f"{retrain.get('reason', 'no reason recorded')}; the champion is `{summary['model_version']}`) and "
        f"`nightly_batch_score` scored the fleet; then {first} to {last} were replayed through "
        "`score_telemetry`, one event per car and day, with the alert queue drained into `push_alert` after "
        "each day. All on 127.0.0.1: Azurite, "
        "the scoring endpoint (azmlinfsrv), the head-unit simulator, and `function_app.app` under the local "
        "Functions host.",
        "",
        "## Check against the simulator's truth",
        "",
        f"- **{check['due_alerted']} of {check['due_within_30_days']} batteries that reach rated life within "
        f"30 days after {run['last_archived_day']} got an alert (recall {recall}).**",
        f"- {check['alerts_right']} of {check['alerts_received']} alerts received were about a battery that "
        "reaches rated life within 30 days of the alert, or already had.",
        f"- {check['past_alerted']} of {check['past_rated_life']} batteries already past rated life and still "
        "in service got an alert.",
        f"- Delivered by push_alert = received by head units, each alert once: {'yes' if consistent else 'NO'}.",
        f"- Alerts received within the cooldown without escalating: {len(check['cooldown_breaches'])}.",
        f"- `--check` (recall ≥ {MIN_RECALL}, right ≥ {MIN_PRECISION}, each alert once, cooldown kept): "
        + ("passes." if not problems else f"**fails**: {'; '.join(problems)}."),
    ]
    if check["missed"]:
        shown = ", ".join(f"{m['car_id']}/{m['battery_id']} ({m['rated_life_reached']})" for m in check["missed"][:10])
        more = f" and {len(check['missed']) - 10} more" if len(check["missed"]) > 10 else ""
        lines.append(f"- Missed: {shown}{more}.")
    lines += ["", "## Figures", "", _markdown_table(["", "count"], figures), ""]
    if events["failed_batches"]:
        lines += ["Failed batches:", "", *(f"- {error}" for error in events["failed_batches"]), ""]
    lines += ["## Bad events injected on the first replayed day", "",
              _markdown_table(["what was wrong", "dead-letter reason"],
                              [(e["problem"], e["reason"] or "**not dead-lettered**") for e in events["injected"]]),
              ""]  # fmt: skip
    shown_alerts = summary["head_units"][:SHOWN_ALERTS]
    rows = [
        (a["car_id"], a["battery_id"], a["severity"], f"{a['failure_probability_30d']:.2f}",
         "" if a["days_to_rated_life"] is None else f"{a['days_to_rated_life']:g}",
         a["created_at"].replace("T", " ")[:16], a["rated_life_reached"] or "not within the simulation", a["message"])
        for a in shown_alerts
    ]  # fmt: skip
    lines += [
        "## Alerts received by the simulated head units", "",
        _markdown_table(["car", "battery", "severity", "probability", "days to rated life", "sent at (UTC)",
                         "truth: rated life reached", "message"], rows) if rows else "None.",
        "",
    ]  # fmt: skip
    if len(summary["head_units"]) > SHOWN_ALERTS:
        lines += [f"… and {len(summary['head_units']) - SHOWN_ALERTS} more in summary.json.", ""]
    counters = _markdown_table(["instrument", "value"], counter_rows(summary["counters"]))
    lines += ["## Counters", "", "What the app's OpenTelemetry instruments recorded (in Azure: Application Insights "
              "customMetrics, by these names).", "", counters, ""]  # fmt: skip
    lines += ["## Timings", "", _markdown_table(["step", "seconds"], list(summary["timings_s"].items())), ""]
    lines += ["## The model", "",
              "Also in model_report.md; the training run is in MLflow: `mlflow ui --backend-store-uri "
              f"{summary['local_services']['mlflow_tracking_uri']}`.", "", _demote_headings(model_report)]  # fmt: skip
    return "\n".join(lines)


def counter_rows(counters: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One row per counter (its total) and per histogram and attribute set (count, mean and max)."""
    rows = []
    for name, value in sorted(counters.items()):
        if not isinstance(value, list):
            rows.append((f"`{name}`", f"{value:,}"))
            continue
        for point in value:
            labels = ", ".join(f"{key}={label}" for key, label in point["attributes"].items())
            mean = point["sum"] / point["count"] if point["count"] else 0
            rows.append((f"`{name}`" + (f" ({labels})" if labels else ""),
                         f"{point['count']:,} recorded, mean {mean:,.1f}, max {point['max']:,.1f}"))  # fmt: skip
    return rows


def _markdown_table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _demote_headings(markdown: str) -> str:
    """Headings two levels down, so an included report nests under this summary's sections."""
    return "\n".join(f"##{line}" if line.startswith("#") else line for line in markdown.splitlines())
