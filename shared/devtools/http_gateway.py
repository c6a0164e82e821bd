"""A loopback HTTP server in front of the emulated Functions host: what `func start` serves on /api/…, for a
browser.

The host emulator (shared/devtools/functions_host.py) calls HTTP functions in process; a browser needs a
socket. This serves GET requests for the app's HTTP functions whose routes have no parameters (the
dashboard, health) by handing each one to `FunctionsHost.call_http` — the same call the tests and the main
job make, so the page a browser sees is the real function's response, status and content type included.
One request at a time reaches the app (a lock), as the emulator is not built for concurrent calls.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from shared.devtools.functions_host import FunctionsHost

API_PREFIX = "/api/"


@contextlib.contextmanager
def serving_http_functions(host: FunctionsHost, port: int = 0) -> Iterator[str]:
    """Serve the host's parameterless GET routes on 127.0.0.1:`port` (0: a free one) while the block runs;
    yields the base URL (`http://127.0.0.1:<port>/api/`)."""
    routes = {
        spec.trigger["route"]: name
        for name, spec in host.functions.items()
        if spec.trigger_type == "httpTrigger" and "{" not in spec.trigger["route"]
    }
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            name = routes.get(url.path.removeprefix(API_PREFIX)) if url.path.startswith(API_PREFIX) else None
            if name is None:
                self._send(404, b"no such function route", "text/plain; charset=utf-8")
                return
            with lock:
                response = host.call_http(name, "GET", params=dict(parse_qsl(url.query)))
            content_type = response.mimetype + (f"; charset={response.charset}" if response.charset else "")
            self._send(response.status_code, response.get_body(), content_type)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the functions log for themselves."""

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{API_PREFIX}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
