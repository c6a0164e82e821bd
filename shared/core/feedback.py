"""Head-unit feedback: what an owner did with an alert, and what that means for the next alerts.

Pure functions, no I/O. The request body is the contract of docs/contracts.md ("Head-unit feedback"):
{"action": "seen" | "dismissed" | "snoozed" | "service_booked", "at": ISO time, "snooze_until": ISO time
(snoozed), "booking_ref": optional, "service_at": optional ISO time of the booked appointment}.

What an action means for later alerts of the same battery (`feedback_hold`):
- seen stops nothing (it is recorded, for the lifecycle and the precision figures);
- dismissed holds back alerts of that battery no more severe than the one dismissed;
- snoozed holds back non-critical alerts until `snooze_until`;
- service_booked holds back every alert of that battery until the appointment (`service_at`, else `at`)
  plus a grace period, so an owner who booked is not nagged while the garage does its job, and is
  reminded if the battery was still not replaced after it.
The battery's feedback is kept per battery, not per alert: tomorrow's alert has a new alert_id (a new day)
but the owner's answer was about the battery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from shared.core import json_text
from shared.core.alerts import CRITICAL, SEVERITY_RANK, iso_utc, parse_iso_utc
from shared.core.telemetry import BATTERY_ID, CAR_ID, DATE, InputError

SEEN = "seen"
DISMISSED = "dismissed"
SNOOZED = "snoozed"
SERVICE_BOOKED = "service_booked"
ACTIONS = (SEEN, DISMISSED, SNOOZED, SERVICE_BOOKED)
MAX_BOOKING_REF_LENGTH = 128
# The furthest ahead a snooze or an appointment may be: further is a head unit's bug, not an owner's plan.
MAX_AHEAD = timedelta(days=366)
_FIELDS = frozenset({"action", "at", "snooze_until", "booking_ref", "service_at"})


@dataclass(frozen=True)
class Feedback:
    """One validated feedback request."""

    action: str
    at: datetime
    snooze_until: datetime | None = None
    booking_ref: str | None = None
    service_at: datetime | None = None


@dataclass(frozen=True)
class BatteryFeedback:
    """What a car's owner has said about one battery so far, as far as later alerts care.

    `dismissed_severity`: the most severe alert dismissed (None: none); `snoozed_until`, `service_at`
    (the appointment): None when never snoozed or booked. `replaced_by` is the Battery_ID that telemetry
    later showed on the car instead (the outcome label), None while the battery is still in the car.
    """

    battery_id: str
    dismissed_severity: str | None = None
    snoozed_until: datetime | None = None
    service_at: datetime | None = None
    booking_ref: str | None = None
    replaced_by: str | None = None


@dataclass(frozen=True)
class Hold:
    """Why an alert is held back by feedback: `code` (the action) for summaries, `detail` for the record."""

    code: str
    detail: str


def parse_feedback(body: bytes) -> Feedback:
    """The feedback in a request body, or `InputError` naming the field that is wrong."""
    document = json_text.loads(body, "body")
    if not isinstance(document, dict):
        raise InputError(f"body must be a JSON object, got a JSON {type(document).__name__}")
    unknown = sorted(set(document) - _FIELDS)
    if unknown:
        raise InputError(f"unknown field(s): {', '.join(unknown)}")
    action = document.get("action")
    if action not in ACTIONS:
        raise InputError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    at = _time(document, "at", required=True)
    snooze_until = _time(document, "snooze_until", required=action == SNOOZED)
    service_at = _time(document, "service_at", required=False)
    booking_ref = document.get("booking_ref")
    if booking_ref is not None and not (isinstance(booking_ref, str) and booking_ref.strip()
                                        and len(booking_ref) <= MAX_BOOKING_REF_LENGTH):  # fmt: skip
        raise InputError(f"booking_ref must be a non-empty string of at most {MAX_BOOKING_REF_LENGTH} characters")
    for name, value in (("snooze_until", snooze_until), ("service_at", service_at)):
        if value is not None and not at <= value <= at + MAX_AHEAD:
            raise InputError(f"{name} must be between at and {MAX_AHEAD.days} days after it, got {iso_utc(value)}")
    if action != SNOOZED and snooze_until is not None:
        raise InputError("snooze_until is only for action snoozed")
    if action != SERVICE_BOOKED and (booking_ref is not None or service_at is not None):
        raise InputError("booking_ref and service_at are only for action service_booked")
    return Feedback(action, at, snooze_until, booking_ref, service_at)


def alert_changes(recorded: Mapping[str, Any], feedback: Feedback) -> dict[str, str]:
    """The alert row's properties that `feedback` sets, given the row as `recorded`; empty when it changes
    nothing (the same action again: a retry, a replay within the tolerance, a second tap).

    seen and dismissed keep their first time; a snooze to a new time or a booking with a new reference or
    appointment replaces the previous one (the owner changed their plan).
    """
    at = iso_utc(feedback.at)
    if feedback.action == SEEN:
        return {} if recorded.get("SeenAt") else {"SeenAt": at}
    if feedback.action == DISMISSED:
        return {} if recorded.get("DismissedAt") else {"DismissedAt": at}
    if feedback.action == SNOOZED:
        until = iso_utc(feedback.snooze_until)  # type: ignore[arg-type]  # parse_feedback requires it
        return {} if recorded.get("SnoozedUntil") == until else {"SnoozedAt": at, "SnoozedUntil": until}
    booking = {"BookingRef": feedback.booking_ref or "", "ServiceAt": iso_utc(feedback.service_at or feedback.at)}
    if recorded.get("BookedAt") and all(recorded.get(name, "") == value for name, value in booking.items()):
        return {}
    return {"BookedAt": at} | booking


def with_feedback(battery: BatteryFeedback, feedback: Feedback, severity: str) -> BatteryFeedback:
    """The battery's feedback after `feedback` on one of its alerts, of `severity`."""
    if feedback.action == DISMISSED:
        previous = battery.dismissed_severity
        if previous is None or SEVERITY_RANK[severity] > SEVERITY_RANK[previous]:
            return replace(battery, dismissed_severity=severity)
        return battery
    if feedback.action == SNOOZED:
        return replace(battery, snoozed_until=feedback.snooze_until)
    if feedback.action == SERVICE_BOOKED:
        return replace(battery, service_at=feedback.service_at or feedback.at, booking_ref=feedback.booking_ref)
    return battery


def feedback_hold(
    alert: Mapping[str, Any], battery: BatteryFeedback | None, now: datetime, booking_grace: timedelta
) -> Hold | None:
    """Whether the owner's feedback on this battery holds `alert` back now (a `Hold`), or not (None).

    Only the alert's own battery counts: a replacement battery starts with a clean slate.
    """
    if battery is None or battery.battery_id != alert["battery_id"]:
        return None
    if battery.service_at is not None and now < battery.service_at + booking_grace:
        until = iso_utc(battery.service_at + booking_grace)
        return Hold(SERVICE_BOOKED, f"service booked ({battery.booking_ref or 'no reference'}); quiet until {until}")
    if battery.snoozed_until is not None and now < battery.snoozed_until and alert["severity"] != CRITICAL:
        return Hold(SNOOZED, f"snoozed until {iso_utc(battery.snoozed_until)}; only a critical alert passes")
    dismissed = battery.dismissed_severity
    if dismissed is not None and SEVERITY_RANK[alert["severity"]] <= SEVERITY_RANK[dismissed]:
        return Hold(DISMISSED, f"a {dismissed} alert was dismissed; only a more severe one passes")
    return None


def batteries_in_cars(telemetry: pd.DataFrame) -> dict[str, str]:
    """Car_ID → the Battery_ID of the car's newest record in `telemetry` (the battery in it now, as far as
    these records tell), for the replacement labels. Vectorised: one sort, however many cars."""
    newest = telemetry.sort_values(DATE, kind="stable").drop_duplicates(CAR_ID, keep="last")
    return dict(zip(newest[CAR_ID].astype(str), newest[BATTERY_ID].astype(str), strict=True))


def _time(document: Mapping[str, Any], name: str, required: bool) -> datetime | None:
    """An ISO time with a zone (e.g. 2017-03-20T08:15:00Z), as aware UTC, or `InputError` naming `name`."""
    value = document.get(name)
    if value is None:
        if required:
            raise InputError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InputError(f"{name} must be an ISO time string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{name} must be an ISO time like 2017-03-20T08:15:00Z, got {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise InputError(f"{name} must say its time zone (e.g. Z), got {value[:40]!r}")
    return parse_iso_utc(iso_utc(moment))  # whole seconds in UTC, as every stored time
