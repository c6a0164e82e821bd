"""Head units: pushing an alert to a car through the gateway, and a simulator of the gateway's far end.

The wire contract is DESIGN.md ("Alert to a head unit"): POST {gateway}/vehicles/{Car_ID}/alerts,
`Idempotency-Key: <alert_id>`, `X-Signature: sha256=<HMAC-SHA256 of the body>`. The body is canonical
JSON (sorted keys, compact) and the bytes signed are exactly the bytes sent, so the receiver can verify
without re-serialising.

- `deliver_alert` is one HTTP attempt, classified: delivered, rejected for good (returned), or
  transient (raised, so the queue trigger's retry and poison queue take over).
- `push_alert` is the whole queue-trigger step: cooldown, claim, deliver, record.
- `HeadUnitSimulator` stands in for the gateway and its cars in tests, the local loop and the CLI.
  A repeated Idempotency-Key gets 200 {"status": "duplicate"}: the alert *was* delivered (so the
  sender must not record a rejection, which a 409 would mean under the contract), and it is not
  recorded a second time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import requests
from azure.data.tables import TableClient

from shared import alert_store
from shared.alerts import DUPLICATE, should_deliver, validate_alert
from shared.settings import SettingsError

SIGNATURE_HEADER = "X-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_TIMEOUT = 10.0
MAX_BODY_BYTES = 64 * 1024
# An oversize body up to this size is read and dropped before the 413; a larger one closes the connection.
DRAINED_BODY_BYTES = 16 * MAX_BODY_BYTES


class TransientDeliveryError(RuntimeError):
    """The gateway could not take the alert now (408, 429, 5xx, timeout, no connection): retry later."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class DeliveryResult:
    """One delivery attempt that got an answer: `delivered` (2xx), or rejected for good with `error`."""

    alert_id: str
    car_id: str
    status_code: int
    delivered: bool
    error: str | None = None


def canonical_json(alert: Mapping[str, Any]) -> bytes:
    """The body bytes of an alert: sorted keys, no spaces, UTF-8; NaN is refused (it is not JSON)."""
    text = json.dumps(alert, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def sign(body: bytes, key: str) -> str:
    """The X-Signature value of `body`: "sha256=" and the hex HMAC-SHA256 under `key`."""
    return "sha256=" + hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, key: str) -> bool:
    """True if `signature` is `sign(body, key)` (compared in constant time)."""
    return signature is not None and hmac.compare_digest(signature.encode(), sign(body, key).encode())


def alerts_url(gateway_url: str, car_id: str) -> str:
    """The gateway URL of a car's alerts; the car id is escaped as one path segment ("/" included)."""
    return f"{gateway_url.rstrip('/')}/vehicles/{quote(car_id, safe='')}/alerts"


def deliver_alert(
    alert: Mapping[str, Any],
    gateway_url: str,
    signing_key: str,
    session: requests.Session,
    timeout: float = DEFAULT_TIMEOUT,
) -> DeliveryResult:
    """POST one alert to the car's head unit through the gateway and classify the answer.

    2xx → delivered. 408, 429, 5xx, a timeout or no connection → `TransientDeliveryError`. Anything
    else (4xx, or a redirect, which a gateway has no business sending) → a rejection, returned with the
    gateway's words, because sending the same request again would get the same answer.
    """
    if not signing_key:
        raise SettingsError("HEAD_UNIT_SIGNING_KEY is not set: alerts must be signed")
    alert_id, car_id = alert["alert_id"], alert["car_id"]
    body = canonical_json(alert)
    headers = {
        "Content-Type": "application/json",
        IDEMPOTENCY_HEADER: alert_id,
        SIGNATURE_HEADER: sign(body, signing_key),
    }
    what = f"alert {alert_id} for car {car_id}"
    try:
        response = session.post(alerts_url(gateway_url, car_id), data=body, headers=headers, timeout=timeout,
                                allow_redirects=False)  # fmt: skip
    except requests.Timeout:
        raise TransientDeliveryError(f"{what}: gateway did not answer within {timeout:g}s") from None
    except requests.ConnectionError as error:
        raise TransientDeliveryError(f"{what}: cannot reach the gateway ({type(error).__name__})") from None
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
    timeout: float = DEFAULT_TIMEOUT,
) -> PushOutcome:
    """Handle one alert from the queue: cooldown, claim, deliver, record. The queue trigger's body.

    Raises `InputError` for a malformed alert (it will never succeed) and `TransientDeliveryError` when
    the gateway should be tried again later, after recording the failed attempt; the queue retries
    and, after maxDequeueCount, parks the message in the poison queue. Also raises it when another
    invocation holds the claim, so this copy comes back after that one has finished and finds the
    outcome recorded. Everything else ends in a recorded state and a return.
    """
    validate_alert(alert)
    latest = alert_store.read_latest(table, alert["car_id"], alert["type"])
    deliver, reason = should_deliver(alert, latest.alert, cooldown_days, now)
    if not deliver and reason == DUPLICATE:
        return PushOutcome(alert["alert_id"], alert["car_id"], DUPLICATE, reason)
    if not deliver:
        alert_store.record_suppressed(table, alert, reason, now)
        return PushOutcome(alert["alert_id"], alert["car_id"], alert_store.SUPPRESSED, reason)
    claim = alert_store.claim_delivery(table, alert, reason, now)
    if claim.state in alert_store.FINAL_STATES:
        return PushOutcome(claim.alert_id, claim.car_id, DUPLICATE, f"already {claim.state}")
    if not claim.claimed:
        raise TransientDeliveryError(f"alert {claim.alert_id} for car {claim.car_id} is being delivered by "
                                     "another invocation; retry to see its outcome")  # fmt: skip
    try:
        result = deliver_alert(alert, gateway_url, signing_key, session, timeout)
    except TransientDeliveryError as error:
        alert_store.record_outcome(table, claim, alert_store.FAILED, now, error=str(error))
        raise
    if not result.delivered:
        alert_store.record_outcome(table, claim, alert_store.REJECTED, now, error=result.error)
        return PushOutcome(claim.alert_id, claim.car_id, alert_store.REJECTED, result.error or "")
    alert_store.record_delivered(table, claim, alert, now, latest)
    return PushOutcome(claim.alert_id, claim.car_id, alert_store.DELIVERED, reason)


# --- the simulator ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One POST the simulator answered: for which car, under which Idempotency-Key, with what status."""

    car_id: str
    idempotency_key: str | None
    status: int


class HeadUnitSimulator:
    """A gateway and its head units on 127.0.0.1: verifies, de-duplicates and records alerts per car.

    Start it as a context manager (port 0 picks a free port; `url` says where it listens). Tests can make
    it misbehave on purpose: `fail_next` answers the next requests with an error status, `fail_car`
    answers every request for one car with a status, `stall_next` holds requests unanswered until
    `release_stalled` (a gateway that takes the alert but answers too late: after release it records the
    alert as usual). State is guarded by one lock; the server answers each request on its own thread.
    """

    def __init__(self, signing_key: str, port: int = 0,
                 on_alert: Callable[[str, dict[str, Any]], None] | None = None) -> None:  # fmt: skip
        if not signing_key:
            raise SettingsError("the head-unit simulator needs a signing key to verify alerts")
        self.signing_key = signing_key
        self.on_alert = on_alert
        self._lock = threading.Lock()
        self._received: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._seen_keys: set[str] = set()
        self._attempts: list[Attempt] = []
        self._failures: deque[int] = deque()
        self._car_failures: dict[str, int] = {}
        self._stalls = 0
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _GatewayHandler)
        self._server.daemon_threads = True
        self._server.simulator = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HeadUnitSimulator:
        # A short poll interval makes `stop` quick: shutdown waits for the serving loop to look up.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="headunit-sim",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._thread is not None:  # shutdown() would wait forever for a loop that never started
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> HeadUnitSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next `count` alert POSTs with `status`, before looking at them."""
        with self._lock:
            self._failures.extend([status] * count)

    def fail_car(self, car_id: str, status: int | None) -> None:
        """Answer every alert POST for `car_id` with `status` (None: stop failing this car)."""
        with self._lock:
            if status is None:
                self._car_failures.pop(car_id, None)
            else:
                self._car_failures[car_id] = status

    def stall_next(self, count: int) -> None:
        """Hold the next `count` alert POSTs unanswered until `release_stalled` (or `stop`)."""
        with self._lock:
            self._stalls += count
            self._release.clear()

    def release_stalled(self) -> None:
        self._release.set()

    def received(self, car_id: str) -> list[dict[str, Any]]:
        """The alerts one car's head unit received, in arrival order, each once."""
        with self._lock:
            return list(self._received.get(car_id, []))

    def received_by_car(self) -> dict[str, list[dict[str, Any]]]:
        """Every car's received alerts."""
        with self._lock:
            return {car: list(alerts) for car, alerts in self._received.items()}

    @property
    def attempts(self) -> list[Attempt]:
        """Every alert POST answered, including failures, duplicates and bad signatures."""
        with self._lock:
            return list(self._attempts)

    def _take_planned_failure(self, car_id: str) -> tuple[bool, int | None]:
        """Whether to stall this request, and the failure status to answer with (None: handle it)."""
        with self._lock:
            stall = self._stalls > 0
            if stall:
                self._stalls -= 1
            if self._failures:
                return stall, self._failures.popleft()
            return stall, self._car_failures.get(car_id)

    def _accept(self, car_id: str, key: str | None, body: bytes, signature: str | None) -> tuple[int, dict]:
        """Check and record one alert POST; the status and JSON to answer with."""
        stall, failure = self._take_planned_failure(car_id)
        if stall:
            self._release.wait(timeout=60)  # a forgotten release holds a request a minute, not forever
        if failure is not None:
            return failure, {"error": f"simulated failure {failure}"}
        if not verify(body, signature, self.signing_key):
            return 401, {"error": f"missing or bad {SIGNATURE_HEADER}"}
        try:
            alert = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return 400, {"error": f"body is not JSON: {error}"}
        if not isinstance(alert, dict) or alert.get("car_id") != car_id:
            return 400, {"error": f"body car_id does not match the path's car {car_id!r}"}
        if not key or key != alert.get("alert_id"):
            return 400, {"error": f"{IDEMPOTENCY_HEADER} must be the body's alert_id"}
        with self._lock:
            if key in self._seen_keys:
                return 200, {"status": "duplicate", "alert_id": key}
            self._seen_keys.add(key)
            self._received[car_id].append(alert)
        if self.on_alert is not None:
            self.on_alert(car_id, alert)
        return 201, {"status": "received", "alert_id": key}

    def _record_attempt(self, attempt: Attempt) -> None:
        with self._lock:
            self._attempts.append(attempt)


class _GatewayHandler(BaseHTTPRequestHandler):
    """POST /vehicles/{car}/alerts (the contract) and GET /vehicles[/{car}/alerts] (for people)."""

    server_version = "HeadUnitSimulator/1"
    protocol_version = "HTTP/1.1"  # keep-alive, as a real gateway: a session reuses its connection
    disable_nagle_algorithm = True  # else headers and body, written apart, wait ~40 ms for a delayed ACK

    def do_POST(self) -> None:
        simulator: HeadUnitSimulator = self.server.simulator  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            # Read and drop a moderate one: closing on a client that is still sending resets the connection,
            # and the client would see a connection error instead of the 413.
            if length <= DRAINED_BODY_BYTES:
                self._discard(length)
            else:
                self.close_connection = True  # the unread body must not be taken for the next request
            self._answer(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        car_id = self._car_id()
        if car_id is None:
            self._answer(404, {"error": "POST to /vehicles/{car_id}/alerts"})
            return
        key, signature = self.headers.get(IDEMPOTENCY_HEADER), self.headers.get(SIGNATURE_HEADER)
        status, answer = simulator._accept(car_id, key, body, signature)
        simulator._record_attempt(Attempt(car_id, key, status))
        self._answer(status, answer)

    def do_GET(self) -> None:
        simulator: HeadUnitSimulator = self.server.simulator  # type: ignore[attr-defined]
        if self.path.rstrip("/") == "/vehicles":
            self._answer(200, simulator.received_by_car())
            return
        car_id = self._car_id()
        if car_id is None:
            self._answer(404, {"error": "GET /vehicles or /vehicles/{car_id}/alerts"})
            return
        self._answer(200, simulator.received(car_id))

    def _car_id(self) -> str | None:
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "vehicles" and parts[2] == "alerts" and parts[1]:
            return unquote(parts[1])
        return None

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, MAX_BODY_BYTES))
            if not chunk:
                break
            length -= len(chunk)

    def _answer(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except ConnectionError:
            pass  # the client gave up waiting (a stalled request in a timeout test): nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the CLI prints each alert received instead of every request line."""
