"""Alert store: every alert and its delivery state, in the Table storage table "alerts".

One partition per car (PartitionKey = Car_ID), so a car's history is one cheap partition query:
- an *alert row* per alert (RowKey = alert_id): the alert JSON and its state, one of
  queued → delivering → delivered | rejected | failed | unknown (failed and unknown → delivering again
  on retry), or suppressed; and the lifecycle's (shared/core/lifecycle.py): held (quiet hours, with
  ReleaseAt), expired, superseded, retracted, and delivered → resolved (the battery was replaced).
  `unknown` means the gateway may have the alert: the request went out and no
  answer came back (a timeout, a reset connection, the worker failing after sending);
- a *latest row* per alert type (RowKey = "latest-<type>"): the last alert of that type the car got,
  read by the cooldown check without scanning the car's history, and the car's *cooldown hold*: which
  alert of that type is being delivered now, and until when.

A delivery is claimed in one entity-group transaction of both rows (`claim_delivery`): the alert row
(created if absent, else updated under the ETag it was read with) and the hold on the latest row (under
the ETag the cooldown decision was made on). So exactly one caller holds an alert_id, and while it does,
no other alert of that type for the car can be claimed: the cooldown is decided on a row nobody else can
change until the holder records its outcome. Claim and hold are a lease: if the holder dies mid-delivery,
both are claimable again once the lease ends, so the queue's retry can finish the job.
Timestamps are `iso_utc` strings, which sort as text.

The outcome is recorded the same way, both rows in one transaction (`record_delivered`, `record_outcome`),
each guarded by the ETag the claim left: one round trip, and never one row without the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TableErrorCode, TableServiceClient, UpdateMode

from shared.adapters.tables import EntityWrite, TransactionFailed, submit_writes
from shared.config.names import ALERTS_TABLE
from shared.core.alerts import check_id, iso_utc, parse_iso_utc
from shared.core.dashboard import ALERT_ROW_COLUMNS
from shared.core.lifecycle import ENDED, EXPIRED, RESOLVED

QUEUED = "queued"
DELIVERING = "delivering"
DELIVERED = "delivered"
SUPPRESSED = "suppressed"
REJECTED = "rejected"
FAILED = "failed"
UNKNOWN = "unknown"
# Final: never claimed again. The lifecycle's ends (expired, superseded, retracted, resolved) are final too,
# so an alert retracted while its message waits is never delivered, whoever dequeues it.
FINAL_STATES = frozenset({DELIVERED, REJECTED}) | ENDED
OUTCOME_STATES = frozenset({DELIVERED, REJECTED, FAILED, UNKNOWN})
# Not a row's state: what a claim reports when another alert of the same type holds the car's cooldown.
CAR_BUSY = "car_busy"

DEFAULT_LEASE = timedelta(seconds=60)

# What a transaction fails with when a row is not the version its writer saw: changed (412), created (409)
# or deleted (404) since.
CHANGED_SINCE = {
    code.value
    for code in (
        TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED,
        TableErrorCode.ENTITY_ALREADY_EXISTS,
        TableErrorCode.RESOURCE_NOT_FOUND,
    )
}
_ALERT_ROW = "alert"
_LATEST_ROW = "latest"
_NO_HOLD = {"HeldBy": "", "HeldUntil": ""}
# The alert row's properties the feedback store (shared/adapters/feedback_store.py) sets, by record field.
_FEEDBACK_FIELDS = {
    "seen_at": "SeenAt", "dismissed_at": "DismissedAt", "snoozed_at": "SnoozedAt", "snoozed_until": "SnoozedUntil",
    "booked_at": "BookedAt", "booking_ref": "BookingRef", "service_at": "ServiceAt",
}  # fmt: skip
# A lifecycle step and the alert row property that holds its time.
LIFECYCLE_TIMES = {
    QUEUED: "QueuedAt", DELIVERED: "DeliveredAt", "seen": "SeenAt", "dismissed": "DismissedAt",
    "snoozed": "SnoozedAt", "booked": "BookedAt",
}  # fmt: skip


class ClaimLostError(RuntimeError):
    """Another delivery took over this alert's claim (our lease ran out) before we recorded the outcome."""


class LatestChanged(RuntimeError):
    """The car's latest row changed between the cooldown decision and the claim: decide again."""


@dataclass(frozen=True)
class LatestDelivered:
    """A car's latest row of one alert type as read: the last alert delivered (`alert` None: none yet), the
    cooldown hold (`held_by` an alert_id, `held_until` an `iso_utc` time; None when nobody holds it), and
    the row's ETag (None: no row), which the claim and the outcome write against."""

    alert: dict[str, str] | None
    etag: str | None
    held_by: str | None = None
    held_until: str | None = None

    def held_by_other(self, alert_id: str, now: datetime) -> bool:
        """True when another alert holds the car's cooldown under a lease that has not run out."""
        return self.held_by not in (None, alert_id) and (self.held_until or "") > iso_utc(now)


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to claim an alert for delivery.

    `claimed` is True for exactly one caller per attempt; the others see the `state` that stopped them:
    a final state (the alert was delivered or rejected already), DELIVERING (someone else is on it) or
    CAR_BUSY (another alert of the type is being delivered to the car). A held claim carries the alert
    row's ETag and the latest row as the claim left it (holding the cooldown), for the outcome.
    """

    car_id: str
    alert_id: str
    claimed: bool
    state: str
    attempts: int
    etag: str | None = None
    latest: LatestDelivered | None = None
    latest_row: str | None = None  # the RowKey of that latest row


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
    is: that state is the truth about this alert_id, and its holder records the outcome. An UNKNOWN row
    keeps its state (the car may have it) and takes the reason.
    """
    return _record_not_sent(table, alert, reason, now, lambda current: _unless_unknown(current, SUPPRESSED))


def claim_delivery(
    table: TableClient,
    alert: Mapping[str, Any],
    reason: str,
    now: datetime,
    latest: LatestDelivered | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> Claim:
    """Claim the right to deliver `alert` now, with the car's cooldown hold for its type, in one transaction.

    At most one caller gets `claimed=True` for an alert_id at a time, and at most one alert per car and
    type holds the cooldown. Claimable: no row yet, or a row that is queued, suppressed, failed, unknown,
    or delivering with an expired lease; each claim counts one attempt. `reason` is `should_deliver`'s
    reason, kept with the record; `latest` is the latest row that reason was decided on (read here when
    None). Raises `LatestChanged` when the latest row changed since `latest` was read, so the caller
    decides the cooldown again on what is there now.
    """
    latest = latest or read_latest(table, alert["car_id"], alert["type"])
    until = iso_utc(now + lease)
    entity = _alert_entity(alert, DELIVERING, now) | {"Reason": reason, "ClaimedUntil": until}
    car_id, row = entity["PartitionKey"], entity["RowKey"]
    try:
        current = table.get_entity(car_id, row)
    except ResourceNotFoundError:
        current = None
    attempts = int(current.get("Attempts", 0)) if current is not None else 0
    if current is not None:
        state = current["State"]
        lease_live = state == DELIVERING and current.get("ClaimedUntil", "") > iso_utc(now)
        if state in FINAL_STATES or lease_live:
            return Claim(car_id, row, claimed=False, state=state, attempts=attempts)
    if latest.held_by_other(row, now):
        return Claim(car_id, row, claimed=False, state=CAR_BUSY, attempts=attempts)
    entity["Attempts"] = attempts + 1
    claim_alert = EntityWrite(entity, None) if current is None else EntityWrite(entity, current.metadata["etag"],
                                                                               merge=True)  # fmt: skip
    hold = {"PartitionKey": car_id, "RowKey": _latest_key(alert["type"]), "HeldBy": row, "HeldUntil": until}
    hold_cooldown = EntityWrite(hold | {"Kind": _LATEST_ROW}, None) if latest.etag is None else EntityWrite(
        hold, latest.etag, merge=True)  # fmt: skip
    try:
        alert_etag, latest_etag = submit_writes(table, [claim_alert, hold_cooldown])
    except TransactionFailed as error:
        if error.code not in CHANGED_SINCE or error.index is None:
            raise
        if error.index == 0:  # another caller claimed this alert between our read and our write
            return Claim(car_id, row, claimed=False, state=DELIVERING, attempts=attempts + 1)
        raise LatestChanged(f"car {car_id}'s latest {alert['type']} row changed since it was read") from None
    held = LatestDelivered(latest.alert, latest_etag, held_by=row, held_until=until)
    return Claim(car_id, row, claimed=True, state=DELIVERING, attempts=attempts + 1, etag=alert_etag, latest=held,
                 latest_row=hold["RowKey"])  # fmt: skip


def record_outcome(table: TableClient, claim: Claim, state: str, now: datetime, error: str | None = None) -> None:
    """Record how a claimed delivery ended, on the alert row, and release the car's cooldown hold: REJECTED
    (permanent), FAILED (the gateway refused or was not reached; retried), UNKNOWN (the gateway may have
    it; retried), or DELIVERED (the alert row only: `record_delivered` also moves the latest row).

    Guarded by the claim's ETag: if another caller took the row over meanwhile, raise `ClaimLostError`
    rather than overwrite their state (the queue then retries, and sees the row as they left it). A hold
    that is no longer ours (it ran out and another alert took it) is left to its new holder.
    """
    _record_ending(table, claim, _outcome_update(claim, state, now, error), _release(claim), state)


def record_delivered(table: TableClient, claim: Claim, alert: Mapping[str, Any], now: datetime) -> None:
    """Record a delivery: the alert row DELIVERED, and the latest row naming it (hold released), together.

    A later delivery already on the latest row (as the claim saw it) stays the latest. If the latest row
    changed since the claim (the hold ran out and another delivery wrote it), the outcome is written alone
    and the latest row settled by read-compare-write. Raises `ClaimLostError` as `record_outcome` does.
    """
    outcome = _outcome_update(claim, DELIVERED, now)
    seen = claim.latest
    if seen.alert is not None and seen.alert["delivered_at"] > outcome["DeliveredAt"]:
        latest_write = _release(claim)
    else:
        latest_write = EntityWrite(_latest_entity(alert, now) | _NO_HOLD, seen.etag)
    if not _record_ending(table, claim, outcome, latest_write, DELIVERED):
        record_latest_delivered(table, alert, now)


def _record_ending(
    table: TableClient, claim: Claim, outcome: dict[str, Any], latest_write: EntityWrite, state: str
) -> bool:
    """Write a claim's outcome and its latest-row write in one transaction (True), or, if the latest row is
    no longer as the claim left it, the outcome alone (False). `ClaimLostError` if the alert row changed."""
    outcome_write = EntityWrite(outcome, claim.etag, merge=True)
    try:
        submit_writes(table, [outcome_write, latest_write])
        return True
    except TransactionFailed as error:
        _raise_unless_changed_since(error, claim, state, allowed_index=1)
    try:
        submit_writes(table, [outcome_write])
    except TransactionFailed as error:
        _raise_unless_changed_since(error, claim, state, allowed_index=None)
    return False


def _raise_unless_changed_since(error: TransactionFailed, claim: Claim, state: str, allowed_index: int | None) -> None:
    """Re-raise a failed transaction, as `ClaimLostError` when the alert row (index 0) changed; return only
    when the row at `allowed_index` is what changed."""
    if error.code not in CHANGED_SINCE or error.index is None:
        raise error
    if error.index != allowed_index:
        raise _claim_lost(claim, state) from None


def _release(claim: Claim) -> EntityWrite:
    """The write that releases a claim's cooldown hold, guarded by the latest row's ETag the claim left."""
    if not claim.claimed or claim.latest is None or claim.latest.etag is None:
        raise ValueError(f"alert {claim.alert_id} was not claimed (state {claim.state}); nothing to release")
    release = {"PartitionKey": claim.car_id, "RowKey": claim.latest_row, **_NO_HOLD}
    return EntityWrite(release, claim.latest.etag, merge=True)


def record_given_up(table: TableClient, alert: Mapping[str, Any], reason: str, now: datetime) -> bool:
    """Record that delivery of `alert` was abandoned (its queue message goes to the poison queue).

    The row becomes UNKNOWN if any attempt may have reached the gateway (the car may have it), else
    FAILED, with `reason`, so service staff see why. Both stay claimable, so replaying the poison message
    later still delivers it. Returns True when recorded, False when left alone (see `_record_not_sent`).
    """
    return _record_not_sent(table, alert, reason, now, lambda current: UNKNOWN if _may_have_it(current) else FAILED)


def record_held(table: TableClient, alert: Mapping[str, Any], reason: str, now: datetime) -> bool:
    """Record that `alert` stays queued without an attempt (the app cannot send it yet), and why; an
    earlier attempt's state (failed, unknown, ...) is kept."""
    return _record_not_sent(table, alert, reason, now, lambda current: current["State"] if current else QUEUED)


def record_lifecycle(table: TableClient, alert: Mapping[str, Any], state: str, reason: str, now: datetime,
                     release_at: datetime | None = None) -> bool:  # fmt: skip
    """Record a lifecycle decision on an alert that is not being sent: HELD until `release_at`, or one of
    the ends (expired, superseded, retracted). False when the row is final or in flight (left as it is)."""
    extra = {"ReleaseAt": iso_utc(release_at) if release_at else ""}
    return _record_not_sent(table, alert, reason, now, lambda current: state, extra)


def resolve_delivered(table: TableClient, car_id: str, alert_id: str, reason: str, now: datetime) -> bool:
    """Mark a delivered alert RESOLVED (its battery was replaced), with why; False if it is not delivered
    (any more) or changed meanwhile."""
    try:
        current = table.get_entity(_key(car_id, "car_id"), _key(alert_id, "alert_id"))
    except ResourceNotFoundError:
        return False
    if current["State"] != DELIVERED:
        return False
    update = {"PartitionKey": current["PartitionKey"], "RowKey": current["RowKey"], "State": RESOLVED,
              "Reason": reason, "UpdatedAt": iso_utc(now), "ResolvedAt": iso_utc(now)}  # fmt: skip
    return update_if_unchanged(table, update, current)


def _record_not_sent(table: TableClient, alert: Mapping[str, Any], reason: str, now: datetime,
                     state_of: Callable[[Mapping[str, Any] | None], str],
                     extra: Mapping[str, Any] | None = None) -> bool:  # fmt: skip
    """Write `reason` and the state `state_of(current row or None)` onto an alert that is not being sent.

    A row already delivered or rejected, or being delivered under a live lease by another invocation, is
    left as it is (that state is the truth, and its holder records the outcome): False then.
    """
    car_id, row = _key(alert["car_id"], "car_id"), _key(alert["alert_id"], "alert_id")
    try:
        current = table.get_entity(car_id, row)
    except ResourceNotFoundError:
        current = None
    if current is None:
        entity = _alert_entity(alert, state_of(None), now) | {"Reason": reason, **(extra or {})}
        try:
            table.create_entity(entity)
            return True
        except ResourceExistsError:
            return False  # someone wrote it meanwhile: their state is newer than ours
    lease_live = current["State"] == DELIVERING and current.get("ClaimedUntil", "") > iso_utc(now)
    if current["State"] in FINAL_STATES or lease_live:
        return False
    update = _alert_entity(alert, state_of(current), now) | {"Reason": reason, "ClaimedUntil": "", **(extra or {})}
    return update_if_unchanged(table, update, current)


def update_if_unchanged(table: TableClient, entity: Mapping[str, Any], read: TableEntity,
                        mode: UpdateMode = UpdateMode.MERGE) -> bool:  # fmt: skip
    """Write `entity` over the row as `read` returned it, only if nobody wrote it since (its ETag); False if
    someone did, for the caller to read again or give way."""
    try:
        table.update_entity(entity, mode=mode, etag=read.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified)  # fmt: skip
    except ResourceModifiedError:
        return False
    return True


def _unless_unknown(row: Mapping[str, Any] | None, state: str) -> str:
    return UNKNOWN if row is not None and row["State"] == UNKNOWN else state


def _may_have_it(row: Mapping[str, Any] | None) -> bool:
    """Whether any attempt recorded on `row` may have reached the gateway (an UNKNOWN outcome)."""
    return row is not None and (row["State"] == UNKNOWN or bool(row.get("GatewayMayHaveIt")))


def record_latest_delivered(table: TableClient, alert: Mapping[str, Any], delivered_at: datetime) -> None:
    """Make `alert` the car's latest delivered alert of its type, unless a later delivery is recorded.

    Read-compare-write under the row's ETag, repeated if another delivery for the same car wrote between.
    A merge, so another alert's cooldown hold stays; this alert's own hold is released.
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
        ours = current.get("HeldBy") == alert["alert_id"]
        later = current.get("DeliveredAt", "") > entity["DeliveredAt"]
        if later and not ours:
            return
        keys = {"PartitionKey": car_id, "RowKey": entity["RowKey"]}
        if update_if_unchanged(table, (keys if later else entity) | (_NO_HOLD if ours else {}), current):
            return


def record_channel_feedback(table: TableClient, car_id: str, alert_id: str, state: str, reason: str,
                            at: datetime, now: datetime) -> bool:  # fmt: skip
    """Record what a delivery channel reported later about an alert it took (IoT Hub's delivery feedback):
    DELIVERED (the car has it; an attempt recorded UNKNOWN becomes delivered and the car's latest row names
    it), or EXPIRED / REJECTED (the car never got it: the alert row says so with `reason`, and the latest
    row stops naming it, so the cooldown does not hold back the next alert for one the car never saw).
    False when there is no such alert. The same report twice changes nothing more.
    """
    if state not in (DELIVERED, EXPIRED, REJECTED):
        raise ValueError(f"channel feedback must be delivered, expired or rejected, got {state!r}")
    keys = {"PartitionKey": _key(car_id, "car_id"), "RowKey": _key(alert_id, "alert_id")}
    while True:
        try:
            row = table.get_entity(keys["PartitionKey"], keys["RowKey"])
        except ResourceNotFoundError:
            return False
        update = keys | {"State": state, "Reason": reason, "UpdatedAt": iso_utc(now), "ChannelReportedAt": iso_utc(at)}
        if state == DELIVERED:
            update["DeliveredAt"] = row.get("DeliveredAt") or iso_utc(at)
        if update_if_unchanged(table, update, row):
            break
    alert = json.loads(row["Alert"])
    if state == DELIVERED:
        record_latest_delivered(table, alert, parse_iso_utc(update["DeliveredAt"]))
    else:
        _forget_latest(table, alert)
    return True


def _forget_latest(table: TableClient, alert: Mapping[str, Any]) -> None:
    """Make the car's latest row of the alert's type stop naming `alert` (if it does), keeping any hold."""
    keys = {"PartitionKey": alert["car_id"], "RowKey": _latest_key(alert["type"])}
    while True:
        try:
            current = table.get_entity(keys["PartitionKey"], keys["RowKey"])
        except ResourceNotFoundError:
            return
        if current.get("AlertId") != alert["alert_id"]:
            return
        cleared = keys | {"AlertId": "", "BatteryId": "", "Severity": "", "CreatedAt": "", "DeliveredAt": ""}
        if update_if_unchanged(table, cleared, current):
            return


def read_latest(table: TableClient, car_id: str, alert_type: str) -> LatestDelivered:
    """The last alert of `alert_type` the car got (alert_id, car_id, battery_id, type, severity,
    created_at, delivered_at; None if none: the `previous` of `should_deliver`), the cooldown hold, and
    the row's ETag, for `claim_delivery`. One point read."""
    try:
        row = table.get_entity(_key(car_id, "car_id"), _latest_key(alert_type))
    except ResourceNotFoundError:
        return LatestDelivered(None, None)
    alert = None
    if row.get("AlertId"):  # else only a hold so far: the car's first alert of the type is on its way
        alert = {
            "alert_id": row["AlertId"], "car_id": row["PartitionKey"], "battery_id": row["BatteryId"],
            "type": row["Type"], "severity": row["Severity"], "created_at": row["CreatedAt"],
            "delivered_at": row["DeliveredAt"],
        }  # fmt: skip
    return LatestDelivered(alert, row.metadata["etag"], held_by=row.get("HeldBy") or None,
                           held_until=row.get("HeldUntil") or None)  # fmt: skip


def get_alert(table: TableClient, car_id: str, alert_id: str) -> dict[str, Any] | None:
    """One alert's record (see `list_alerts`), or None if it was never recorded."""
    try:
        return _record(table.get_entity(_key(car_id, "car_id"), _key(alert_id, "alert_id")))
    except ResourceNotFoundError:
        return None


def read_alert_row(table: TableClient, car_id: str, alert_id: str) -> TableEntity | None:
    """An alert's row as stored (with its ETag), or None when the car has no alert of that id. A car's other
    rows (its latest rows, the feedback store's) are not alerts, whatever id names them."""
    try:
        row = table.get_entity(_key(car_id, "car_id"), _key(alert_id, "alert_id"))
    except ResourceNotFoundError:
        return None
    return row if row.get("Kind") == _ALERT_ROW else None


def list_alerts(table: TableClient, car_id: str) -> list[dict[str, Any]]:
    """A car's alert records, newest first: the alert's own fields plus state, reason, attempts,
    last_error, queued_at, updated_at, delivered_at, release_at (None where not applicable), the head unit's answers
    (seen_at, dismissed_at, snoozed_at, snoozed_until, booked_at, booking_ref, service_at) and `lifecycle`,
    the steps it went through with their times, in time order. JSON-ready."""
    query = "PartitionKey eq @car and Kind eq @kind"
    rows = table.query_entities(query, parameters={"car": _key(car_id, "car_id"), "kind": _ALERT_ROW})
    records = [_record(row) for row in rows]
    return sorted(records, key=lambda r: (r["created_at"], r["alert_id"]), reverse=True)


def read_alert_rows(table: TableClient, since: datetime) -> pd.DataFrame:
    """Every car's alerts created at or after `since`, only the columns the dashboard counts (Car_ID,
    type, severity, created_at, state: `shared.core.dashboard.ALERT_ROW_COLUMNS`), one row per alert.

    One query across partitions with the properties projected (`select`), so the alert JSON is never
    transferred; Table storage scans the table for it, so its cost follows the alerts stored, not the
    fleet's telemetry. A missing table is no alerts.
    """
    query = "Kind eq @kind and CreatedAt ge @since"
    selected = ["PartitionKey", "Type", "Severity", "CreatedAt", "State"]
    try:
        rows = list(table.query_entities(query, parameters={"kind": _ALERT_ROW, "since": iso_utc(since)},
                                         select=selected))  # fmt: skip
    except ResourceNotFoundError:
        rows = []
    frame = pd.DataFrame([[row.get(name, "") for name in selected] for row in rows], columns=selected, dtype=object)
    return frame.set_axis(ALERT_ROW_COLUMNS, axis=1)


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
    if state == UNKNOWN:  # kept by later merges: a given-up record then says the car may have it
        update["GatewayMayHaveIt"] = 1
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
        **{field: optional(name) for field, name in _FEEDBACK_FIELDS.items()},
        "release_at": optional("ReleaseAt"), "lifecycle": _lifecycle(row),
    }  # fmt: skip


def _lifecycle(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The steps an alert row records, each with its time, oldest first. The row's current state closes the
    list at its last update when no step records its own time (suppressed, rejected, failed, ...)."""
    times = dict(row) | {"QueuedAt": row.get("QueuedAt") or row["CreatedAt"]}  # produced = put on the queue
    steps = [{"step": step, "at": times[name]} for step, name in LIFECYCLE_TIMES.items() if times.get(name)]
    if row["State"] not in {step["step"] for step in steps} and row.get("UpdatedAt"):
        steps.append({"step": row["State"], "at": row["UpdatedAt"]})
    return sorted(steps, key=lambda step: step["at"])


def _latest_key(alert_type: str) -> str:
    return f"latest-{alert_type}"


def _key(value: str, name: str) -> str:
    """A Table storage key, or `InputError` naming the field (`check_id`: no / \\ # ? or control chars)."""
    return check_id(value, name)
