"""The operations dashboard (GET /api/dashboard, `?car=<Car_ID>` for one car): reads the stores, renders the page.

What it reads, and why it stays fast with 100,000 cars: the alert rows of the last ALERT_WINDOW_DAYS with
five properties projected (the alert store), the dead-letter documents of those days, the parked and
poison counts, the newest nightly scores file with seven columns decoded, the car segments blob and the
monitor's history, those reads overlapped (they are independent round trips). The
fleet's raw telemetry is never read; a car lookup reads CAR_TELEMETRY_DAYS days of the archive.

Bad input: an id no car can have is an `InputError` (the function answers 400 with the reason) before any
storage call; a car no store knows gets the page saying so with 404; an empty deployment renders every
section as "no data yet".
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pandas as pd
from azure.core.exceptions import ResourceNotFoundError

from shared.adapters import alert_store, monitor_store
from shared.adapters.archive import dead_letter_names, dead_lettered_events, read_archive
from shared.adapters.registry import ModelRegistry
from shared.adapters.score_store import LatestScores, latest_scores
from shared.adapters.storage import list_blob_names, queue_length
from shared.bootstrap import Services
from shared.config.names import ALERT_POISON_QUEUE, ALERTS_TABLE, PARKED_CONTAINER
from shared.core.alerts import check_id
from shared.core.dashboard import DeliveryHealth, alert_state_counts, car_history_days
from shared.core.dashboard_page import (
    CarView,
    FleetView,
    LookupForm,
    MonitorView,
    render_car,
    render_fleet,
    render_unknown_car,
)
from shared.core.monitoring import FORECAST
from shared.core.risk import DAYS_TO_RATED_LIFE, PROBABILITY
from shared.core.telemetry import BATTERY_ID, CAR_ID, COLUMNS, LIFETIME_CYCLES, RATED_CYCLES
from shared.handlers.alerts import ALERTS_DEADLETTER_PREFIX
from shared.handlers.telemetry import PARKED_DEADLETTER_PREFIX, PARKED_PREFIX, SCORING_ERRORS_PREFIX

ALERT_WINDOW_DAYS = 30  # the alert and delivery sections cover the alerts created in these days
MONITOR_DAYS = 120  # matured accuracy and drift of the scored days this far back
CAR_TELEMETRY_DAYS = 14  # a car lookup shows this many days of its telemetry
SCORE_COLUMNS = [BATTERY_ID, CAR_ID, PROBABILITY, DAYS_TO_RATED_LIFE, LIFETIME_CYCLES, RATED_CYCLES, "alert"]


@dataclass(frozen=True)
class DashboardPage:
    """The page and the HTTP status it goes with (200, or 404 for an unknown car)."""

    status: int
    html: str


def dashboard_page(services: Services, car: str | None = None, lookup: LookupForm | None = None) -> DashboardPage:
    """The fleet page, or with `car` that car's page; `lookup` says where the page's lookup form submits.

    Raises `InputError` for a car id no car can have (`check_id`), before reading anything.
    """
    lookup = lookup or LookupForm()
    if car is not None:
        return _car_page(services, check_id(car, "car"), lookup)
    now = services.clock()
    since = now - timedelta(days=ALERT_WINDOW_DAYS)
    days, monitored_since = (since.date(), now.date()), (now - timedelta(days=MONITOR_DAYS)).date()
    blobs, dead_letters = services.blobs, lambda prefix: len(dead_letter_names(services.blobs, prefix, *days))
    reads = {  # independent round trips to three services: overlapped, so the page waits for the slowest
        "alerts": lambda: alert_store.read_alert_rows(services.tables.get_table_client(ALERTS_TABLE), since),
        "poisoned": lambda: queue_length(services.queues, ALERT_POISON_QUEUE),
        "dead_lettered": lambda: dead_lettered_events(blobs, *days),
        "alert_messages": lambda: dead_letters(ALERTS_DEADLETTER_PREFIX),
        "scoring_errors": lambda: dead_letters(SCORING_ERRORS_PREFIX),
        "parked_dead_lettered": lambda: dead_letters(PARKED_DEADLETTER_PREFIX),
        "parked": lambda: len(list_blob_names(blobs.get_container_client(PARKED_CONTAINER), PARKED_PREFIX)),
        "scores": lambda: _latest_scores(services),
        "segments": lambda: monitor_store.read_car_segments(blobs),
        "accuracy": lambda: monitor_store.read_accuracy(blobs, first=monitored_since),
        "drift": lambda: monitor_store.read_drift(blobs, first=monitored_since),
        "retrain": lambda: monitor_store.read_retrain_decisions(blobs),
    }
    with ThreadPoolExecutor(len(reads)) as pool:
        futures = {name: pool.submit(read) for name, read in reads.items()}
        read = {name: future.result() for name, future in futures.items()}
    alerts, scores = read["alerts"], read["scores"]
    delivery = DeliveryHealth(
        alert_states=alert_state_counts(alerts), poisoned_messages=read["poisoned"],
        dead_lettered_events=read["dead_lettered"], dead_lettered_alert_messages=read["alert_messages"],
        scoring_error_batches=read["scoring_errors"], dead_lettered_parked=read["parked_dead_lettered"],
        parked_batches=read["parked"],
    )  # fmt: skip
    view = FleetView(
        generated_at=now.isoformat(timespec="seconds"),
        alert_days=(f"{since:%Y-%m-%d}", f"{now:%Y-%m-%d}"),
        alerts=alerts,
        delivery=delivery,
        scores=None if scores is None else scores.scores,
        scores_day=None if scores is None else scores.day,
        model_version=None if scores is None else scores.model_version,
        segments=read["segments"],
        monitor=MonitorView(accuracy=read["accuracy"], drift=read["drift"], retrain=read["retrain"]),
        lookup=lookup,
    )
    return DashboardPage(200, render_fleet(view))


def _car_page(services: Services, car_id: str, lookup: LookupForm) -> DashboardPage:
    now = services.clock()
    first, last = car_history_days(now.date(), CAR_TELEMETRY_DAYS)
    telemetry = read_archive(services.blobs, first, last, columns=COLUMNS, car_id=car_id).frame
    scores = _latest_scores(services, car_id)
    car_scores = scores.scores if scores is not None else pd.DataFrame(columns=SCORE_COLUMNS)
    try:
        alerts = alert_store.list_alerts(services.tables.get_table_client(ALERTS_TABLE), car_id)
    except ResourceNotFoundError:  # no alerts table yet
        alerts = []
    segments = monitor_store.read_car_segments(services.blobs)
    generated = now.isoformat(timespec="seconds")
    if telemetry.empty and car_scores.empty and not alerts and not (segments[CAR_ID] == car_id).any():
        scores_where = f"the scores of {scores.day}" if scores is not None else "no scores yet"
        searched = (
            f"no telemetry from {first} to {last}, not in {scores_where}, no alerts, "
            "and not in the car table's segments"
        )
        return DashboardPage(404, render_unknown_car(car_id, generated, lookup, searched))
    view = CarView(
        car_id=car_id,
        generated_at=generated,
        telemetry=telemetry,
        telemetry_days=(str(first), str(last)),
        scores=car_scores,
        scores_day=None if scores is None else scores.day,
        alerts=alerts,
        lookup=lookup,
    )
    return DashboardPage(200, render_car(view))


def _latest_scores(services: Services, car_id: str | None = None) -> LatestScores | None:
    """The newest champion scores: the fleet's shown columns, or one car's rows with their forecast."""
    champion = ModelRegistry(services.blobs).champion_version()
    columns = SCORE_COLUMNS if car_id is None else [*SCORE_COLUMNS, FORECAST]
    return latest_scores(services.blobs, columns, champion, car_id=car_id)
