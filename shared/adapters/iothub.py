"""IoT Hub: the second way to a head unit, as a cloud-to-device (C2D) message to the car as an IoT device.

Sending goes through the service SDK (`azure-iot-hub`'s `IoTHubRegistryManager.send_c2d_message`, AMQP):
the body is the same canonical JSON the gateway gets (headunit.canonical_json), device id = Car_ID, and the
message carries, as IoT Hub documents them (learn.microsoft.com, "Send cloud-to-device messages from an IoT
hub"):
- `messageId` = alert_id, so the head unit drops a repeat as the gateway does an Idempotency-Key;
- `expiryTimeUtc` = the alert's created_at + ALERT_EXPIRY_HOURS: IoT Hub expires it rather than deliver it
  late (the SDK puts it in the AMQP absolute-expiry-time, milliseconds since the epoch);
- `iothub-ack: full`, so IoT Hub reports both delivery and failure on its feedback endpoint;
- `content-type`/`content-encoding`, and application properties `alert-type`, `severity`, `locale` (a
  head unit can route without parsing the body) and `x-signature` (the gateway's X-Signature value, so the
  head unit can check the body end to end the same way).

Delivery feedback arrives on `/messages/servicebound/feedback` as AMQP messages of content type
`application/vnd.microsoft.iothub.feedback.json`, each a JSON array of records (originalMessageId,
statusCode Success | Expired | DeliveryCountExceeded | Rejected | Purged, description, deviceId,
deviceGenerationId, enqueuedTimeUtc). The Python service SDK has no feedback receiver (the .NET and Java
ones do), so `open_feedback_receiver` opens one with uamqp, which the SDK itself is built on, and
`drain_feedback` applies each batch to the alert store before settling it, so a crash between the two
re-delivers the batch rather than losing it (applying a record twice changes nothing).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from azure.data.tables import TableClient

from shared.adapters import alert_store
from shared.adapters.headunit import DeliveryResult, TransientDeliveryError, canonical_json, sign
from shared.core import json_text
from shared.core.alerts import iso_utc, parse_iso_utc
from shared.core.telemetry import InputError

FEEDBACK_CONTENT_TYPE = "application/vnd.microsoft.iothub.feedback.json"
FEEDBACK_PATH = "/messages/servicebound/feedback"
# What each feedback status code means for the alert: delivered, or (never delivered) expired or rejected.
FEEDBACK_STATES = {
    "Success": alert_store.DELIVERED,
    "Expired": alert_store.EXPIRED,
    "DeliveryCountExceeded": alert_store.EXPIRED,  # the device abandoned it until IoT Hub gave up
    "Purged": alert_store.EXPIRED,  # the device's queue was purged before it took the message
    "Rejected": alert_store.REJECTED,
}
# IoT Hub's device id rule: up to 128 of ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ '
_DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
_MAX_FEEDBACK_BATCHES = 50


class C2DClient(Protocol):
    """What the channel needs of `azure.iot.hub.IoTHubRegistryManager` (tests hand in the real one on a
    recording AMQP connection)."""

    def send_c2d_message(self, device_id: str, message: str | bytes, properties: dict[str, Any]) -> None: ...


def registry_manager(connection: str) -> C2DClient:
    """The SDK's client for an IoT Hub service connection string (connects on first send, not here)."""
    from azure.iot.hub import IoTHubRegistryManager

    return IoTHubRegistryManager.from_connection_string(connection)


def c2d_properties(alert: Mapping[str, Any], body: bytes, signing_key: str, expires_at: datetime) -> dict[str, Any]:
    """The properties of an alert's C2D message, as `send_c2d_message` takes them (system ones by their
    SDK names, the rest application properties)."""
    return {
        "messageId": alert["alert_id"],
        "expiryTimeUtc": int(expires_at.timestamp() * 1000),
        "contentType": "application/json",
        "contentEncoding": "utf-8",
        "iothub-ack": "full",
        "alert-type": alert["type"],
        "severity": alert["severity"],
        "locale": alert.get("locale", "en"),
        "x-signature": sign(body, signing_key),
    }


@dataclass(frozen=True)
class IoTHubChannel:
    """Sends alerts as C2D messages: `deliver` is the `send` of `headunit.push_alert`."""

    client: C2DClient
    signing_key: str
    expiry: timedelta
    clock: Callable[[], datetime]

    def deliver(self, alert: Mapping[str, Any]) -> DeliveryResult:
        """Hand one alert to IoT Hub. Accepted → delivered (IoT Hub's feedback later says whether the car
        took it); a car id IoT Hub cannot name, or an alert already past its expiry → rejected for good;
        any failure of the send → `TransientDeliveryError` (IoT Hub may have it: the head unit drops a
        repeat by messageId)."""
        alert_id, car_id = alert["alert_id"], alert["car_id"]
        if not _DEVICE_ID.fullmatch(car_id):
            return DeliveryResult(alert_id, car_id, 400, delivered=False,
                                  error=f"car_id {car_id!r} is not an IoT Hub device id (up to 128 of A-Z a-z 0-9 "
                                        "- . % _ * ? ! ( ) , : = @ $ ')")  # fmt: skip
        expires_at = parse_iso_utc(alert["created_at"]) + self.expiry
        if expires_at <= self.clock():
            return DeliveryResult(alert_id, car_id, 410, delivered=False,
                                  error=f"expired at {iso_utc(expires_at)}, before it could be sent")  # fmt: skip
        body = canonical_json(alert)
        try:
            self.client.send_c2d_message(car_id, body, c2d_properties(alert, body, self.signing_key, expires_at))
        except Exception as error:  # uamqp's errors, and the SDK's bare Exception("C2D message send failure")
            raise TransientDeliveryError(f"alert {alert_id} for car {car_id}: IoT Hub send failed "
                                         f"({type(error).__name__})", maybe_received=True) from None  # fmt: skip
        return DeliveryResult(alert_id, car_id, 202, delivered=True)


@dataclass(frozen=True)
class FeedbackRecord:
    """One record of an IoT Hub feedback batch."""

    alert_id: str  # originalMessageId
    car_id: str  # deviceId
    status: str  # statusCode
    description: str
    enqueued_at: datetime  # when IoT Hub recorded the outcome


def parse_feedback(body: bytes | str) -> list[FeedbackRecord]:
    """The records of one feedback message body, or `InputError` naming the record and field at fault."""
    records = json_text.loads(body, "IoT Hub feedback")
    if not isinstance(records, list):
        raise InputError(f"IoT Hub feedback is a JSON {type(records).__name__}, not an array of records")
    parsed = []
    for index, record in enumerate(records):
        where = f"IoT Hub feedback record {index}"
        if not isinstance(record, dict):
            raise InputError(f"{where} is not an object")
        missing = [k for k in ("originalMessageId", "deviceId", "statusCode", "enqueuedTimeUtc") if not record.get(k)]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)}")
        if record["statusCode"] not in FEEDBACK_STATES:
            raise InputError(f"{where}: statusCode must be one of {', '.join(FEEDBACK_STATES)}, "
                             f"got {record['statusCode']!r}")  # fmt: skip
        try:
            enqueued = datetime.fromisoformat(str(record["enqueuedTimeUtc"]).replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{where}: enqueuedTimeUtc is not an ISO time: {record['enqueuedTimeUtc']!r}") from None
        if enqueued.tzinfo is None:
            raise InputError(f"{where}: enqueuedTimeUtc has no time zone: {record['enqueuedTimeUtc']!r}")
        parsed.append(FeedbackRecord(str(record["originalMessageId"]), str(record["deviceId"]), record["statusCode"],
                                     str(record.get("description") or ""), enqueued))  # fmt: skip
    return parsed


def apply_feedback(table: TableClient, records: Iterable[FeedbackRecord], now: datetime) -> dict[str, int]:
    """Record each feedback record on its alert; counts by outcome (delivered, expired, rejected, and
    unknown_alert for a message id the store has no alert of, e.g. a C2D message another app sent)."""
    counts: dict[str, int] = {}
    for record in records:
        state = FEEDBACK_STATES[record.status]
        reason = f"IoT Hub feedback {record.status}" + (f": {record.description}" if record.description else "")
        known = alert_store.record_channel_feedback(table, record.car_id, record.alert_id, state, reason,
                                                    record.enqueued_at, now)  # fmt: skip
        outcome = state if known else "unknown_alert"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


class FeedbackReceiver(Protocol):
    """What `drain_feedback` needs of a `uamqp.ReceiveClient` opened with auto_complete=False."""

    def receive_message_batch(self, max_batch_size: int | None = None, timeout: int = 0) -> list[Any]: ...


def drain_feedback(receiver: FeedbackReceiver, table: TableClient, now: datetime, *,
                   wait_ms: int = 5000) -> dict[str, int]:  # fmt: skip
    """Apply every feedback message waiting (until a receive returns none), accepting each after its records
    are stored; a message that is not feedback is rejected (IoT Hub then drops it) and counted `malformed`.
    Returns the outcome counts."""
    counts: dict[str, int] = {}
    for _ in range(_MAX_FEEDBACK_BATCHES):
        messages = receiver.receive_message_batch(max_batch_size=100, timeout=wait_ms)
        if not messages:
            break
        for message in messages:
            try:
                records = parse_feedback(b"".join(message.get_data()))
            except InputError as error:
                message.reject(condition="amqp:decode-error", description=str(error)[:200])
                counts["malformed"] = counts.get("malformed", 0) + 1
                continue
            for outcome, n in apply_feedback(table, records, now).items():
                counts[outcome] = counts.get(outcome, 0) + n
            message.accept()
    return counts


def open_feedback_receiver(connection: str) -> Any:
    """A uamqp receiver of the IoT Hub's feedback endpoint, authenticated as the SDK authenticates its sends
    (a SAS token of the connection string's policy, over CBS). Not exercised here: no IoT Hub was reached."""
    import uamqp
    from azure.core.credentials import AccessToken
    from azure.iot.hub.connection_string import ConnectionString
    from azure.iot.hub.sastoken import SasToken

    parts = ConnectionString(connection)
    host = parts["HostName"]

    def token() -> AccessToken:
        sas = SasToken(host, parts["SharedAccessKey"], parts["SharedAccessKeyName"])
        return AccessToken(str(sas), sas.expiry_time)

    auth = uamqp.authentication.JWTTokenAuth(audience=f"https://{host}", uri=f"https://{host}", get_token=token,
                                             token_type=b"servicebus.windows.net:sastoken")  # fmt: skip
    auth.update_token()
    return uamqp.ReceiveClient(f"amqps://{host}{FEEDBACK_PATH}", auth=auth, auto_complete=False)
