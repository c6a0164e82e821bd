"""The alert's lifecycle rules: expiry, supersession, retraction, quiet hours. Pure functions, no I/O.

An alert is about a battery on a day; by the time the queue hands it to `push_alert` the world may have
moved on. These rules decide, from the alert, what the store knows and the clock, whether it still goes:

- *expired*: not delivered within ALERT_EXPIRY_HOURS of its `created_at` (news that late is noise);
- *superseded*: a newer alert for the same battery and type was queued since (only the newer goes);
- *retracted*: the car's telemetry shows the battery was replaced (a new Battery_ID) or its
  Lifetime_Cycles_Used counter was reset after the alert was made (a delivered one is *resolved*);
- *held*: a non-critical alert meeting the car's quiet hours, in the car's local time, waits until
  they end (critical ones never wait).

Every decision comes with a reason in words, kept with the alert's record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from shared.core.alerts import CRITICAL, iso_utc, parse_iso_utc
from shared.core.telemetry import AGE_DAYS, BATTERY_ID, CAR_ID, DATE, LIFETIME_CYCLES

EXPIRED = "expired"
SUPERSEDED = "superseded"
RETRACTED = "retracted"
RESOLVED = "resolved"
HELD = "held"
# The states an alert never leaves: nothing delivers it afterwards.
ENDED = frozenset({EXPIRED, SUPERSEDED, RETRACTED, RESOLVED})

REPLACED = "replaced"
# A reported age may be a day off the battery's calendar (shared/core/preparation.py), not more.
AGE_TOLERANCE_DAYS = 1
COUNTER_RESET = "counter_reset"

# A car's time zone when its car table row names none, by Region (the fleet simulator's regions).
REGION_TIME_ZONES = {
    "Atlantic": "America/New_York",
    "Continental": "Europe/Berlin",
    "Mediterranean": "Europe/Rome",
    "Desert": "America/Phoenix",
    "Nordic": "Europe/Stockholm",
}
DEFAULT_TIME_ZONE = "UTC"
# Azure Queue storage hides a message for at most 7 days.
MAX_VISIBILITY = timedelta(days=7)


def time_zone_for(zone: object, region: object) -> str:
    """The IANA zone of a car: `zone` if it names one, else its Region's (REGION_TIME_ZONES), else UTC.
    A `zone` that names no zone raises `ValueError` naming it (a typo must not move a car's night)."""
    if isinstance(zone, str) and zone.strip():
        name = zone.strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time zone {name!r} is not an IANA zone (e.g. Europe/Berlin)") from None
        return name
    return REGION_TIME_ZONES.get(region, DEFAULT_TIME_ZONE) if isinstance(region, str) else DEFAULT_TIME_ZONE


@dataclass(frozen=True)
class QuietHours:
    """A daily window of local time, `start` inclusive to `end` exclusive; it crosses midnight when start > end."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """ "22:00-07:00" → QuietHours(22:00, 07:00); `ValueError` saying what is wrong."""
        parts = text.strip().split("-")
        try:
            start, end = (time.fromisoformat(part.strip()) for part in parts)
        except ValueError:
            raise ValueError(f"must be HH:MM-HH:MM (e.g. 22:00-07:00), got {text!r}") from None
        if start == end:
            raise ValueError(f"must not start and end at the same time, got {text!r}")
        return cls(start, end)

    def release(self, now: datetime, zone: str) -> datetime | None:
        """When the window containing `now` (aware) ends, as UTC, in the local time of `zone`; None when
        `now` is outside it. Computed on the local calendar, so a day boundary and DST changes fall right."""
        local = now.astimezone(ZoneInfo(zone))
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside, end_day = self.start <= clock < self.end, local.date()
        else:  # across midnight: the evening part ends tomorrow, the morning part today
            inside = clock >= self.start or clock < self.end
            end_day = local.date() + timedelta(days=1) if clock >= self.start else local.date()
        if not inside:
            return None
        return datetime.combine(end_day, self.end, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def expiry_reason(alert: Mapping[str, Any], expiry: timedelta, now: datetime) -> str | None:
    """Why `alert` is expired at `now` (not delivered within `expiry` of its created_at), or None."""
    deadline = parse_iso_utc(alert["created_at"]) + expiry
    if now < deadline:
        return None
    hours = expiry.total_seconds() / 3600
    return f"not delivered within {hours:g} h of {alert['created_at']} (expired {iso_utc(deadline)})"


def supersession_reason(alert: Mapping[str, Any], newest: Mapping[str, str] | None) -> str | None:
    """Why `alert` is superseded by `newest` (the newest alert queued for its car, battery and type: keys
    alert_id, created_at), or None: it is, when that is another alert made later."""
    if newest is None or newest["alert_id"] == alert["alert_id"] or newest["created_at"] <= alert["created_at"]:
        return None
    return f"superseded by alert {newest['alert_id']} for battery {alert['battery_id']}, made {newest['created_at']}"


@dataclass(frozen=True)
class InstalledBattery:
    """What telemetry last showed in a car: the battery, its age and lifetime counter on `day` (YYYY-MM-DD),
    and `since` (iso_utc), when the app saw it replaced or reset, and why (`change`; both "" when it was
    simply the first seen)."""

    battery_id: str
    age_days: float
    lifetime: float
    day: str
    since: str = ""
    change: str = ""


@dataclass(frozen=True)
class BatteryChange:
    """A battery replaced in a car, or its counter reset (`kind`), seen in telemetry; `reason` in words."""

    car_id: str
    old_battery: str
    new_battery: str
    kind: str
    reason: str


def newest_batteries(telemetry: pd.DataFrame) -> dict[str, InstalledBattery]:
    """Car_ID → the battery of the car's newest record in `telemetry` (as the car sent it, not prepared:
    preparation renames a battery reset under its id), with its age, counter and day. One sort, however
    many cars."""
    newest = telemetry.sort_values(DATE, kind="stable").drop_duplicates(CAR_ID, keep="last")
    days = pd.to_datetime(newest[DATE]).dt.strftime("%Y-%m-%d")
    columns = zip(newest[CAR_ID], newest[BATTERY_ID], newest[AGE_DAYS], newest[LIFETIME_CYCLES], days, strict=True)
    return {str(car): InstalledBattery(str(battery), float(age), float(lifetime), day)
            for car, battery, age, lifetime, day in columns}  # fmt: skip


def battery_change(car_id: str, known: InstalledBattery | None, seen: InstalledBattery) -> BatteryChange | None:
    """The change `seen` (a newer record than `known`) shows, or None. On the same battery, a counter that
    went down *with* the battery's age is a reset (the counter only grows; a counter going down alone is a
    glitch, a reading of 0 or after a spike, which preparation repairs); an older record shows nothing."""
    if known is None or seen.day < known.day:
        return None
    if seen.battery_id != known.battery_id:
        return BatteryChange(
            car_id,
            known.battery_id,
            seen.battery_id,
            REPLACED,
            f"battery {known.battery_id} replaced by {seen.battery_id} (telemetry of {seen.day})",
        )
    if seen.lifetime < known.lifetime and seen.age_days < known.age_days - AGE_TOLERANCE_DAYS:
        return BatteryChange(car_id, known.battery_id, seen.battery_id, COUNTER_RESET,
                             f"battery {seen.battery_id}'s Lifetime_Cycles_Used reset from {known.lifetime:g} to "
                             f"{seen.lifetime:g} (telemetry of {seen.day})")  # fmt: skip
    return None


def retraction_reason(alert: Mapping[str, Any], installed: InstalledBattery | None) -> str | None:
    """Why `alert` is retracted given the car's installed battery, or None: it is about another battery, or
    was made before its battery's counter was reset."""
    if installed is None:
        return None
    if alert["battery_id"] != installed.battery_id:
        return installed.change or f"battery {alert['battery_id']} is no longer in the car (now {installed.battery_id})"
    if installed.since and alert["created_at"] < installed.since:
        return installed.change
    return None


def may_be_held(alert: Mapping[str, Any]) -> bool:
    """Whether quiet hours may hold `alert`: any but a critical one (an owner must hear that at once)."""
    return alert["severity"] != CRITICAL
