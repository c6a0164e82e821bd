"""The local Functions host against a small test-only FunctionApp and a real Azurite.

The app below uses the same kinds of bindings as function_app.py (timer, Event Hub many + retry + queue
output, queue trigger, HTTP route); its functions record what the host handed them and fail on demand.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

from shared.adapters.storage import queue_service
from shared.config.host import HostConfig, load_host_config, parse_timespan
from shared.config.settings import SettingsError
from shared.devtools.functions_host import FunctionsHost, RetryPolicy, function_spec, indexed_functions

CONFIG = HostConfig(max_dequeue_count=3, visibility_timeout=timedelta(seconds=30), max_event_batch_size=2)


@dataclass
class Recorder:
    """What the test app's functions received, and how many more times each should raise."""

    calls: dict[str, list] = field(default_factory=dict)
    failures_left: dict[str, int] = field(default_factory=dict)

    def record(self, function: str, value) -> None:
        self.calls.setdefault(function, []).append(value)
        if self.failures_left.get(function, 0) > 0:
            self.failures_left[function] -= 1
            raise RuntimeError(f"{function} told to fail")


@dataclass
class AppUnderTest:
    app: func.FunctionApp
    recorder: Recorder
    out_queue: str
    in_queue: str


@pytest.fixture
def test_app() -> AppUnderTest:
    """A fresh test app with its own queue names, so tests never see each other's messages."""
    suffix = uuid.uuid4().hex[:10]
    out_queue, in_queue = f"out-{suffix}", f"in-{suffix}"
    recorder = Recorder()
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.timer_trigger(arg_name="timer", schedule="%NIGHTLY_SCHEDULE%", use_monitor=True)
    @app.queue_output(arg_name="alerts", queue_name=out_queue, connection="AzureWebJobsStorage")
    def nightly(timer: func.TimerRequest, alerts: func.Out[list[str]]) -> None:
        alerts.set(["first alert", "second alert"])
        recorder.record("nightly", timer)

    @app.event_hub_message_trigger(
        arg_name="events", event_hub_name="car-telemetry", connection="EventHubConnection", cardinality="many"
    )
    @app.retry(strategy="exponential_backoff", max_retry_count="3", minimum_interval="00:00:01",
               maximum_interval="00:00:03")  # fmt: skip
    @app.queue_output(arg_name="alerts", queue_name=out_queue, connection="AzureWebJobsStorage")
    def ingest(events: list[func.EventHubEvent], alerts: func.Out[list[str]], context: func.Context) -> None:
        retry = context.retry_context
        alerts.set([event.get_body().decode() for event in events])
        recorder.record("ingest", (list(events), retry.retry_count, retry.max_retry_count))

    @app.queue_trigger(arg_name="message", queue_name=in_queue, connection="AzureWebJobsStorage")
    def deliver(message: func.QueueMessage) -> None:
        recorder.record("deliver", message)

    @app.route(route="vehicles/{car_id}/alerts", methods=["GET"])
    def vehicle_alerts(req: func.HttpRequest) -> func.HttpResponse:
        recorder.record("vehicle_alerts", req)
        body = {"car": req.route_params["car_id"], "since": req.params.get("since")}
        return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")

    return AppUnderTest(app, recorder, out_queue, in_queue)


@pytest.fixture
def host(test_app: AppUnderTest, storage_connection: str) -> FunctionsHost:
    return FunctionsHost(test_app.app, storage_connection, CONFIG, environ={"NIGHTLY_SCHEDULE": "0 0 2 * * *"})


def queue_texts(storage_connection: str, name: str) -> list[str]:
    """The queue's messages read with the SDK's own base64 text decoding (and left on the queue)."""
    queue = queue_service(storage_connection).get_queue_client(name, message_decode_policy=TextBase64DecodePolicy())
    return [message.content for message in queue.peek_messages(max_messages=32)]


def send_texts(storage_connection: str, name: str, texts: list[str]) -> None:
    """Put messages on a queue the way another app writing base64 text would."""
    queue = queue_service(storage_connection).get_queue_client(name, message_encode_policy=TextBase64EncodePolicy())
    queue.create_queue()
    for text in texts:
        queue.send_message(text)


# --- host.json and indexing ---------------------------------------------------------------------------


def test_host_config_is_read_from_the_project_host_json():
    config = load_host_config()
    assert config == HostConfig(
        max_dequeue_count=5, visibility_timeout=timedelta(seconds=60), message_encoding="base64",
        queue_batch_size=16, max_event_batch_size=500,
    )  # fmt: skip


def test_a_bad_host_json_value_is_named(tmp_path: Path):
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"extensions": {"queues": {"maxDequeueCount": "five"}}}))
    with pytest.raises(ValueError, match=r"queues\.maxDequeueCount"):
        load_host_config(path)
    path.write_text(json.dumps({"extensions": {"queues": {"visibilityTimeout": "30s"}}}))
    with pytest.raises(ValueError, match=r"queues\.visibilityTimeout"):
        load_host_config(path)


def test_timespans_and_retry_delays():
    assert parse_timespan("1.02:03:04.5", "x") == timedelta(days=1, hours=2, minutes=3, seconds=4.5)
    exponential = RetryPolicy("exponential_backoff", 4, minimum_interval=timedelta(seconds=5),
                              maximum_interval=timedelta(seconds=12))  # fmt: skip
    assert [exponential.delay_before(retry).total_seconds() for retry in (1, 2, 3, 4)] == [5, 10, 12, 12]
    fixed = RetryPolicy("fixed_delay", 2, delay_interval=timedelta(seconds=7))
    assert [fixed.delay_before(retry).total_seconds() for retry in (1, 2)] == [7, 7]


def test_functions_are_indexed_from_their_bindings(host: FunctionsHost, test_app: AppUnderTest):
    ingest = host.functions["ingest"]
    assert ingest.trigger_type == "eventHubTrigger" and ingest.takes_context
    assert ingest.retry == RetryPolicy("exponential_backoff", 3, minimum_interval=timedelta(seconds=1),
                                       maximum_interval=timedelta(seconds=3))  # fmt: skip
    [output] = ingest.queue_outputs
    assert (output["queueName"], output["connection"]) == (test_app.out_queue, "AzureWebJobsStorage")
    assert {row["function"]: row["source"] for row in host.describe()} == {
        "nightly": "0 0 2 * * *",
        "ingest": "event hub car-telemetry",
        "deliver": f"queue {test_app.in_queue}",
        "vehicle_alerts": "GET /api/vehicles/{car_id}/alerts",
    }


def test_an_unset_schedule_setting_is_named(test_app: AppUnderTest, storage_connection: str):
    host = FunctionsHost(test_app.app, storage_connection, CONFIG, environ={})
    with pytest.raises(SettingsError, match="NIGHTLY_SCHEDULE"):
        host.describe()


def test_an_app_can_be_indexed_again_but_duplicate_names_are_still_refused(test_app: AppUnderTest):
    assert [f.get_function_name() for f in indexed_functions(test_app.app)] == [
        f.get_function_name() for f in indexed_functions(test_app.app)
    ]
    app = func.FunctionApp()
    for route in ("one", "two"):
        app.function_name("same")(app.route(route=route)(lambda req: func.HttpResponse("")))
    with pytest.raises(ValueError, match="same does not have a unique function name"):
        indexed_functions(app)


def test_a_binding_the_host_cannot_emulate_is_refused():
    app = func.FunctionApp()

    @app.blob_trigger(arg_name="blob", path="telemetry/{name}", connection="AzureWebJobsStorage")
    def on_blob(blob: func.InputStream) -> None: ...

    [function] = app.get_functions()
    with pytest.raises(NotImplementedError, match=r"on_blob.*blobTrigger"):
        function_spec(function)


def test_unknown_function_or_wrong_trigger_is_an_error(host: FunctionsHost):
    with pytest.raises(KeyError, match=r"nope.*deliver"):
        host.fire_timer("nope")
    with pytest.raises(ValueError, match="deliver has a queueTrigger"):
        host.fire_timer("deliver")


# --- timer --------------------------------------------------------------------------------------------


def test_timer_gets_a_timer_request_and_its_outputs_land_base64_encoded(
    host: FunctionsHost, test_app: AppUnderTest, storage_connection: str
):
    invocation = host.fire_timer("nightly", past_due=True)

    [timer] = test_app.recorder.calls["nightly"]
    assert isinstance(timer, TimerRequest) and timer.past_due
    assert invocation.succeeded and invocation.attempts == 1 and invocation.enqueued == {test_app.out_queue: 2}
    assert sorted(queue_texts(storage_connection, test_app.out_queue)) == ["first alert", "second alert"]
    raw = queue_service(storage_connection).get_queue_client(test_app.out_queue).peek_messages(max_messages=2)
    assert sorted(message.content for message in raw) == sorted(
        base64.b64encode(text.encode()).decode() for text in ("first alert", "second alert")
    )


# --- Event Hub ----------------------------------------------------------------------------------------


def test_events_arrive_as_event_hub_event_lists_in_batches_of_max_event_batch_size(
    host: FunctionsHost, test_app: AppUnderTest, storage_connection: str
):
    bodies = [f'{{"n": {n}}}'.encode() for n in range(5)]
    delivery = host.deliver_events("ingest", bodies, partition_keys=[f"CAR-{n % 2}" for n in range(5)])

    calls = test_app.recorder.calls["ingest"]
    assert [len(events) for events, _, _ in calls] == [2, 2, 1]
    events = [event for batch, _, _ in calls for event in batch]
    assert all(isinstance(event, func.EventHubEvent) for event in events)
    assert [event.get_body() for event in events] == bodies
    assert [event.partition_key for event in events] == ["CAR-0", "CAR-1", "CAR-0", "CAR-1", "CAR-0"]
    assert [event.sequence_number for event in events] == [0, 1, 2, 3, 4]
    assert [int(event.offset) for event in events] == [0, 8, 16, 24, 32]
    assert all(event.enqueued_time is not None for event in events)
    assert [(retry, most) for _, retry, most in calls] == [(0, 3)] * 3
    assert delivery.events == 5 and delivery.failed_batches == []
    assert sorted(queue_texts(storage_connection, test_app.out_queue)) == sorted(body.decode() for body in bodies)

    host.deliver_events("ingest", [b'{"n": 5}'])
    [(later, _, _)] = test_app.recorder.calls["ingest"][3:]
    assert later[0].sequence_number == 5 and later[0].offset == "40"


def test_a_failing_batch_is_retried_and_only_the_successful_attempt_writes_outputs(
    host: FunctionsHost, test_app: AppUnderTest, storage_connection: str
):
    test_app.recorder.failures_left["ingest"] = 2
    delivery = host.deliver_events("ingest", [b"one", b"two"])

    [batch] = delivery.batches
    assert batch.succeeded and batch.attempts == 3
    assert [delay.total_seconds() for delay in batch.retry_delays] == [1, 2]
    assert [retry for _, retry, _ in test_app.recorder.calls["ingest"]] == [0, 1, 2]
    assert sorted(queue_texts(storage_connection, test_app.out_queue)) == ["one", "two"]


def test_a_batch_failing_every_retry_is_reported_and_the_next_batch_still_runs(
    host: FunctionsHost, test_app: AppUnderTest, storage_connection: str
):
    test_app.recorder.failures_left["ingest"] = 4  # the first attempt and all three retries of batch 1
    delivery = host.deliver_events("ingest", [b"a", b"b", b"c"])

    first, second = delivery.batches
    assert first.attempts == 4 and not first.succeeded and "ingest told to fail" in first.error
    assert [delay.total_seconds() for delay in first.retry_delays] == [1, 2, 3]
    assert [retry for _, retry, _ in test_app.recorder.calls["ingest"]] == [0, 1, 2, 3, 0]
    assert delivery.failed_batches == [first] and delivery.errors == [f"ingest: {first.error}"]
    assert second.succeeded and queue_texts(storage_connection, test_app.out_queue) == ["c"]


# --- queue trigger ------------------------------------------------------------------------------------


def test_a_queue_message_that_succeeds_is_deleted(host: FunctionsHost, test_app: AppUnderTest, storage_connection: str):
    send_texts(storage_connection, test_app.in_queue, ["alert one", "alert two", "alert three"])
    drain = host.drain_queue("deliver")

    messages = test_app.recorder.calls["deliver"]
    assert all(isinstance(message, QueueMessage) for message in messages)
    assert sorted(message.get_body() for message in messages) == [b"alert one", b"alert three", b"alert two"]
    assert {message.dequeue_count for message in messages} == {1}
    assert all(message.id and message.pop_receipt and message.insertion_time for message in messages)
    assert (drain.deliveries, drain.succeeded, drain.failed_attempts, drain.poisoned) == (3, 3, 0, 0)
    assert queue_texts(storage_connection, test_app.in_queue) == []


def test_a_message_that_fails_once_is_delivered_again(
    host: FunctionsHost, test_app: AppUnderTest, storage_connection: str
):
    send_texts(storage_connection, test_app.in_queue, ["flaky"])
    test_app.recorder.failures_left["deliver"] = 1
    drain = host.drain_queue("deliver")

    assert [message.dequeue_count for message in test_app.recorder.calls["deliver"]] == [1, 2]
    assert (drain.deliveries, drain.succeeded, drain.failed_attempts, drain.poisoned) == (2, 1, 1, 0)
    assert drain.skipped_wait == timedelta(seconds=30)
    assert queue_texts(storage_connection, test_app.in_queue) == []


def test_a_message_that_always_fails_ends_in_the_poison_queue_after_max_dequeue_count(
    host: FunctionsHost, test_app: AppUnderTest, storage_connection: str
):
    send_texts(storage_connection, test_app.in_queue, ["doomed"])
    test_app.recorder.failures_left["deliver"] = 99
    drain = host.drain_queue("deliver")

    assert [message.dequeue_count for message in test_app.recorder.calls["deliver"]] == [1, 2, 3]
    assert (drain.deliveries, drain.succeeded, drain.failed_attempts, drain.poisoned) == (3, 0, 3, 1)
    assert "delivery 3: RuntimeError: deliver told to fail" in drain.failures[-1]
    assert drain.skipped_wait == timedelta(seconds=60)
    assert queue_texts(storage_connection, test_app.in_queue) == []
    assert queue_texts(storage_connection, f"{test_app.in_queue}-poison") == ["doomed"]


def test_a_message_that_is_not_base64_is_poisoned_without_reaching_the_function(
    host: FunctionsHost, test_app: AppUnderTest, storage_connection: str
):
    queue = queue_service(storage_connection).get_queue_client(test_app.in_queue)
    queue.create_queue()
    queue.send_message("not base64!")
    drain = host.drain_queue("deliver")

    assert "deliver" not in test_app.recorder.calls
    assert drain.poisoned == 1 and drain.failed_attempts == 3 and "not valid base64" in drain.failures[0]
    [poisoned] = queue_service(storage_connection).get_queue_client(f"{test_app.in_queue}-poison").peek_messages()
    assert poisoned.content == "not base64!"


def test_draining_a_queue_that_does_not_exist_yet_finds_it_empty(host: FunctionsHost, test_app: AppUnderTest):
    drain = host.drain_queue("deliver")
    assert (drain.deliveries, drain.poisoned) == (0, 0) and "deliver" not in test_app.recorder.calls


# --- HTTP ---------------------------------------------------------------------------------------------


def test_http_call_builds_the_request_for_the_route(host: FunctionsHost, test_app: AppUnderTest):
    response = host.call_http(
        "vehicle_alerts", "get", route_params={"car_id": "CAR 17"}, params={"since": "2017-03-01"},
        headers={"x-functions-key": "local"},
    )  # fmt: skip

    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"car": "CAR 17", "since": "2017-03-01"}
    [request] = test_app.recorder.calls["vehicle_alerts"]
    assert request.method == "GET" and request.headers["x-functions-key"] == "local"
    assert request.url == "http://127.0.0.1/api/vehicles/CAR%2017/alerts?since=2017-03-01"


def test_http_errors(host: FunctionsHost, test_app: AppUnderTest):
    with pytest.raises(ValueError, match="car_id"):
        host.call_http("vehicle_alerts", "GET")
    with pytest.raises(ValueError, match="accepts"):
        host.call_http("vehicle_alerts", "POST", route_params={"car_id": "CAR-1"})
    test_app.recorder.failures_left["vehicle_alerts"] = 1
    assert host.call_http("vehicle_alerts", route_params={"car_id": "CAR-1"}).status_code == 500
