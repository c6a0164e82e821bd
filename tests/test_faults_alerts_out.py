"""Fault injection on the alerts-out path: push_alert through the local host on Azurite, delivering to an
independent gateway that counts every POST of an alert_id whatever it answers (tests/_counting_gateway.py).

Each test injects one fault, then asserts that no alert was lost (the car has it, or the policy held it
back and said so) and that the gateway saw no more repeat POSTs than the README's "Failure semantics"
promise: at most maxDequeueCount − 1 per queued message, each after an attempt whose answer was lost or
refused; the car has each alert once, since the gateway honours webhook-id / Idempotency-Key. Figures go to
data/fault-report.md through the `fault_outcome` fixture. Nothing here sleeps to synchronise: concurrent
consumers meet because the gateway holds the winner's POST open until the loser has returned.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from _counting_gateway import CountingGateway, Plan
from _services import SIGNING_KEY
from azure.functions.queue import QueueMessage

from shared.adapters import alert_store
from shared.adapters.headunit import TransientDeliveryError
from shared.adapters.storage import queue_service
from shared.devtools.functions_host import QUEUE_LEASE_SECONDS, QueueDrain

pytestmark = [pytest.mark.faults]

PATH = "alerts out"
MAX_DEQUEUE_COUNT = 5  # host.json
BOUND = f"≤ {MAX_DEQUEUE_COUNT - 1} repeat POSTs per message; the car gets it once"
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def gateway(harness):
    """The counting gateway, as the app's HEAD_UNIT_GATEWAY_URL."""
    with CountingGateway(SIGNING_KEY) as running:
        harness.configure(HEAD_UNIT_GATEWAY_URL=running.url)
        yield running


def stored(harness, alert: dict) -> dict | None:
    return alert_store.get_alert(alert_store.alerts_table(harness.services.tables), alert["car_id"], alert["alert_id"])


def lost(gateway: CountingGateway, alerts: list[dict], harness) -> int:
    """Alerts neither on their car's head unit nor recorded as held back by the cooldown."""
    held_back = {alert["alert_id"] for alert in alerts if (stored(harness, alert) or {}).get("state") == "suppressed"}
    return sum(alert["alert_id"] not in {*gateway.has(alert["car_id"]), *held_back} for alert in alerts)


def deliver(harness, alert: dict) -> tuple[QueueDrain, dict]:
    """Queue `alert`, let the host drain the queue through push_alert; the drain and the alert's record."""
    harness.send_alerts([alert])
    drain = harness.host.drain_queue("push_alert")
    return drain, stored(harness, alert)


def settle(fault_outcome, harness, gateway: CountingGateway, fault: str, alerts: list[dict],
           bound: str = BOUND) -> None:  # fmt: skip
    """Keep the fault's figures for the report, then hold it to the promise: nothing lost, repeats bounded."""
    missing = lost(gateway, alerts, harness)
    fault_outcome(PATH, fault, lost=missing, duplicates=gateway.duplicates, bound=bound)
    assert missing == 0
    assert gateway.duplicates <= (MAX_DEQUEUE_COUNT - 1 if bound == BOUND else 0)


def scaled_timeouts(harness, *read_timeouts_s: float) -> None:
    """The app's delivery policy with test-sized read timeouts (the lease and the rest as deployed)."""
    services = harness.services
    services.delivery = replace(services.delivery, connect_timeout_s=2.0, read_timeouts_s=read_timeouts_s)


def test_a_gateway_slower_than_the_first_timeout_is_delivered_on_the_retry(harness, gateway, make_alert, fault_outcome):
    alert = make_alert()
    gateway.plan = lambda alert_id, n: Plan(delay_s=0.6)  # every answer 0.6 s late, always 2xx
    scaled_timeouts(harness, 0.2, 5.0)  # the first attempt gives up at 0.2 s, later ones wait 5 s

    drain, record = deliver(harness, alert)

    assert (drain.failed_attempts, drain.succeeded, drain.poisoned) == (1, 1, 0)
    assert "it may have the alert" in drain.failures[0]
    assert (record["state"], record["attempts"]) == ("delivered", 2)
    assert gateway.has(alert["car_id"]) == [alert["alert_id"]]
    assert gateway.duplicates == 1
    settle(fault_outcome, harness, gateway, "gateway slower than the first timeout, answers 2xx", [alert])


def test_a_gateway_slower_than_every_timeout_is_recorded_unknown_not_failed(harness, gateway, make_alert,
                                                                           fault_outcome):  # fmt: skip
    alert = make_alert()
    gateway.plan = lambda alert_id, n: Plan(delay_s=0.8)
    scaled_timeouts(harness, 0.2, 0.3)

    drain, record = deliver(harness, alert)

    assert (drain.failed_attempts, drain.succeeded, drain.poisoned) == (MAX_DEQUEUE_COUNT, 0, 1)
    assert (record["state"], record["attempts"]) == ("unknown", MAX_DEQUEUE_COUNT)  # not "failed": the car has it
    assert f"gave up after {MAX_DEQUEUE_COUNT} deliveries" in record["reason"]
    assert gateway.has(alert["car_id"]) == [alert["alert_id"]]
    assert gateway.duplicates == MAX_DEQUEUE_COUNT - 1  # the bound, reached
    settle(fault_outcome, harness, gateway, "gateway slower than every timeout, answers 2xx", [alert])


class CrashAfterPost(requests.Session):
    """The worker failing right after the gateway's answer arrived, before the outcome is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.crashes = 1

    def post(self, *args, **kwargs):
        response = super().post(*args, **kwargs)
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError(f"worker crashed after the gateway answered {response.status_code}")
        return response


def test_a_failure_after_the_gateways_2xx_is_recorded_unknown_and_the_retry_settles_it(harness, gateway, make_alert,
                                                                                      fault_outcome):  # fmt: skip
    alert = make_alert()
    harness.services.gateway = CrashAfterPost()

    drain, record = deliver(harness, alert)

    assert (drain.failed_attempts, drain.succeeded, drain.poisoned) == (1, 1, 0)
    assert "worker crashed after the gateway answered 201" in drain.failures[0]
    assert (record["state"], record["attempts"]) == ("delivered", 2)
    assert gateway.has(alert["car_id"]) == [alert["alert_id"]] and gateway.duplicates == 1
    settle(fault_outcome, harness, gateway, "exception after the gateway's 2xx, before the record", [alert])


def test_a_worker_killed_after_the_gateway_took_the_alert_is_redelivered_once_its_lease_ends(
    harness, gateway, make_alert, fault_outcome
):
    alert = make_alert()
    harness.send_alerts([alert])
    # The test plays the host: it takes the message, hands it to a worker process, and kills that worker
    # (SIGKILL: nothing in it runs after) when its POST reaches the gateway, which has the alert by then.
    messages = queue_service(harness.connection).get_queue_client("maintenance-alerts")
    message = messages.receive_message(visibility_timeout=QUEUE_LEASE_SECONDS)
    env = os.environ | {"CRASH_WORKER_NOW": harness.clock.now.isoformat()}
    worker = subprocess.Popen([sys.executable, str(TESTS / "_crash_worker.py")], stdin=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)  # fmt: skip

    def kill_worker() -> None:
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    gateway.plan = lambda alert_id, n: Plan(on_arrival=kill_worker if n == 1 else None)
    _, stderr = worker.communicate(base64.b64decode(message.content), timeout=300)

    assert worker.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert stored(harness, alert)["state"] == "delivering"  # the dead worker's claim, still leased
    # When a worker dies the host's lease on its message runs out (QUEUE_LEASE_SECONDS) and the message
    # comes back; by then the claim's 60-second lease has long ended.
    harness.clock.advance(seconds=QUEUE_LEASE_SECONDS)
    messages.update_message(message, pop_receipt=message.pop_receipt, visibility_timeout=0)

    drain = harness.host.drain_queue("push_alert")

    assert (drain.failed_attempts, drain.succeeded, drain.poisoned) == (0, 1, 0)
    record = stored(harness, alert)
    assert (record["state"], record["attempts"]) == ("delivered", 2)
    assert gateway.has(alert["car_id"]) == [alert["alert_id"]] and gateway.duplicates == 1
    settle(fault_outcome, harness, gateway, "worker killed after the gateway took it (SIGKILL)", [alert])


def race(harness, gateway: CountingGateway, alerts: list[dict]) -> tuple[Exception, object]:
    """Two consumers take one message each at once (as two host instances would); the gateway holds the
    first POST open until the other consumer has returned. The loser's exception and the winner's result."""
    push_alert = harness.host.functions["push_alert"].user_function
    release = threading.Event()
    gateway.plan = lambda alert_id, n: Plan(hold=release if sum(gateway.posts.values()) == 1 else None)
    start = threading.Barrier(len(alerts))
    finished: queue.Queue = queue.Queue()

    def consume(position: int) -> None:
        start.wait()
        body = json.dumps(alerts[position]).encode()
        try:
            finished.put(push_alert(QueueMessage(id=f"m{position}", body=body, dequeue_count=1)))
        except Exception as error:  # the loser's retry signal, reported to the test
            finished.put(error)

    threads = [threading.Thread(target=consume, args=(position,)) for position in range(len(alerts))]
    for thread in threads:
        thread.start()
    first = finished.get(timeout=120)  # the loser: the winner cannot return while its POST is held
    release.set()
    second = finished.get(timeout=120)
    for thread in threads:
        thread.join()
    return first, second


def test_two_consumers_of_one_alert_send_it_once(harness, gateway, make_alert, fault_outcome):
    alert = make_alert()

    loser, winner = race(harness, gateway, [alert, alert])

    assert isinstance(loser, TransientDeliveryError) and "being delivered by another invocation" in str(loser)
    assert winner is None  # the function returned: delivered
    harness.send_alerts([alert])  # the loser's message, retried by the queue
    assert harness.host.drain_queue("push_alert").succeeded == 1
    assert stored(harness, alert)["state"] == "delivered"
    assert gateway.posts[alert["alert_id"]] == 1
    settle(fault_outcome, harness, gateway, "two consumers of the same alert at once", [alert], bound="0")


def test_two_consumers_of_different_alerts_for_one_car_respect_the_cooldown(harness, gateway, make_alert,
                                                                           fault_outcome):  # fmt: skip
    alerts = [make_alert(day="2016-03-09", days_left=12.5), make_alert(day="2016-03-10", days_left=11.5)]
    assert {alert["severity"] for alert in alerts} == {"high"}  # no escalation: the second is within the cooldown

    loser, winner = race(harness, gateway, alerts)

    assert isinstance(loser, TransientDeliveryError) and "is being delivered; retry to apply the cooldown" in str(loser)
    assert winner is None
    [sent] = gateway.has("CAR-00017")
    [held_back] = [alert for alert in alerts if alert["alert_id"] != sent]
    harness.send_alerts([held_back])  # the loser's message, retried by the queue
    assert harness.host.drain_queue("push_alert").succeeded == 1
    record = stored(harness, held_back)
    assert (record["state"], record["reason"]) == ("suppressed", "cooldown")
    assert gateway.has("CAR-00017") == [sent] and sum(gateway.posts.values()) == 1
    settle(fault_outcome, harness, gateway, "two consumers of different alerts for one car at once", alerts, bound="0")


def test_a_gateway_answering_5xx_then_recovering_gets_the_alert_once(harness, gateway, make_alert, fault_outcome):
    alert = make_alert()
    gateway.plan = lambda alert_id, n: Plan(status=503 if n <= 2 else 201)

    drain, record = deliver(harness, alert)

    assert (drain.failed_attempts, drain.succeeded, drain.poisoned) == (2, 1, 0)
    assert (record["state"], record["attempts"]) == ("delivered", 3)
    assert gateway.has(alert["car_id"]) == [alert["alert_id"]]
    assert gateway.duplicates == 2  # repeats after refusals: the gateway never had it twice
    settle(fault_outcome, harness, gateway, "gateway answers 503 twice, then recovers", [alert])
