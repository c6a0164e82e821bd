"""Azurite: the local Blob, Queue and Table service the main job and the tests run against.

Started from the project's own `node_modules` (npm package `azurite`, installed by `make`), on free
loopback ports, in memory, telemetry off, so any number of runs can share a machine and leave nothing
behind. The connection string uses Azurite's published development account (shared/adapters/storage.py).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from shared.adapters.storage import AzuriteEndpoints

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port, or raise naming the port.

    Polls the socket (the readiness signal itself) rather than sleeping a fixed time; fails fast if the
    process that should open the port has already exited.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def azurite_command() -> str:
    """The azurite executable: the project's node_modules first, then PATH."""
    local = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found is None:
        raise FileNotFoundError("azurite not found: run `make install` (npm install) first")
    return found


@contextlib.contextmanager
def running_azurite(timeout: float = 60.0) -> Iterator[AzuriteEndpoints]:
    """Run Azurite (Blob, Queue, Table) on free loopback ports for the duration of the block."""
    endpoints = AzuriteEndpoints(free_port(), free_port(), free_port())
    command = [
        azurite_command(),
        "--blobHost", "127.0.0.1", "--blobPort", str(endpoints.blob_port),
        "--queueHost", "127.0.0.1", "--queuePort", str(endpoints.queue_port),
        "--tableHost", "127.0.0.1", "--tablePort", str(endpoints.table_port),
        "--inMemoryPersistence", "--disableTelemetry", "--silent", "--skipApiVersionCheck", "--loose",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for port in (endpoints.blob_port, endpoints.queue_port, endpoints.table_port):
            wait_for_port(port, process, timeout)
        yield endpoints
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
