"""Telemetry: the app's OpenTelemetry instruments after real runs of score_telemetry and push_alert, the
structured summaries as an OpenTelemetry log handler exports them, and Azure Monitor's configuration.

The functions run on Azurite through the local host (tests/_services.py); the instruments record to an
in-memory MeterProvider (`observability.in_memory`), the way the main job reads them. The names come
from infra/telemetry.json, the file the alert rules take them from.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from _services import TELEMETRY, backlogs, record, scoring_uri_serving, stub_endpoint
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogExporter, SimpleLogRecordProcessor

import function_app
from shared.adapters import observability
from shared.core.alerts import FIRST
from shared.devtools.azurite import free_port

NAMES = json.loads((Path(__file__).resolve().parents[1] / "infra" / "telemetry.json").read_text())
LAG = timedelta(seconds=90)  # how long the test's events waited in the hub


def counters(readings: dict, **expected: int) -> tuple[dict, dict]:
    """The counters read, and those expected by telemetry.json key (every other counter: 0)."""
    read = {name: value for name, value in readings.items() if not isinstance(value, list)}
    return read, dict.fromkeys(observability.COUNTERS, 0) | {NAMES[key]: value for key, value in expected.items()}


def by_outcome(readings: dict) -> dict[str, int]:
    return {point["attributes"]["outcome"]: point["count"] for point in readings[NAMES["endpointLatency"]]}


def test_the_instruments_carry_the_names_the_alert_rules_query() -> None:
    named = {value for name, value in vars(observability).items()
             if name.isupper() and str(value).startswith("battery.")}  # fmt: skip
    assert named == {value for key, value in NAMES.items() if key != "nightlyFunctions"}


def test_score_telemetry_counts_events_dead_letters_parking_scores_and_endpoint_latency(harness):
    good = backlogs(TELEMETRY)  # one event per battery, 30 days each: 3 batteries, 2 at risk
    bad = [b'{"Date": "2016-03-10", "Battery_ID": ',
           json.dumps(record(TELEMETRY.iloc[0]) | {"Daily_Cycles_Used": -0.2}).encode()]  # fmt: skip
    arrived = harness.clock.now - LAG

    with observability.in_memory() as reader:
        mixed = good[:1] + bad + good[1:]
        [scored] = harness.host.deliver_events("score_telemetry", mixed, enqueued_time=arrived).batches
        after_scoring = observability.readings(reader)
        harness.configure(SCORING_URI=f"http://127.0.0.1:{free_port()}/score")  # the endpoint is down
        [parked] = harness.host.deliver_events("score_telemetry", good, enqueued_time=arrived).batches
        with stub_endpoint(status=400) as refusing:
            harness.configure(SCORING_URI=refusing)
            [refused] = harness.host.deliver_events("score_telemetry", good, enqueued_time=arrived).batches
        with stub_endpoint(failing_batteries=frozenset({"B-SOON"})) as scoring_two:  # and an error for one
            harness.configure(SCORING_URI=scoring_two)
            [partly] = harness.host.deliver_events("score_telemetry", good, enqueued_time=arrived).batches
        readings = observability.readings(reader)

    assert (scored.enqueued, parked.attempts, refused.attempts) == ({"maintenance-alerts": 2}, 5, 1)
    assert partly.enqueued == {"maintenance-alerts": 2}  # the stub scores every battery at risk
    read, expected = counters(after_scoring, eventsProcessed=5, eventsDeadLettered=2, batteriesScored=3, alertsQueued=2)
    assert read == expected
    # A batch counts once, when its attempt has an outcome: the four retries that raised added nothing.
    read, expected = counters(readings, eventsProcessed=5 + 3 + 3 + 3, eventsDeadLettered=2,
                              eventsParked=2 * len(TELEMETRY), batteriesScored=3 + 2, alertsQueued=2 + 2)  # fmt: skip
    assert read == expected
    # One scoring request per attempt: five found the endpoint down (the client's retries inside), one refused.
    assert by_outcome(readings) == {"ok": 2, "unavailable": 5, "rejected": 1}
    [lag] = readings[NAMES["eventsLagSeconds"]]
    assert (lag["count"], lag["max"], lag["sum"]) == (14, LAG.total_seconds(), 14 * LAG.total_seconds())


def test_push_alert_counts_delivered_suppressed_rejected_and_poisoned(harness, make_alert):
    first, repeat = make_alert(day="2016-03-08"), make_alert(day="2016-03-09", days_left=11.5)
    refused, stuck = make_alert(car_id="CAR-00400"), make_alert(car_id="CAR-00503")
    harness.simulator.fail_car("CAR-00400", 400)
    harness.simulator.fail_car("CAR-00503", 503)

    with observability.in_memory() as reader:
        harness.send_alerts([first, first, refused, stuck, "not an alert"])  # a copy, and a malformed message
        drain = harness.host.drain_queue("push_alert")
        harness.clock.advance(days=1)
        harness.send_alerts([repeat])  # as severe, a day later: held back by the 7-day cooldown
        harness.host.drain_queue("push_alert")
        readings = observability.readings(reader)

    assert (drain.poisoned, len(harness.simulator.received("CAR-00017"))) == (1, 1)
    read, expected = counters(readings, alertsDelivered=1, alertsSuppressed=1, alertsRejected=1, alertsPoisoned=1)
    assert read == expected


def test_a_summary_is_a_readable_line_with_its_fields_as_exported_attributes(harness, make_alert):
    exporter = InMemoryLogExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)  # what configure_azure_monitor puts on the loggers
    function_app.log.addHandler(handler)
    level = function_app.log.level
    function_app.log.setLevel(logging.INFO)
    try:
        harness.send_alerts([make_alert()])
        harness.host.drain_queue("push_alert")
    finally:
        function_app.log.removeHandler(handler)
        function_app.log.setLevel(level)
        provider.shutdown()

    [exported] = [log.log_record for log in exporter.get_finished_logs()]
    assert str(exported.body).startswith("push_alert: alert_id=") and "state=delivered" in str(exported.body)
    attributes = dict(exported.attributes)
    assert attributes[observability.SUMMARY_OF] == "push_alert"
    assert (attributes["state"], attributes["car_id"], attributes["reason"]) == ("delivered", "CAR-00017", FIRST)


def test_summary_fields_that_a_log_record_owns_or_that_are_not_scalars_survive(caplog):
    logger = logging.getLogger("test_observability")
    summary = {"name": "kept", "message": "also kept", "nested": {"a": [1, 2]}, "none": None, "reason": "two words"}
    with caplog.at_level(logging.INFO, logger=logger.name):
        observability.log_summary(logger, "step", summary)

    [logged] = caplog.records
    assert logged.getMessage() == ('step: name=kept message="also kept" nested={"a": [1, 2]} none=null '
                                   'reason="two words"')  # fmt: skip
    assert (logged.name, logged.summary_name, logged.nested) == ("test_observability", "kept", '{"a": [1, 2]}')
    assert observability.summary_of(logged) == ("step", summary | {"nested": '{"a": [1, 2]}'})


def test_without_a_connection_string_nothing_is_configured_and_the_sdks_request_logs_are_quiet(monkeypatch):
    called = []
    monkeypatch.setattr("azure.monitor.opentelemetry.configure_azure_monitor", lambda **kwargs: called.append(kwargs))
    for name in observability.QUIET_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)

    assert observability.configure({"APPLICATIONINSIGHTS_CONNECTION_STRING": "  "}) is False
    assert called == []
    assert all(logging.getLogger(name).level == logging.WARNING for name in observability.QUIET_LOGGERS)


@pytest.mark.parametrize("client_id", ["client-of-the-app", " ", None])
def test_with_a_connection_string_azure_monitor_is_configured_to_authenticate_as_the_identity(monkeypatch, client_id):
    """The credential handed to configure_azure_monitor asks the Functions identity endpoint (a loopback one
    here, speaking App Service's IDENTITY_ENDPOINT protocol) for a token as AZURE_CLIENT_ID's identity (the
    user-assigned one of the template), or as the system-assigned identity without one."""
    connection = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://example.invalid/"
    called = []
    monkeypatch.setattr("azure.monitor.opentelemetry.configure_azure_monitor", lambda **kwargs: called.append(kwargs))
    token_requests: list[dict] = []

    class IdentityEndpoint(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token_requests.append(parse_qs(urlparse(self.path).query) | {"header": self.headers["X-IDENTITY-HEADER"]})
            body = json.dumps({"access_token": "t", "expires_on": "4102444800", "resource": "r",
                               "token_type": "Bearer"})  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    with scoring_uri_serving(IdentityEndpoint) as uri:
        monkeypatch.setenv("IDENTITY_ENDPOINT", uri.removesuffix("/score") + "/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", "identity-header")
        environ = {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection, "AZURE_CLIENT_ID": client_id or ""}
        assert observability.configure(environ) is True
        [kwargs] = called
        token = kwargs["credential"].get_token("https://monitor.azure.com//.default")

    assert kwargs["connection_string"] == connection
    assert type(kwargs["credential"]).__name__ == "ManagedIdentityCredential" and token.token == "t"
    [asked] = token_requests
    assert (asked.get("client_id"), asked["header"]) == ([client_id] if client_id and client_id.strip() else None,
                                                         "identity-header")  # fmt: skip
