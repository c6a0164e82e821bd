"""push_alert: the real function_app's queue trigger, drained with the host's dequeue and poison rules.

Real Azurite queue and tables, the head-unit simulator as the gateway (made to fail on purpose), and for
the batch-versus-streaming test the real endpoint and the real nightly_batch_score timer.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from _models import model_dir
from _services import AT_RISK, NIGHT, POISON_QUEUE, SIGNING_KEY, TELEMETRY, backlogs, expected_id
from azure.functions.queue import QueueMessage

from shared.adapters import alert_store
from shared.adapters.archive import DEADLETTER_CONTAINER
from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import download_json, list_blob_names, queue_service
from shared.core.alerts import COOLDOWN, COOLDOWN_ELAPSED, CRITICAL, ESCALATED, FIRST, HIGH
from shared.devtools.azurite import free_port

MAX_DEQUEUE_COUNT = 5  # host.json


def stored(harness, alert: dict) -> dict | None:
    return alert_store.get_alert(alert_store.alerts_table(harness.services.tables), alert["car_id"], alert["alert_id"])


def test_an_alert_is_delivered_signed_once_and_recorded(harness, make_alert):
    alert = make_alert()
    harness.send_alerts([alert, alert])  # e.g. a queue output written twice by a retried function

    drain = harness.host.drain_queue("push_alert")

    assert (drain.succeeded, drain.failed_attempts, drain.poisoned) == (2, 0, 0)
    assert harness.simulator.received("CAR-00017") == [alert]  # the simulator verified the signature
    assert len(harness.simulator.attempts) == 1  # the second copy never reached the gateway
    record = stored(harness, alert)
    assert (record["state"], record["attempts"], record["delivered_at"]) == ("delivered", 1, "2016-03-11T03:00:00Z")


def test_messages_that_are_not_alerts_are_recorded_once_and_not_retried(harness, make_alert):
    alert = make_alert()
    not_alerts = {
        "this is not JSON": "not JSON",
        "[1, 2, 3]": "not an alert object",
        '{"alert_id": "abc"}': "missing car_id",
        '{"severity": "meh"}': "severity must be one of",
    }
    slash_car = dict(alert, car_id="CAR/17")  # valid JSON, but no table can key it
    harness.send_alerts([*not_alerts, slash_car])

    drain = harness.host.drain_queue("push_alert")

    assert (drain.deliveries, drain.succeeded, drain.failed_attempts, drain.poisoned) == (5, 5, 0, 0)
    deadletter = harness.services.blobs.get_container_client(DEADLETTER_CONTAINER)
    records = [download_json(deadletter, name) for name in list_blob_names(deadletter, "alerts/")]
    by_body = {record["body"]: record["reason"] for record in records}
    assert len(records) == 5
    for body, reason in not_alerts.items():
        assert reason in by_body[body]
    assert "CAR/17" in next(reason for body, reason in by_body.items() if "CAR/17" in body)
    assert harness.simulator.attempts == []


@pytest.mark.parametrize("gateway", ["answers 503", "not listening"])
def test_a_gateway_that_stays_down_is_retried_then_poisoned_with_the_reason_recorded(harness, make_alert, gateway):
    alert = make_alert()
    if gateway == "answers 503":
        harness.simulator.fail_car("CAR-00017", 503)
    else:
        harness.configure(HEAD_UNIT_GATEWAY_URL=f"http://127.0.0.1:{free_port()}")
    harness.send_alerts([alert])

    drain = harness.host.drain_queue("push_alert")

    assert (drain.deliveries, drain.failed_attempts, drain.succeeded, drain.poisoned) == (
        MAX_DEQUEUE_COUNT, MAX_DEQUEUE_COUNT, 0, 1,
    )  # fmt: skip
    assert harness.queued(POISON_QUEUE) == [alert]
    record = stored(harness, alert)
    assert (record["state"], record["attempts"]) == ("failed", MAX_DEQUEUE_COUNT)
    assert f"gave up after {MAX_DEQUEUE_COUNT} deliveries" in record["reason"]
    assert ("503" if gateway == "answers 503" else "cannot reach the gateway") in record["last_error"]

    # The gateway comes back and an operator replays the poison queue: the alert is delivered after all.
    harness.configure(HEAD_UNIT_GATEWAY_URL=harness.simulator.url)
    harness.simulator.fail_car("CAR-00017", None)
    harness.send_alerts(harness.queued(POISON_QUEUE))
    assert harness.host.drain_queue("push_alert").succeeded == 1
    assert harness.simulator.received("CAR-00017") == [alert]
    assert stored(harness, alert)["state"] == "delivered"


def test_a_gateway_that_recovers_within_the_retries_gets_the_alert_once(harness, make_alert):
    alert = make_alert()
    harness.simulator.fail_next(2, 503)
    harness.send_alerts([alert])

    drain = harness.host.drain_queue("push_alert")

    assert (drain.failed_attempts, drain.succeeded, drain.poisoned) == (2, 1, 0)
    assert harness.simulator.received("CAR-00017") == [alert]
    assert stored(harness, alert)["attempts"] == 3


@pytest.mark.parametrize("status", [400, 404, 410])
def test_a_gateway_rejection_is_recorded_and_not_retried(harness, make_alert, status):
    alert = make_alert()
    harness.simulator.fail_car("CAR-00017", status)
    harness.send_alerts([alert])

    drain = harness.host.drain_queue("push_alert")

    assert (drain.deliveries, drain.succeeded, drain.failed_attempts, drain.poisoned) == (1, 1, 0, 0)
    record = stored(harness, alert)
    assert (record["state"], record["attempts"]) == ("rejected", 1)
    assert f"gateway answered {status}" in record["last_error"]
    assert harness.queued(POISON_QUEUE) == []


def test_cooldown_holds_back_a_repeat_but_not_an_escalation_or_a_later_reminder(harness, make_alert):
    first = make_alert(day="2016-03-08", days_left=12.5)
    repeat = make_alert(day="2016-03-09", days_left=11.5)
    worse = make_alert(day="2016-03-10", days_left=5.0)
    reminder = make_alert(day="2016-03-19", days_left=3.0)
    assert (first["severity"], repeat["severity"], worse["severity"]) == (HIGH, HIGH, CRITICAL)

    for alert in (first, repeat, worse):
        harness.send_alerts([alert])
        harness.host.drain_queue("push_alert")
        harness.clock.advance(days=1)
    harness.send_alerts([reminder])  # as severe as the last delivery, but a week after it: cooldown is 7 days
    harness.clock.advance(days=6)
    harness.host.drain_queue("push_alert")

    received = [alert["alert_id"] for alert in harness.simulator.received("CAR-00017")]
    assert received == [first["alert_id"], worse["alert_id"], reminder["alert_id"]]
    held_back = stored(harness, repeat)
    assert (held_back["state"], held_back["reason"]) == ("suppressed", COOLDOWN)
    reasons = [stored(harness, alert)["reason"] for alert in (first, worse, reminder)]
    assert reasons == [FIRST, ESCALATED, COOLDOWN_ELAPSED]


def test_the_same_alert_from_the_nightly_batch_and_the_stream_is_delivered_once(harness):
    ModelRegistry(harness.services.blobs).promote_if_better(model_dir())
    streamed = harness.host.deliver_events("score_telemetry", backlogs(TELEMETRY))  # archives the history too
    harness.clock.now = NIGHT  # 03:00 the next day: the nightly run scores yesterday, the stream's day

    nightly = harness.host.fire_timer("nightly_batch_score_timer")

    assert streamed.batches[0].enqueued == {"maintenance-alerts": 2}
    assert (nightly.succeeded, nightly.enqueued) == (True, {"maintenance-alerts": 2})
    queued = sorted(alert["alert_id"] for alert in harness.queued())
    assert queued == sorted([expected_id(car) for car in AT_RISK] * 2)
    drain = harness.host.drain_queue("push_alert")
    assert (drain.succeeded, drain.failed_attempts) == (4, 0)
    for car, battery in AT_RISK.items():
        [received] = harness.simulator.received(car)
        assert (received["alert_id"], received["battery_id"]) == (expected_id(car), battery)
    assert len(harness.simulator.attempts) == 2  # the second copy of each never reached the gateway


@pytest.mark.parametrize("key", [None, "   "])
def test_an_unset_signing_key_keeps_the_alert_queued_with_the_reason_and_never_poisons_it(harness, make_alert, key):
    alert = make_alert()
    harness.configure(HEAD_UNIT_SIGNING_KEY=key)
    harness.send_alerts([alert])

    drain = harness.host.drain_queue("push_alert")

    # Every delivery but the last fails naming the setting; the last puts a fresh copy back, hidden a while.
    assert (drain.failed_attempts, drain.succeeded, drain.poisoned) == (MAX_DEQUEUE_COUNT - 1, 1, 0)
    assert all("SettingsError: not sent: HEAD_UNIT_SIGNING_KEY is not set" in failure for failure in drain.failures)
    assert harness.queued(POISON_QUEUE) == []
    assert queue_length(harness) == 1  # kept (invisible for the policy's held_retry_delay)
    record = stored(harness, alert)
    assert (record["state"], record["attempts"]) == ("queued", 0)
    assert "HEAD_UNIT_SIGNING_KEY is not set" in record["reason"]
    assert harness.simulator.attempts == []


def test_an_alert_kept_for_the_signing_key_is_delivered_once_the_key_is_set(harness, make_alert):
    alert = make_alert()
    services = harness.configure(HEAD_UNIT_SIGNING_KEY=None)
    services.delivery = replace(services.delivery, held_retry_delay=timedelta(0))  # visible again at once
    push_alert = harness.host.functions["push_alert"].user_function
    body = json.dumps(alert).encode()
    harness.send_alerts([])  # the queue exists, as it does for any message the host hands on

    push_alert(QueueMessage(id="m1", body=body, dequeue_count=MAX_DEQUEUE_COUNT))  # its last delivery

    assert harness.queued() == [alert]  # a fresh copy: its dequeue count starts again
    assert harness.queued(POISON_QUEUE) == []
    harness.configure(HEAD_UNIT_SIGNING_KEY=SIGNING_KEY)
    assert harness.host.drain_queue("push_alert").succeeded == 1
    assert harness.simulator.received("CAR-00017") == [alert]
    assert stored(harness, alert)["state"] == "delivered"


def queue_length(harness, name: str = "maintenance-alerts") -> int:
    """Messages on a queue, the invisible ones included."""
    queue = queue_service(harness.connection).get_queue_client(name)
    return queue.get_queue_properties().approximate_message_count


def test_a_malformed_signing_key_fails_naming_it_and_is_not_kept_as_an_unset_one(harness, make_alert):
    alert = make_alert()
    harness.configure(HEAD_UNIT_SIGNING_KEY="whsec_not-base64!")
    harness.send_alerts([alert])

    drain = harness.host.drain_queue("push_alert")

    assert drain.failures and all("starts with whsec_ but the rest is not base64" in f for f in drain.failures)
    assert stored(harness, alert)["state"] != "queued"  # not held as if the key were unset
    assert harness.simulator.attempts == []
