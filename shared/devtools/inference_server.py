"""Local inference server: scoring/score.py under Microsoft's azmlinfsrv, the local twin of the Azure endpoint.

`python -m shared serve`, the local main job and the tests all run it through `running_endpoint`: the
same server Azure ML runs in its images (azureml-inference-server-http: gunicorn + Flask), with the
same entry script, on a loopback URL. azmlinfsrv has no bind-address option and listens on all
interfaces; clients and tests talk to it on 127.0.0.1.

It runs with the endpoint's bounds (`shared.endpoint.server.SERVER_ENVIRONMENT`: scoring and worker timeouts)
and a fresh temporary app root (AML_APP_ROOT), where score.py's init() publishes the swagger; score.py
finds `shared` by its own path, so nothing else needs to be there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from shared.devtools.azurite import free_port, wait_for_port
from shared.endpoint.server import SERVER_ENVIRONMENT

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENTRY_SCRIPT = PROJECT_ROOT / "scoring" / "score.py"


@dataclass(frozen=True)
class LocalEndpoint:
    """Where a running local endpoint answers."""

    port: int

    @property
    def scoring_uri(self) -> str:
        """The SCORING_URI app setting for this endpoint."""
        return f"http://127.0.0.1:{self.port}/score"

    @property
    def health_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def swagger_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/swagger.json"


def server_command(model_dir: Path, port: int, workers: int = 1) -> list[str]:
    """The azmlinfsrv command line (run through this interpreter, so it uses the same environment)."""
    return [
        sys.executable, "-m", "azureml_inference_server_http",
        "--entry_script", str(ENTRY_SCRIPT),
        "--model_dir", str(Path(model_dir).resolve()),
        "--port", str(port),
        "--worker_count", str(workers),
    ]  # fmt: skip


@contextlib.contextmanager
def running_endpoint(
    model_dir: str | Path,
    port: int | None = None,
    workers: int = 1,
    timeout: float = 60.0,
    environment: Mapping[str, str] | None = None,
) -> Iterator[LocalEndpoint]:
    """Run the endpoint for the duration of the block; yields once GET / answers (init() has run).

    The server's log goes to a temporary file whose tail is in the error if it fails to start (a
    broken model directory makes init() fail and azmlinfsrv exit). `environment` overrides the
    server's settings (tests shorten its timeouts with it).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    endpoint = LocalEndpoint(port or free_port())
    with tempfile.TemporaryFile(mode="w+b") as log, tempfile.TemporaryDirectory(prefix="azmlinfsrv-") as app_root:
        process = _start(model_dir, endpoint.port, workers, log, Path(app_root), environment)
        try:
            wait_until_healthy(endpoint, process, timeout)
        except (RuntimeError, TimeoutError) as error:
            _stop(process)
            log.seek(0)
            tail = log.read().decode("utf-8", "replace")[-3000:]
            message = f"azmlinfsrv did not become healthy: {error}\n--- server log (tail) ---\n{tail}"
            raise RuntimeError(message) from None
        try:
            yield endpoint
        finally:
            _stop(process)


def serve(model_dir: str | Path, port: int, workers: int = 1, timeout: float = 60.0) -> int:
    """Run the endpoint in the foreground (its log on this terminal) until Ctrl-C or SIGTERM; the exit code.

    The server runs in its own process group, so both signals stop it through `_stop` here.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="azmlinfsrv-") as app_root:
        process = _start(Path(model_dir), port, workers, log=None, app_root=Path(app_root))
        try:
            wait_until_healthy(LocalEndpoint(port), process, timeout)
            print(f"scoring endpoint ready: SCORING_URI={LocalEndpoint(port).scoring_uri} (Ctrl-C stops it)",
                  flush=True)  # fmt: skip
            return process.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            _stop(process)


def wait_until_healthy(endpoint: LocalEndpoint, process: subprocess.Popen, timeout: float) -> None:
    """Block until GET / answers 200 "Healthy", or raise if the server exits or the time runs out.

    gunicorn opens the port before its workers have run init(); a request then waits in the socket
    backlog until a worker is ready, so a 200 here means the model is loaded.
    """
    deadline = time.monotonic() + timeout
    wait_for_port(endpoint.port, process, timeout)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"azmlinfsrv exited with code {process.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(endpoint.health_uri, timeout=max(0.5, deadline - time.monotonic())).ok:
                return
        time.sleep(0.1)
    raise TimeoutError(f"GET {endpoint.health_uri} did not answer within {timeout:.0f}s")


def _start(
    model_dir: Path, port: int, workers: int, log, app_root: Path, environment: Mapping[str, str] | None = None
) -> subprocess.Popen:
    output = {"stdout": log, "stderr": subprocess.STDOUT} if log is not None else {}
    return subprocess.Popen(
        server_command(model_dir, port, workers),
        cwd=PROJECT_ROOT,
        env={**os.environ, **SERVER_ENVIRONMENT, "AML_APP_ROOT": str(app_root), **(environment or {})},
        start_new_session=True,  # its own process group: stopping it stops the gunicorn workers too
        **output,
    )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (gunicorn shuts its workers down), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
