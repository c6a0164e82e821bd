"""The alert lifecycle where the functions meet it: alerts queued, telemetry seen, an alert dequeued.

- `alerts_of_scores`: the alerts a scoring path queues, each in its car's language (all three paths);
- `note_queued`: every alert a function queues becomes the newest queued for its battery (supersession);
- `note_batteries`: both scoring paths tell the store which battery each car's newest telemetry shows, so
  a replacement or counter reset retracts the old battery's undelivered alerts and resolves delivered ones;
- `stop_or_hold`: before `push_alert`, an alert that is retracted, superseded or expired is recorded so and
  not sent; a non-critical one in its car's quiet hours is recorded held until they end, and the caller
  puts it back on the queue hidden until then (data on the queue, not a sleep: it survives restarts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from azure.data.tables import TableClient

from shared.adapters import alert_store, lifecycle_store
from shared.adapters.car_profiles import read_locales
from shared.bootstrap import Services
from shared.core.alerts import PROBABILITY, alerts_from_scores, iso_utc, validate_alert
from shared.core.lifecycle import (
    EXPIRED,
    HELD,
    RETRACTED,
    SUPERSEDED,
    QuietHours,
    expiry_reason,
    may_be_held,
    newest_batteries,
    retraction_reason,
    supersession_reason,
)
from shared.core.telemetry import CAR_ID


@dataclass(frozen=True)
class Stopped:
    """Why an alert is not sent now: `state` (retracted, superseded, expired, held), `reason`, and for a held
    one `release_at`, when its car's quiet hours end."""

    state: str
    reason: str
    release_at: datetime | None = None


def alerts_of_scores(services: Services, scores: pd.DataFrame, now: datetime,
                     model_version: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The alerts of `scores` over the alert threshold (`alerts_from_scores`), each in its car's language:
    only the alerted cars' profiles are read."""
    settings = services.settings
    alerted = pd.to_numeric(scores[PROBABILITY], errors="coerce") >= settings.alert_probability_threshold
    locales = read_locales(services.tables, scores.loc[alerted, CAR_ID].astype(str))
    return alerts_from_scores(scores, settings.alert_probability_threshold, now, settings.service_booking_url,
                              model_version=model_version, car_locales=locales)  # fmt: skip


def note_queued(services: Services, alerts: Iterable[Mapping[str, Any]]) -> None:
    """Record the alerts a function is queueing as the newest of their batteries."""
    queued = list(alerts)
    if queued:
        lifecycle_store.record_queued_alerts(alert_store.alerts_table(services.tables), queued)


def note_batteries(services: Services, telemetry: pd.DataFrame, now: datetime) -> int:
    """Record the battery each car's newest record in `telemetry` shows (records as the cars sent them);
    retract and resolve the alerts of batteries replaced or reset. How many cars changed battery."""
    if telemetry.empty:
        return 0
    table = alert_store.alerts_table(services.tables)
    return len(lifecycle_store.record_batteries(table, newest_batteries(telemetry), now))


def stop_or_hold(services: Services, table: TableClient, alert: Mapping[str, Any], now: datetime) -> Stopped | None:
    """Whether `alert` (just dequeued) is not to be sent now, recorded with its reason; None to send it.

    In order: retracted (its battery left the car, or was reset after it was made), superseded, expired,
    held for quiet hours (non-critical only). An alert whose row is final or being delivered is left to
    `push_alert` (None), which knows what to do with it. `InputError` for a malformed alert.
    """
    validate_alert(alert)
    settings = services.settings
    checks = (
        (RETRACTED, lambda: retraction_reason(alert, lifecycle_store.read_installed(table, alert["car_id"]))),
        (SUPERSEDED, lambda: supersession_reason(alert, lifecycle_store.read_newest_queued(table, alert))),
        (EXPIRED, lambda: expiry_reason(alert, timedelta(hours=settings.alert_expiry_hours), now)),
    )
    for state, reason_of in checks:
        reason = reason_of()
        if reason is not None:
            return Stopped(state, reason) if alert_store.record_lifecycle(table, alert, state, reason, now) else None
    if not settings.quiet_hours or not may_be_held(alert):
        return None
    zone = lifecycle_store.read_time_zone(services.tables, alert["car_id"])
    release = QuietHours.parse(settings.quiet_hours).release(now, zone)
    if release is None:
        return None
    reason = f"quiet hours {settings.quiet_hours} in {zone}: held until {iso_utc(release)}"
    return Stopped(HELD, reason, release) if alert_store.record_lifecycle(table, alert, HELD, reason, now,
                                                                           release_at=release) else None  # fmt: skip
