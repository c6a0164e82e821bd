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

The channel is the car's (its car profile's `Channel`) or else ALERT_CHANNEL: the gateway's HTTPS, or an
IoT Hub cloud-to-device message (shared/adapters/iothub.py), whose later delivery feedback
`drain_iothub_feedback` records.

Each delivery number gets its timeouts from the services' `DeliveryPolicy` (longer on retries).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from azure.data.tables import TableClient, TableServiceClient

from shared.adapters import alert_store, feedback_store, iothub, observability
from shared.adapters.car_profiles import read_profiles
from shared.adapters.headunit import DeliveryResult, SigningKeyUnset, TransientDeliveryError, push_alert
from shared.adapters.storage import ensure_container, upload_json
from shared.bootstrap import Services
from shared.config.host import HostConfig, load_host_config
from shared.config.names import ALERT_POISON_QUEUE, ALERT_QUEUE, DEADLETTER_CONTAINER
from shared.config.settings import IOTHUB_CHANNEL, SettingsError
from shared.core import json_text
from shared.core.alerts import DUPLICATE, validate_alert
from shared.core.feedback import feedback_hold
from shared.core.lifecycle import HELD, MAX_VISIBILITY
from shared.core.telemetry import InputError
from shared.handlers.lifecycle import stop_or_hold

MALFORMED = "malformed"
ALERTS_DEADLETTER_PREFIX = "alerts/"  # in the dead-letter container: queued messages that are not an alert


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
        held = _held_by_feedback(table, alert, now, timedelta(days=settings.feedback_booking_grace_days))
        if held is not None:
            return held
        outcome = push_alert(
            alert, table=table, session=services.gateway, gateway_url=settings.head_unit_gateway_url,
            signing_key=settings.head_unit_signing_key, cooldown_days=settings.alert_cooldown_days, now=now,
            timeout=policy.timeout(dequeue_count), lease=policy.lease, send=_channel(services, alert),
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


def _channel(services: Services, alert: dict[str, Any]) -> Callable[[Mapping[str, Any]], DeliveryResult] | None:
    """The car's channel's `send` for `push_alert` (None: the gateway's HTTPS, push_alert's own)."""
    car_id = alert.get("car_id")
    profile = read_profiles(services.tables, [car_id])[car_id] if isinstance(car_id, str) else None
    channel = (profile.channel if profile else None) or services.settings.alert_channel
    if channel != IOTHUB_CHANNEL:
        return None
    settings = services.settings
    client = _iothub_client(services.iothub_client, settings.iothub_connection, settings.iothub_hostname,
                            services.iothub_credential, services.delivery.longest_attempt_s)  # fmt: skip
    if client is None:
        return _iothub_unconfigured
    return iothub.IoTHubChannel(client, settings.head_unit_signing_key or "",
                                timedelta(hours=settings.alert_expiry_hours), services.clock).deliver  # fmt: skip


def _iothub_unconfigured(alert: Mapping[str, Any]) -> DeliveryResult:
    raise TransientDeliveryError(f"alert {alert['alert_id']} for car {alert['car_id']}: the car's channel is iothub "
                                 "but neither IOTHUB_CONNECTION nor IOTHUB_HOSTNAME is set")  # fmt: skip


@functools.lru_cache(maxsize=4)
def _iothub_client(factory: Callable[[iothub.HubAccess, float], iothub.C2DClient], connection: str | None,
                   hostname: str | None, credential: Callable[[], Any],
                   send_timeout_s: float) -> iothub.C2DClient | None:  # fmt: skip
    """One IoT Hub client (one AMQP connection) per process and hub, not one per message; None without a hub.
    Each send is bounded by the delivery policy's longest attempt, which the claim's lease is sized to outlast."""
    access = iothub.hub_access(connection, hostname, credential)
    return None if access is None else factory(access, send_timeout_s)


def drain_iothub_feedback(services: Services) -> dict[str, int]:
    """Record the IoT Hub's waiting delivery feedback on the alerts (delivered, expired, rejected); the counts.
    Nothing to do without IOTHUB_CONNECTION or IOTHUB_HOSTNAME."""
    settings = services.settings
    access = iothub.hub_access(settings.iothub_connection, settings.iothub_hostname, services.iothub_credential)
    if access is None:
        return {}
    receiver = iothub.open_feedback_receiver(access)
    try:
        return iothub.drain_feedback(receiver, _alerts_table(services.tables), services.clock())
    finally:
        receiver.close()


def _held_by_feedback(table: TableClient, alert: dict[str, Any], now: datetime,
                      booking_grace: timedelta) -> dict[str, Any] | None:  # fmt: skip
    """The outcome of an alert the owner's feedback on its battery holds back (recorded suppressed, with why),
    or None to deliver as usual. Here, before delivery, so it applies to every path that queues alerts."""
    validate_alert(alert)
    battery = feedback_store.read_battery_feedback(table, alert["car_id"], alert["type"], alert["battery_id"])
    hold = feedback_hold(alert, battery, now, booking_grace)
    if hold is None:
        return None
    recorded = alert_store.record_suppressed(table, alert, f"{hold.code}: {hold.detail}", now)
    state = alert_store.SUPPRESSED if recorded else DUPLICATE  # not recorded: delivered already (the other path)
    return {"alert_id": alert["alert_id"], "car_id": alert["car_id"], "state": state, "reason": hold.code}


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
    name = f"{ALERTS_DEADLETTER_PREFIX}date={now:%Y-%m-%d}/{digest}.json"
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
    alert = json_text.loads(body, "queue message")
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
