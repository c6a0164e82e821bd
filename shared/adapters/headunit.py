"""Head units: pushing an alert to a car through the gateway (the production client).

The wire contract is docs/contracts.md ("Alert to a head unit", with its additions): POST
{gateway}/vehicles/{Car_ID}/alerts with `Idempotency-Key: <alert_id>`, `X-Signature: sha256=<hex
HMAC-SHA256 of the body>`, and beside them the Standard Webhooks headers `webhook-id` (= alert_id),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`), so a gateway can refuse a captured request replayed later. The body is canonical
JSON (sorted keys, compact) and the bytes signed are exactly the bytes sent, so the receiver can verify
without re-serialising.

- `deliver_alert` is one HTTP attempt, classified: delivered, rejected for good (returned), or
  transient (raised, so the queue trigger's retry and poison queue take over), saying whether the
  gateway may have received it (the request went out and no answer came back).
- `push_alert` is the whole queue-trigger step: cooldown, claim, deliver, record.
- `DeliveryPolicy` holds the numbers that must agree with each other and with host.json: the attempt's
  timeouts, the claim's lease, how long an alert the app cannot send yet waits before it is looked at.
- `verify` and `verify_webhook` are the receiver's checks, which the gateway simulator
  (shared/devtools/headunit_simulator.py) applies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests
from azure.data.tables import TableClient
from urllib3.exceptions import NewConnectionError

from shared.adapters import alert_store
from shared.config.settings import SettingsError
from shared.core.alerts import DUPLICATE, should_deliver, validate_alert
from shared.core.telemetry import InputError

SIGNATURE_HEADER = "X-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
WEBHOOK_SECRET_PREFIX = "whsec_"  # a Standard Webhooks secret: the HMAC key is the base64 after it
WEBHOOK_TOLERANCE_S = 300  # the Standard Webhooks libraries' window for webhook-timestamp
# How often push_alert decides the cooldown again when the car's latest row changes under it.
_COOLDOWN_ROUNDS = 3


@dataclass(frozen=True)
class DeliveryPolicy:
    """The delivery's numbers, chosen together (the README's "Failure semantics" says why these).

    - `read_timeouts_s[n - 1]` is how long delivery number n (the queue message's dequeue count) waits
      for the gateway's answer; the last one repeats. The first is short, the later ones longer, so a
      gateway slower than the first still gets its alert recorded as delivered on a retry.
    - `lease`: how long a claim (and the car's cooldown hold) is kept from others. It must outlast the
      longest attempt (connect + read) with room for the two Table writes around it, and host.json's
      `visibilityTimeout` must be at least the lease, so that the queue's retry after a failed attempt
      whose claim could not be released finds the lease over and can deliver.
    - `held_retry_delay`: how long an alert the app cannot send yet (no signing key) stays invisible on
      the queue before it is looked at again.
    """

    connect_timeout_s: float = 5.0
    read_timeouts_s: tuple[float, ...] = (15.0, 30.0)
    lease: timedelta = timedelta(seconds=60)
    held_retry_delay: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        if not self.read_timeouts_s or min(self.read_timeouts_s) <= 0 or self.connect_timeout_s <= 0:
            raise ValueError(f"delivery timeouts must be positive: {self.connect_timeout_s}, {self.read_timeouts_s}")
        if self.lease.total_seconds() < self.longest_attempt_s + 10:
            raise ValueError(f"the claim lease ({self.lease}) must outlast the longest attempt "
                             f"({self.longest_attempt_s:g} s) by 10 s for the Table writes around it")  # fmt: skip

    @property
    def longest_attempt_s(self) -> float:
        return self.connect_timeout_s + max(self.read_timeouts_s)

    def timeout(self, delivery: int) -> tuple[float, float]:
        """The (connect, read) timeout of delivery number `delivery` (1 on the first), as requests takes it."""
        return self.connect_timeout_s, self.read_timeouts_s[min(max(delivery, 1), len(self.read_timeouts_s)) - 1]


DEFAULT_POLICY = DeliveryPolicy()


class SigningKeyUnset(SettingsError):
    """HEAD_UNIT_SIGNING_KEY is empty, so no alert can be signed: raised before anything is claimed or sent."""


def require_signing_key(signing_key: str) -> None:
    """Raise `SigningKeyUnset` for an empty key: an unsigned alert must never leave the app."""
    if not signing_key:
        raise SigningKeyUnset("HEAD_UNIT_SIGNING_KEY is not set: alerts must be signed")


class TransientDeliveryError(RuntimeError):
    """The gateway could not take the alert now (408, 429, 5xx, timeout, no connection): retry later.

    `maybe_received` is True when the request went out and no answer came back (a read timeout, a
    connection lost after sending): the gateway may have the alert, so the attempt is recorded UNKNOWN.
    """

    def __init__(self, message: str, status_code: int | None = None, maybe_received: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.maybe_received = maybe_received


@dataclass(frozen=True)
class DeliveryResult:
    """One delivery attempt that got an answer: `delivered` (2xx), or rejected for good with `error`."""

    alert_id: str
    car_id: str
    status_code: int
    delivered: bool
    error: str | None = None


def canonical_json(alert: Mapping[str, Any]) -> bytes:
    """The body bytes of an alert: sorted keys, no spaces, UTF-8. NaN (not JSON) and text with no UTF-8
    (lone surrogates) are refused with `InputError`, a `ValueError`."""
    try:
        text = json.dumps(alert, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except ValueError as error:  # UnicodeEncodeError is one
        raise InputError(f"alert {alert.get('alert_id', '?')!r} cannot be sent as JSON: {error}") from None


def sign(body: bytes, key: str) -> str:
    """The X-Signature value of `body`: "sha256=" and the hex HMAC-SHA256 under `key`."""
    return "sha256=" + hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, key: str) -> bool:
    """True if `signature` is `sign(body, key)` (compared in constant time)."""
    return signature is not None and hmac.compare_digest(signature.encode(), sign(body, key).encode())


def webhook_signature(webhook_id: str, timestamp: int, body: bytes, key: str) -> str:
    """The Standard Webhooks `webhook-signature` value: "v1," and the base64 HMAC-SHA256 of
    "id.timestamp.body". The HMAC key is the key's UTF-8 bytes (the same as X-Signature's), or, for a
    Standard Webhooks secret "whsec_<base64>", the bytes that base64 stands for."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_webhook_key(key), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_webhook(webhook_id: str | None, timestamp: str | None, signature: str | None, body: bytes, key: str,
                   now: float, tolerance_s: float = WEBHOOK_TOLERANCE_S) -> str | None:  # fmt: skip
    """None if the Standard Webhooks headers are valid for `body` at Unix time `now`, else what is wrong.

    Valid: all three present, the timestamp an integer within `tolerance_s` of `now` (either way: an old
    one is a replay, a future one a forgery or a bad clock), and one of the space-separated signatures
    matching (compared in constant time).
    """
    if not (webhook_id and timestamp and signature):
        return f"missing {WEBHOOK_ID_HEADER}, {WEBHOOK_TIMESTAMP_HEADER} or {WEBHOOK_SIGNATURE_HEADER}"
    if not timestamp.isascii() or not timestamp.isdigit():
        return f"{WEBHOOK_TIMESTAMP_HEADER} must be whole Unix seconds, got {timestamp[:20]!r}"
    if abs(now - int(timestamp)) > tolerance_s:
        return f"{WEBHOOK_TIMESTAMP_HEADER} is {now - int(timestamp):+.0f} s from now, outside ±{tolerance_s:g} s"
    expected = webhook_signature(webhook_id, int(timestamp), body, key).encode()
    if not any(hmac.compare_digest(given.encode(), expected) for given in signature.split()):
        return f"bad {WEBHOOK_SIGNATURE_HEADER}"
    return None


def signed_headers(alert_id: str, body: bytes, key: str, timestamp: int) -> dict[str, str]:
    """Every header of one attempt to deliver `body`: idempotency, both signatures, the content type."""
    return {
        "Content-Type": "application/json",
        IDEMPOTENCY_HEADER: alert_id,
        SIGNATURE_HEADER: sign(body, key),
        WEBHOOK_ID_HEADER: alert_id,
        WEBHOOK_TIMESTAMP_HEADER: str(timestamp),
        WEBHOOK_SIGNATURE_HEADER: webhook_signature(alert_id, timestamp, body, key),
    }


def alerts_url(gateway_url: str, car_id: str) -> str:
    """The gateway URL of a car's alerts; the car id is percent-encoded as one path segment ("/" included).

    "." and ".." (and "") are refused with `InputError`: no encoding keeps them from moving the request
    to another path (%2E is "." to a URL), so a car named ".." would be POSTed {gateway}/alerts.
    """
    if car_id in ("", ".", ".."):
        raise InputError(f"car_id {car_id!r} cannot be a URL path segment")
    try:
        return f"{gateway_url.rstrip('/')}/vehicles/{quote(car_id, safe='')}/alerts"
    except UnicodeEncodeError:
        raise InputError(f"car_id {car_id!r} has no UTF-8 encoding (a lone surrogate)") from None


def deliver_alert(
    alert: Mapping[str, Any],
    gateway_url: str,
    signing_key: str,
    session: requests.Session,
    timeout: float | tuple[float, float] = DEFAULT_POLICY.timeout(1),
) -> DeliveryResult:
    """POST one alert to the car's head unit through the gateway and classify the answer.

    2xx → delivered. 408, 429, 5xx, a timeout or no connection → `TransientDeliveryError`, with
    `maybe_received` when the request may have reached the gateway. Anything else (4xx, or a redirect,
    which a gateway has no business sending) → a rejection, returned with the gateway's words, because
    sending the same request again would get the same answer.
    """
    require_signing_key(signing_key)
    alert_id, car_id = alert["alert_id"], alert["car_id"]
    url = alerts_url(gateway_url, car_id)
    body = canonical_json(alert)
    headers = signed_headers(alert_id, body, signing_key, timestamp=int(time.time()))
    what = f"alert {alert_id} for car {car_id}"
    waited = timeout[1] if isinstance(timeout, tuple) else timeout
    try:
        response = session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.ConnectTimeout:
        raise TransientDeliveryError(f"{what}: cannot reach the gateway (connect timeout)") from None
    except requests.ConnectionError as error:
        if _never_connected(error):
            raise TransientDeliveryError(f"{what}: cannot reach the gateway ({type(error).__name__})") from None
        raise TransientDeliveryError(f"{what}: connection lost after the request was sent, the gateway may have it "
                                     f"({_cause(error)})", maybe_received=True) from None  # fmt: skip
    except requests.Timeout:
        raise TransientDeliveryError(f"{what}: gateway did not answer within {waited:g}s, it may have the alert",
                                     maybe_received=True) from None  # fmt: skip
    except requests.RequestException as error:  # e.g. a broken answer: the request went out
        raise TransientDeliveryError(f"{what}: no usable answer, the gateway may have it ({_cause(error)})",
                                     maybe_received=True) from None  # fmt: skip
    status = response.status_code
    if 200 <= status < 300:
        return DeliveryResult(alert_id, car_id, status, delivered=True)
    said = f"gateway answered {status}: {response.text[:200]}"
    if status in (408, 429) or status >= 500:
        raise TransientDeliveryError(f"{what}: {said}", status_code=status)
    return DeliveryResult(alert_id, car_id, status, delivered=False, error=said)


@dataclass(frozen=True)
class PushOutcome:
    """What `push_alert` did with one alert: state is delivered, rejected, suppressed or duplicate."""

    alert_id: str
    car_id: str
    state: str
    reason: str


def push_alert(
    alert: Mapping[str, Any],
    *,
    table: TableClient,
    session: requests.Session,
    gateway_url: str,
    signing_key: str,
    cooldown_days: int,
    now: datetime,
    timeout: float | tuple[float, float] = DEFAULT_POLICY.timeout(1),
    lease: timedelta = DEFAULT_POLICY.lease,
) -> PushOutcome:
    """Handle one alert from the queue: cooldown, claim, deliver, record. The queue trigger's body.

    Raises `InputError` for a malformed alert (it will never succeed) and `TransientDeliveryError` when
    the gateway should be tried again later, after recording the attempt (FAILED, or UNKNOWN when the
    gateway may have it); the queue retries and, after maxDequeueCount, parks the message in the poison
    queue. Also raises it when another invocation holds this alert's claim or the car's cooldown for the
    alert's type, so this copy comes back after that one has finished and the cooldown is decided on its
    outcome. Anything else failing after the claim (the worker after the request went out) records
    UNKNOWN and raises. Everything else ends in a recorded state and a return.
    """
    validate_alert(alert)
    canonical_json(alert)  # refused now, before a claim, if it can never be sent
    require_signing_key(signing_key)
    alert_id, car_id = alert["alert_id"], alert["car_id"]
    for _ in range(_COOLDOWN_ROUNDS):
        latest = alert_store.read_latest(table, car_id, alert["type"])
        deliver, reason = should_deliver(alert, latest.alert, cooldown_days, now)
        if not deliver and reason == DUPLICATE:
            return PushOutcome(alert_id, car_id, DUPLICATE, reason)
        if not deliver:
            alert_store.record_suppressed(table, alert, reason, now)
            return PushOutcome(alert_id, car_id, alert_store.SUPPRESSED, reason)
        try:
            claim = alert_store.claim_delivery(table, alert, reason, now, latest, lease)
            break
        except alert_store.LatestChanged:
            continue  # another delivery for the car changed its latest row: decide the cooldown again
    else:
        raise TransientDeliveryError(f"alert {alert_id} for car {car_id}: the car's latest alert kept changing")
    if claim.state in alert_store.FINAL_STATES:
        return PushOutcome(alert_id, car_id, DUPLICATE, f"already {claim.state}")
    if claim.state == alert_store.CAR_BUSY:
        raise TransientDeliveryError(f"another {alert['type']} alert for car {car_id} is being delivered; "
                                     f"retry to apply the cooldown to alert {alert_id} after it")  # fmt: skip
    if not claim.claimed:
        raise TransientDeliveryError(f"alert {alert_id} for car {car_id} is being delivered by another invocation; "
                                     "retry to see its outcome")  # fmt: skip
    try:
        result = deliver_alert(alert, gateway_url, signing_key, session, timeout)
    except TransientDeliveryError as error:
        state = alert_store.UNKNOWN if error.maybe_received else alert_store.FAILED
        alert_store.record_outcome(table, claim, state, now, error=str(error))
        raise
    except Exception as error:  # the request may have gone out: the gateway may have it
        alert_store.record_outcome(table, claim, alert_store.UNKNOWN, now, error=f"{type(error).__name__}: {error}")
        raise
    if not result.delivered:
        alert_store.record_outcome(table, claim, alert_store.REJECTED, now, error=result.error)
        return PushOutcome(alert_id, car_id, alert_store.REJECTED, result.error or "")
    alert_store.record_delivered(table, claim, alert, now)
    return PushOutcome(alert_id, car_id, alert_store.DELIVERED, reason)


def _never_connected(error: requests.ConnectionError) -> bool:
    """True when the connection was never made (refused, no such host), so nothing was sent."""
    cause = error.args[0] if error.args else None
    return isinstance(getattr(cause, "reason", None), NewConnectionError)


def _cause(error: Exception) -> str:
    """The innermost reason of a requests error, by name (never the URL or headers)."""
    inner = getattr(error.args[0], "reason", error.args[0]) if error.args else error
    if isinstance(inner, Exception) and inner.args and isinstance(inner.args[-1], Exception):
        inner = inner.args[-1]
    return type(inner).__name__ if isinstance(inner, Exception) else type(error).__name__


def _webhook_key(key: str) -> bytes:
    if key.startswith(WEBHOOK_SECRET_PREFIX):
        try:
            return base64.b64decode(key[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            raise SettingsError(f"HEAD_UNIT_SIGNING_KEY starts with {WEBHOOK_SECRET_PREFIX} but the rest is "
                                "not base64") from None  # fmt: skip
    return key.encode("utf-8")
