"""The telemetry archive and the dead-letter store, round trips against a real Azurite.

The session's Azurite is shared with other tests that may use the same containers, so each test uses
its own battery ids and looks only at its own records.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pandas as pd
import pytest
from azure.storage.blob import BlobServiceClient

from shared.adapters.archive import (
    TELEMETRY_CONTAINER,
    archive_telemetry,
    dead_letter,
    list_dead_letters,
    load_telemetry_history,
    read_archive,
)
from shared.core.events import parse_events
from shared.core.telemetry import BATTERY_ID, COLUMNS, DATE, InputError

NOW = datetime(2017, 3, 20, 3, 0, 5, tzinfo=UTC)


def record(day: str, battery: str, cycles: float = 0.1669) -> dict:
    return {
        "Date": day, "Battery_ID": battery, "Car_ID": f"CAR-{battery}", "Battery_Age_Days": 1538,
        "Number_Of_Trips": 5, "Daily_Trip_Duration": 67.85, "Daily_Cycles_Used": cycles,
        "Lifetime_Cycles_Used": 196.4123456789, "Battery_Rated_Cycles": 200,
    }  # fmt: skip


def good_records(*records: dict) -> pd.DataFrame:
    """The records as parse_events types them, sent on the day of the newest one."""
    arrived = datetime.fromisoformat(max(r["Date"] for r in records)).replace(tzinfo=UTC)
    good, dead = parse_events([json.dumps(r).encode() for r in records], received=arrived)
    assert not dead
    return good


def mine(history: pd.DataFrame, batteries: list[str]) -> pd.DataFrame:
    return history[history[BATTERY_ID].isin(batteries)].reset_index(drop=True)


@pytest.fixture
def blobs(storage_connection) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(storage_connection)


@pytest.fixture
def battery() -> str:
    return f"T-{uuid.uuid4().hex[:8]}"


def test_archived_records_read_back_identical_and_typed(blobs, battery):
    good = good_records(record("2017-03-18", battery), record("2017-03-19", battery, cycles=0.123456789012345))

    written = archive_telemetry(blobs, good, NOW)
    history = mine(load_telemetry_history(blobs), [battery])

    assert [name.split("/")[0] for name in written] == ["date=2017-03-18", "date=2017-03-19"]
    assert all(name.endswith(".parquet") for name in written)
    pd.testing.assert_frame_equal(history, good)  # floats, ids and dates survive exactly


def test_a_batch_with_a_backlog_lands_in_each_record_day_and_since_reads_only_from_that_day(blobs, battery):
    days = ["2031-01-01", "2031-01-02", "2031-01-03"]
    archive_telemetry(blobs, good_records(*(record(day, battery) for day in days)), NOW)

    recent = mine(load_telemetry_history(blobs, since="2031-01-02"), [battery])

    assert recent[DATE].dt.strftime("%Y-%m-%d").tolist() == days[1:]
    assert (load_telemetry_history(blobs, since="2031-01-02")[DATE] >= "2031-01-02").all()


def test_a_retried_batch_overwrites_its_blob_and_a_redelivered_one_is_read_once(blobs, battery):
    good = good_records(record("2017-03-19", battery))

    first = archive_telemetry(blobs, good, NOW, batch_id="p3-s1200")
    again = archive_telemetry(blobs, good, NOW, batch_id="p3-s1200")
    other = archive_telemetry(blobs, good, NOW)

    assert first == again == ["date=2017-03-19/p3-s1200.parquet"]
    assert other != first, "a redelivery under a new id is a second blob"
    assert len(mine(load_telemetry_history(blobs), [battery])) == 1, "readers deduplicate the second copy"


def test_a_read_for_one_car_keeps_only_its_records_from_parquet_and_csv_days(blobs, battery):
    other = f"{battery}-other"
    archive_telemetry(blobs, good_records(record("2033-01-01", battery), record("2033-01-01", other)), NOW)
    csv_day = good_records(record("2033-01-02", battery), record("2033-01-02", other))
    blobs.get_container_client("telemetry").upload_blob(f"date=2033-01-02/{battery}.csv",
                                                        csv_day.to_csv(index=False), overwrite=True)  # fmt: skip

    read = read_archive(blobs, "2033-01-01", "2033-01-02", car_id=f"CAR-{battery}").frame

    assert read[BATTERY_ID].tolist() == [battery, battery]
    assert read[DATE].dt.strftime("%Y-%m-%d").tolist() == ["2033-01-01", "2033-01-02"]


def test_an_unsafe_batch_id_is_refused(blobs, battery):
    with pytest.raises(ValueError, match="batch_id must be"):
        archive_telemetry(blobs, good_records(record("2017-03-19", battery)), NOW, batch_id="../x")


def test_an_empty_batch_writes_nothing(blobs):
    empty, _ = parse_events([])
    assert archive_telemetry(blobs, empty, NOW) == []
    assert dead_letter(blobs, [], NOW) is None


def test_an_unreadable_archived_blob_is_named_with_its_line(blobs, battery):
    archive_telemetry(blobs, good_records(record("2032-05-01", battery)), NOW)
    broken = pd.DataFrame([record("2032-05-02", battery), record("not a day", battery)])[COLUMNS]
    name = f"date=2032-05-02/{battery}.csv"
    container = blobs.get_container_client(TELEMETRY_CONTAINER)
    container.upload_blob(name, broken.to_csv(index=False), overwrite=True)
    try:
        expected = rf"telemetry/{name}: column Date: not a date .* on line 3 \('not a day'\)"
        with pytest.raises(InputError, match=expected):
            load_telemetry_history(blobs, since="2032-05-01")
    finally:
        container.delete_blob(name)  # the archive is shared with the session's other tests: leave it readable


def test_dead_letters_round_trip_with_reason_body_and_metadata(blobs):
    marker = uuid.uuid4().hex
    bodies = [b"\xff\xfe", b"{not json", json.dumps([record("2017-03-19", "x"), 7]).encode()]
    metadata = [{"sequence_number": i, "partition_key": marker, "enqueued_time": NOW} for i in range(3)]
    _, dead = parse_events(bodies, metadata)

    name = dead_letter(blobs, dead, NOW, batch_id=f"p0-{marker}")
    stored = [d for d in list_dead_letters(blobs, day="2017-03-20") if d.metadata["partition_key"] == marker]

    assert name == f"telemetry/date=2017-03-20/p0-{marker}.json"
    assert [(d.event_index, d.record_index) for d in stored] == [(0, None), (1, None), (2, 1)]
    assert [d.reason for d in stored] == [d.reason for d in dead]
    assert stored[0].body_encoding == "base64" and stored[2].body == "7"
    assert stored[0].metadata["enqueued_time"] == NOW.isoformat(sep=" "), "datetimes are stored as text"
    assert all(d in list_dead_letters(blobs) for d in stored), "listing all days includes them"
