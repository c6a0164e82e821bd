"""Feedback store: what head units answered about their alerts, in the alerts table beside the alerts.

Two places, both in the car's partition (so one entity-group transaction writes them together):
- the *alert row* (shared/adapters/alert_store.py) takes the action's times: SeenAt, DismissedAt,
  SnoozedAt/SnoozedUntil, BookedAt/BookingRef/ServiceAt. That is the alert's lifecycle for staff;
- a *battery feedback row* per car, alert type and battery (RowKey "feedback-<type>-<hash of the
  battery>"): what the owner said about the battery so far (`BatteryFeedback`), read with one point read by
  `push_alert` for every later alert of that battery, whichever path (nightly batch or streaming) made
  it. It is also the outcome label: ReplacedBy/ReplacedAt are set when telemetry shows a new Battery_ID on
  the car (`record_replacements`), so alert → booked → replaced can be counted against what owners did.
  The labels still open are listed in one partition of their own table ("alertlabels", `open_labels`), so
  finding them costs what the open labels cost, not a scan of every car's alert history.

Both writes are guarded by the ETags they were decided on; a concurrent answer for the same car makes
the transaction fail, and it is decided again on what is there now.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from shared.adapters import alert_store
from shared.adapters.tables import EntityWrite, TransactionFailed, submit_writes
from shared.config.names import ALERTS_TABLE, OPEN_LABELS_TABLE
from shared.core.alerts import check_id, iso_utc, parse_iso_utc
from shared.core.feedback import BatteryFeedback, Feedback, alert_changes, with_feedback

# Alert states a head unit can answer about: it has the alert (delivered), or may have it (unknown: the
# request went out, no answer came back). Not while it is being delivered: the delivery's outcome is written
# under the ETag its claim left, which a feedback write would change (the head unit answers 409 later).
ANSWERABLE_STATES = frozenset({alert_store.DELIVERED, alert_store.UNKNOWN})
ACCEPTED = "accepted"
UNCHANGED = "unchanged"
_FEEDBACK_ROW = "feedback"
_OPEN = "open"  # the open labels' PartitionKey
_ROUNDS = 5  # decisions again after a concurrent write to the same rows


class AlertNotFound(LookupError):
    """No such alert for this car (it may exist for another car: that is not this head unit's to answer)."""


class AlertClosed(RuntimeError):
    """The alert is in a state no feedback applies to (rejected, suppressed, expired, ...): `state` says which."""

    def __init__(self, alert_id: str, state: str) -> None:
        super().__init__(f"alert {alert_id} is {state}: feedback applies only to an alert the car has")
        self.state = state


class FeedbackContention(RuntimeError):
    """Other writers kept changing the alert's rows: nothing was recorded; the head unit should retry."""


@dataclass(frozen=True)
class FeedbackOutcome:
    """What `record_feedback` did: ACCEPTED (recorded) or UNCHANGED (the same action was recorded before)."""

    alert_id: str
    car_id: str
    action: str
    result: str
    state: str


def open_labels(service: TableServiceClient) -> TableClient:
    """The table listing the outcome labels not closed yet, created if it does not exist."""
    return service.create_table_if_not_exists(OPEN_LABELS_TABLE)


def record_feedback(
    table: TableClient, labels: TableClient, car_id: str, alert_id: str, feedback: Feedback, now: datetime
) -> FeedbackOutcome:
    """Record `feedback` on the car's alert and on its battery's feedback row, in one transaction; then list
    the battery's label as open in `labels` (an upsert, repeated by every answer until it is replaced, so a
    crash between the two writes is mended by the next answer).

    Raises `AlertNotFound` when the car has no such alert, `AlertClosed` when the alert is in a state the
    car cannot answer about. Idempotent: the same action again returns UNCHANGED and writes nothing.
    """
    check_id(car_id, "car_id")
    check_id(alert_id, "alert_id")
    for _ in range(_ROUNDS):
        row = alert_store.read_alert_row(table, car_id, alert_id)
        if row is None:
            raise AlertNotFound(f"car {car_id} has no alert {alert_id}")
        if row["State"] not in ANSWERABLE_STATES:
            raise AlertClosed(alert_id, row["State"])
        changes = alert_changes(row, feedback)
        if not changes:
            return FeedbackOutcome(alert_id, car_id, feedback.action, UNCHANGED, row["State"])
        battery_row = _read_battery_row(table, car_id, row["Type"], row["BatteryId"])
        battery = _battery(battery_row) if battery_row is not None else BatteryFeedback(row["BatteryId"])
        updated = with_feedback(battery, feedback, row["Severity"])
        battery_entity = _battery_entity(car_id, row["Type"], updated) | {"UpdatedAt": iso_utc(now)}
        if changes.get("BookedAt"):
            battery_entity["BookedAt"] = changes["BookedAt"]
        keys = {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"]}
        writes = [
            EntityWrite(keys | changes | {"FeedbackAt": iso_utc(now)}, row.metadata["etag"], merge=True),
            EntityWrite(battery_entity | {"Kind": _FEEDBACK_ROW, "ReplacedBy": "", "ReplacedAt": ""}, None)
            if battery_row is None else EntityWrite(battery_entity, battery_row.metadata["etag"], merge=True),
        ]  # fmt: skip
        try:
            submit_writes(table, writes)
        except TransactionFailed as error:
            if error.code in alert_store.CHANGED_SINCE:
                continue  # another answer (or a delivery record) for this car wrote first: decide again
            raise
        if updated.replaced_by is None:
            labels.upsert_entity({"PartitionKey": _OPEN, "RowKey": _open_key(car_id, battery_entity["RowKey"]),
                                  "CarId": car_id, "LabelRow": battery_entity["RowKey"],
                                  "BatteryId": updated.battery_id})  # fmt: skip
        return FeedbackOutcome(alert_id, car_id, feedback.action, ACCEPTED, row["State"])
    raise FeedbackContention(f"alert {alert_id} of car {car_id}: its rows kept changing while feedback was recorded")


def read_battery_feedback(table: TableClient, car_id: str, alert_type: str, battery_id: str) -> BatteryFeedback | None:
    """What the owner said about `battery_id` (None: nothing), for `feedback_hold`. One point read."""
    row = _read_battery_row(table, car_id, alert_type, battery_id)
    return None if row is None else _battery(row)


def car_outcomes(table: TableClient, car_id: str) -> dict[str, dict[str, str | None]]:
    """Per battery of the car with feedback: its outcome label (booked_at, booking_ref, service_at,
    replaced_by, replaced_at), for the staff view. One partition query over the car's feedback rows."""
    rows = table.query_entities("PartitionKey eq @car and Kind eq @kind",
                                parameters={"car": check_id(car_id, "car_id"), "kind": _FEEDBACK_ROW})  # fmt: skip
    return {row["BatteryId"]: _outcome(row) for row in rows}


def record_replacements(service: TableServiceClient, batteries_in_cars: Mapping[str, str], now: datetime) -> int:
    """Label every battery with an open label whose car now carries another battery (`batteries_in_cars`:
    Car_ID → the Battery_ID telemetry shows in it) as replaced by it, and close the label; how many.

    One partition query over the open labels, so the cost follows the batteries owners answered about
    and not yet replaced, not the fleet or its history. A label another run closed meanwhile is left as is.
    """
    if not batteries_in_cars:
        return 0
    table, labels = service.get_table_client(ALERTS_TABLE), service.get_table_client(OPEN_LABELS_TABLE)
    try:
        rows = list(labels.query_entities("PartitionKey eq @open", parameters={"open": _OPEN}))
    except ResourceNotFoundError:  # no answer was ever recorded
        return 0
    labelled = 0
    for row in rows:
        current = batteries_in_cars.get(row["CarId"])
        if current is None or current == row["BatteryId"]:
            continue
        label = {"PartitionKey": row["CarId"], "RowKey": row["LabelRow"], "ReplacedBy": current,
                 "ReplacedAt": iso_utc(now)}  # fmt: skip
        try:
            table.update_entity(label, mode=UpdateMode.MERGE)
            labelled += 1
        except ResourceNotFoundError:
            pass  # the label row is gone (its car's history deleted): only the listing is left to close
        labels.delete_entity(_OPEN, row["RowKey"])
    return labelled


def outcome_counts(table: TableClient) -> dict[str, int]:
    """The fleet's outcome labels, for reports: batteries answered about, booked, replaced, booked and then
    replaced. Precision against what owners did is replaced / answered (and booked_replaced / booked)."""
    counts = {"answered": 0, "booked": 0, "replaced": 0, "booked_replaced": 0}
    for row in table.query_entities("Kind eq @kind", parameters={"kind": _FEEDBACK_ROW},
                                    select=["BookedAt", "ReplacedAt"]):  # fmt: skip
        booked, replaced = bool(row.get("BookedAt")), bool(row.get("ReplacedAt"))
        counts["answered"] += 1
        counts["booked"] += booked
        counts["replaced"] += replaced
        counts["booked_replaced"] += booked and replaced
    return counts


def _read_battery_row(table: TableClient, car_id: str, alert_type: str, battery_id: str) -> Any:
    try:
        return table.get_entity(check_id(car_id, "car_id"), _battery_key(alert_type, battery_id))
    except ResourceNotFoundError:
        return None


def _open_key(car_id: str, label_row: str) -> str:
    """An open label's RowKey: car and label row hashed together (a Car_ID may hold any key character)."""
    return hashlib.sha256(f"{car_id}\n{label_row}".encode()).hexdigest()[:32]


def _battery_key(alert_type: str, battery_id: str) -> str:
    """The battery feedback row's RowKey: the battery id hashed, as a Battery_ID may hold what keys cannot."""
    return f"{_FEEDBACK_ROW}-{alert_type}-{hashlib.sha256(battery_id.encode('utf-8')).hexdigest()[:32]}"


def _battery_entity(car_id: str, alert_type: str, battery: BatteryFeedback) -> dict[str, Any]:
    def time(moment: datetime | None) -> str:
        return iso_utc(moment) if moment is not None else ""

    return {
        "PartitionKey": car_id, "RowKey": _battery_key(alert_type, battery.battery_id), "Type": alert_type,
        "BatteryId": battery.battery_id, "DismissedSeverity": battery.dismissed_severity or "",
        "SnoozedUntil": time(battery.snoozed_until), "ServiceAt": time(battery.service_at),
        "BookingRef": battery.booking_ref or "",
    }  # fmt: skip


def _battery(row: Mapping[str, Any]) -> BatteryFeedback:
    def time(name: str) -> datetime | None:
        return parse_iso_utc(row[name]) if row.get(name) else None

    return BatteryFeedback(
        battery_id=row["BatteryId"], dismissed_severity=row.get("DismissedSeverity") or None,
        snoozed_until=time("SnoozedUntil"), service_at=time("ServiceAt"),
        booking_ref=row.get("BookingRef") or None, replaced_by=row.get("ReplacedBy") or None,
    )  # fmt: skip


def _outcome(row: Mapping[str, Any]) -> dict[str, str | None]:
    names = {"booked_at": "BookedAt", "booking_ref": "BookingRef", "service_at": "ServiceAt",
             "replaced_by": "ReplacedBy", "replaced_at": "ReplacedAt"}  # fmt: skip
    return {field: row.get(name) or None for field, name in names.items()}
