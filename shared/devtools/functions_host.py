"""The Functions host, emulated: drives `function_app.app` locally, without Azure Functions Core Tools.

Core Tools cannot be installed here (its npm installer downloads a binary from a CDN) and many CI boxes
lack it, yet the main job and the integration tests must run the real functions. This module plays the
host's part for the triggers the app uses. It reads each function's bindings from `get_function_json()`
(exactly what the host indexes) and calls the Python function with the real `azure.functions` objects
the worker would build, against real storage (Azurite locally):

- timer: a `TimerRequest`. Timers are fired explicitly (`fire_timer`); schedules are only resolved, for
  reporting, so nothing here waits for a clock.
- Event Hub: `EventHubEvent`s in batches of host.json's `eventHubs.maxEventBatchSize` (a list when the
  cardinality is many). A batch that raises is re-run under the function's retry policy; the delays the
  host would wait are recorded, not slept. When the last retry raises too the host checkpoints past the
  batch anyway, so its events are gone unless the function parked them: the result reports that.
- queue: messages received from the real queue as `QueueMessage`s with their real dequeue count. Success
  deletes the message; failure releases it (visible again at once; the host's `visibilityTimeout` wait is
  recorded, not slept); a message that fails its `maxDequeueCount`-th delivery moves to "<queue>-poison".
- HTTP: `HttpRequest` in, `HttpResponse` out; an exception becomes a 500, as in the host.
- queue outputs: each `queue` output binding gets an `Out`; after a successful attempt the values set on
  it are written to that queue, encoded as host.json's `queues.messageEncoding` says.

It does not run schedules or poll, enforce function keys (Core Tools does not locally either), or split
events by Event Hub partition (one stream, sequence numbers counting up across calls). A binding type the
app does not use is refused when the host is built, naming the function and the type.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import inspect
import json
import logging
import os
import re
import threading
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import azure.functions as func
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions import _abc as functions_abc
from azure.functions.decorators.function_app import Function
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient, QueueServiceClient
from azure.storage.queue import QueueMessage as StoredMessage

from shared.adapters.storage import StorageConnection, queue_service, resolve_connection
from shared.config.host import HostConfig, load_host_config, parse_timespan
from shared.config.names import STORAGE_CONNECTION_SETTING
from shared.config.settings import SettingsError
from shared.devtools.azurite import PROJECT_ROOT

log = logging.getLogger("functions_host")

TRIGGERS = ("timerTrigger", "eventHubTrigger", "queueTrigger", "httpTrigger")
# The host leases a queue message for 10 minutes while the function runs (and renews the lease); on
# failure it releases the message so that it is visible again after host.json's visibilityTimeout.
QUEUE_LEASE_SECONDS = 600
_SETTING_REFERENCE = re.compile(r"%([^%]+)%")
_ROUTE_PARAMETER = re.compile(r"\{(\w+)(?::[^}]*)?\??\}")


# --- what the host indexes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """A function's retry policy (`@app.retry`): how often a failed invocation is run again, and after
    what wait. The host applies it to timer and Event Hub triggers (queues have their own dequeue count)."""

    strategy: str  # "fixed_delay" or "exponential_backoff"
    max_retry_count: int
    delay_interval: timedelta = timedelta(0)  # fixed_delay
    minimum_interval: timedelta = timedelta(0)  # exponential_backoff
    maximum_interval: timedelta = timedelta(0)

    def delay_before(self, retry: int) -> timedelta:
        """The wait before retry number `retry` (1, 2, …): the fixed delay, or the minimum interval doubled
        per retry up to the maximum (the host's nominal exponential backoff; it adds a little jitter)."""
        if self.strategy == "fixed_delay":
            return self.delay_interval
        return min(self.minimum_interval * 2 ** (retry - 1), self.maximum_interval)


@dataclass(frozen=True)
class FunctionSpec:
    """One function as the host indexes it: its trigger binding, queue outputs and retry policy."""

    name: str
    trigger: dict[str, Any]  # the trigger's binding from get_function_json()
    queue_outputs: tuple[dict[str, Any], ...]
    retry: RetryPolicy | None
    takes_context: bool  # the function has a `context` parameter, which the worker fills with a Context
    user_function: Callable[..., Any]

    @property
    def trigger_type(self) -> str:
        return self.trigger["type"]


def indexed_functions(app: func.FunctionApp) -> list[Function]:
    """`app.get_functions()`, callable more than once per process (each host built in a test calls it).

    The library's get_functions() records every name it has seen to reject duplicates, and never forgets
    them, so a second call fails with "does not have a unique function name" (Azure/azure-functions-python-
    worker#1867). Forgetting the names first keeps the duplicate check meaningful within one indexing.
    """
    app.functions_bindings = {}
    return app.get_functions()


def function_spec(function: Function) -> FunctionSpec:
    """Index one `app.get_functions()` entry the way the host does; refuse what the emulator cannot run."""
    name = function.get_function_name()
    bindings = json.loads(function.get_function_json())["bindings"]
    [trigger] = [binding for binding in bindings if binding["type"].endswith("Trigger")]
    if trigger["type"] not in TRIGGERS:
        raise NotImplementedError(f"function {name}: the local host does not emulate {trigger['type']} triggers")
    outputs = [binding for binding in bindings if binding is not trigger]
    for binding in outputs:
        if binding["type"] not in ("queue", "http"):
            raise NotImplementedError(
                f"function {name}: the local host does not emulate {binding['type']} binding {binding['name']!r}"
            )
    parameters = inspect.signature(function.get_user_function()).parameters
    bound = {binding["name"] for binding in bindings}
    unbound = set(parameters) - bound - {"context"}
    if unbound:
        raise ValueError(f"function {name}: parameter(s) {sorted(unbound)} match no binding")
    return FunctionSpec(
        name=name,
        trigger=trigger,
        queue_outputs=tuple(binding for binding in outputs if binding["type"] == "queue"),
        retry=_retry_policy(name, function.get_settings_dict("retry_policy")),
        takes_context="context" in parameters,
        user_function=function.get_user_function(),
    )


# --- results ------------------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One delivery of a trigger (a timer tick, a batch of events) with every attempt the retry policy
    allowed, and how it ended."""

    function: str
    items: int  # events in the batch; 1 for a timer
    attempts: int = 0
    retry_delays: list[timedelta] = field(default_factory=list)  # the waits the host would have slept
    enqueued: dict[str, int] = field(default_factory=dict)  # messages written, per output queue
    error: str | None = None  # the last attempt's exception, when every attempt failed

    @property
    def succeeded(self) -> bool:
        return self.error is None


@dataclass
class EventDelivery:
    """Events handed to an Event Hub function, batch by batch."""

    batches: list[Invocation]

    @property
    def events(self) -> int:
        return sum(batch.items for batch in self.batches)

    @property
    def failed_batches(self) -> list[Invocation]:
        """Batches that failed every retry: the host checkpointed past them (lost unless parked)."""
        return [batch for batch in self.batches if not batch.succeeded]

    @property
    def errors(self) -> list[str]:
        return [f"{batch.function}: {batch.error}" for batch in self.failed_batches]


@dataclass
class QueueDrain:
    """What draining a queue trigger did, message delivery by message delivery."""

    queue: str
    deliveries: int = 0  # messages received and handed on (or found undecodable)
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)  # one line per failed delivery: message, count, error
    poisoned: int = 0
    skipped_wait: timedelta = timedelta(0)  # visibilityTimeout waits the host would have made

    @property
    def failed_attempts(self) -> int:
        return len(self.failures)


# --- the host -----------------------------------------------------------------------------------------


class FunctionsHost:
    """Runs the functions of a `func.FunctionApp` the way the Functions host would, on real storage.

    `storage_connection` is the app's `AzureWebJobsStorage`; queue bindings naming another connection
    setting are resolved from `environ`, which also resolves `%SETTING%` schedules. `clock` says when
    delivered events were enqueued (default: the wall clock; a simulated one for simulated days).
    """

    def __init__(
        self,
        app: func.FunctionApp,
        storage_connection: StorageConnection,
        config: HostConfig | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self.functions = {spec.name: spec for spec in map(function_spec, indexed_functions(app))}
        self.config = config or load_host_config()
        self._environ = os.environ if environ is None else environ
        self._queue_services: dict[str, QueueServiceClient] = {
            STORAGE_CONNECTION_SETTING: queue_service(storage_connection)
        }
        self._created_queues: set[tuple[str, str]] = set()
        self._next_sequence_number = 0
        self._next_offset = 0

    def describe(self) -> list[dict[str, str]]:
        """Each function, its trigger, and what fires it (schedules resolved from the settings)."""
        sources = {
            "timerTrigger": lambda trigger: self._resolve(trigger["schedule"]),
            "eventHubTrigger": lambda trigger: f"event hub {self._resolve(trigger['eventHubName'])}",
            "queueTrigger": lambda trigger: f"queue {trigger['queueName']}",
            "httpTrigger": lambda trigger: f"{'/'.join(trigger.get('methods') or ['ANY'])} /api/{trigger['route']}",
        }
        return [
            {"function": spec.name, "trigger": spec.trigger_type, "source": sources[spec.trigger_type](spec.trigger)}
            for spec in self.functions.values()
        ]

    def fire_timer(self, name: str, past_due: bool = False) -> Invocation:
        """Fire a timer function once, under its retry policy."""
        spec = self._function(name, "timerTrigger")
        timer = TimerRequest(past_due=past_due, schedule={"AdjustForDST": True})
        return self._invoke_with_retries(spec, timer, items=1)

    def deliver_events(
        self,
        name: str,
        bodies: Sequence[bytes],
        partition_keys: Sequence[str | None] | None = None,
        enqueued_time: datetime | None = None,
    ) -> EventDelivery:
        """Deliver event bodies to an Event Hub function in batches of `maxEventBatchSize`.

        Sequence numbers and offsets count up across calls, as in one partition's stream; a batch that
        fails every retry is reported in `failed_batches`, and the next batch is delivered regardless.
        """
        spec = self._function(name, "eventHubTrigger")
        if partition_keys is not None and len(partition_keys) != len(bodies):
            raise ValueError(f"got {len(bodies)} event bodies but {len(partition_keys)} partition keys")
        keys = [None] * len(bodies) if partition_keys is None else list(partition_keys)
        enqueued = enqueued_time or self._clock()
        events = [self._event(body, key, enqueued) for body, key in zip(bodies, keys, strict=True)]
        many = spec.trigger.get("cardinality", "one").lower() == "many"
        size = self.config.max_event_batch_size if many else 1
        batches = [events[start : start + size] for start in range(0, len(events), size)]
        return EventDelivery(
            [self._invoke_with_retries(spec, batch if many else batch[0], items=len(batch)) for batch in batches]
        )

    def drain_queue(self, name: str) -> QueueDrain:
        """Feed a queue function every message on its queue, with the host's dequeue and poison rules,
        until the queue is empty (a missing queue is an empty one, as the host's listener sees it)."""
        spec = self._function(name, "queueTrigger")
        queue = self._queue(spec.trigger.get("connection"), spec.trigger["queueName"], create=False)
        drain = QueueDrain(queue.queue_name)
        while True:
            try:
                messages = list(
                    queue.receive_messages(
                        messages_per_page=self.config.queue_batch_size,
                        max_messages=self.config.queue_batch_size,
                        visibility_timeout=QUEUE_LEASE_SECONDS,
                    )
                )
            except ResourceNotFoundError:
                return drain
            if not messages:
                return drain
            for message in messages:
                self._deliver_queue_message(spec, queue, message, drain)

    def call_http(
        self,
        name: str,
        method: str = "GET",
        route_params: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> func.HttpResponse:
        """Call an HTTP function with a request for its route; an exception gives a 500, as in the host."""
        spec = self._function(name, "httpTrigger")
        methods = [allowed.upper() for allowed in spec.trigger.get("methods") or []]
        if methods and method.upper() not in methods:
            raise ValueError(f"function {name} accepts {methods}, not {method.upper()}")
        route_params = dict(route_params or {})

        def fill(match: re.Match) -> str:
            if match[1] not in route_params:
                raise ValueError(f"function {name}: route {spec.trigger['route']!r} needs route parameter {match[1]!r}")
            return quote(str(route_params[match[1]]), safe="")

        path = _ROUTE_PARAMETER.sub(fill, spec.trigger["route"])
        query = f"?{urlencode(params)}" if params else ""
        request = func.HttpRequest(
            method.upper(), f"http://127.0.0.1/api/{path}{query}",
            headers=dict(headers or {}), params=dict(params or {}), route_params=route_params, body=body,
        )  # fmt: skip
        try:
            response, _ = self._invoke(spec, request)
        except Exception:
            log.exception("function %s failed", name)
            return func.HttpResponse("function failed", status_code=500)
        if not isinstance(response, func.HttpResponse):
            raise TypeError(f"function {name} returned {type(response).__name__}, not an HttpResponse")
        return response

    # --- invocation -----------------------------------------------------------------------------------

    def _invoke_with_retries(self, spec: FunctionSpec, trigger_value: Any, items: int) -> Invocation:
        """Invoke once, then again under the retry policy until an attempt succeeds or retries run out."""
        max_retries = spec.retry.max_retry_count if spec.retry else 0
        invocation = Invocation(spec.name, items)
        error: Exception | None = None
        for retry in range(max_retries + 1):
            if retry:
                invocation.retry_delays.append(spec.retry.delay_before(retry))
            invocation.attempts += 1
            try:
                _, invocation.enqueued = self._invoke(spec, trigger_value, _RetryContext(retry, max_retries, error))
                return invocation
            except Exception as exception:
                error = exception
                log.warning("function %s failed (attempt %d of %d)", spec.name, retry + 1, max_retries + 1,
                            exc_info=True)  # fmt: skip
        invocation.error = _describe(error)
        return invocation

    def _invoke(
        self, spec: FunctionSpec, trigger_value: Any, retry_context: _RetryContext | None = None
    ) -> tuple[Any, dict[str, int]]:
        """One attempt: call the function, then write what it set on its queue outputs (a write that fails
        fails the attempt, as in the host); values set by an attempt that raises are discarded. Returns the
        function's return value and the number of messages written per queue."""
        outputs = {binding["name"]: _Out() for binding in spec.queue_outputs}
        arguments: dict[str, Any] = {spec.trigger["name"]: trigger_value, **outputs}
        if spec.takes_context:
            arguments["context"] = _Context(spec.name, retry_context or _RetryContext(0, 0, None))
        result = spec.user_function(**arguments)
        written: dict[str, int] = {}
        for binding in spec.queue_outputs:
            messages = _output_messages(spec.name, binding["name"], outputs[binding["name"]].get())
            queue = self._queue(binding.get("connection"), binding["queueName"], create=True)
            for message in messages:
                queue.send_message(self._encode(message))
            written[binding["queueName"]] = written.get(binding["queueName"], 0) + len(messages)
        return result, written

    def _deliver_queue_message(
        self, spec: FunctionSpec, queue: QueueClient, message: StoredMessage, drain: QueueDrain
    ) -> None:
        """The host's rules for one received message: too many deliveries already → poison without running;
        success → delete; failure → poison at maxDequeueCount, else release for another delivery."""
        limit = self.config.max_dequeue_count
        if message.dequeue_count > limit:
            self._poison(spec, queue, message, drain)
            return
        drain.deliveries += 1
        try:
            trigger_value = QueueMessage(
                id=message.id, body=self._decode(message.content), dequeue_count=message.dequeue_count,
                expiration_time=message.expires_on, insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on, pop_receipt=message.pop_receipt,
            )  # fmt: skip
            self._invoke(spec, trigger_value)
        except Exception as error:
            log.warning("function %s failed on message %s (delivery %d of %d)", spec.name, message.id,
                        message.dequeue_count, limit, exc_info=True)  # fmt: skip
            drain.failures.append(f"message {message.id} delivery {message.dequeue_count}: {_describe(error)}")
            if message.dequeue_count >= limit:
                self._poison(spec, queue, message, drain)
            else:
                queue.update_message(message, pop_receipt=message.pop_receipt, visibility_timeout=0)
                drain.skipped_wait += self.config.visibility_timeout
            return
        queue.delete_message(message, pop_receipt=message.pop_receipt)
        drain.succeeded += 1

    def _poison(self, spec: FunctionSpec, queue: QueueClient, message: StoredMessage, drain: QueueDrain) -> None:
        """Copy the message, content unchanged, to "<queue>-poison" (created if missing), then delete it."""
        poison = self._queue(spec.trigger.get("connection"), f"{queue.queue_name}-poison", create=True)
        poison.send_message(message.content)
        queue.delete_message(message, pop_receipt=message.pop_receipt)
        drain.poisoned += 1

    # --- plumbing -------------------------------------------------------------------------------------

    def _function(self, name: str, trigger_type: str) -> FunctionSpec:
        if name not in self.functions:
            raise KeyError(f"no function {name!r} in the app; it has {sorted(self.functions)}")
        spec = self.functions[name]
        if spec.trigger_type != trigger_type:
            raise ValueError(f"function {name} has a {spec.trigger_type}, not a {trigger_type}")
        return spec

    def _event(self, body: bytes, partition_key: str | None, enqueued: datetime) -> func.EventHubEvent:
        event = func.EventHubEvent(
            body=body, partition_key=partition_key, sequence_number=self._next_sequence_number,
            offset=str(self._next_offset), enqueued_time=enqueued,
        )  # fmt: skip
        self._next_sequence_number += 1
        self._next_offset += len(body)
        return event

    def _queue(self, connection: str | None, name: str, create: bool) -> QueueClient:
        """The queue `name` on the storage account the binding's connection setting names."""
        setting = connection or STORAGE_CONNECTION_SETTING
        if setting not in self._queue_services:
            self._queue_services[setting] = queue_service(resolve_connection(setting, "queue", self._environ))
        queue = self._queue_services[setting].get_queue_client(name)
        if create and (setting, name) not in self._created_queues:
            with contextlib.suppress(ResourceExistsError):
                queue.create_queue()
            self._created_queues.add((setting, name))
        return queue

    def _encode(self, message: bytes) -> str:
        """Message text as the host writes it: base64 of the bytes (what the queue SDK's
        TextBase64EncodePolicy produces for UTF-8 text), or the text itself with messageEncoding none."""
        if self.config.message_encoding == "base64":
            return base64.b64encode(message).decode("ascii")
        return message.decode("utf-8")

    def _decode(self, content: str) -> bytes:
        """The bytes a function gets from a queue message; strict, like the host: text that is not base64
        fails the delivery (and so ends in the poison queue) instead of reaching the function garbled."""
        if self.config.message_encoding == "none":
            return content.encode("utf-8")
        try:
            return base64.b64decode(content, validate=True)
        except binascii.Error as error:
            raise ValueError(f"message is not valid base64 ({error}); host.json says messageEncoding base64") from None

    def _resolve(self, text: str) -> str:
        """Replace `%SETTING%` references with the settings' values, as the host does when indexing."""

        def value(match: re.Match) -> str:
            if not self._environ.get(match[1]):
                raise SettingsError(f"{match[1]} is not set (referenced as {match[0]} in a binding)")
            return self._environ[match[1]]

        return _SETTING_REFERENCE.sub(value, text)


# --- the worker's objects -----------------------------------------------------------------------------


class _Out(func.Out):
    """An output binding's value holder, as the worker passes it: the function sets, the host reads."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _RpcException(functions_abc.RpcException):
    """The previous attempt's exception, as the retry context reports it."""

    def __init__(self, error: BaseException) -> None:
        self._error = error

    @property
    def source(self) -> str:
        return type(self._error).__module__

    @property
    def stack_trace(self) -> str:
        return "".join(traceback.format_exception(self._error))

    @property
    def message(self) -> str:
        return str(self._error)


class _RetryContext(functions_abc.RetryContext):
    """Which attempt this is: retry_count 0 on the first, up to max_retry_count on the last."""

    def __init__(self, retry_count: int, max_retry_count: int, error: BaseException | None) -> None:
        self._retry_count, self._max_retry_count = retry_count, max_retry_count
        self._exception = None if error is None else _RpcException(error)

    @property
    def retry_count(self) -> int:
        return self._retry_count

    @property
    def max_retry_count(self) -> int:
        return self._max_retry_count

    @property
    def exception(self) -> _RpcException | None:
        return self._exception


class _TraceContext(functions_abc.TraceContext):
    """No distributed tracing locally: empty, as the worker gives when the host sends none."""

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _Context(functions_abc.Context):
    """The invocation context the worker hands to a function's `context` parameter."""

    def __init__(self, function_name: str, retry_context: _RetryContext) -> None:
        self._function_name, self._retry_context = function_name, retry_context
        self._invocation_id = str(uuid.uuid4())
        self._thread_local_storage = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> threading.local:
        return self._thread_local_storage

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return str(PROJECT_ROOT)

    @property
    def trace_context(self) -> _TraceContext:
        return _TraceContext()

    @property
    def retry_context(self) -> _RetryContext:
        return self._retry_context


def _output_messages(function: str, binding: str, value: Any) -> list[bytes]:
    """The messages an output value stands for: nothing for None, one for a str or bytes, one per item of
    a list, as the worker's queue output converter reads them."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    messages = []
    for item in items:
        if not isinstance(item, str | bytes):
            raise TypeError(f"function {function}: output {binding!r} got a {type(item).__name__}, not str or bytes")
        messages.append(item.encode("utf-8") if isinstance(item, str) else item)
    return messages


def _retry_policy(function: str, setting: Mapping[str, Any] | None) -> RetryPolicy | None:
    if setting is None:
        return None
    what = f"function {function}: retry policy"
    strategy = setting["strategy"]
    if strategy not in ("fixed_delay", "exponential_backoff"):
        raise ValueError(f"{what} strategy must be fixed_delay or exponential_backoff, got {strategy!r}")
    max_retry_count = int(setting["max_retry_count"])
    if max_retry_count < 0:
        raise ValueError(f"{what} max_retry_count {max_retry_count} (retry forever) cannot be emulated")

    def interval(key: str) -> timedelta:
        return parse_timespan(setting[key], f"{what} {key}") if setting.get(key) else timedelta(0)

    return RetryPolicy(
        strategy,
        max_retry_count,
        delay_interval=interval("delay_interval"),
        minimum_interval=interval("minimum_interval"),
        maximum_interval=interval("maximum_interval"),
    )


def _describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}"
