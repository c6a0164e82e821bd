"""The Parquet archive's bounded reads and its compaction, against a real Azurite.

Each test has a container of its own (the session's Azurite is shared), written the way the streaming
function writes: one file per batch and record day.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pandas as pd
import pytest
from azure.storage.blob import BlobServiceClient

from shared.adapters.archive import archive_telemetry, download_archive, read_archive
from shared.adapters.compaction import COMPACTED_NAME, compact_archive
from shared.core.events import parse_events
from shared.core.telemetry import BATTERY_ID, CAR_ID, COLUMNS, DAILY_CYCLES, DATE, InputError

TODAY = date(2031, 1, 10)
FIRST_NIGHT = datetime(2031, 1, 5, 3, tzinfo=UTC)


class Crash(RuntimeError):
    """Raised from the compaction's after_write hook: the process dies between the write and the deletes."""


def records(days: list[str], batteries: list[str], cycles: float = 0.15) -> pd.DataFrame:
    """The records as parse_events types them (the archive's input)."""
    bodies = [json.dumps({
        "Date": day, "Battery_ID": battery, "Car_ID": f"CAR-{battery}", "Battery_Age_Days": 400,
        "Number_Of_Trips": 5, "Daily_Trip_Duration": 61.0, "Daily_Cycles_Used": cycles,
        "Lifetime_Cycles_Used": 100.0, "Battery_Rated_Cycles": 200,
    }).encode() for day in days for battery in batteries]  # fmt: skip
    good, dead = parse_events(bodies, received=datetime(2031, 1, 10, tzinfo=UTC))
    assert not dead
    return good


def days(first: str, count: int) -> list[str]:
    return [f"{date.fromisoformat(first) + timedelta(days=n)}" for n in range(count)]


class Archive:
    """A container of its own on the session's Azurite, and every request made to it."""

    def __init__(self, connection: str) -> None:
        self.requests: list[tuple[str, str]] = []  # (method, url)
        self.blobs = BlobServiceClient.from_connection_string(
            connection, raw_response_hook=lambda r: self.requests.append((r.http_request.method, r.http_request.url))
        )
        self.container = f"telemetry-{uuid.uuid4().hex[:12]}"
        self.client = self.blobs.get_container_client(self.container)

    def write(self, frame: pd.DataFrame, batch: str, hours: int = 0) -> list[str]:
        return archive_telemetry(self.blobs, frame, FIRST_NIGHT + timedelta(hours=hours), batch, self.container)

    def names(self) -> list[str]:
        return sorted(self.client.list_blob_names())

    def read(self, first=None, last=None, **options) -> pd.DataFrame:
        return read_archive(self.blobs, first, last, container=self.container, **options).frame

    def compact(self, **options):
        return compact_archive(self.blobs, TODAY, container=self.container, **options)

    def listed_prefixes(self) -> list[str]:
        return sorted(parse_qs(urlsplit(url).query).get("prefix", [""])[0] for method, url in self.requests
                      if method == "GET" and "comp=list" in url)  # fmt: skip

    def downloaded(self) -> list[str]:
        prefix = f"/{self.container}/"
        paths = [unquote(urlsplit(url).path) for method, url in self.requests if method == "GET" and "comp=" not in url]
        return sorted(path.split(prefix, 1)[1] for path in paths if prefix in path)


@pytest.fixture
def archive(storage_connection) -> Archive:
    archive = Archive(storage_connection)
    yield archive
    archive.blobs.delete_container(archive.container)


def by_key(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values([BATTERY_ID, DATE], ignore_index=True)


def test_compaction_leaves_one_file_per_finished_day_and_a_rerun_changes_nothing(archive):
    archive.write(records(days("2031-01-07", 4), ["A", "B"]), "p0-s1")  # through today, 2031-01-10
    archive.write(records(days("2031-01-07", 4), ["C"]), "p1-s1")
    before = archive.read()

    first = archive.compact()
    after_first = archive.names()
    second = archive.compact()

    finished = [f"date={day}/{COMPACTED_NAME}" for day in days("2031-01-07", 3)]
    assert after_first == [*finished, "date=2031-01-10/p0-s1.parquet", "date=2031-01-10/p1-s1.parquet"]
    assert (first.days_compacted, first.files_removed, first.rows_written) == (3, 6, 9)
    assert (second.days_compacted, second.files_removed) == (0, 0)
    assert archive.names() == after_first
    pd.testing.assert_frame_equal(by_key(archive.read()), by_key(before))


def test_a_record_in_two_files_is_read_once_with_the_latest_written_values_before_and_after_compaction(archive):
    archive.write(records(["2031-01-08"], ["A", "B"], cycles=0.1), "p0-s1")
    archive.write(records(["2031-01-08"], ["B"], cycles=0.2), "p0-s9", hours=1)  # B resent later, corrected

    expected = [("A", 0.1), ("B", 0.2)]
    assert list(by_key(archive.read())[[BATTERY_ID, DAILY_CYCLES]].itertuples(index=False, name=None)) == expected
    archive.compact()
    assert archive.names() == [f"date=2031-01-08/{COMPACTED_NAME}"]
    assert list(by_key(archive.read())[[BATTERY_ID, DAILY_CYCLES]].itertuples(index=False, name=None)) == expected


def test_a_crash_between_the_write_and_the_deletes_loses_and_doubles_nothing(archive):
    archive.write(records(days("2031-01-07", 2), ["A"]), "p0-s1")
    archive.write(records(days("2031-01-07", 2), ["B"]), "p1-s1")
    before = by_key(archive.read())

    def crash(blob: str) -> None:
        raise Crash(blob)

    with pytest.raises(Crash, match=f"date=2031-01-07/{COMPACTED_NAME}"):
        archive.compact(after_write=crash)

    assert archive.names() == ["date=2031-01-07/compacted.parquet", "date=2031-01-07/p0-s1.parquet",
                               "date=2031-01-07/p1-s1.parquet", "date=2031-01-08/p0-s1.parquet",
                               "date=2031-01-08/p1-s1.parquet"]  # fmt: skip
    pd.testing.assert_frame_equal(by_key(archive.read()), before)  # the compacted copy is not read twice
    rerun = archive.compact()
    assert archive.names() == [f"date={day}/{COMPACTED_NAME}" for day in days("2031-01-07", 2)]
    assert (rerun.days_compacted, rerun.files_removed) == (2, 4)
    pd.testing.assert_frame_equal(by_key(archive.read()), before)


def test_a_source_rewritten_after_it_was_read_is_not_deleted_and_the_next_run_folds_it_in(archive):
    archive.write(records(["2031-01-08"], ["A"]), "p0-s1")
    archive.write(records(["2031-01-08"], ["B"], cycles=0.1), "p1-s1")

    def retried_batch_rewrites(blob: str) -> None:  # the Functions retry policy runs p1-s1 again meanwhile
        archive.write(records(["2031-01-08"], ["B", "C"], cycles=0.3), "p1-s1", hours=2)

    summary = archive.compact(after_write=retried_batch_rewrites)

    assert summary.changed == ["date=2031-01-08/p1-s1.parquet"]
    assert archive.names() == ["date=2031-01-08/compacted.parquet", "date=2031-01-08/p1-s1.parquet"]
    archive.compact()
    assert archive.names() == ["date=2031-01-08/compacted.parquet"]
    assert by_key(archive.read())[[BATTERY_ID, DAILY_CYCLES]].values.tolist() == [["A", 0.15], ["B", 0.3],
                                                                                    ["C", 0.3]]  # fmt: skip


def test_a_range_of_days_lists_and_downloads_only_those_days_and_decodes_only_the_columns_asked(archive):
    for batch in ("p0-s1", "p1-s1"):
        archive.write(records(days("2031-01-01", 9), [batch[:2]]), batch)
    archive.requests.clear()

    frame = archive.read("2031-01-04", "2031-01-06", columns=[DAILY_CYCLES])

    wanted = days("2031-01-04", 3)
    assert archive.listed_prefixes() == [f"date={day}/" for day in wanted]
    assert archive.downloaded() == [f"date={day}/{batch}.parquet" for day in wanted for batch in ("p0-s1", "p1-s1")]
    assert list(frame.columns) == [DATE, BATTERY_ID, DAILY_CYCLES]  # the dedup key and the column asked
    assert sorted(frame[DATE].dt.strftime("%Y-%m-%d").unique()) == wanted


def test_a_day_holding_csv_of_before_parquet_and_parquet_reads_both_and_compacts_into_one_file(archive):
    old = records(["2031-01-08"], ["A", "B"], cycles=0.1)
    csv = old.assign(Date=old[DATE].dt.strftime("%Y-%m-%d"))[COLUMNS].to_csv(index=False)
    archive.blobs.create_container(archive.container)
    archive.client.upload_blob("date=2031-01-08/20310108T030000-legacy.csv", csv)
    archive.write(records(["2031-01-08"], ["B", "C"], cycles=0.2), "p0-s1", hours=48)  # written after the CSV

    mixed = by_key(archive.read())[[BATTERY_ID, DAILY_CYCLES]].values.tolist()
    summary = archive.compact()

    assert mixed == [["A", 0.1], ["B", 0.2], ["C", 0.2]]
    assert (summary.files_removed, archive.names()) == (2, [f"date=2031-01-08/{COMPACTED_NAME}"])
    assert by_key(archive.read())[[BATTERY_ID, DAILY_CYCLES]].values.tolist() == mixed


def test_a_read_of_some_batteries_keeps_only_their_rows_from_csv_and_parquet_alike(archive):
    old = records(["2031-01-08"], ["A", "B"], cycles=0.1)
    csv = old.assign(Date=old[DATE].dt.strftime("%Y-%m-%d"))[COLUMNS].to_csv(index=False)
    archive.blobs.create_container(archive.container)
    archive.client.upload_blob("date=2031-01-08/20310108T030000-legacy.csv", csv)
    archive.write(records(["2031-01-08", "2031-01-09"], ["B", "C", "D"], cycles=0.2), "p0-s1", hours=48)

    frame = by_key(archive.read(batteries=["A", "C"]))

    assert frame[[BATTERY_ID, DATE]].astype(str).values.tolist() == [["A", "2031-01-08"], ["C", "2031-01-08"],
                                                                      ["C", "2031-01-09"]]  # fmt: skip
    assert by_key(archive.read(batteries=["B"]))[DAILY_CYCLES].tolist() == [0.2, 0.2]  # still deduplicated


def test_chunks_of_cars_hold_exactly_the_rows_of_their_cars_as_the_whole_read_does(archive):
    """Five cars in chunks of two: a record written twice (the later copy wins, and names another car) and a
    battery moved from car A to car D are read as the whole read reads them, each row in its car's chunk."""
    archive.write(records(days("2031-01-01", 3), ["A", "B", "C", "D", "E"]), "p0-s1")
    moved = records(["2031-01-04"], ["A"]).assign(Car_ID="CAR-D")  # battery A now in car D
    archive.write(moved, "p1-s1", hours=1)
    archive.write(records(["2031-01-02"], ["C"], cycles=0.3).assign(Car_ID="CAR-E"), "p2-s1", hours=2)  # rewritten

    files = download_archive(archive.blobs, "2031-01-01", "2031-01-04", container=archive.container)
    chunks = [read.frame for read in files.chunks_of_cars(2)]

    whole = files.read().frame
    assert [sorted(chunk[CAR_ID].unique()) for chunk in chunks] == [["CAR-A", "CAR-B"], ["CAR-C", "CAR-D"],
                                                                     ["CAR-E"]]  # fmt: skip
    pd.testing.assert_frame_equal(by_key(pd.concat(chunks, ignore_index=True)), by_key(whole))
    assert by_key(chunks[2])[[BATTERY_ID, DAILY_CYCLES]].values.tolist() == [["C", 0.3], ["E", 0.15], ["E", 0.15],
                                                                             ["E", 0.15]]  # fmt: skip
    assert "C" not in set(chunks[1].loc[chunks[1][DATE] == pd.Timestamp("2031-01-02"), BATTERY_ID])
    assert chunks[1].loc[chunks[1][BATTERY_ID] == "A", DATE].tolist() == [pd.Timestamp("2031-01-04")]
    assert pd.Timestamp("2031-01-04") not in set(chunks[0][DATE])


@pytest.mark.parametrize(("blob", "content", "reason"), [
    ("date=2031-01-08/broken.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ("date=2031-01-08/typed.parquet", "ids",
     r"schema mismatch: column Daily_Cycles_Used is (large_)?string, expected double"),
    ("date=2031-01-08/legacy.csv", b"Date,Battery_ID\n2031-01-08,A\n", "missing column"),
])  # fmt: skip
def test_an_unreadable_file_is_named_and_skipped_only_when_the_operator_says_so(archive, blob, content, reason):
    archive.write(records(["2031-01-08"], ["A"]), "p0-s1")
    archive.write(records(["2031-01-08"], ["B"]), "p1-s1")
    if content == "ids":  # a Parquet file whose cycles column holds text
        frame = records(["2031-01-08"], ["C"]).astype({DAILY_CYCLES: str})
        content = frame.to_parquet(index=False)
    archive.client.upload_blob(blob, content)

    with pytest.raises(InputError, match=rf"{blob}: {reason}"):
        archive.read("2031-01-08", "2031-01-08")
    with pytest.raises(InputError, match=rf"{blob}: {reason}"):
        archive.compact()
    assert len(archive.names()) == 3, "nothing was deleted"

    read = read_archive(archive.blobs, "2031-01-08", "2031-01-08", container=archive.container, skip_unreadable=True)
    summary = archive.compact(skip_unreadable=True)

    assert [s.split(": ")[0] for s in read.skipped] == [f"archived telemetry telemetry/{blob}"]
    assert sorted(read.frame[BATTERY_ID]) == ["A", "B"]
    assert len(summary.skipped) == 1 and blob in summary.skipped[0]
    assert archive.names() == sorted([blob, f"date=2031-01-08/{COMPACTED_NAME}"]), "the unreadable file is kept"
