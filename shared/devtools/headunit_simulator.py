"""A simulator of the head-unit gateway's far end, for tests, the local main job and `headunit-sim`.

It stands in for the gateway and its cars: it verifies both signatures the production client
(shared/adapters/headunit.py) sends, de-duplicates by Idempotency-Key and records alerts per car. Its cars
can answer (`feedback_request`, `send_feedback`): seen, dismissed, snoozed, service booked, signed the same way. A
repeated Idempotency-Key gets 200 {"status": "duplicate"}: the alert *was* delivered (so the sender must
not record a rejection, which a 409 would mean under the contract), and it is not recorded a second time.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import requests

from shared.adapters.headunit import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    WEBHOOK_TOLERANCE_S,
    canonical_json,
    signed_headers,
    verify,
    verify_webhook,
)
from shared.config.settings import SettingsError
from shared.core.alerts import iso_utc

MAX_BODY_BYTES = 64 * 1024
# An oversize body up to this size is read and dropped before the 413; a larger one closes the connection.
DRAINED_BODY_BYTES = 16 * MAX_BODY_BYTES


@dataclass(frozen=True)
class Attempt:
    """One POST the simulator answered: for which car, under which Idempotency-Key, with what status."""

    car_id: str
    idempotency_key: str | None
    status: int


class HeadUnitSimulator:
    """A gateway and its head units on 127.0.0.1: verifies, de-duplicates and records alerts per car.

    It checks both signatures (X-Signature, and the Standard Webhooks headers with `webhook-timestamp`
    within `tolerance_s` of its `clock`, Unix seconds): a stale or future timestamp is refused with 401,
    so a captured request replayed later fails; one replayed within the window carries an alert_id already
    received and is answered as a duplicate, never shown to the car again.

    Start it as a context manager (port 0 picks a free port; `url` says where it listens). Tests can make
    it misbehave on purpose: `fail_next` answers the next requests with an error status, `fail_car`
    answers every request for one car with a status, `stall_next` holds requests unanswered until
    `release_stalled` (a gateway that takes the alert but answers too late: after release it records the
    alert as usual). State is guarded by one lock; the server answers each request on its own thread.
    """

    def __init__(self, signing_key: str, port: int = 0,
                 on_alert: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.time, tolerance_s: float = WEBHOOK_TOLERANCE_S) -> None:  # fmt: skip
        if not signing_key:
            raise SettingsError("the head-unit simulator needs a signing key to verify alerts")
        self.signing_key = signing_key
        self.on_alert = on_alert
        self.clock = clock
        self.tolerance_s = tolerance_s
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

    def feedback_request(self, alert_id: str, action: str, at: datetime, *, timestamp: int | None = None,
                         snooze_until: datetime | None = None, booking_ref: str | None = None,
                         service_at: datetime | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
        """The body and headers of a head unit's answer to `alert_id` (docs/contracts.md, "Head-unit
        feedback"), signed as the app signs alerts; `timestamp` (Unix seconds) defaults to the simulator's
        clock. `webhook-id` is a hash of the body, so the same answer sent again is recognisably a repeat."""
        fields = {"action": action, "at": iso_utc(at), "snooze_until": snooze_until and iso_utc(snooze_until),
                  "booking_ref": booking_ref, "service_at": service_at and iso_utc(service_at)}  # fmt: skip
        body = canonical_json({name: value for name, value in fields.items() if value is not None})
        stamp = int(self.clock()) if timestamp is None else timestamp
        webhook_id = "fb_" + hashlib.sha256(body).hexdigest()[:24]
        headers = signed_headers(webhook_id, body, self.signing_key, stamp)
        del headers[IDEMPOTENCY_HEADER]  # the alert's header; the answer is identified by webhook-id
        return body, headers

    def send_feedback(self, app_url: str, car_id: str, alert_id: str, action: str, at: datetime,
                      **fields: Any) -> requests.Response:  # fmt: skip
        """POST an answer to the app at `app_url` (e.g. https://<app>.azurewebsites.net/api, with its function
        key in the query if it has one): `feedback_request`'s body and headers."""
        body, headers = self.feedback_request(alert_id, action, at, **fields)
        url = f"{app_url.rstrip('/')}/vehicles/{quote(car_id, safe='')}/alerts/{quote(alert_id, safe='')}/feedback"
        return requests.post(url, data=body, headers=headers, timeout=30)

    def _take_planned_failure(self, car_id: str) -> tuple[bool, int | None]:
        """Whether to stall this request, and the failure status to answer with (None: handle it)."""
        with self._lock:
            stall = self._stalls > 0
            if stall:
                self._stalls -= 1
            if self._failures:
                return stall, self._failures.popleft()
            return stall, self._car_failures.get(car_id)

    def _accept(self, car_id: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict]:
        """Check and record one alert POST; the status and JSON to answer with."""
        stall, failure = self._take_planned_failure(car_id)
        if stall:
            self._release.wait(timeout=60)  # a forgotten release holds a request a minute, not forever
        if failure is not None:
            return failure, {"error": f"simulated failure {failure}"}
        if not verify(body, headers.get(SIGNATURE_HEADER), self.signing_key):
            return 401, {"error": f"missing or bad {SIGNATURE_HEADER}"}
        webhook_id = headers.get(WEBHOOK_ID_HEADER)
        problem = verify_webhook(webhook_id, headers.get(WEBHOOK_TIMESTAMP_HEADER),
                                 headers.get(WEBHOOK_SIGNATURE_HEADER), body, self.signing_key,
                                 now=self.clock(), tolerance_s=self.tolerance_s)  # fmt: skip
        if problem is not None:
            return 401, {"error": problem}
        key = headers.get(IDEMPOTENCY_HEADER)
        try:
            alert = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return 400, {"error": f"body is not JSON: {error}"}
        if not isinstance(alert, dict) or alert.get("car_id") != car_id:
            return 400, {"error": f"body car_id does not match the path's car {car_id!r}"}
        if not key or key != alert.get("alert_id"):
            return 400, {"error": f"{IDEMPOTENCY_HEADER} must be the body's alert_id"}
        if webhook_id != key:
            return 400, {"error": f"{WEBHOOK_ID_HEADER} must be the body's alert_id"}
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
        status, answer = simulator._accept(car_id, self.headers, body)
        simulator._record_attempt(Attempt(car_id, self.headers.get(IDEMPOTENCY_HEADER), status))
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
