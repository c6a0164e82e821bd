"""The IoT Hub channel up to the wire: the app's C2D sender builds the AMQP message (checked against what the
SDK's own client puts on the wire), a recording connection stands where its uamqp SendClient would connect
(nothing leaves the machine), sign-in is inspected on the uamqp objects both ways (connection string, app
identity), a bounded send is driven through uamqp's own SendClient logic, and IoT Hub's feedback is a recorded
batch in the documented format, received as uamqp messages. The alert store is Azurite's, and the queue
trigger runs through the local host. No IoT Hub is reached (README, "IoT Hub channel")."""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import uamqp
from azure.core.credentials import AccessToken
from azure.iot.hub import IoTHubRegistryManager
from uamqp.constants import MessageState

from shared.adapters import alert_store
from shared.adapters.car_profiles import write_profiles
from shared.adapters.headunit import TransientDeliveryError, canonical_json, verify
from shared.adapters.iothub import (
    FEEDBACK_CONTENT_TYPE,
    FEEDBACK_PATH,
    IOTHUB_SCOPE,
    C2DSender,
    HubAccess,
    IoTHubChannel,
    apply_feedback,
    c2d_message,
    connection_access,
    drain_feedback,
    identity_access,
    open_feedback_receiver,
    parse_feedback,
)
from shared.core.alerts import parse_iso_utc
from shared.core.telemetry import InputError

HOST = "trey-hub.azure-devices.net"
CONNECTION = (f"HostName={HOST};SharedAccessKeyName=service;SharedAccessKey="
              + base64.b64encode(b"not-a-real-key-of-32-bytes-long!").decode())  # fmt: skip
KEY = "test-signing-key"
NOW = datetime(2017, 3, 20, 3, 5, tzinfo=UTC)  # five minutes after the test alerts were created


class RecordingConnection:
    """Where the SDK's uamqp.SendClient sits: keeps each uamqp.Message the SDK built and its AMQP encoding,
    and answers every send with `outcome`, as uamqp reports it."""

    def __init__(self, outcome: MessageState = MessageState.SendComplete) -> None:
        self.outcome = outcome
        self.wire: list[bytes] = []

    def queue_message(self, message: uamqp.Message) -> None:
        self.wire.append(message.encode_message())

    def send_all_messages(self, close_on_done: bool = True) -> list[MessageState]:
        return [self.outcome]

    def close(self) -> None:
        """Nothing was opened."""

    def sent(self) -> list[uamqp.Message]:
        """The messages as IoT Hub would decode them off the wire."""
        return [uamqp.Message.decode_from_bytes(data) for data in self.wire]


class AppIdentity:
    """Stands for the app's managed identity: hands out an Entra ID token for whatever scope it is asked."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("entra-token-of-the-app", 1_900_000_000)


def sender(connection: RecordingConnection, access: HubAccess | None = None) -> C2DSender:
    """The app's C2D sender, its uamqp SendClient swapped for the recording one."""
    return C2DSender(access or connection_access(CONNECTION), 35.0, client=connection)


def channel(connection: RecordingConnection, hours: float = 24) -> IoTHubChannel:
    return IoTHubChannel(sender(connection), KEY, timedelta(hours=hours), lambda: NOW)


def test_an_alert_goes_out_as_a_c2d_message_with_its_id_expiry_ack_and_type(make_alert):
    wire = RecordingConnection()
    alert = make_alert()
    result = channel(wire).deliver(alert)
    assert result.delivered and result.status_code == 202
    [message] = wire.sent()
    properties, application = message.properties, message.application_properties
    assert properties.to == b"/devices/CAR-00017/messages/devicebound"
    assert properties.message_id == alert["alert_id"].encode()
    expires = parse_iso_utc(alert["created_at"]) + timedelta(hours=24)
    assert properties.absolute_expiry_time == int(expires.timestamp() * 1000)
    assert (properties.content_type, properties.content_encoding) == (b"application/json", b"utf-8")
    assert application[b"iothub-ack"] == b"full"
    assert application[b"alert-type"] == b"battery_end_of_life"
    assert (application[b"severity"], application[b"locale"]) == (b"high", b"en")
    body = b"".join(message.get_data())
    assert body == canonical_json(alert) and json.loads(body) == alert
    assert verify(body, application[b"x-signature"].decode(), KEY)  # the head unit checks it as the gateway does


def sdk_properties(alert: dict, signature: str, expires: datetime) -> dict:
    """The alert's properties as the SDK's `send_c2d_message` takes them (its own names for the system ones)."""
    return {"messageId": alert["alert_id"], "expiryTimeUtc": int(expires.timestamp() * 1000),
            "contentType": "application/json", "contentEncoding": "utf-8", "iothub-ack": "full",
            "alert-type": alert["type"], "severity": alert["severity"], "locale": "en",
            "x-signature": signature}  # fmt: skip


SIGN_INS = {  # the app's sign-in and the SDK's client signed in the same way
    "connection string": (lambda: connection_access(CONNECTION),
                          lambda: IoTHubRegistryManager.from_connection_string(CONNECTION)),
    "host name and app identity": (lambda: identity_access(HOST, AppIdentity()),
                                   lambda: IoTHubRegistryManager.from_token_credential(HOST, AppIdentity())),
}  # fmt: skip


@pytest.mark.parametrize("sign_in", SIGN_INS)
def test_the_c2d_message_is_what_the_sdks_own_client_puts_on_the_wire(make_alert, sign_in):
    """The SDK's registry manager and the app's sender, signed in the same way, send the same bytes for the
    same alert."""
    access, sdk_client = SIGN_INS[sign_in]
    alert, expires = make_alert(), NOW + timedelta(hours=24)
    ours, theirs = RecordingConnection(), RecordingConnection()
    sender(ours, access()).send(c2d_message(alert, canonical_json(alert), KEY, expires))
    sdk = sdk_client()
    sdk.amqp_svc_client.amqp_client = theirs
    [signed] = ours.sent()
    signature = signed.application_properties[b"x-signature"].decode()
    sdk.send_c2d_message(alert["car_id"], canonical_json(alert), sdk_properties(alert, signature, expires))
    assert ours.wire == theirs.wire and len(ours.wire) == 1


def test_signing_in_by_host_name_carries_the_app_identitys_bearer_token_as_the_sdks_token_auth_does():
    identity = AppIdentity()
    client = C2DSender(identity_access(HOST, identity), 35.0).send_client()  # built, not connected
    sdk = IoTHubRegistryManager.from_token_credential(HOST, AppIdentity())  # kept: its __del__ drops its client
    sdk_auth = sdk.amqp_svc_client.amqp_client._auth
    auth = client._auth
    assert auth.token == sdk_auth.token == b"Bearer entra-token-of-the-app"
    assert (auth.token_type, auth.audience, auth.uri) == (sdk_auth.token_type, sdk_auth.audience, sdk_auth.uri)
    assert (auth.token_type, auth.audience) == (b"bearer", IOTHUB_SCOPE.encode())
    assert identity.scopes == [(IOTHUB_SCOPE,)]
    assert client._remote_address.address == f"amqps://{HOST}/messages/devicebound"
    assert client._msg_timeout == 35_000  # every send bounded (uamqp's msg_timeout, ms)
    assert "entra-token" not in repr(identity_access(HOST, identity))


def test_each_thread_sends_on_a_send_client_of_its_own():
    """The host runs concurrent push_alert invocations on a thread pool, and a uamqp client is not thread-safe:
    each thread builds its own SendClient on its first send and keeps it; nothing connects here."""
    send = C2DSender(identity_access(HOST, AppIdentity()), 35.0)
    with ThreadPoolExecutor(2) as pool:
        barrier = threading.Barrier(2)  # both threads alive at once, so the pool cannot run both on one

        def twice() -> tuple[int, int]:
            barrier.wait()
            return id(send.send_client()), id(send.send_client())

        clients = [future.result() for future in [pool.submit(twice), pool.submit(twice)]]
    assert all(first == again for first, again in clients)
    assert clients[0][0] != clients[1][0]
    assert send.client is None  # this thread has sent nothing yet


def test_the_feedback_receiver_reads_the_feedback_path_signed_in_either_way():
    by_identity = open_feedback_receiver(identity_access(HOST, AppIdentity()))
    assert by_identity._remote_address.address == f"amqps://{HOST}{FEEDBACK_PATH}"
    assert (by_identity._auth.token_type, by_identity._auth.token) == (b"bearer", b"Bearer entra-token-of-the-app")
    assert by_identity._auth.audience == IOTHUB_SCOPE.encode() and not by_identity.auto_complete
    by_key = open_feedback_receiver(connection_access(CONNECTION))
    assert by_key._remote_address.address == by_identity._remote_address.address
    assert by_key._auth.token_type == b"servicebus.windows.net:sastoken"
    assert by_key._auth.token.startswith(f"SharedAccessSignature sr={HOST}".encode())


def test_a_failed_send_is_transient_and_may_have_reached_iot_hub(make_alert):
    wire = RecordingConnection(MessageState.SendFailed)
    send = sender(wire)
    with pytest.raises(TransientDeliveryError, match="IoT Hub send failed") as raised:
        IoTHubChannel(send, KEY, timedelta(hours=24), lambda: NOW).deliver(make_alert())
    assert raised.value.maybe_received
    assert "SharedAccessKey" not in str(raised.value)
    assert send.client is None  # the next send opens a new SendClient rather than reuse this one


class UnsettlingHub(uamqp.SendClient):
    """uamqp's own SendClient on a hub that takes the link and each message but never settles one. Nothing
    connects: `open` opens nothing, and each round of work is what uamqp's `_client_run` does once its link is
    up (its `_filter_pending`, which times messages out). A message is queued as if it had already waited
    out the bound (the test's stand-in for time passing: no sleep). Stops after a few rounds, so a client
    without a bound fails the test rather than hang it."""

    def __init__(self, msg_timeout_ms: int) -> None:
        super().__init__(f"amqps://{HOST}/messages/devicebound", msg_timeout=msg_timeout_ms)
        self.rounds = 0

    def open(self, connection: object = None) -> None:
        """No connection."""

    def queue_message(self, *messages: uamqp.Message) -> None:
        super().queue_message(*messages)
        for message in self._pending_messages:
            message.idle_time -= self._msg_timeout + 1

    def _transfer_message(self, message: uamqp.Message, timeout: int) -> None:
        """The hub takes it and never settles it."""

    def do_work(self, **kwargs: object) -> bool:
        self.rounds += 1
        self._pending_messages = self._filter_pending()
        return self.rounds < 3


def test_a_send_iot_hub_does_not_settle_within_the_bound_is_retried_and_recorded_unknown(harness, make_alert):
    services = harness.configure(ALERT_CHANNEL="iothub", IOTHUB_CONNECTION=CONNECTION)
    services.iothub_client = lambda access, bound_s: C2DSender(access, bound_s, UnsettlingHub(int(bound_s * 1000)))
    alert = make_alert(car_id="CAR-HUNG")
    harness.send_alerts([alert])
    drain = harness.host.drain_queue("push_alert")
    assert drain.succeeded == 0 and "IoT Hub send failed (not settled within 35 s)" in " ".join(drain.failures)
    table = alert_store.alerts_table(services.tables)
    assert alert_store.get_alert(table, "CAR-HUNG", alert["alert_id"])["state"] == alert_store.UNKNOWN


def test_an_expired_alert_or_a_car_iot_hub_cannot_name_is_rejected_without_sending(make_alert):
    wire = RecordingConnection()
    late = channel(wire, hours=0.05).deliver(make_alert())  # created 03:00, expired 03:03, now 03:05
    assert not late.delivered and "expired at 2017-03-20T03:03:00Z" in late.error
    unnamed = channel(wire).deliver(make_alert(car_id="CAR 17/ü"))
    assert not unnamed.delivered and "not an IoT Hub device id" in unnamed.error
    assert wire.wire == []


def feedback(*records: tuple[str, str, str]) -> bytes:
    """A feedback message body as IoT Hub documents it: (originalMessageId, deviceId, statusCode) records."""
    return json.dumps([
        {"originalMessageId": message_id, "description": "" if status == "Success" else f"{status} by hub",
         "deviceGenerationId": "636324498924387283", "deviceId": device, "enqueuedTimeUtc": "2017-03-20T04:10:00.000Z",
         "statusCode": status} for message_id, device, status in records
    ]).encode()  # fmt: skip


class RecordingReceiver:
    """Where a uamqp.ReceiveClient of the feedback endpoint sits: hands out the batches given, as received
    uamqp messages (decoded off the wire), then none; records how each was settled."""

    def __init__(self, *bodies: bytes) -> None:
        self.batches = [[self._received(body) for body in bodies]]
        self.settled: list[str] = []

    def _received(self, body: bytes) -> uamqp.Message:
        sent = uamqp.Message(body, properties=uamqp.message.MessageProperties(content_type=FEEDBACK_CONTENT_TYPE))
        decoded = uamqp.Message.decode_from_bytes(sent.encode_message())
        return uamqp.Message(message=decoded.get_message(), settler=lambda response: self.settled.append(
            type(response).__name__))  # fmt: skip

    def receive_message_batch(self, max_batch_size: int | None = None, timeout: int = 0) -> list[uamqp.Message]:
        return self.batches.pop(0) if self.batches else []


def test_feedback_records_parse_and_bad_ones_are_named():
    [record] = parse_feedback(feedback(("a1", "CAR-1", "Expired")))
    assert (record.alert_id, record.car_id, record.status) == ("a1", "CAR-1", "Expired")
    assert record.enqueued_at == datetime(2017, 3, 20, 4, 10, tzinfo=UTC)
    with pytest.raises(InputError, match="record 0: statusCode must be one of"):
        parse_feedback(feedback(("a1", "CAR-1", "Lost")))
    with pytest.raises(InputError, match="record 1: missing originalMessageId"):
        parse_feedback(json.dumps([*json.loads(feedback(("a1", "CAR-1", "Success"))), {"deviceId": "CAR-1",
                       "statusCode": "Success", "enqueuedTimeUtc": "2017-03-20T04:10:00Z"}]))  # fmt: skip
    with pytest.raises(InputError, match="not an array"):
        parse_feedback(b'{"statusCode": "Success"}')


def test_push_alert_sends_over_iot_hub_for_a_car_that_asks_and_http_for_the_others(harness, make_alert):
    iothub_car, http_car = make_alert(car_id="CAR-IOT"), make_alert(car_id="CAR-WEB")
    services = harness.configure(IOTHUB_CONNECTION=CONNECTION)
    write_profiles(services.tables, pd.DataFrame({"Car_ID": ["CAR-IOT", "CAR-WEB"], "Region": ["Nordic", "Nordic"],
                                                  "channel": ["iothub", None]}))  # fmt: skip
    wire = RecordingConnection()
    services.iothub_client = lambda access, bound_s: sender(wire, access)
    harness.send_alerts([iothub_car, http_car])
    assert harness.host.drain_queue("push_alert").succeeded == 2
    assert [m.properties.message_id for m in wire.sent()] == [iothub_car["alert_id"].encode()]
    assert list(harness.simulator.received_by_car()) == ["CAR-WEB"]
    table = alert_store.alerts_table(services.tables)
    assert alert_store.get_alert(table, "CAR-IOT", iothub_car["alert_id"])["state"] == alert_store.DELIVERED


def test_alert_channel_iothub_sends_every_car_over_iot_hub_and_without_a_hub_retries(harness, make_alert):
    services = harness.configure(ALERT_CHANNEL="iothub", IOTHUB_CONNECTION=None, IOTHUB_HOSTNAME=None)
    harness.send_alerts([make_alert(car_id="CAR-NOCONN")])
    drain = harness.host.drain_queue("push_alert")
    assert drain.succeeded == 0
    assert "neither IOTHUB_CONNECTION nor IOTHUB_HOSTNAME is set" in " ".join(drain.failures)
    assert harness.simulator.received_by_car() == {}
    services = harness.configure(ALERT_CHANNEL="iothub", IOTHUB_CONNECTION=CONNECTION)
    wire = RecordingConnection()
    services.iothub_client = lambda access, bound_s: sender(wire, access)
    harness.send_alerts([make_alert(car_id="CAR-ANY")])
    harness.host.drain_queue("push_alert")
    assert [m.properties.to for m in wire.sent()] == [b"/devices/CAR-ANY/messages/devicebound"]


def test_with_iothub_hostname_alone_the_app_identity_signs_in_and_the_send_is_bounded(harness, make_alert):
    services = harness.configure(ALERT_CHANNEL="iothub", IOTHUB_CONNECTION=None, IOTHUB_HOSTNAME=HOST)
    identity, built, wire = AppIdentity(), [], RecordingConnection()
    services.iothub_credential = lambda: identity

    def recorded(access: HubAccess, bound_s: float) -> C2DSender:
        built.append((access, bound_s))
        return sender(wire, access)

    services.iothub_client = recorded
    harness.send_alerts([make_alert(car_id="CAR-ENTRA")])
    assert harness.host.drain_queue("push_alert").succeeded == 1
    [(access, bound_s)] = built
    assert (access.host, access.token_type, access.get_token().token) == (HOST, b"bearer",
                                                                          "Bearer entra-token-of-the-app")  # fmt: skip
    assert bound_s == services.delivery.longest_attempt_s  # the claim's lease is sized to outlast it
    assert [m.properties.to for m in wire.sent()] == [b"/devices/CAR-ENTRA/messages/devicebound"]


def test_feedback_marks_alerts_delivered_expired_or_rejected_and_frees_the_cooldown(harness, make_alert):
    services = harness.configure(ALERT_CHANNEL="iothub", IOTHUB_CONNECTION=CONNECTION)
    services.iothub_client = lambda access, bound_s: sender(RecordingConnection(), access)
    taken, lapsed, refused = (make_alert(car_id=car) for car in ("CAR-A", "CAR-B", "CAR-C"))
    harness.send_alerts([taken, lapsed, refused])
    assert harness.host.drain_queue("push_alert").succeeded == 3
    table = alert_store.alerts_table(services.tables)
    receiver = RecordingReceiver(
        feedback((taken["alert_id"], "CAR-A", "Success"), (lapsed["alert_id"], "CAR-B", "Expired"),
                 (refused["alert_id"], "CAR-C", "Rejected"), ("0f" * 16, "CAR-A", "Success")),
        b"not feedback",
    )  # fmt: skip
    counts = drain_feedback(receiver, table, harness.clock())
    assert counts == {"delivered": 1, "expired": 1, "rejected": 1, "unknown_alert": 1, "malformed": 1}
    assert receiver.settled == ["MessageAccepted", "MessageRejected"]
    state = {a["car_id"]: alert_store.get_alert(table, a["car_id"], a["alert_id"]) for a in (taken, lapsed, refused)}
    assert {car: record["state"] for car, record in state.items()} == {"CAR-A": "delivered", "CAR-B": "expired",
                                                                      "CAR-C": "rejected"}  # fmt: skip
    assert state["CAR-B"]["reason"] == "IoT Hub feedback Expired: Expired by hub"
    # The same batch again (a redelivery after a crash before it was settled) changes nothing.
    assert apply_feedback(table, parse_feedback(feedback((lapsed["alert_id"], "CAR-B", "Expired"))), NOW)
    assert alert_store.get_alert(table, "CAR-B", lapsed["alert_id"])["state"] == "expired"
    # A car that never got its alert is not held back by the cooldown; one that did is.
    again = [make_alert(car_id="CAR-A", day="2017-03-20"), make_alert(car_id="CAR-B", day="2017-03-20")]
    harness.send_alerts(again)
    harness.host.drain_queue("push_alert")
    outcomes = {a["car_id"]: alert_store.get_alert(table, a["car_id"], a["alert_id"])["state"] for a in again}
    assert outcomes == {"CAR-A": alert_store.SUPPRESSED, "CAR-B": alert_store.DELIVERED}


def test_the_feedback_timer_runs_through_the_host_and_does_nothing_without_a_hub(harness):
    harness.configure(IOTHUB_CONNECTION=None, IOTHUB_HOSTNAME=None)
    assert harness.host.fire_timer("iothub_feedback_timer").succeeded
