"""Delivery: what the `push_alert` queue trigger does with one message from "maintenance-alerts".

The queue gives each message up to host.json's `maxDequeueCount` deliveries, then the host moves it to
"maintenance-alerts-poison". That is the right fate for a gateway that stays down, and the wrong one
for a message that can never be valid: retrying it only delays its record by five deliveries. So:

- a message that is not an alert (not JSON, or missing what the contract needs) is a permanent failure:
  recorded in the dead-letter container with the reason, and the message is consumed;
- a transient gateway failure raises, so the queue delivers the message again; on the last delivery the
  alert's record first says it was given up on and why (`failed`, or `unknown` when an attempt may have
  reached the gateway), so staff looking at the car see it;
- an alert the app cannot send yet (HEAD_UNIT_SIGNING_KEY unset: GET /api/health says so) is kept:
  its record says why, the delivery raises so the queue retries, and on the last delivery, instead of
  letting the host poison it, a fresh copy goes back on the queue, hidden for `held_retry_delay`, so it
  waits there (a message a few minutes at a time, never expiring) until the key is set;
- an alert the lifecycle stops (retracted, superseded, expired: shared/handlers/lifecycle.py) is
  recorded so and consumed; one held for its car's quiet hours goes back on the queue as a fresh copy,
  hidden until they end (at most the queue's 7 days), and is recorded `held` with that time;
- everything else (delivered, rejected by the gateway, held back by the cooldown, already delivered by
  the other path) is recorded by `headunit.push_alert` and returned.

Each delivery number gets its timeouts from the services' `DeliveryPolicy` (longer on retries).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from azure.data.tables import TableClient, TableServiceClient

from shared.adapters import alert_store, observability
from shared.adapters.headunit import SigningKeyUnset, TransientDeliveryError, push_alert
from shared.adapters.storage import ensure_container, upload_json
from shared.bootstrap import Services
from shared.config.host import HostConfig, load_host_config
from shared.config.names import ALERT_POISON_QUEUE, ALERT_QUEUE, DEADLETTER_CONTAINER
from shared.config.settings import SettingsError
from shared.core.lifecycle import HELD, MAX_VISIBILITY
from shared.core.telemetry import InputError
from shared.handlers.lifecycle import stop_or_hold

MALFORMED = "malformed"


def process_alert_message(
    services: Services, body: str | bytes, dequeue_count: int, max_dequeue_count: int | None = None
) -> dict[str, Any]:
    """Deliver the alert in one queue message; the outcome (alert_id, car_id, state, reason) for the log.

    `dequeue_count` is the message's delivery number (1 on the first); `max_dequeue_count` defaults to
    host.json's `queues.maxDequeueCount`, the delivery after which the host poisons the message.
    Raises `SettingsError` when HEAD_UNIT_SIGNING_KEY is unset (before the last delivery; see the module
    docstring), and `TransientDeliveryError` to be retried.
    """
    settings, policy = services.settings, services.delivery
    now = services.clock()
    limit = max_dequeue_count or _host_config().max_dequeue_count
    try:
        alert = _parse_alert(body)
        table = _alerts_table(services.tables)
        stopped = stop_or_hold(services, table, alert, now)
        if stopped is not None:
            if stopped.state == HELD:
                _requeue(services, body, min(stopped.release_at - now, MAX_VISIBILITY))
            return {"alert_id": alert["alert_id"], "car_id": alert["car_id"], "state": stopped.state,
                    "reason": stopped.reason}  # fmt: skip
        outcome = push_alert(
            alert, table=table, session=services.gateway, gateway_url=settings.head_unit_gateway_url,
            signing_key=settings.head_unit_signing_key, cooldown_days=settings.alert_cooldown_days, now=now,
            timeout=policy.timeout(dequeue_count), lease=policy.lease,
        )  # fmt: skip
    except SigningKeyUnset:  # push_alert refused it after checking the alert, before any claim
        return _keep_until_configured(services, table, body, alert, dequeue_count, limit, now)
    except InputError as error:
        record_malformed(services, body, str(error), dequeue_count, now)
        return {"alert_id": None, "car_id": None, "state": MALFORMED, "reason": str(error)}
    except TransientDeliveryError as error:
        if dequeue_count >= limit:
            reason = f"gave up after {dequeue_count} deliveries, moved to {ALERT_POISON_QUEUE}: {error}"
            alert_store.record_given_up(table, alert, reason, now)
            observability.count_poisoned()
        raise
    return {"alert_id": outcome.alert_id, "car_id": outcome.car_id, "state": outcome.state, "reason": outcome.reason}


def _keep_until_configured(services: Services, table: TableClient, body: str | bytes, alert: dict[str, Any],
                           dequeue_count: int, limit: int, now: datetime) -> dict[str, Any]:  # fmt: skip
    """Keep an alert the app cannot sign: record why, raise so the queue retries, and on the last delivery
    put a fresh copy back on the queue (hidden for `held_retry_delay`) rather than let it be poisoned."""
    reason = (f"not sent: HEAD_UNIT_SIGNING_KEY is not set, so the alert cannot be signed; it stays on "
              f"{ALERT_QUEUE} until the setting is fixed")  # fmt: skip
    alert_store.record_held(table, alert, reason, now)
    if dequeue_count < limit:
        raise SettingsError(reason)
    _requeue(services, body, services.delivery.held_retry_delay)
    return {"alert_id": alert["alert_id"], "car_id": alert["car_id"], "state": HELD, "reason": reason}


def _requeue(services: Services, body: str | bytes, hidden_for: timedelta) -> None:
    """Put a fresh copy of a message back on the alert queue (its dequeue count starts again), invisible
    for `hidden_for` and never expiring, in the encoding the host's queue trigger reads."""
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    content = base64.b64encode(data).decode("ascii") if _host_config().message_encoding == "base64" else data.decode()
    queue = services.queues.get_queue_client(ALERT_QUEUE)
    queue.send_message(content, visibility_timeout=max(0, int(hidden_for.total_seconds())), time_to_live=-1)


def record_malformed(services: Services, body: str | bytes, reason: str, dequeue_count: int, now: datetime) -> str:
    """Keep a queue message that can never be delivered, with why, in the dead-letter container.

    Named by the hash of its bytes, so the same message recorded twice (a redelivery after a crash
    between record and delete) is one blob. Returns the blob name.
    """
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    digest = hashlib.sha256(data).hexdigest()[:32]
    name = f"alerts/date={now:%Y-%m-%d}/{digest}.json"
    record = {
        "reason": reason,
        "queue": ALERT_QUEUE,
        "dequeue_count": dequeue_count,
        "recorded_at": now.isoformat(),
        "body": data.decode("utf-8", errors="replace"),
    }
    upload_json(ensure_container(services.blobs, DEADLETTER_CONTAINER), name, record)
    return name


def _parse_alert(body: str | bytes) -> dict[str, Any]:
    """The JSON object of a message body, or `InputError` saying what is wrong.

    `push_alert` checks it against the contract (ids that no store or URL can take included) before it
    looks at the signing key, so a message that can never be delivered is recorded as such even while the
    app is misconfigured.
    """
    try:
        alert = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"queue message is not JSON: {error}") from None
    if not isinstance(alert, dict):
        raise InputError(f"queue message is a JSON {type(alert).__name__}, not an alert object")
    return alert


@functools.lru_cache(maxsize=4)
def _alerts_table(tables: TableServiceClient) -> TableClient:
    """The alerts table, created once per service client rather than once per message."""
    return alert_store.alerts_table(tables)


@functools.cache
def _host_config() -> HostConfig:
    return load_host_config()
