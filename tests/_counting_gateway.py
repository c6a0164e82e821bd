"""An independent head-unit gateway for the fault-injection suite: it counts every POST of an alert_id,
whatever it answers, so a second delivery cannot hide behind a status code.

Independent of shared/adapters/headunit.py on purpose: it checks the Standard Webhooks signature with its own few
lines written from the specification, keys alerts on `webhook-id`, and keeps what each car has itself, so
a bug in the sender or in the project's simulator cannot make a duplicate or a loss invisible here.

Each POST is answered by the test's `plan(alert_id, n)` (n: the how-manyth POST of that alert_id, from 1):
a status, a delay (a slow gateway), an event to hold the answer until it is set (hold the winner open),
and a hook run on arrival (kill the worker that sent it). A POST planned 2xx hands the alert to the car at
once, before any delay or hold: a gateway that has it but answers late, or never. It is idempotent on
webhook-id: a car has each alert once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_S = 300


@dataclass(frozen=True)
class Plan:
    """How the gateway answers one POST."""

    status: int = 201
    delay_s: float = 0.0  # the gateway's slowness: answer this long after the car has it
    hold: threading.Event | None = None  # answer only once this is set (or after a minute)
    on_arrival: Callable[[], None] | None = None  # run after counting (and handing over), before answering


class CountingGateway:
    """POST /vehicles/{car}/alerts on 127.0.0.1 (a free port); a context manager."""

    def __init__(self, signing_key: str, plan: Callable[[str, int], Plan] | None = None) -> None:
        self.signing_key = signing_key
        self.plan = plan or (lambda alert_id, n: Plan())
        self.posts: Counter[str] = Counter()  # every POST per alert_id, whatever it was answered
        self.cars: dict[str, list[str]] = {}  # car_id -> the alert_ids its head unit has, in order
        self.refused: list[str] = []  # why a POST was refused (bad signature, stale timestamp)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.gateway = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def duplicates(self) -> int:
        """Second and later POSTs of an alert_id, whatever they were answered."""
        with self._lock:
            return sum(count - 1 for count in self.posts.values())

    def has(self, car_id: str) -> list[str]:
        with self._lock:
            return list(self.cars.get(car_id, []))

    def __enter__(self) -> CountingGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()

    def _handle(self, headers: Any, body: bytes) -> tuple[int, dict]:
        webhook_id = headers.get("webhook-id") or ""
        with self._lock:
            self.posts[webhook_id] += 1
            count = self.posts[webhook_id]
        problem = self._unsigned(webhook_id, headers.get("webhook-timestamp"), headers.get("webhook-signature"), body)
        if problem:
            with self._lock:
                self.refused.append(problem)
            return 401, {"error": problem}
        plan = self.plan(webhook_id, count)
        if 200 <= plan.status < 300:
            car_id = json.loads(body)["car_id"]
            with self._lock:
                has = self.cars.setdefault(car_id, [])
                if webhook_id not in has:
                    has.append(webhook_id)
        if plan.on_arrival is not None:
            plan.on_arrival()
        if plan.delay_s:
            threading.Event().wait(plan.delay_s)  # the injected slowness itself, not a test waiting
        if plan.hold is not None:
            plan.hold.wait(timeout=60)
        return plan.status, {"status": plan.status, "alert_id": webhook_id}

    def _unsigned(self, webhook_id: str, timestamp: str | None, signature: str | None, body: bytes) -> str | None:
        """What is wrong with the Standard Webhooks headers, or None (the specification's symmetric scheme)."""
        if not (webhook_id and timestamp and signature and timestamp.isdigit()):
            return "missing or malformed webhook headers"
        if abs(time.time() - int(timestamp)) > TOLERANCE_S:
            return "stale webhook-timestamp"
        content = f"{webhook_id}.{timestamp}.".encode() + body
        digest = hmac.new(self.signing_key.encode(), content, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        if not any(hmac.compare_digest(expected, given) for given in signature.split()):
            return "bad webhook-signature"
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        gateway: CountingGateway = self.server.gateway  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, answer = gateway._handle(self.headers, body)
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:
            pass  # the sender gave up waiting (timed out, or was killed)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""
