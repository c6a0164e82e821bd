"""Observability: the app's OpenTelemetry instruments, its structured summaries, and export to Azure Monitor.

The instruments' names are a contract: the alert rules (infra/modules/alerts.bicep) query them in
Application Insights' customMetrics by the names in infra/telemetry.json, which a test holds these to.
They are made with the OpenTelemetry metrics API only, so they cost nothing until a provider is set:
in Azure `configure` installs Azure Monitor's (when APPLICATIONINSIGHTS_CONNECTION_STRING is set), and
locally the main job and the tests hand in an in-memory one (`recording_to`).

Each handler's summary is logged as one record whose fields are record attributes (`log_summary`):
Azure Monitor's log handler exports them as the trace's customDimensions, and the message stays a
readable `step: key=value …` line for a local console.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from opentelemetry import metrics

METER = "battery-alerting"
EVENTS_PROCESSED = "battery.events.processed"
EVENTS_DEAD_LETTERED = "battery.events.dead_lettered"
EVENTS_PARKED = "battery.events.parked"
EVENTS_LAG_SECONDS = "battery.events.lag_seconds"
BATTERIES_SCORED = "battery.batteries.scored"
ALERTS_QUEUED = "battery.alerts.queued"
ALERTS_DELIVERED = "battery.alerts.delivered"
ALERTS_SUPPRESSED = "battery.alerts.suppressed"
ALERTS_REJECTED = "battery.alerts.rejected"
ALERTS_POISONED = "battery.alerts.poisoned"
ENDPOINT_LATENCY = "battery.endpoint.latency"
COUNTERS = (EVENTS_PROCESSED, EVENTS_DEAD_LETTERED, EVENTS_PARKED, BATTERIES_SCORED, ALERTS_QUEUED, ALERTS_DELIVERED,
            ALERTS_SUPPRESSED, ALERTS_REJECTED, ALERTS_POISONED)  # fmt: skip
# push_alert outcome states (shared.alert_store) and the counter each adds to; the others (duplicate,
# malformed, held) are not deliveries and are in the push_alert summary only.
_OUTCOME_COUNTERS = {"delivered": ALERTS_DELIVERED, "suppressed": ALERTS_SUPPRESSED, "rejected": ALERTS_REJECTED}

# Loggers that log every HTTP request at INFO (azure-core's HTTP logging policy logs each request's headers);
# in Application Insights they would be most of the traces, and the host's dependency records say the same.
QUIET_LOGGERS = ("azure.core.pipeline.policies.http_logging_policy", "azure.identity", "azure.monitor")
# What a LogRecord has of its own: a summary field of one of these names is logged as "summary_<name>".
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
SUMMARY_OF = "summary_of"  # the record attribute naming the step whose summary a record is

log = logging.getLogger(__name__)


class Instruments:
    """The app's counters and histograms, made by one meter."""

    def __init__(self, meter: metrics.Meter) -> None:
        counter = meter.create_counter
        self.events_processed = counter(EVENTS_PROCESSED, "{event}", "Events score_telemetry handled")
        self.events_dead_lettered = counter(EVENTS_DEAD_LETTERED, "{event}", "Bad events or records dead-lettered")
        self.events_parked = counter(EVENTS_PARKED, "{event}", "Records parked for re-scoring")
        self.batteries_scored = counter(BATTERIES_SCORED, "{battery}", "Batteries given a risk score")
        self.alerts_queued = counter(ALERTS_QUEUED, "{alert}", "Alerts put on maintenance-alerts")
        self.alert_outcomes = {state: counter(name, "{alert}", f"Alerts {state}")
                               for state, name in _OUTCOME_COUNTERS.items()}  # fmt: skip
        self.alerts_poisoned = counter(ALERTS_POISONED, "{alert}", "Alerts given up on: to maintenance-alerts-poison")
        self.events_lag = meter.create_histogram(EVENTS_LAG_SECONDS, "s", "Event Hub enqueued time to processing")
        self.endpoint_latency = meter.create_histogram(ENDPOINT_LATENCY, "ms", "One scoring request, retries included")


_instruments = Instruments(metrics.get_meter(METER))


@contextlib.contextmanager
def recording_to(provider: metrics.MeterProvider) -> Iterator[None]:
    """The instruments record to `provider` for the block (an in-memory one: the main job, the tests).

    The global provider can be set once per process, so a local run cannot install its own there.
    """
    global _instruments
    previous = _instruments
    _instruments = Instruments(provider.get_meter(METER))
    try:
        yield
    finally:
        _instruments = previous


@contextlib.contextmanager
def in_memory() -> Iterator[Any]:
    """A MeterProvider with an InMemoryMetricReader that the instruments record to for the block; yields the
    reader (for `readings`). How a local run (the main job, the tests) sees what Azure Monitor would get."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        with recording_to(provider):
            yield reader
    finally:
        provider.shutdown()


def readings(reader: Any) -> dict[str, Any]:
    """What `reader` (an InMemoryMetricReader) holds, by instrument name: every counter's total (0 if never
    added to), and for each histogram recorded to, one row per attribute set (count, sum, max)."""
    data = reader.get_metrics_data()
    found: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    for metric in (m for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics for m in sm.metrics):
        points = metric.data.data_points
        if hasattr(points[0] if points else None, "bucket_counts"):
            found[metric.name] = [{"attributes": dict(p.attributes or {}), "count": p.count, "sum": p.sum,
                                   "max": p.max} for p in points]  # fmt: skip
        else:
            found[metric.name] = sum(point.value for point in points)
    return found


# --- what the handlers count ----------------------------------------------------------------------------


def count_ingested(summary: Mapping[str, Any], enqueued: Iterable[datetime | None], now: datetime) -> None:
    """Count a score_telemetry batch from its summary (shared.ingest), once its attempt has an outcome,
    and how long each event waited in the hub (`enqueued` times; events without one are left out)."""
    _instruments.events_processed.add(summary["events"])
    _instruments.events_dead_lettered.add(summary["dead_lettered"])
    _instruments.events_parked.add(summary.get("parked_records", 0))
    for when in enqueued:
        if when is not None:
            _instruments.events_lag.record(max(0.0, (now - when).total_seconds()))


def count_scored(batteries: int) -> None:
    _instruments.batteries_scored.add(batteries)


def count_queued(alerts: int) -> None:
    _instruments.alerts_queued.add(alerts)


def count_alert_outcome(state: str) -> None:
    """Count a push_alert outcome: delivered, suppressed (cooldown) or rejected (by the gateway)."""
    if state in _instruments.alert_outcomes:
        _instruments.alert_outcomes[state].add(1)


def count_poisoned() -> None:
    """An alert's last delivery failed: the host moves it to maintenance-alerts-poison."""
    _instruments.alerts_poisoned.add(1)


@contextlib.contextmanager
def endpoint_request() -> Iterator[None]:
    """Time one scoring request (its retries included) into battery.endpoint.latency, with attribute `outcome`:
    ok, or the `outcome` of the scoring error it raised (shared.scoring_client: unavailable, rejected; the
    alert rule fires on any but ok). A request that fails otherwise (no token, say) never reached the endpoint."""
    started = time.perf_counter()
    try:
        yield
    except Exception as error:
        if outcome := getattr(error, "outcome", None):
            _instruments.endpoint_latency.record((time.perf_counter() - started) * 1000, {"outcome": outcome})
        raise
    _instruments.endpoint_latency.record((time.perf_counter() - started) * 1000, {"outcome": "ok"})


# --- structured summaries -------------------------------------------------------------------------------


def log_summary(logger: logging.Logger, step: str, summary: Mapping[str, Any]) -> None:
    """Log a handler's summary at INFO: the fields as record attributes (customDimensions in Application
    Insights), the message a readable `step: key=value …` line. Values that are not scalars go as JSON."""
    fields = {_attribute(key): value if _scalar(value) else json.dumps(value, default=str)
              for key, value in summary.items()}  # fmt: skip
    text = " ".join(f"{key}={_readable(value)}" for key, value in summary.items())
    logger.info("%s: %s", step, text, extra={SUMMARY_OF: step, **fields})


def summary_of(record: logging.LogRecord) -> tuple[str, dict[str, Any]] | None:
    """The step and summary fields of a record `log_summary` wrote; None for any other record."""
    step = getattr(record, SUMMARY_OF, None)
    if step is None:
        return None
    fields = {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES and key != SUMMARY_OF}
    return step, {_field(key): value for key, value in fields.items()}


def _attribute(key: str) -> str:
    return f"summary_{key}" if key in _RECORD_ATTRIBUTES or key == SUMMARY_OF else key


def _field(attribute: str) -> str:
    key = attribute.removeprefix("summary_")
    return key if key != attribute and _attribute(key) == attribute else attribute


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _readable(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if isinstance(value, str) and (not text or any(c.isspace() for c in text)) else text


# --- export to Azure Monitor ----------------------------------------------------------------------------


def configure(environ: Mapping[str, str]) -> bool:
    """Send the app's metrics, logs and traces to Application Insights when APPLICATIONINSIGHTS_CONNECTION_STRING
    is set (True); without it nothing is exported (False). Quietens the Azure SDKs' per-request logs either way.

    The template turns local (key) ingestion off, so the exporter authenticates as the app's user-assigned
    managed identity (AZURE_CLIENT_ID). Imported here, not at module level: azure-monitor-opentelemetry loads
    its instrumentations, which `import function_app` (and every local tool) need not pay for.
    """
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    connection_string = (environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or "").strip()
    if not connection_string:
        return False
    from azure.identity import ManagedIdentityCredential
    from azure.monitor.opentelemetry import configure_azure_monitor

    client_id = (environ.get("AZURE_CLIENT_ID") or "").strip() or None
    credential = ManagedIdentityCredential(client_id=client_id)
    configure_azure_monitor(connection_string=connection_string, credential=credential)
    log.info("exporting telemetry to Application Insights as managed identity %s", client_id or "(system-assigned)")
    return True


@functools.cache
def configure_once() -> bool:
    """`configure` from the process environment, the first time only: the app's start-up (bootstrap.current)."""
    return configure(os.environ)
