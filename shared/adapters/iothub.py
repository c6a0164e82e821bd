"""IoT Hub: the second way to a head unit, as a cloud-to-device (C2D) message to the car as an IoT device.

Sending goes over AMQP to `/messages/devicebound`, as the service SDK (`azure-iot-hub`) sends a C2D message:
the body is the same canonical JSON the gateway gets (headunit.canonical_json), `to` = the car's device
path (device id = Car_ID), and the message carries, as IoT Hub documents them (learn.microsoft.com, "Send
cloud-to-device messages from an IoT hub"):
- `message-id` = alert_id, so the head unit drops a repeat as the gateway does an Idempotency-Key;
- `absolute-expiry-time` = the alert's created_at + ALERT_EXPIRY_HOURS (ms since the epoch): IoT Hub
  expires it rather than deliver it late;
- `iothub-ack: full`, so IoT Hub reports both delivery and failure on its feedback endpoint;
- `content-type`/`content-encoding`, and application properties `alert-type`, `severity`, `locale` (a
  head unit can route without parsing the body) and `x-signature` (the gateway's X-Signature value, so the
  head unit can check the body end to end the same way).
`C2DSender` is a small uamqp SendClient of its own rather than the SDK's `IoTHubRegistryManager`: the SDK
builds its SendClient without `msg_timeout` and takes none, so its send waits as long as the hub does (up
to the Functions host's timeout); the only ways to bound it are writing uamqp's private `_msg_timeout` or
swapping the SDK's inner client. tests/test_iothub.py checks that what it puts on the wire is what the
SDK's `send_c2d_message` would, and that its sign-in is the SDK's.

Sign-in (`HubAccess`) is the SDK's, for both the sends and the feedback receiver: a SAS token of the
IOTHUB_CONNECTION string's shared access policy, or, with IOTHUB_HOSTNAME alone, an Entra ID bearer token
of the app identity for https://iothubs.azure.net/.default (what `IoTHubRegistryManager.from_token_credential`
sends), each put to the hub's CBS node by uamqp and renewed by it before expiry.

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
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from azure.core.credentials import AccessToken
from azure.data.tables import TableClient

from shared.adapters import alert_store
from shared.adapters.headunit import DeliveryResult, TransientDeliveryError, canonical_json, sign
from shared.adapters.scoring_client import TokenCredential
from shared.core import json_text
from shared.core.alerts import iso_utc, parse_iso_utc
from shared.core.telemetry import InputError

if TYPE_CHECKING:  # uamqp is imported where it is used: most invocations never reach an IoT Hub
    import uamqp

FEEDBACK_CONTENT_TYPE = "application/vnd.microsoft.iothub.feedback.json"
FEEDBACK_PATH = "/messages/servicebound/feedback"
C2D_PATH = "/messages/devicebound"
# The Entra ID scope of IoT Hub's data plane, as the SDK's token auth asks for it.
IOTHUB_SCOPE = "https://iothubs.azure.net/.default"
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


@dataclass(frozen=True)
class HubAccess:
    """How the app signs in to its IoT Hub over AMQP: the token uamqp puts to the hub's CBS node, of the type
    and audience IoT Hub expects for it. The repr names only the host: never a key or a token."""

    host: str
    get_token: Callable[[], AccessToken] = field(repr=False)
    token_type: bytes
    audience: str

    def auth(self) -> uamqp.authentication.JWTTokenAuth:
        """A CBS auth for one AMQP client (uamqp keeps the client's CBS session on it, so never shared), its
        first token fetched here, as the SDK does."""
        import uamqp

        auth = uamqp.authentication.JWTTokenAuth(audience=self.audience, uri=f"https://{self.host}",
                                                 get_token=self.get_token, token_type=self.token_type)  # fmt: skip
        auth.update_token()
        return auth


def connection_access(connection: str) -> HubAccess:
    """Sign-in with a service connection string: an hour's SAS token of its policy at a time."""
    from azure.iot.hub.connection_string import ConnectionString
    from azure.iot.hub.sastoken import SasToken

    parts = ConnectionString(connection)
    host = parts["HostName"]

    def token() -> AccessToken:
        sas = SasToken(host, parts["SharedAccessKey"], parts["SharedAccessKeyName"])
        return AccessToken(str(sas), sas.expiry_time)

    return HubAccess(host, token, b"servicebus.windows.net:sastoken", f"https://{host}")


def identity_access(host: str, credential: TokenCredential) -> HubAccess:
    """Sign-in as the app identity: its Entra ID token for IoT Hub's scope, as a bearer token."""

    def token() -> AccessToken:
        granted = credential.get_token(IOTHUB_SCOPE)
        return AccessToken(f"Bearer {granted.token}", granted.expires_on)

    return HubAccess(host, token, b"bearer", IOTHUB_SCOPE)


def hub_access(connection: str | None, hostname: str | None,
               credential: Callable[[], TokenCredential]) -> HubAccess | None:  # fmt: skip
    """The sign-in the settings give: IOTHUB_CONNECTION's if set, else the app identity's (`credential()`,
    built only then) at IOTHUB_HOSTNAME, else None (no IoT Hub)."""
    if connection:
        return connection_access(connection)
    return identity_access(hostname, credential()) if hostname else None


class C2DSendFailed(Exception):
    """IoT Hub did not accept a C2D message (its message says how, never with a token or a key)."""


class C2DClient(Protocol):
    """What the channel needs to send a C2D message (`C2DSender`; tests hand in one on a recording client)."""

    def send(self, message: uamqp.Message) -> None: ...


class C2DSender:
    """C2D messages on one uamqp SendClient per thread, each send bounded: a message IoT Hub has not settled
    within `timeout_s` of being queued fails (uamqp's `msg_timeout`), so a hung hub cannot hold the invocation.
    Per thread because a uamqp client is not thread-safe and the Functions host runs concurrent invocations of a
    sync function on a thread pool (a lock instead would queue sends behind each other's bounds, past the
    claim's lease). After a failed send the thread's client is dropped and its next send opens a new one,
    rather than reuse a link in an unknown state (a timed-out message may still be in flight on it). `client`:
    one already built that every thread sends on (tests hand in a recording one); by default each thread's is
    built on its first send."""

    def __init__(self, access: HubAccess, timeout_s: float, client: Any = None) -> None:
        self.access, self.timeout_s = access, timeout_s
        self._given = client
        self._local = threading.local()

    @property
    def client(self) -> Any:
        """This thread's SendClient: None before its first send (unless one was given) and after a failed one."""
        return getattr(self._local, "client", self._given)

    def send_client(self) -> uamqp.SendClient:
        """The SendClient this thread's next send goes on (built on first use: nothing connects before a send)."""
        if self.client is None:
            import uamqp

            self._local.client = uamqp.SendClient(f"amqps://{self.access.host}{C2D_PATH}", auth=self.access.auth(),
                                                  keep_alive_interval=120,
                                                  msg_timeout=int(self.timeout_s * 1000))  # fmt: skip
        return self.client

    def send(self, message: uamqp.Message) -> None:
        """Send one message and wait until IoT Hub settles it or the bound runs out; `C2DSendFailed` if it
        did not accept it (uamqp's own errors, e.g. a CBS timeout, propagate)."""
        from uamqp.constants import MessageSendResult, MessageState

        outcomes: list[MessageSendResult] = []
        message.on_send_complete = lambda result, error: outcomes.append(MessageSendResult(result))
        client = self.send_client()
        try:
            client.queue_message(message)
            states = client.send_all_messages(close_on_done=False)
        except Exception:
            self._discard()
            raise
        if states != [MessageState.SendComplete]:
            self._discard()
            if MessageSendResult.Timeout in outcomes:
                raise C2DSendFailed(f"not settled within {self.timeout_s:g} s")
            raise C2DSendFailed(f"send ended {', '.join(state.name for state in states) or 'without a state'}")

    def _discard(self) -> None:
        client, self._local.client = self.client, None
        if client is not None:
            client.close()


def c2d_message(alert: Mapping[str, Any], body: bytes, signing_key: str, expires_at: datetime) -> uamqp.Message:
    """An alert's C2D message, its properties where the SDK's `send_c2d_message` puts them (the system ones in
    the AMQP properties, the rest application properties)."""
    import uamqp

    properties = uamqp.message.MessageProperties(
        message_id=alert["alert_id"], to=f"/devices/{alert['car_id']}{C2D_PATH}",
        absolute_expiry_time=int(expires_at.timestamp() * 1000), content_type="application/json",
        content_encoding="utf-8",
    )  # fmt: skip
    application = {"iothub-ack": "full", "alert-type": alert["type"], "severity": alert["severity"],
                   "locale": alert.get("locale", "en"), "x-signature": sign(body, signing_key)}  # fmt: skip
    return uamqp.Message(body, properties=properties, application_properties=application)


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
            self.client.send(c2d_message(alert, body, self.signing_key, expires_at))
        except Exception as error:  # C2DSendFailed, or uamqp's own (named by type: their text may quote the hub)
            detail = str(error) if isinstance(error, C2DSendFailed) else type(error).__name__
            raise TransientDeliveryError(f"alert {alert_id} for car {car_id}: IoT Hub send failed ({detail})",
                                         maybe_received=True) from None  # fmt: skip
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


def open_feedback_receiver(access: HubAccess) -> uamqp.ReceiveClient:
    """A uamqp receiver of the IoT Hub's feedback endpoint, signed in as the sends are (`HubAccess`); it
    connects on its first receive. Not exercised against a hub: none was reached here."""
    import uamqp

    return uamqp.ReceiveClient(f"amqps://{access.host}{FEEDBACK_PATH}", auth=access.auth(), auto_complete=False)
