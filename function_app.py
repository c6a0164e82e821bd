"""The Function App: a routing table. Each trigger parses its binding, calls `shared/`, binds outputs.

Python v2 programming model. Only the streaming, delivery and HTTP handlers are imported here; each
nightly timer imports its job when it runs, so a cold start (every Event Hub scale-out instance) does
not pay for the training, tracking, plotting and compliance stacks. Settings are read once, on first
use, by `shared.bootstrap` (so a bad setting fails the first invocation with a message that names it,
and tests can set the environment before any function runs).
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

from shared import bootstrap
from shared.adapters import observability
from shared.config.names import (
    ALERT_QUEUE,
    EVENTHUB_CONNECTION_SETTING,
    STORAGE_CONNECTION_SETTING,
    TELEMETRY_EVENT_HUB,
)
from shared.core.dashboard_page import LookupForm
from shared.core.telemetry import InputError
from shared.handlers.alerts import drain_iothub_feedback, process_alert_message
from shared.handlers.dashboard import dashboard_page
from shared.handlers.feedback import receive_feedback
from shared.handlers.lifecycle import note_queued
from shared.handlers.ops import health_report, vehicle_alerts
from shared.handlers.spark_alerts import alert_spark_scores
from shared.handlers.telemetry import ingest_telemetry, rescore_parked

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

log = logging.getLogger("function_app")


@app.timer_trigger(arg_name="timer", schedule="%COMPACTION_SCHEDULE%", use_monitor=True)
def compact_telemetry_archive(timer: func.TimerRequest) -> None:
    """Merge each finished day's small archive files into one, so the nightly jobs read a file a day."""
    from shared.handlers.nightly import compact_telemetry  # the nightly stack, loaded when the timer runs

    observability.log_summary(log, "compact_telemetry_archive", compact_telemetry(bootstrap.current()))


@app.timer_trigger(arg_name="timer", schedule="%RETRAIN_SCHEDULE%", use_monitor=True)
def nightly_retrain_timer(timer: func.TimerRequest) -> None:
    """Retrain on the archived telemetry; promote the new model only if its backtest beats the champion."""
    from shared.handlers.nightly import nightly_retrain  # the training stack, loaded when the timer runs

    outcome = nightly_retrain(bootstrap.current(), past_due=timer.past_due)
    observability.log_summary(log, "nightly_retrain", outcome)


@app.timer_trigger(arg_name="timer", schedule="%BATCH_SCORE_SCHEDULE%", use_monitor=True)
@app.queue_output(arg_name="alerts", queue_name=ALERT_QUEUE, connection=STORAGE_CONNECTION_SETTING)
def nightly_batch_score_timer(timer: func.TimerRequest, alerts: func.Out[list[str]]) -> None:
    """Score every battery in service with the champion; write the scores table; queue the alerts."""
    from shared.handlers.nightly import nightly_batch_score  # the model stack, loaded when the timer runs

    result = nightly_batch_score(bootstrap.current())
    _queue(alerts, result.alerts)
    observability.log_summary(log, "nightly_batch_score", result.summary)


@app.timer_trigger(arg_name="timer", schedule="%MONITOR_SCHEDULE%", use_monitor=True)
def nightly_monitor_timer(timer: func.TimerRequest) -> None:
    """Judge the scores that matured, measure input drift, compare the shadow; retrain if the champion slipped."""
    from shared.handlers.monitoring import nightly_monitor  # the monitoring stack, loaded when the timer runs

    observability.log_summary(log, "nightly_monitor", nightly_monitor(bootstrap.current()))


@app.timer_trigger(arg_name="timer", schedule="0 */15 * * * *", use_monitor=False)
@app.queue_output(arg_name="alerts", queue_name=ALERT_QUEUE, connection=STORAGE_CONNECTION_SETTING)
def alert_spark_scores_timer(timer: func.TimerRequest, alerts: func.Out[list[str]]) -> None:
    """With a Spark target, every 15 minutes: queue the alerts of the night's Spark score once it has finished."""
    result = alert_spark_scores(bootstrap.current())
    _queue(alerts, result.alerts)
    observability.log_summary(log, "alert_spark_scores", result.summary)


@app.timer_trigger(arg_name="timer", schedule="%COMPLIANCE_SCHEDULE%", use_monitor=True)
@app.queue_output(arg_name="alerts", queue_name=ALERT_QUEUE, connection=STORAGE_CONNECTION_SETTING)
def nightly_compliance_score_timer(timer: func.TimerRequest, alerts: func.Out[list[str]]) -> None:
    """Score the component catalogue; write the results; queue one alert per car with non-compliant parts."""
    from shared.handlers.compliance import nightly_compliance_score  # the compliance stack, when the timer runs

    result = nightly_compliance_score(bootstrap.current())
    _queue(alerts, result.alerts)
    observability.log_summary(log, "nightly_compliance_score", result.summary)


@app.event_hub_message_trigger(
    arg_name="events",
    event_hub_name=TELEMETRY_EVENT_HUB,
    connection=EVENTHUB_CONNECTION_SETTING,
    cardinality="many",
    consumer_group="%EVENTHUB_CONSUMER_GROUP%",
)
@app.retry(strategy="exponential_backoff", max_retry_count="4", minimum_interval="00:00:05",
           maximum_interval="00:02:00")  # fmt: skip
@app.queue_output(arg_name="alerts", queue_name=ALERT_QUEUE, connection=STORAGE_CONNECTION_SETTING)
def score_telemetry(events: list[func.EventHubEvent], alerts: func.Out[list[str]], context: func.Context) -> None:
    """Validate, archive and score a batch of car telemetry; queue alerts. Bad events are dead-lettered.

    When the endpoint stays down, the batch raises so the retry policy runs it again; on the last retry
    it is parked for re-scoring with the reason instead, so nothing is lost.
    """
    retry = context.retry_context
    result = ingest_telemetry(
        bootstrap.current(),
        bodies=[event.get_body() for event in events],
        metadata=[_event_metadata(event) for event in events],
        final_attempt=retry is None or retry.retry_count >= retry.max_retry_count,
    )
    _queue(alerts, result.alerts)
    observability.count_ingested(result.summary, [event.enqueued_time for event in events], bootstrap.current().clock())
    observability.log_summary(log, "score_telemetry", result.summary)


@app.timer_trigger(arg_name="timer", schedule="0 */10 * * * *", use_monitor=False)
@app.queue_output(arg_name="alerts", queue_name=ALERT_QUEUE, connection=STORAGE_CONNECTION_SETTING)
def rescore_parked_telemetry(timer: func.TimerRequest, alerts: func.Out[list[str]]) -> None:
    """Every 10 minutes, score the batches parked while the endpoint was down or refused them (fewest attempts
    first; one refused three times is dead-lettered); queue their alerts."""
    result = rescore_parked(bootstrap.current())
    _queue(alerts, result.alerts)
    observability.log_summary(log, "rescore_parked_telemetry", result.summary)


@app.queue_trigger(arg_name="message", queue_name=ALERT_QUEUE, connection=STORAGE_CONNECTION_SETTING)
def push_alert(message: func.QueueMessage) -> None:
    """Deliver one alert to the car's head unit, unless cooldown or idempotency says it was already sent.

    Transient gateway failures raise, so the queue retries; after maxDequeueCount (host.json) the host
    moves the message to maintenance-alerts-poison. Permanent rejections are recorded, not retried. Without
    a signing key the alert is kept on the queue (shared/handlers/alerts.py).
    """
    outcome = process_alert_message(bootstrap.current(), message.get_body(), message.dequeue_count)
    observability.count_alert_outcome(outcome["state"])
    observability.log_summary(log, "push_alert", outcome)


@app.timer_trigger(arg_name="timer", schedule="0 * * * * *", use_monitor=False)
def iothub_feedback_timer(timer: func.TimerRequest) -> None:
    """Every minute, record IoT Hub's delivery feedback (delivered, expired, rejected) on the alerts it carried;
    nothing to do without IOTHUB_CONNECTION or IOTHUB_HOSTNAME."""
    observability.log_summary(log, "iothub_feedback_timer", drain_iothub_feedback(bootstrap.current()))


@app.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Storage and scoring-endpoint reachability, for probes and operators."""
    report = health_report(bootstrap.current())
    return _json(report, 200 if report["healthy"] else 503)


@app.route(route="vehicles/{car_id}/alerts", methods=["GET"])
def list_vehicle_alerts(req: func.HttpRequest) -> func.HttpResponse:
    """The alerts a car was sent and their delivery state, for service staff; 400 for an impossible id."""
    try:
        return _json(vehicle_alerts(bootstrap.current(), req.route_params["car_id"]), 200)
    except InputError as error:
        return _json({"error": str(error)}, 400)


@app.route(route="vehicles/{car_id}/alerts/{alert_id}/feedback", methods=["POST"])
def alert_feedback(req: func.HttpRequest) -> func.HttpResponse:
    """A head unit's signed answer to an alert (seen, dismissed, snoozed, service booked), recorded with it."""
    status, body = receive_feedback(bootstrap.current(), req.route_params["car_id"], req.route_params["alert_id"],
                                    req.headers, req.get_body())  # fmt: skip
    return _json(body, status)


@app.route(route="dashboard", methods=["GET"])
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The operations dashboard, an HTML page (`?car=<Car_ID>`: that car's); 400 with a JSON reason for an
    impossible id, 404 with the page for a car no store knows. The lookup form keeps the function key."""
    lookup = LookupForm(hidden={"code": req.params["code"]} if req.params.get("code") else {})
    try:
        page = dashboard_page(bootstrap.current(), req.params.get("car"), lookup)
    except InputError as error:
        return _json({"error": str(error)}, 400)
    return func.HttpResponse(page.html, status_code=page.status, mimetype="text/html", charset="utf-8")


def _event_metadata(event: func.EventHubEvent) -> dict:
    return {
        "partition_key": event.partition_key,
        "sequence_number": event.sequence_number,
        "offset": event.offset,
        "enqueued_time": event.enqueued_time.isoformat() if event.enqueued_time else None,
    }


def _queue(alerts: func.Out[list[str]], queued: list[dict]) -> None:
    note_queued(bootstrap.current(), queued)  # the newest alert of each battery: an older one is superseded
    alerts.set([json.dumps(alert) for alert in queued])
    observability.count_queued(len(queued))


def _json(body: dict | list, status: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype="application/json")
