"""The real function_app's bindings, exactly as the Functions host indexes them (`get_function_json()`).

These are contracts with things outside the code: the app settings that hold the schedules, the Event Hub
and queue names, the connection settings, the HTTP routes operators call. The local host is built on the
same app, so a binding it could not emulate fails here too.
"""

from __future__ import annotations

import json

import pytest

from shared.devtools.functions_host import FunctionsHost, function_spec, indexed_functions

try:
    import function_app
except ImportError as error:  # only while the shared/ modules it imports are being written
    pytest.skip(f"function_app cannot be imported yet: {error}", allow_module_level=True)

FUNCTIONS = {function.get_function_name(): function for function in indexed_functions(function_app.app)}


def bindings(name: str) -> list[dict]:
    assert name in FUNCTIONS, f"no function {name!r}; the app has {sorted(FUNCTIONS)}"
    return json.loads(FUNCTIONS[name].get_function_json())["bindings"]


def trigger(name: str) -> dict:
    [found] = [binding for binding in bindings(name) if binding["type"].endswith("Trigger")]
    return found


def queue_outputs(name: str) -> list[tuple[str, str]]:
    return [
        (binding["queueName"], binding["connection"])
        for binding in bindings(name)
        if binding["type"] == "queue" and binding["direction"].lower() == "out"
    ]


ALERT_OUTPUT = [("maintenance-alerts", "AzureWebJobsStorage")]


def test_the_app_has_exactly_the_functions_of_the_design():
    assert sorted(FUNCTIONS) == [
        "alert_feedback", "alert_spark_scores_timer", "compact_telemetry_archive", "dashboard",
        "health", "iothub_feedback_timer", "list_vehicle_alerts", "nightly_batch_score_timer",
        "nightly_compliance_score_timer", "nightly_monitor_timer", "nightly_retrain_timer", "push_alert",
        "rescore_parked_telemetry", "score_telemetry",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "schedule", "outputs"),
    [
        ("nightly_retrain_timer", "%RETRAIN_SCHEDULE%", []),
        ("nightly_batch_score_timer", "%BATCH_SCORE_SCHEDULE%", ALERT_OUTPUT),
        ("compact_telemetry_archive", "%COMPACTION_SCHEDULE%", []),
        ("nightly_monitor_timer", "%MONITOR_SCHEDULE%", []),
        ("nightly_compliance_score_timer", "%COMPLIANCE_SCHEDULE%", ALERT_OUTPUT),
        ("rescore_parked_telemetry", "0 */10 * * * *", ALERT_OUTPUT),
    ],
)
def test_timers(name: str, schedule: str, outputs: list):
    assert trigger(name)["type"] == "timerTrigger"
    assert trigger(name)["schedule"] == schedule
    assert queue_outputs(name) == outputs


def test_score_telemetry_takes_event_batches_with_a_retry_policy_and_queues_alerts():
    event_hub = trigger("score_telemetry")
    assert event_hub["type"] == "eventHubTrigger"
    assert (event_hub["eventHubName"], event_hub["connection"]) == ("car-telemetry", "EventHubConnection")
    assert event_hub["cardinality"].lower() == "many"
    assert queue_outputs("score_telemetry") == ALERT_OUTPUT
    retry = function_spec(FUNCTIONS["score_telemetry"]).retry  # not in function.json: the host gets it apart
    assert retry is not None and retry.strategy == "exponential_backoff" and retry.max_retry_count >= 1
    assert retry.delay_before(1).total_seconds() > 0


def test_push_alert_is_triggered_by_the_alert_queue():
    queue = trigger("push_alert")
    assert queue["type"] == "queueTrigger"
    assert (queue["queueName"], queue["connection"]) == ("maintenance-alerts", "AzureWebJobsStorage")
    assert queue_outputs("push_alert") == []


@pytest.mark.parametrize(
    ("name", "route", "method"),
    [("health", "health", "GET"), ("list_vehicle_alerts", "vehicles/{car_id}/alerts", "GET"),
     ("alert_feedback", "vehicles/{car_id}/alerts/{alert_id}/feedback", "POST"), ("dashboard", "dashboard", "GET")],
)  # fmt: skip
def test_http_routes_need_a_function_key(name: str, route: str, method: str):
    http = trigger(name)
    assert http["type"] == "httpTrigger"
    assert (http["route"], http["methods"], http["authLevel"].lower()) == (route, [method], "function")
    assert {"type": "http", "direction": "OUT", "name": "$return"} in bindings(name)


def test_the_local_host_can_run_every_function(storage_connection: str):
    environ = {"RETRAIN_SCHEDULE": "0 0 2 * * *", "BATCH_SCORE_SCHEDULE": "0 0 3 * * *",
               "COMPLIANCE_SCHEDULE": "0 30 3 * * *", "COMPACTION_SCHEDULE": "0 0 1 * * *",
               "MONITOR_SCHEDULE": "0 0 4 * * *"}  # fmt: skip
    host = FunctionsHost(function_app.app, storage_connection, environ=environ)
    assert {row["function"]: row["source"] for row in host.describe()} == {
        "nightly_retrain_timer": "0 0 2 * * *",
        "nightly_batch_score_timer": "0 0 3 * * *",
        "nightly_compliance_score_timer": "0 30 3 * * *",
        "compact_telemetry_archive": "0 0 1 * * *",
        "nightly_monitor_timer": "0 0 4 * * *",
        "alert_spark_scores_timer": "0 */15 * * * *",
        "score_telemetry": "event hub car-telemetry",
        "rescore_parked_telemetry": "0 */10 * * * *",
        "push_alert": "queue maintenance-alerts",
        "iothub_feedback_timer": "0 * * * * *",
        "health": "GET /api/health",
        "dashboard": "GET /api/dashboard",
        "list_vehicle_alerts": "GET /api/vehicles/{car_id}/alerts",
        "alert_feedback": "POST /api/vehicles/{car_id}/alerts/{alert_id}/feedback",
    }
    assert host.functions["score_telemetry"].takes_context
