"""Car simulator to a real Event Hub: one day of telemetry sent the way the cars send it.

Each record becomes one event body (docs/contracts.md "Telemetry event": a JSON object, Date as YYYY-MM-DD)
with partition key = Car_ID, so a car's days stay in order on one partition. Batches are built with
the SDK's `EventDataBatch`, which knows the hub's real size limit: a record that does not fit starts a
new batch, and a record too large for any batch is reported, never silently skipped.

The work is split so it can be tested up to the wire: `event_bodies_by_car` and `pack_batches` are
pure (given a batch factory, any `EventDataBatch`), and only `send_telemetry` talks to a producer.
There is no Event Hubs emulator here, so the producer itself is exercised only against Azure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd
from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient

from shared.config.names import EVENTHUB_CONNECTION_SETTING, TELEMETRY_EVENT_HUB
from shared.config.settings import SettingsError
from shared.core.telemetry import CAR_ID, COLUMNS, DATE, INTEGER_COLUMNS

NAMESPACE_SETTING = f"{EVENTHUB_CONNECTION_SETTING}__fullyQualifiedNamespace"
_PROGRESS_EVERY = 100  # batches between progress lines


@dataclass(frozen=True)
class CarBatch:
    """A batch of one car's events, created for partition key = its Car_ID."""

    car_id: str
    batch: EventDataBatch


@dataclass(frozen=True)
class OversizeRecord:
    """A record whose event alone exceeds the batch limit: it cannot be sent as it is."""

    car_id: str
    position: int  # index among the car's events
    size: int  # body bytes
    limit: int  # the batch's max_size_in_bytes


@dataclass
class Packing:
    """The batches to send and the records that fit in none."""

    batches: list[CarBatch] = field(default_factory=list)
    oversize: list[OversizeRecord] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(len(car_batch.batch) for car_batch in self.batches)


def event_bodies_by_car(telemetry: pd.DataFrame) -> dict[str, list[bytes]]:
    """Each record as one event body, grouped by car, each car's in date order.

    Integer columns are JSON integers and an unknown value is null (the function will dead-letter that
    record with its reason, as it would from a real car).
    """
    frame = telemetry[COLUMNS].sort_values([CAR_ID, DATE], kind="stable")
    values: dict[str, list] = {DATE: frame[DATE].dt.strftime("%Y-%m-%d").tolist()}
    for column in COLUMNS[1:]:
        series = frame[column]
        if column in INTEGER_COLUMNS:
            series = series.round().astype("Int64")
        values[column] = series.astype(object).where(series.notna(), None).tolist()
    bodies: dict[str, list[bytes]] = {}
    for row in zip(*values.values(), strict=True):
        record = dict(zip(COLUMNS, row, strict=True))
        bodies.setdefault(record[CAR_ID], []).append(
            json.dumps(record, allow_nan=False, separators=(",", ":")).encode("utf-8")
        )
    return bodies


def pack_batches(bodies_by_car: Mapping[str, list[bytes]], new_batch: Callable[[str], EventDataBatch]) -> Packing:
    """Pack each car's bodies into as few batches as their size allows; `new_batch(car_id)` makes one."""
    packing = Packing()
    for car, bodies in bodies_by_car.items():
        batch = new_batch(car)
        for position, body in enumerate(bodies):
            if _fits(batch, body):
                continue
            fresh = new_batch(car)
            if not _fits(fresh, body):  # too large even alone: report it, keep filling the current batch
                packing.oversize.append(OversizeRecord(car, position, len(body), fresh.max_size_in_bytes))
                continue
            if len(batch):
                packing.batches.append(CarBatch(car, batch))
            batch = fresh
        if len(batch):
            packing.batches.append(CarBatch(car, batch))
    return packing


@dataclass(frozen=True)
class SendReport:
    """What `send_telemetry` did."""

    cars: int
    events: int
    batches: int
    oversize: list[OversizeRecord]


def send_telemetry(
    producer: EventHubProducerClient, telemetry: pd.DataFrame, progress: Callable[[str], None] = lambda _: None
) -> SendReport:
    """Send every record as an event, partition key = Car_ID; stops at the first failed send (it raises)."""
    bodies = event_bodies_by_car(telemetry)
    progress(f"packing {len(telemetry):,} events from {len(bodies):,} cars (the first batch connects to the hub)")
    packing = pack_batches(bodies, lambda car: producer.create_batch(partition_key=car))
    total = len(packing.batches)
    progress(f"sending {packing.events:,} events in {total:,} batches")
    sent = 0
    for number, car_batch in enumerate(packing.batches, start=1):
        producer.send_batch(car_batch.batch)
        sent += len(car_batch.batch)
        if number % _PROGRESS_EVERY == 0 or number == total:
            progress(f"sent {number:,}/{total:,} batches ({sent:,} events)")
    return SendReport(cars=len(bodies), events=sent, batches=total, oversize=packing.oversize)


def producer_client(
    connection: str | None, eventhub: str = TELEMETRY_EVENT_HUB, environ: Mapping[str, str] | None = None
) -> EventHubProducerClient:
    """A producer from a connection string (given, or the EventHubConnection setting), or else from
    `EventHubConnection__fullyQualifiedNamespace` with DefaultAzureCredential (managed identity in Azure,
    the developer's login elsewhere). Building it opens no connection.
    """
    env = os.environ if environ is None else environ
    connection = (connection or env.get(EVENTHUB_CONNECTION_SETTING, "")).strip()
    if connection:
        try:
            return EventHubProducerClient.from_connection_string(connection, eventhub_name=eventhub)
        except ValueError:  # never echo the string: it holds the access key
            raise SettingsError(
                f"{EVENTHUB_CONNECTION_SETTING} (or --connection) is not an Event Hubs connection string "
                "(expected Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...)"
            ) from None
    namespace = env.get(NAMESPACE_SETTING, "").strip()
    if namespace:
        from azure.identity import DefaultAzureCredential

        return EventHubProducerClient(
            fully_qualified_namespace=namespace, eventhub_name=eventhub, credential=DefaultAzureCredential()
        )
    raise SettingsError(
        f"no Event Hubs connection: pass --connection, or set {EVENTHUB_CONNECTION_SETTING} (a connection string) "
        f"or {NAMESPACE_SETTING} (identity-based)"
    )


def records_of_day(telemetry: pd.DataFrame, day: date) -> pd.DataFrame:
    """The records dated `day`: what the fleet reports that day."""
    return telemetry[telemetry[DATE].to_numpy("datetime64[D]") == np.datetime64(day, "D")]


def _fits(batch: EventDataBatch, body: bytes) -> bool:
    try:
        batch.add(EventData(body))
    except ValueError:  # EventDataBatch's "has reached its size limit"
        return False
    return True
