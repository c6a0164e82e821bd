"""Alert store: every alert and its delivery state, in the Table storage table "alerts".

One partition per car (PartitionKey = Car_ID), so a car's history is one cheap partition query:
- an *alert row* per alert (RowKey = alert_id): the alert JSON and its state, one of
  queued → delivering → delivered | rejected | failed (→ delivering again on retry), or suppressed;
- a *latest row* per alert type (RowKey = "latest-<type>"): the last alert of that type the car got,
  read by the cooldown check without scanning the car's history.

Two deliveries of one alert_id (a queue retry racing the other path's copy) are kept apart by a
claim: creating the alert row fails if it exists, and taking over an unfinished row is an update
guarded by its ETag, so exactly one caller holds the claim. A claim is a lease: if its holder dies
mid-delivery, the row is claimable again once the lease ends, so the queue's retry can finish the job.
Timestamps are `iso_utc` strings, which sort as text.

Both rows of a car are in its partition, so a delivery's two last writes — the outcome on the alert row
and the latest row — go as one entity-group transaction (`record_delivered`), each guarded by the ETag
its writer last saw: one round trip instead of three, and never one row without the other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableErrorCode, TableServiceClient, UpdateMode

from shared.alerts import iso_utc
from shared.table_transaction import EntityWrite, TransactionFailed, submit_writes
from shared.telemetry import InputError

ALERTS_TABLE = "alerts"

QUEUED = "queued"
DELIVERING = "delivering"
DELIVERED = "delivered"
SUPPRESSED = "suppressed"
REJECTED = "rejected"
FAILED = "failed"
FINAL_STATES = frozenset({DELIVERED, REJECTED})
OUTCOME_STATES = frozenset({DELIVERED, REJECTED, FAILED})

DEFAULT_LEASE = timedelta(seconds=60)

# What a transaction fails with when a row is not the version its writer saw: changed (412), created (409)
# or deleted (404) since.
_CHANGED_SINCE = {
    code.value
    for code in (
        TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED,
        TableErrorCode.ENTITY_ALREADY_EXISTS,
        TableErrorCode.RESOURCE_NOT_FOUND,
    )
}
_ALERT_ROW = "alert"
_LATEST_ROW = "latest"
_FORBIDDEN_KEY_CHARACTERS = set("/\\#?") | {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}


class ClaimLostError(RuntimeError):
    """Another delivery took over this alert's claim (our lease ran out) before we recorded the outcome."""


@dataclass(frozen=True)
class LatestDelivered:
    """A car's latest row of one alert type as read (`alert` None: no row yet), and the row's ETag, which
    `record_delivered` writes against."""

    alert: dict[str, str] | None
    etag: str | None


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to claim an alert for delivery.

    `claimed` is True for exactly one caller per attempt; the others see the `state` that stopped them:
    a final state (the alert was delivered or rejected already) or DELIVERING (someone else is on it).
    """

    car_id: str
    alert_id: str
    claimed: bool
    state: str
    attempts: int
    etag: str | None = None


def alerts_table(service: TableServiceClient, name: str = ALERTS_TABLE) -> TableClient:
    """The alerts table, created if it does not exist yet."""
    return service.create_table_if_not_exists(name)


def record_queued(table: TableClient, alert: Mapping[str, Any], now: datetime) -> bool:
    """Record an alert as queued for delivery; False (and no change) if the alert is already known."""
    try:
        table.create_entity(_alert_entity(alert, QUEUED, now) | {"QueuedAt": iso_utc(now)})
    except ResourceExistsError:
        return False
    return True


def record_suppressed(table: TableClient, alert: Mapping[str, Any], reason: str, now: datetime) -> bool:
    """Record that the cooldown held an alert back, unless the alert is already delivered or in flight.

    Returns True if the suppression was recorded. A row in a final state or being delivered is left as it
    is: that state is the truth about this alert_id, and its holder records the outcome.
    """
    entity = _alert_entity(alert, SUPPRESSED, now) | {"Reason": reason}
    try:
        table.create_entity(entity)
        return True
    except ResourceExistsError:
        current = table.get_entity(entity["PartitionKey"], entity["RowKey"])
    if current["State"] not in (QUEUED, FAILED, SUPPRESSED):
        return False
    try:
        table.update_entity(entity, mode=UpdateMode.MERGE, etag=current.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified)  # fmt: skip
    except ResourceModifiedError:
        return False
    return True


def claim_delivery(
    table: TableClient, alert: Mapping[str, Any], reason: str, now: datetime, lease: timedelta = DEFAULT_LEASE
) -> Claim:
    """Claim the right to deliver `alert` now; at most one caller gets `claimed=True` at a time.

    Claimable: no row yet, or a row that is queued, suppressed, failed, or delivering with an expired
    lease. Each claim counts one attempt. `reason` is `should_deliver`'s reason, kept with the record.
    """
    entity = _alert_entity(alert, DELIVERING, now) | {"Reason": reason, "ClaimedUntil": iso_utc(now + lease)}
    car_id, row = entity["PartitionKey"], entity["RowKey"]
    try:
        metadata = table.create_entity(entity | {"Attempts": 1})
        return Claim(car_id, row, claimed=True, state=DELIVERING, attempts=1, etag=metadata["etag"])
    except ResourceExistsError:
        current = table.get_entity(car_id, row)
    attempts = int(current.get("Attempts", 0))
    state = current["State"]
    lease_live = state == DELIVERING and current.get("ClaimedUntil", "") > iso_utc(now)
    if state in FINAL_STATES or lease_live:
        return Claim(car_id, row, claimed=False, state=state, attempts=attempts)
    try:
        metadata = table.update_entity(
            entity | {"Attempts": attempts + 1}, mode=UpdateMode.MERGE,
            etag=current.metadata["etag"], match_condition=MatchConditions.IfNotModified,
        )  # fmt: skip
    except ResourceModifiedError:
        return Claim(car_id, row, claimed=False, state=DELIVERING, attempts=attempts + 1)
    return Claim(car_id, row, claimed=True, state=DELIVERING, attempts=attempts + 1, etag=metadata["etag"])


def record_outcome(
    table: TableClient, claim: Claim, state: str, now: datetime, error: str | None = None
) -> None:
    """Record how a claimed delivery ended: DELIVERED, REJECTED (permanent) or FAILED (will be retried).

    Guarded by the claim's ETag: if another caller took the row over meanwhile, raise `ClaimLostError`
    rather than overwrite their state (the queue then retries, and sees the row as they left it).
    """
    update = _outcome_update(claim, state, now, error)
    try:
        table.update_entity(update, mode=UpdateMode.MERGE, etag=claim.etag,
                            match_condition=MatchConditions.IfNotModified)  # fmt: skip
    except ResourceModifiedError:
        raise _claim_lost(claim, state) from None


def record_delivered(
    table: TableClient, claim: Claim, alert: Mapping[str, Any], now: datetime, seen: LatestDelivered
) -> None:
    """`record_outcome(DELIVERED)` and `record_latest_delivered` in one transaction, when it can be.

    `seen` is the latest row as read before the delivery (`read_latest`). The outcome is guarded by the
    claim's ETag and the latest row by `seen`'s (created if `seen` found none), so the transaction lands
    only if neither row changed since; a later delivery already in `seen` is left as the latest. If the
    latest row changed since (another delivery for the car), the two are written as separate steps,
    whose read-compare-write settles it. Raises `ClaimLostError` as `record_outcome` does.
    """
    latest = _latest_entity(alert, now)
    if seen.alert is not None and seen.alert["delivered_at"] > latest["DeliveredAt"]:
        record_outcome(table, claim, DELIVERED, now)
        return
    outcome = EntityWrite(_outcome_update(claim, DELIVERED, now), claim.etag, merge=True)
    try:
        submit_writes(table, [outcome, EntityWrite(latest, seen.etag)])
    except TransactionFailed as error:
        if error.code not in _CHANGED_SINCE or error.index is None:
            raise
        if error.index == 0:
            raise _claim_lost(claim, DELIVERED) from None
        record_outcome(table, claim, DELIVERED, now)
        record_latest_delivered(table, alert, now)


def record_given_up(table: TableClient, alert: Mapping[str, Any], reason: str, now: datetime) -> bool:
    """Record that delivery of `alert` was abandoned (its queue message goes to the poison queue).

    The row becomes FAILED with `reason`, so service staff see why the car never got it; FAILED stays
    claimable, so replaying the poison message later still delivers it. A row already delivered or
    rejected, or being delivered under a live lease by another invocation, is left as it is (that state
    is the truth, and its holder records the outcome): returns False then, True when recorded.
    """
    entity = _alert_entity(alert, FAILED, now) | {"Reason": reason, "ClaimedUntil": ""}
    try:
        table.create_entity(entity | {"LastError": reason})
        return True
    except ResourceExistsError:
        current = table.get_entity(entity["PartitionKey"], entity["RowKey"])
    lease_live = current["State"] == DELIVERING and current.get("ClaimedUntil", "") > iso_utc(now)
    if current["State"] in FINAL_STATES or lease_live:
        return False
    try:
        table.update_entity(entity, mode=UpdateMode.MERGE, etag=current.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified)  # fmt: skip
    except ResourceModifiedError:
        return False
    return True


def record_latest_delivered(table: TableClient, alert: Mapping[str, Any], delivered_at: datetime) -> None:
    """Make `alert` the car's latest delivered alert of its type, unless a later delivery is recorded.

    Read-compare-write under the row's ETag, repeated if another delivery for the same car wrote between.
    """
    entity = _latest_entity(alert, delivered_at)
    car_id = entity["PartitionKey"]
    while True:
        try:
            current = table.get_entity(car_id, entity["RowKey"])
        except ResourceNotFoundError:
            try:
                table.create_entity(entity)
                return
            except ResourceExistsError:
                continue
        if current["DeliveredAt"] > entity["DeliveredAt"]:
            return
        try:
            table.update_entity(entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                                match_condition=MatchConditions.IfNotModified)  # fmt: skip
            return
        except ResourceModifiedError:
            continue


def read_latest(table: TableClient, car_id: str, alert_type: str) -> LatestDelivered:
    """The last alert of `alert_type` the car got (alert_id, car_id, battery_id, type, severity,
    created_at, delivered_at; None if none: the `previous` of `should_deliver`) and the row's ETag, for
    `record_delivered`. One point read."""
    try:
        row = table.get_entity(_key(car_id, "car_id"), _latest_key(alert_type))
    except ResourceNotFoundError:
        return LatestDelivered(None, None)
    alert = {
        "alert_id": row["AlertId"], "car_id": row["PartitionKey"], "battery_id": row["BatteryId"],
        "type": row["Type"], "severity": row["Severity"], "created_at": row["CreatedAt"],
        "delivered_at": row["DeliveredAt"],
    }  # fmt: skip
    return LatestDelivered(alert, row.metadata["etag"])


def get_alert(table: TableClient, car_id: str, alert_id: str) -> dict[str, Any] | None:
    """One alert's record (see `list_alerts`), or None if it was never recorded."""
    try:
        return _record(table.get_entity(_key(car_id, "car_id"), _key(alert_id, "alert_id")))
    except ResourceNotFoundError:
        return None


def list_alerts(table: TableClient, car_id: str) -> list[dict[str, Any]]:
    """A car's alert records, newest first: the alert's own fields plus state, reason, attempts,
    last_error, queued_at, updated_at, delivered_at (None where not applicable). JSON-ready."""
    query = "PartitionKey eq @car and Kind eq @kind"
    rows = table.query_entities(query, parameters={"car": _key(car_id, "car_id"), "kind": _ALERT_ROW})
    records = [_record(row) for row in rows]
    return sorted(records, key=lambda r: (r["created_at"], r["alert_id"]), reverse=True)


def _alert_entity(alert: Mapping[str, Any], state: str, now: datetime) -> dict[str, Any]:
    """The alert row's fields that every write sets: identity, the alert itself, state and time."""
    return {
        "PartitionKey": _key(alert["car_id"], "car_id"), "RowKey": _key(alert["alert_id"], "alert_id"),
        "Kind": _ALERT_ROW, "BatteryId": alert["battery_id"], "Type": alert["type"],
        "Severity": alert["severity"], "CreatedAt": alert["created_at"],
        "Alert": json.dumps(alert, sort_keys=True, separators=(",", ":")),
        "State": state, "UpdatedAt": iso_utc(now),
    }  # fmt: skip


def _outcome_update(claim: Claim, state: str, now: datetime, error: str | None = None) -> dict[str, Any]:
    """The properties an outcome merges into a claimed alert row."""
    if state not in OUTCOME_STATES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOME_STATES)}, got {state!r}")
    if not claim.claimed:
        raise ValueError(f"alert {claim.alert_id} was not claimed (state {claim.state}); nothing to record")
    update = {
        "PartitionKey": claim.car_id, "RowKey": claim.alert_id, "State": state, "UpdatedAt": iso_utc(now),
        "ClaimedUntil": "", "LastError": error or "",
    }  # fmt: skip
    if state == DELIVERED:
        update["DeliveredAt"] = iso_utc(now)
    return update


def _claim_lost(claim: Claim, state: str) -> ClaimLostError:
    return ClaimLostError(f"alert {claim.alert_id} for car {claim.car_id} was claimed by another "
                          f"delivery before its {state} outcome was recorded")  # fmt: skip


def _latest_entity(alert: Mapping[str, Any], delivered_at: datetime) -> dict[str, Any]:
    """The car's latest row of the alert's type, naming `alert` as delivered at `delivered_at`."""
    return {
        "PartitionKey": _key(alert["car_id"], "car_id"), "RowKey": _latest_key(alert["type"]), "Kind": _LATEST_ROW,
        "AlertId": alert["alert_id"], "BatteryId": alert["battery_id"], "Type": alert["type"],
        "Severity": alert["severity"], "CreatedAt": alert["created_at"], "DeliveredAt": iso_utc(delivered_at),
    }  # fmt: skip


def _record(row: Mapping[str, Any]) -> dict[str, Any]:
    def optional(name: str) -> str | None:
        return row.get(name) or None

    return json.loads(row["Alert"]) | {
        "state": row["State"], "reason": optional("Reason"), "attempts": int(row.get("Attempts", 0)),
        "last_error": optional("LastError"), "queued_at": optional("QueuedAt"),
        "updated_at": optional("UpdatedAt"), "delivered_at": optional("DeliveredAt"),
    }  # fmt: skip


def _latest_key(alert_type: str) -> str:
    return f"latest-{alert_type}"


def _key(value: str, name: str) -> str:
    """A Table storage key, or `InputError` naming the field: keys cannot hold / \\ # ? or control chars."""
    if not isinstance(value, str) or not value or len(value) > 512:
        raise InputError(f"{name} must be a non-empty string of at most 512 characters, got {value!r}")
    bad = sorted(set(value) & _FORBIDDEN_KEY_CHARACTERS)
    if bad:
        raise InputError(f"{name} {value!r} contains {bad!r}, which Table storage keys cannot hold")
    return value
