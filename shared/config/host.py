"""Host configuration: what host.json tells the Functions host about queues and Event Hubs.

Read by the delivery path (how many dequeues before the host gives up on an alert) and by the local
Functions host emulator, so both obey the same numbers that Azure does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"
_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)")


@dataclass(frozen=True)
class HostConfig:
    """The host.json settings the emulator obeys; the host's own defaults where host.json is silent."""

    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)  # the wait before a failed queue message is retried
    message_encoding: str = "base64"  # "base64" or "none"
    queue_batch_size: int = 16
    max_event_batch_size: int = 100


def load_host_config(path: Path = HOST_JSON) -> HostConfig:
    """Read the queue and Event Hub settings from host.json; a bad value raises naming its key."""
    extensions = json.loads(path.read_text()).get("extensions", {})
    queues, event_hubs = extensions.get("queues", {}), extensions.get("eventHubs", {})
    defaults = HostConfig()

    def count(section: Mapping[str, Any], prefix: str, key: str, default: int) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {prefix}.{key} must be a whole number ≥ 1, got {value!r}")
        return value

    encoding = str(queues.get("messageEncoding", defaults.message_encoding)).lower()
    if encoding not in ("base64", "none"):
        raise ValueError(f"{path}: queues.messageEncoding must be 'base64' or 'none', got {encoding!r}")
    visibility = queues.get("visibilityTimeout")
    if visibility is not None:
        visibility = parse_timespan(visibility, f"{path}: queues.visibilityTimeout")
    return HostConfig(
        max_dequeue_count=count(queues, "queues", "maxDequeueCount", defaults.max_dequeue_count),
        visibility_timeout=defaults.visibility_timeout if visibility is None else visibility,
        message_encoding=encoding,
        queue_batch_size=count(queues, "queues", "batchSize", defaults.queue_batch_size),
        max_event_batch_size=count(event_hubs, "eventHubs", "maxEventBatchSize", defaults.max_event_batch_size),
    )


def parse_timespan(text: str, what: str) -> timedelta:
    """A .NET TimeSpan as host.json and retry policies write it: `[d.]hh:mm:ss[.fff]`."""
    match = _TIMESPAN.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"{what} must be a time span like 00:00:30, got {text!r}")
    days, hours, minutes, seconds = match.groups()
    return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=float(seconds))
