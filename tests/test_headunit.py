"""Delivery to head units against the real simulator (HTTP on loopback), and `push_alert` on Azurite."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from shared.adapters import alert_store
from shared.adapters.headunit import (
    DEFAULT_POLICY,
    WEBHOOK_TOLERANCE_S,
    DeliveryPolicy,
    TransientDeliveryError,
    alerts_url,
    canonical_json,
    deliver_alert,
    push_alert,
    sign,
    signed_headers,
    verify,
    verify_webhook,
    webhook_signature,
)
from shared.config.host import load_host_config
from shared.config.settings import SettingsError
from shared.core.alerts import COOLDOWN, COOLDOWN_ELAPSED, DUPLICATE, ESCALATED, FIRST
from shared.core.telemetry import InputError
from shared.devtools.azurite import PROJECT_ROOT, free_port
from shared.devtools.headunit_simulator import MAX_BODY_BYTES, HeadUnitSimulator

KEY = "test-signing-key"
NOW = datetime(2017, 3, 20, 3, 5, tzinfo=UTC)


@pytest.fixture
def simulator():
    with HeadUnitSimulator(KEY) as running:
        yield running


@pytest.fixture
def session():
    with requests.Session() as http:
        yield http


# --- signing and the body -----------------------------------------------------------------------------


def test_signature_is_hmac_sha256_hex_of_the_body():
    # RFC 4231, test case 2.
    expected = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign(b"what do ya want for nothing?", "Jefe") == expected
    assert verify(b"what do ya want for nothing?", expected, "Jefe")
    assert not verify(b"what do ya want for nothing!", expected, "Jefe")
    assert not verify(b"what do ya want for nothing?", expected, "jefe")
    assert not verify(b"what do ya want for nothing?", None, "Jefe")


def test_body_is_canonical_json_and_refuses_nan():
    expected = '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == expected
    with pytest.raises(ValueError):
        canonical_json({"days_to_rated_life": float("nan")})


def test_car_id_is_one_escaped_path_segment():
    assert alerts_url("http://gw/", "CAR 1/A?b") == "http://gw/vehicles/CAR%201%2FA%3Fb/alerts"
    assert alerts_url("http://gw", "CAR.1%é") == "http://gw/vehicles/CAR.1%25%C3%A9/alerts"
    assert alerts_url("http://gw", "...") == "http://gw/vehicles/.../alerts"  # not a dot segment


@pytest.mark.parametrize("car_id", [".", "..", "", "CAR\ud800"])
def test_car_ids_no_encoding_can_make_a_path_segment_are_refused(car_id):
    with pytest.raises(InputError, match="car_id"):
        alerts_url("http://gw", car_id)


# --- Standard Webhooks headers ------------------------------------------------------------------------

# The Standard Webhooks specification's test vector (its reference libraries all check it).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_webhook_signature_is_the_standard_webhooks_one():
    assert webhook_signature(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SECRET) == VECTOR_SIGNATURE
    check = {"webhook_id": VECTOR_ID, "timestamp": str(VECTOR_TIMESTAMP), "body": VECTOR_BODY, "key": VECTOR_SECRET}
    now = VECTOR_TIMESTAMP + 10
    assert verify_webhook(signature=VECTOR_SIGNATURE, now=now, **check) is None
    assert verify_webhook(signature=f"v1,bm90LWl0 {VECTOR_SIGNATURE}", now=now, **check) is None  # key rotation
    assert verify_webhook(signature="v1,bm90LWl0", now=now, **check) == "bad webhook-signature"
    assert "outside ±300 s" in verify_webhook(signature=VECTOR_SIGNATURE, now=now + 300, **check)  # stale: replay
    assert "outside ±300 s" in verify_webhook(signature=VECTOR_SIGNATURE, now=VECTOR_TIMESTAMP - 301, **check)
    assert "missing" in verify_webhook(signature=None, now=now, **check)
    tampered = check | {"body": b'{"test": 2432232315}'}
    assert verify_webhook(signature=VECTOR_SIGNATURE, now=now, **tampered) == "bad webhook-signature"
    other_id = check | {"webhook_id": "msg_other"}
    assert verify_webhook(signature=VECTOR_SIGNATURE, now=now, **other_id) == "bad webhook-signature"


def test_an_attempt_carries_both_signatures_over_the_same_body(make_alert):
    alert = make_alert()
    body = canonical_json(alert)
    headers = signed_headers(alert["alert_id"], body, KEY, timestamp=1_700_000_000)
    assert headers["X-Signature"] == sign(body, KEY)  # the fixed contract, unchanged
    assert headers["Idempotency-Key"] == headers["webhook-id"] == alert["alert_id"]
    assert headers["webhook-timestamp"] == "1700000000"
    digest = hmac.new(KEY.encode(), f"{alert['alert_id']}.1700000000.".encode() + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def post_signed(simulator: HeadUnitSimulator, alert: dict, timestamp: int, **changes: str | None):
    """POST `alert` with every header signed at `timestamp`, then the header `changes` applied."""
    body = canonical_json(alert)
    headers = signed_headers(alert["alert_id"], body, KEY, timestamp=timestamp)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    return requests.post(alerts_url(simulator.url, alert["car_id"]), data=body, headers=headers, timeout=10)


def test_the_simulator_refuses_stale_future_and_unsigned_webhooks(make_alert):
    clock = [1_700_000_000.0]
    with HeadUnitSimulator(KEY, clock=lambda: clock[0]) as simulator:
        alert, now = make_alert(), int(clock[0])
        for timestamp in (now - WEBHOOK_TOLERANCE_S - 1, now + WEBHOOK_TOLERANCE_S + 1):
            response = post_signed(simulator, alert, timestamp)
            assert response.status_code == 401 and "webhook-timestamp" in response.json()["error"]
        assert post_signed(simulator, alert, now, webhook_signature=None).status_code == 401
        assert post_signed(simulator, alert, now, webhook_id="someone-else").status_code == 401  # signed over the id
        assert post_signed(simulator, alert, now, webhook_timestamp="soon").status_code == 401
        assert simulator.received_by_car() == {}
        assert post_signed(simulator, alert, now - WEBHOOK_TOLERANCE_S).status_code == 201  # at the edge: accepted


def test_a_captured_request_replayed_is_never_shown_twice_and_is_refused_once_stale(make_alert):
    clock = [1_700_000_000.0]
    with HeadUnitSimulator(KEY, clock=lambda: clock[0]) as simulator:
        alert = make_alert()
        body = canonical_json(alert)
        captured = signed_headers(alert["alert_id"], body, KEY, timestamp=int(clock[0]))
        url = alerts_url(simulator.url, alert["car_id"])

        def replay():
            return requests.post(url, data=body, headers=captured, timeout=10)

        assert replay().status_code == 201
        clock[0] += 60
        assert (replay().status_code, replay().json()["status"]) == (200, "duplicate")  # within the window
        clock[0] += WEBHOOK_TOLERANCE_S
        assert replay().status_code == 401  # stale
        assert simulator.received("CAR-00017") == [alert]


# --- the delivery policy ------------------------------------------------------------------------------


def test_the_delivery_policy_fits_host_json():
    host = load_host_config()
    assert DEFAULT_POLICY.longest_attempt_s + 10 <= DEFAULT_POLICY.lease.total_seconds()
    assert DEFAULT_POLICY.lease <= host.visibility_timeout  # a retry after a failed attempt finds the lease over
    assert [DEFAULT_POLICY.timeout(n) for n in range(1, host.max_dequeue_count + 1)] == [
        (5.0, 15.0), (5.0, 30.0), (5.0, 30.0), (5.0, 30.0), (5.0, 30.0),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="must outlast the longest attempt"):
        DeliveryPolicy(read_timeouts_s=(15.0, 60.0))


# --- deliver_alert against the simulator --------------------------------------------------------------


def test_a_delivered_alert_arrives_once_verified_and_keyed(simulator, session, make_alert):
    alert = make_alert()
    result = deliver_alert(alert, simulator.url, KEY, session)
    assert (result.delivered, result.status_code, result.error) == (True, 201, None)
    assert simulator.received("CAR-00017") == [alert]
    assert [(a.car_id, a.idempotency_key, a.status) for a in simulator.attempts] == [
        ("CAR-00017", alert["alert_id"], 201)
    ]


def test_a_repeated_idempotency_key_is_acknowledged_but_not_counted(simulator, session, make_alert):
    alert = make_alert()
    first = deliver_alert(alert, simulator.url, KEY, session)
    again = deliver_alert(alert, simulator.url, KEY, session)
    assert first.delivered and again.delivered
    assert [a.status for a in simulator.attempts] == [201, 200]
    assert simulator.received("CAR-00017") == [alert]


def test_a_wrong_signing_key_is_rejected_for_good(simulator, session, make_alert):
    result = deliver_alert(make_alert(), simulator.url, "not-the-key", session)
    assert (result.delivered, result.status_code) == (False, 401)
    assert "401" in result.error and "X-Signature" in result.error
    assert simulator.received_by_car() == {}


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ("tampered_body", 401, "X-Signature"),
        ("other_car_in_path", 400, "car_id does not match"),
        ("key_not_alert_id", 400, "Idempotency-Key must be the body's alert_id"),
    ],
)
def test_the_simulator_checks_what_the_contract_promises(simulator, make_alert, change, status, words):
    alert = make_alert()
    body = canonical_json(alert)
    headers = signed_headers(alert["alert_id"], body, KEY, timestamp=int(time.time()))
    url = alerts_url(simulator.url, alert["car_id"])
    if change == "tampered_body":
        body = canonical_json(alert | {"severity": "critical"})
    elif change == "other_car_in_path":
        url = alerts_url(simulator.url, "CAR-00018")
    else:
        headers["Idempotency-Key"] = "something-else"
    response = requests.post(url, data=body, headers=headers, timeout=10)
    assert response.status_code == status and words in response.json()["error"]
    assert simulator.received_by_car() == {}


def test_an_oversize_body_is_refused_and_the_connection_stays_usable(simulator, session, make_alert):
    response = session.post(alerts_url(simulator.url, "CAR-00017"), data=b"x" * (MAX_BODY_BYTES + 1), timeout=10)
    assert response.status_code == 413
    assert deliver_alert(make_alert(), simulator.url, KEY, session).delivered


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_busy_or_broken_gateways_are_transient_and_the_retry_delivers(simulator, session, make_alert, status):
    alert = make_alert()
    simulator.fail_next(1, status)
    with pytest.raises(TransientDeliveryError, match=f"gateway answered {status}") as error:
        deliver_alert(alert, simulator.url, KEY, session)
    assert error.value.status_code == status
    assert simulator.received_by_car() == {}
    assert deliver_alert(alert, simulator.url, KEY, session).delivered
    assert simulator.received("CAR-00017") == [alert]


@pytest.mark.parametrize("status", [400, 404, 410])
def test_client_errors_are_permanent_rejections_returned_not_raised(simulator, session, make_alert, status):
    simulator.fail_car("CAR-00017", status)
    result = deliver_alert(make_alert(), simulator.url, KEY, session)
    assert (result.delivered, result.status_code) == (False, status)
    assert f"gateway answered {status}" in result.error
    simulator.fail_car("CAR-00017", None)
    assert deliver_alert(make_alert(), simulator.url, KEY, session).delivered


def test_a_timeout_is_transient_and_a_late_answer_plus_retry_counts_once(simulator, session, make_alert):
    alert = make_alert()
    simulator.stall_next(1)
    with pytest.raises(TransientDeliveryError, match=r"did not answer within 0\.3s"):
        deliver_alert(alert, simulator.url, KEY, session, timeout=0.3)
    simulator.release_stalled()
    assert deliver_alert(alert, simulator.url, KEY, session).delivered
    assert simulator.received("CAR-00017") == [alert]


def test_no_gateway_listening_is_transient(session, make_alert):
    with pytest.raises(TransientDeliveryError, match="cannot reach the gateway") as error:
        deliver_alert(make_alert(), f"http://127.0.0.1:{free_port()}", KEY, session, timeout=2)
    assert error.value.maybe_received is False  # nothing was sent


def test_a_timeout_after_sending_may_have_reached_the_gateway(simulator, session, make_alert):
    simulator.stall_next(1)
    with pytest.raises(TransientDeliveryError, match="it may have the alert") as error:
        deliver_alert(make_alert(), simulator.url, KEY, session, timeout=(2, 0.3))
    assert error.value.maybe_received is True
    simulator.release_stalled()


def test_a_connection_reset_after_sending_may_have_reached_the_gateway(session, make_alert):
    with socket.create_server(("127.0.0.1", 0)) as server:

        def take_then_reset() -> None:
            connection, _ = server.accept()
            connection.recv(65536)  # the request arrived
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()  # closing with linger 0 sends a reset

        thread = threading.Thread(target=take_then_reset)
        thread.start()
        with pytest.raises(TransientDeliveryError, match="connection lost after the request was sent") as error:
            deliver_alert(make_alert(), f"http://127.0.0.1:{server.getsockname()[1]}", KEY, session, timeout=5)
        thread.join()
    assert error.value.maybe_received is True


def test_an_unset_signing_key_is_named(simulator, session, make_alert):
    with pytest.raises(SettingsError, match="HEAD_UNIT_SIGNING_KEY"):
        deliver_alert(make_alert(), simulator.url, "", session)


def test_cars_with_awkward_ids_get_their_alerts_and_people_can_list_them(simulator, session, make_alert):
    odd, plain = make_alert(car_id="CAR 1/A"), make_alert()
    for alert in (odd, plain):
        assert deliver_alert(alert, simulator.url, KEY, session).delivered
    assert simulator.received("CAR 1/A") == [odd]
    assert session.get(alerts_url(simulator.url, "CAR 1/A"), timeout=10).json() == [odd]
    assert session.get(alerts_url(simulator.url, "CAR-404"), timeout=10).json() == []
    everything = session.get(f"{simulator.url}/vehicles", timeout=10).json()
    assert everything == {"CAR 1/A": [odd], "CAR-00017": [plain]}


# --- push_alert: cooldown, claim, deliver, record (Azurite + simulator) -------------------------------


@pytest.fixture
def push(alert_table, simulator, session):
    """push_alert wired to this test's table and simulator, with a 7-day cooldown."""

    def run(alert: dict, now: datetime = NOW):
        return push_alert(alert, table=alert_table, session=session, gateway_url=simulator.url,
                          signing_key=KEY, cooldown_days=7, now=now, timeout=5)  # fmt: skip

    return run


def record_of(table, alert: dict) -> dict:
    return alert_store.get_alert(table, alert["car_id"], alert["alert_id"])


def test_push_delivers_records_and_remembers_the_latest(push, alert_table, simulator, make_alert):
    alert = make_alert()
    outcome = push(alert)
    assert (outcome.state, outcome.reason) == ("delivered", FIRST)
    assert simulator.received("CAR-00017") == [alert]
    record = record_of(alert_table, alert)
    assert (record["state"], record["attempts"]) == ("delivered", 1)
    assert record["delivered_at"] == "2017-03-20T03:05:00Z"
    latest = alert_store.read_latest(alert_table, "CAR-00017", "battery_end_of_life").alert
    assert latest["alert_id"] == alert["alert_id"]


def test_the_same_alert_from_batch_and_streaming_is_delivered_once(push, simulator, make_alert):
    batch, streaming = make_alert(days_left=12.5), make_alert(days_left=11.9)
    assert batch["alert_id"] == streaming["alert_id"]
    assert push(batch).state == "delivered"
    assert (push(streaming, NOW + timedelta(hours=9)).state, push(batch).state) == (DUPLICATE, DUPLICATE)
    assert len(simulator.attempts) == 1 and simulator.received("CAR-00017") == [batch]


def test_cooldown_suppresses_then_escalation_and_expiry_deliver(push, alert_table, simulator, make_alert):
    push(make_alert(day="2017-03-19", days_left=12.5))
    next_day = make_alert(day="2017-03-20", days_left=11.5)
    outcome = push(next_day, NOW + timedelta(days=1))
    assert (outcome.state, outcome.reason) == ("suppressed", COOLDOWN)
    record = record_of(alert_table, next_day)
    assert (record["state"], record["reason"]) == ("suppressed", COOLDOWN)

    worse = make_alert(day="2017-03-21", days_left=6.0)
    outcome = push(worse, NOW + timedelta(days=2))
    assert (outcome.state, outcome.reason) == ("delivered", ESCALATED)
    assert record_of(alert_table, worse)["reason"] == ESCALATED
    still_critical = make_alert(day="2017-03-22", days_left=5.0)
    assert push(still_critical, NOW + timedelta(days=3)).reason == COOLDOWN

    week_later = make_alert(day="2017-03-29", days_left=1.0)
    outcome = push(week_later, NOW + timedelta(days=9))
    assert (outcome.state, outcome.reason) == ("delivered", COOLDOWN_ELAPSED)
    assert record_of(alert_table, week_later)["reason"] == COOLDOWN_ELAPSED
    assert [a["severity"] for a in simulator.received("CAR-00017")] == ["high", "critical", "critical"]


def test_gateway_down_raises_records_the_attempt_and_retry_delivers(push, alert_table, simulator, make_alert):
    alert = make_alert()
    simulator.fail_next(2, 503)
    for attempt in (1, 2):
        with pytest.raises(TransientDeliveryError, match="503"):
            push(alert, NOW + timedelta(minutes=attempt))
        record = record_of(alert_table, alert)
        assert (record["state"], record["attempts"]) == ("failed", attempt)
        assert "gateway answered 503" in record["last_error"]
    assert push(alert, NOW + timedelta(minutes=3)).state == "delivered"
    record = record_of(alert_table, alert)
    assert (record["state"], record["attempts"], record["last_error"]) == ("delivered", 3, None)
    assert simulator.received("CAR-00017") == [alert]


def test_a_gateway_that_may_have_the_alert_is_recorded_unknown_and_the_retry_settles_it(
    alert_table, simulator, session, make_alert
):
    alert = make_alert()
    simulator.stall_next(1)
    options = {"table": alert_table, "session": session, "gateway_url": simulator.url, "signing_key": KEY,
               "cooldown_days": 7}  # fmt: skip
    with pytest.raises(TransientDeliveryError, match="may have the alert"):
        push_alert(alert, now=NOW, timeout=(2, 0.3), **options)
    record = record_of(alert_table, alert)
    assert (record["state"], record["attempts"]) == ("unknown", 1)
    simulator.release_stalled()  # the gateway took it after all
    assert push_alert(alert, now=NOW + timedelta(minutes=1), **options).state == "delivered"
    assert simulator.received("CAR-00017") == [alert]
    assert [a.status for a in simulator.attempts] == [201, 200]  # the retry was a duplicate, answered as one


def test_push_without_a_signing_key_refuses_before_claiming(alert_table, simulator, session, make_alert):
    alert = make_alert()
    with pytest.raises(SettingsError, match="HEAD_UNIT_SIGNING_KEY"):
        push_alert(alert, table=alert_table, session=session, gateway_url=simulator.url, signing_key="",
                   cooldown_days=7, now=NOW)  # fmt: skip
    assert record_of(alert_table, alert) is None and simulator.attempts == []


def test_a_gateway_rejection_is_recorded_and_never_retried(push, alert_table, simulator, make_alert):
    alert = make_alert()
    simulator.fail_car("CAR-00017", 404)
    outcome = push(alert)
    assert outcome.state == "rejected" and "gateway answered 404" in outcome.reason
    record = record_of(alert_table, alert)
    assert (record["state"], record["attempts"]) == ("rejected", 1)
    assert "404" in record["last_error"]
    simulator.fail_car("CAR-00017", None)
    assert push(alert, NOW + timedelta(days=1)).state == DUPLICATE
    assert len(simulator.attempts) == 1


def test_concurrent_pushes_of_one_alert_send_it_once(push, simulator, make_alert):
    alert = make_alert()
    simulator.stall_next(1)  # hold the winner's POST so the others meet its claim in flight
    start = threading.Barrier(4)
    outcomes: list[str] = []

    def contend() -> None:
        start.wait()
        try:
            outcomes.append(push(alert).state)
        except TransientDeliveryError as error:
            outcomes.append("retry" if "being delivered by another invocation" in str(error) else str(error))
        if len(outcomes) == 3:
            simulator.release_stalled()

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["delivered", "retry", "retry", "retry"]
    assert len(simulator.attempts) == 1 and simulator.received("CAR-00017") == [alert]


def test_a_malformed_queue_message_is_an_input_error_naming_the_problem(push, make_alert):
    with pytest.raises(InputError, match="severity must be one of"):
        push(make_alert() | {"severity": "meh"})


# --- the CLI ------------------------------------------------------------------------------------------


def read_line(process: subprocess.Popen, timeout: float = 30.0) -> str:
    """The next stdout line of `process`, waiting at most `timeout` seconds for it."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no output from {process.args} within {timeout:.0f}s")
    return process.stdout.readline()


def test_headunit_sim_command_prints_what_it_receives_until_ctrl_c(session, make_alert):
    env = os.environ | {"SIM_KEY": KEY}
    command = [sys.executable, "-m", "shared", "headunit-sim", "--port", "0", "--signing-key-env", "SIM_KEY"]
    # Ctrl-C as a terminal delivers it, whatever launched the tests: a shell's background job starts with
    # SIGINT ignored, which the child would inherit (and Python then installs no KeyboardInterrupt).
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        banner = read_line(process)
        assert "listening on http://127.0.0.1:" in banner
        url = banner.split("listening on ")[1].split()[0]
        alert = make_alert(days_left=5.0)
        assert deliver_alert(alert, url, KEY, session).delivered
        line = read_line(process)
        assert "CAR-00017: critical battery_end_of_life" in line and alert["alert_id"] in line
        assert session.get(alerts_url(url, "CAR-00017"), timeout=10).json() == [alert]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        process.stdout.close()


def test_headunit_sim_command_without_a_key_exits_2_naming_the_variable():
    env = {k: v for k, v in os.environ.items() if k != "HEAD_UNIT_SIGNING_KEY"}
    done = subprocess.run([sys.executable, "-m", "shared", "headunit-sim", "--port", "0"], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "HEAD_UNIT_SIGNING_KEY is not set" in done.stderr
