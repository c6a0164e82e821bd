"""Services: the Azure clients and HTTP sessions one running app uses, built once from its settings.

The functional core never builds clients; the Function App hands this bundle to the handlers in
`shared/`, and tests or the local main job build one pointed at real local services (Azurite, the
local scoring endpoint, the head-unit simulator). `clock` is part of it so a replay can run on
simulated days and cooldowns still mean what they say.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.adapters import observability
from shared.adapters.battery_state import StateCache
from shared.adapters.headunit import DEFAULT_POLICY, DeliveryPolicy
from shared.adapters.iothub import C2DClient, C2DSender, HubAccess
from shared.adapters.scoring_client import ScoringClient, TokenCredential
from shared.adapters.storage import app_storage_connection, blob_service, queue_service, table_service
from shared.config.settings import Settings, configuration_problems, load_settings

log = logging.getLogger("services")


def utc_now() -> datetime:
    """Wall-clock time, timezone-aware (what alerts and records are stamped with in production)."""
    return datetime.now(UTC)


def azureml_workspace(settings: Settings) -> Any:
    """The MLClient of the workspace the settings name, with the app identity's credential (imported on
    first use: azure-ai-ml is heavy and most invocations never need it)."""
    from shared.azureml import workspace_client

    return workspace_client(settings)


@functools.cache
def app_identity() -> TokenCredential:
    """The app identity's credential, one per process (it caches its tokens): DefaultAzureCredential picks the
    user-assigned managed identity named by AZURE_CLIENT_ID in Azure, the developer's login elsewhere."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


@dataclass
class Services:
    """Everything a handler may touch outside its own process, passed in explicitly."""

    settings: Settings
    blobs: BlobServiceClient
    tables: TableServiceClient
    queues: QueueServiceClient
    scoring: ScoringClient
    gateway: requests.Session
    work_dir: Path
    clock: Callable[[], datetime] = field(default=utc_now)
    delivery: DeliveryPolicy = DEFAULT_POLICY  # head-unit timeouts and lease (shared.adapters.headunit)
    # The battery states this process last read or wrote (a guess checked by ETag: shared.adapters.battery_state).
    state_cache: StateCache = field(default_factory=StateCache)
    # Builds the Azure ML client the nightly retrain submits to (tests hand in one on a recording transport).
    azureml_client: Callable[[Settings], Any] = azureml_workspace
    # Builds the IoT Hub C2D client from the hub's sign-in and the send bound (tests hand in one on a recording client).
    iothub_client: Callable[[HubAccess, float], C2DClient] = C2DSender
    # The app identity, for an IoT Hub named by IOTHUB_HOSTNAME alone (built only then; tests hand in their own).
    iothub_credential: Callable[[], TokenCredential] = app_identity


def build_services(environ: Mapping[str, str] | None = None, *, clock: Callable[[], datetime] = utc_now) -> Services:
    """The services the app settings in `environ` (default: the process environment) describe."""
    env = os.environ if environ is None else environ
    settings = load_settings(env)
    work_dir = Path(env.get("BATTERY_WORK_DIR") or Path(os.environ.get("TMPDIR", "/tmp")) / "battery-alerting")
    return Services(
        settings=settings,
        blobs=blob_service(app_storage_connection("blob", env)),
        tables=table_service(app_storage_connection("table", env)),
        queues=queue_service(app_storage_connection("queue", env)),
        scoring=ScoringClient.from_settings(settings, scoring_credential(settings)),
        gateway=requests.Session(),
        work_dir=work_dir,
        clock=clock,
    )


def scoring_credential(settings: Settings) -> TokenCredential | None:
    """The app identity's credential when the endpoint takes Entra ID tokens (SCORING_AUTH=aad_token), else None.
    Building it sends nothing; the first score asks for a token."""
    return app_identity() if settings.scoring_auth == "aad_token" else None


@functools.cache
def current() -> Services:
    """The process's services, built on first use (so a bad setting fails the first invocation, named).

    This is the app's start-up: besides the settings' own validation (a bad value raises, naming it), the
    start-up check logs an error for each setting the app runs without but cannot do its whole job
    without (`configuration_problems`; GET /api/health answers 503 for them). It does not stop the app:
    the other functions keep working, and what cannot be done yet waits (alerts stay queued).
    `current.cache_clear()` makes the next call read the environment again (tests, the local host).
    """
    observability.configure_once()
    built = build_services()
    for problem in configuration_problems(built.settings):
        log.error("start-up check failed: %s", problem)
    _freeze_startup_heap()
    return built


@functools.cache
def _freeze_startup_heap() -> None:
    """Leave what is alive once the app is set up out of garbage collection for good (once per process).

    The modules of pandas, numpy and the Azure SDKs are about 280,000 objects that are never garbage, yet
    every full collection scanned them: about 0.2 s of CPU every ten or so batches of 500 events, a tenth
    of `score_telemetry`'s own CPU (measured in bench/bench_functions.py). Collected first, so no garbage
    is frozen with them; objects made later are collected as usual.
    """
    gc.collect()
    gc.freeze()
