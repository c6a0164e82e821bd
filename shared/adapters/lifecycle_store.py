"""What the alert lifecycle (shared/core/lifecycle.py) reads and writes beside the alert rows.

In the alerts table, in each car's partition (so `list_alerts`, which reads Kind "alert", never sees them):
- a *newest row* per alert type and battery (RowKey "newest-<type>-<battery hash>"): the newest alert
  queued for it (AlertId, CreatedAt), written when alerts are queued and read when one is dequeued, so
  an older alert still on the queue knows it was superseded;
- an *installed row* (RowKey "installed-battery"): the battery the car's newest telemetry shows, its
  lifetime counter and day, and since when (a replacement or reset seen), written by both scoring paths.

In the cars table (the car profiles' table, one row per car, RowKey "profile"): the car's `TimeZone`, an
IANA name, merged into the row from the car table (its optional `time_zone` column, else its Region's
zone), read when a non-critical alert meets quiet hours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from shared.adapters import alert_store
from shared.adapters.storage import read_rows
from shared.config.names import CARS_TABLE
from shared.core.alerts import check_id, iso_utc
from shared.core.lifecycle import (
    DEFAULT_TIME_ZONE,
    REPLACED,
    RETRACTED,
    BatteryChange,
    InstalledBattery,
    battery_change,
    time_zone_for,
)
from shared.core.telemetry import CAR_ID, InputError

TIME_ZONE = "time_zone"  # the car table's optional column
_PROFILE_ROW = "profile"
_INSTALLED_ROW = "installed-battery"


def record_queued_alerts(table: TableClient, alerts: Iterable[Mapping[str, Any]]) -> None:
    """Make each alert the newest queued for its car, type and battery, unless a newer one is recorded.
    Read-compare-write under the row's ETag, again if another producer wrote between."""
    for alert in alerts:
        entity = {"PartitionKey": check_id(alert["car_id"], "car_id"), "RowKey": _newest_key(alert),
                  "Kind": "newest", "AlertId": alert["alert_id"], "CreatedAt": alert["created_at"]}  # fmt: skip
        while True:
            try:
                current = table.get_entity(entity["PartitionKey"], entity["RowKey"])
            except ResourceNotFoundError:
                try:
                    table.create_entity(entity)
                    break
                except ResourceExistsError:
                    continue
            if current["CreatedAt"] >= entity["CreatedAt"]:
                break
            if alert_store.update_if_unchanged(table, entity, current, UpdateMode.REPLACE):
                break


def read_newest_queued(table: TableClient, alert: Mapping[str, Any]) -> dict[str, str] | None:
    """The newest alert queued for `alert`'s car, type and battery (alert_id, created_at), or None."""
    try:
        row = table.get_entity(check_id(alert["car_id"], "car_id"), _newest_key(alert))
    except ResourceNotFoundError:
        return None
    return {"alert_id": row["AlertId"], "created_at": row["CreatedAt"]}


def read_installed(table: TableClient, car_id: str) -> InstalledBattery | None:
    """The battery the car's newest telemetry shows, or None before any."""
    return read_installed_many(table, [car_id]).get(car_id)


def read_installed_many(table: TableClient, car_ids: Iterable[str]) -> dict[str, InstalledBattery]:
    """The battery each car's newest telemetry shows, of the cars that have one (`read_rows`: the nightly's
    whole fleet in pages, a streaming batch's cars in point reads)."""
    rows = read_rows(table, (check_id(car, "car_id") for car in car_ids), _INSTALLED_ROW)
    return {car: InstalledBattery(row["BatteryId"], float(row["AgeDays"]), float(row["Lifetime"]), row["Day"],
                                  row.get("Since", ""), row.get("Change", ""))
            for car, row in rows.items()}  # fmt: skip


def record_batteries(table: TableClient, seen: Mapping[str, InstalledBattery], now: datetime) -> list[BatteryChange]:
    """Note the battery each car's newest telemetry shows (`seen`, from `newest_batteries`); for every car
    whose battery was replaced or reset, retract its undelivered alerts for the old battery and resolve the
    delivered ones (`retract_alerts`). The changes seen. One read of every car's row, a write when it moved on."""
    changes = []
    installed = read_installed_many(table, seen)
    for car, battery in seen.items():
        known = installed.get(car)
        if known is not None and battery.day < known.day:
            continue
        change = battery_change(car, known, battery)
        if change:
            since, why = iso_utc(now), change.reason
        else:  # the same battery as before (or the first seen): its last change stands
            since, why = (known.since, known.change) if known else ("", "")
        noted = InstalledBattery(battery.battery_id, battery.age_days, battery.lifetime, battery.day, since, why)
        if known == noted:
            continue
        table.upsert_entity({"PartitionKey": check_id(car, "car_id"), "RowKey": _INSTALLED_ROW, "Kind": "installed",
                             "BatteryId": battery.battery_id, "AgeDays": battery.age_days,
                             "Lifetime": battery.lifetime, "Day": battery.day, "Since": since,
                             "Change": why}, mode=UpdateMode.REPLACE)  # fmt: skip
        if change:
            retract_alerts(table, change, now)
            changes.append(change)
    return changes


def retract_alerts(table: TableClient, change: BatteryChange, now: datetime) -> dict[str, int]:
    """Retract the car's undelivered alerts about `change.old_battery` (made before `now`, for a reset) and
    resolve its delivered ones, each with the change's reason; counts by new state."""
    counts = {RETRACTED: 0, alert_store.RESOLVED: 0}
    query = "PartitionKey eq @car and Kind eq 'alert' and BatteryId eq @battery"
    for row in table.query_entities(query, parameters={"car": change.car_id, "battery": change.old_battery}):
        if change.kind != REPLACED and row["CreatedAt"] >= iso_utc(now):
            continue  # made after the reset: about the counter as it is now
        alert = alert_store.get_alert(table, change.car_id, row["RowKey"])
        if row["State"] == alert_store.DELIVERED:
            counts[alert_store.RESOLVED] += alert_store.resolve_delivered(table, change.car_id, row["RowKey"],
                                                                           change.reason, now)  # fmt: skip
        elif row["State"] not in alert_store.FINAL_STATES:
            counts[RETRACTED] += alert_store.record_lifecycle(table, alert, RETRACTED, change.reason, now)
    return counts


def write_time_zones(tables: TableServiceClient, cars: pd.DataFrame) -> int:
    """Merge each car's `TimeZone` into its profile row of the cars table from the car table (`time_zone`
    column, else Region's zone); the number written. A zone that is not an IANA name is refused
    (`InputError` naming the car) before anything is written."""
    zones = {}
    for _, car in cars.iterrows():
        try:
            zones[str(car[CAR_ID])] = time_zone_for(car.get(TIME_ZONE), car.get("Region"))
        except ValueError as error:
            raise InputError(f"car table: car {car[CAR_ID]}: column {TIME_ZONE}: {error}") from None
    table = tables.create_table_if_not_exists(CARS_TABLE)
    for car, zone in zones.items():
        table.upsert_entity({"PartitionKey": check_id(car, CAR_ID), "RowKey": _PROFILE_ROW, "TimeZone": zone},
                            mode=UpdateMode.MERGE)  # fmt: skip
    return len(zones)


def read_time_zone(tables: TableServiceClient, car_id: str) -> str:
    """The car's IANA time zone from its profile row; UTC for a car the car table does not know."""
    try:
        row = tables.get_table_client(CARS_TABLE).get_entity(check_id(car_id, CAR_ID), _PROFILE_ROW)
    except ResourceNotFoundError:  # no row for the car, or no table yet
        return DEFAULT_TIME_ZONE
    return row.get("TimeZone") or DEFAULT_TIME_ZONE


def _newest_key(alert: Mapping[str, Any]) -> str:
    """The newest row's RowKey: the battery id hashed, as a Battery_ID may hold what keys cannot."""
    battery = hashlib.sha256(str(alert["battery_id"]).encode("utf-8")).hexdigest()[:32]
    return f"newest-{alert['type']}-{battery}"
