"""Archive: the telemetry history and the dead-letter store, both in Blob storage.

Every good record the Event Hub function accepts is appended to the archive, the history the nightly
retraining and batch scoring read back; every event it cannot use is kept in the dead-letter store with
its reason. Between them, nothing a car sent is lost.

Layout (README, "Telemetry archive"):

- `telemetry/date=YYYY-MM-DD/<name>.parquet` — container "telemetry", one Parquet file per batch and
  record day: the telemetry columns plus `Archived_At` (when the batch was written). Partitioned by the
  record's own day, so a range of days lists and reads only those days, and a car's late backlog lands
  with its days. `compacted.parquet` is a day's small files merged by `shared.adapters.compaction`.
  Days archived before Parquet hold `<name>.csv` files in the same columns (no `Archived_At`: the blob's
  last-modified time stands in); both are read, alone or mixed in one day.
- `deadletter/telemetry/date=YYYY-MM-DD/<name>.json` — container "deadletter", one JSON document per
  batch (`{"written_at", "count", "dead_letters": [...]}`), partitioned by the day it arrived (a bad
  event may have no usable date).

`<name>` is the batch id when the caller gives one (e.g. the Event Hub partition and first sequence
number): a batch the Functions retry policy runs again then overwrites its own blobs instead of
archiving its records twice. Without one, a timestamp and a random suffix. Readers deduplicate on
Battery_ID + Date, the latest written copy winning (`shared.core.deduplication`), so a record archived
twice (a redelivery under a new id, a compaction interrupted before it removed its sources) is read once.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobProperties, BlobServiceClient, ContainerClient

from shared.adapters.storage import (
    download_bytes,
    ensure_container,
    list_blob_names,
    upload_bytes,
    upload_creating_container,
)
from shared.config.names import DEADLETTER_CONTAINER, TELEMETRY_CONTAINER
from shared.core.deduplication import ARCHIVED_AT, DEDUP_KEY, latest_written
from shared.core.events import DeadLetter
from shared.core.telemetry import (
    BATTERY_ID,
    CAR_ID,
    COLUMNS,
    DATE,
    MEASURE_COLUMNS,
    InputError,
    coerce_telemetry,
    describe_problems,
)

DEADLETTER_PREFIX = "telemetry/"
_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})/")
_DOWNLOAD_THREADS = 8  # the nightly read is many small blobs: overlap their round trips
# The archive's Parquet schema: the telemetry columns as `coerce_telemetry` types them, plus ARCHIVED_AT.
SCHEMA = pa.schema(
    [(DATE, pa.timestamp("ns")), (BATTERY_ID, pa.string()), (CAR_ID, pa.string())]
    + [(column, pa.float64()) for column in MEASURE_COLUMNS]
    + [(ARCHIVED_AT, pa.timestamp("ns"))]
)
# The rows a read keeps: a column (Battery_ID or Car_ID) and its values, applied as each file is decoded.
RowFilter = tuple[str, pa.Array]
log = logging.getLogger(__name__)


def archive_telemetry(
    blob_service: BlobServiceClient,
    good: pd.DataFrame,
    now: datetime,
    batch_id: str | None = None,
    container: str = TELEMETRY_CONTAINER,
) -> list[str]:
    """Append a batch's good records to the archive; return the blob names written (none for no records).

    One Parquet blob per record day in the batch, each stamped with `now` as its ARCHIVED_AT.
    """
    if good.empty:
        return []
    name = _blob_name(now, batch_id)
    stamped = good[COLUMNS].assign(**{ARCHIVED_AT: _naive_utc(now)})
    written = []
    for day, records in stamped.groupby(stamped[DATE].dt.strftime("%Y-%m-%d"), sort=True):
        blob = f"date={day}/{name}.parquet"
        upload_creating_container(blob_service, container, blob, to_parquet(records))
        written.append(blob)
    return written


def to_parquet(records: pd.DataFrame) -> bytes:
    """Records in the archive's columns (ARCHIVED_AT included) as one Parquet file in SCHEMA."""
    table = pa.Table.from_pandas(records[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@dataclass
class ArchiveRead:
    """What a read of the archive returned, and which files it read and skipped (ARCHIVE_SKIP_UNREADABLE)."""

    frame: pd.DataFrame
    files_read: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<blob>: <reason>", each also logged as a warning


def read_archive(
    blob_service: BlobServiceClient,
    first: date | str | None = None,
    last: date | str | None = None,
    *,
    columns: Sequence[str] | None = None,
    skip_unreadable: bool = False,
    container: str = TELEMETRY_CONTAINER,
    keep_archived_at: bool = False,
    batteries: Collection[str] | None = None,
    car_id: str | None = None,
) -> ArchiveRead:
    """The archived records of days `first`..`last` (inclusive; open-ended where None), deduplicated.

    With both ends given only those days' partitions are listed (one prefix per day) and read; `columns`
    (of COLUMNS) limits what is decoded from Parquet files to those plus the dedup key, and `batteries`
    the rows kept from each file as it is decoded (the retraining's sample of a large fleet); `car_id` keeps
    one car's rows so (the dashboard's car lookup: every file of the days is still downloaded, and a record
    whose later copy names another car shows its older copy here). An unreadable
    or schema-mismatched file raises `InputError` naming it, unless `skip_unreadable` (the operator's
    ARCHIVE_SKIP_UNREADABLE): then it is logged, listed in `skipped` and left out. Rows come in day order.
    With `car_id`, only that car's records are kept, filtered as each file is decoded (the dashboard's car
    lookup): memory follows the car's rows, though every file of the days is still downloaded.
    """
    files = download_archive(blob_service, first, last, skip_unreadable=skip_unreadable, container=container)
    return files.read(columns, keep_archived_at=keep_archived_at, batteries=batteries, car_id=car_id)


def download_archive(
    blob_service: BlobServiceClient,
    first: date | str | None = None,
    last: date | str | None = None,
    *,
    skip_unreadable: bool = False,
    container: str = TELEMETRY_CONTAINER,
) -> ArchiveFiles:
    """The files of days `first`..`last` (as `read_archive` lists them), downloaded and not yet decoded."""
    client = blob_service.get_container_client(container)
    days = _list_days(client, first, last)
    with ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
        downloaded = list(pool.map(lambda blobs: _download_day(client, blobs), days.values()))
    return ArchiveFiles([day for day in downloaded if day], skip_unreadable)


@dataclass
class ArchiveFiles:
    """Days of the archive as downloaded: each day's files, compressed, decoded only when read.

    The nightly batch score holds its window so (the compressed files are a fraction of the decoded
    rows) and decodes it a chunk of cars at a time (`chunks_of_cars`), so its peak memory follows the
    chunk, not the fleet. Files found unreadable are kept in `skipped` once, whichever read found them.
    """

    days: list[list[tuple[BlobProperties, bytes]]]
    skip_unreadable: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # blob name → reason

    @property
    def empty(self) -> bool:
        return not self.days

    @property
    def names(self) -> list[str]:
        return [blob.name for day in self.days for blob, _ in day]

    def read(self, columns: Sequence[str] | None = None, *, keep_archived_at: bool = False,
             batteries: Collection[str] | None = None, car_id: str | None = None) -> ArchiveRead:  # fmt: skip
        """The records (`read_archive`), of `batteries` or `car_id` only when given, deduplicated, in day order."""
        decoded, output = _wanted_columns(columns, keep_archived_at)
        kept = _row_filter(batteries, car_id)
        result = ArchiveRead(_empty(output))
        frames = [self._read_day(day, decoded, kept, result) for day in self.days]
        frames = [frame[output] for frame in frames if frame is not None]
        if frames:
            result.frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        result.frame = result.frame.sort_values(DATE, kind="stable", ignore_index=True)
        return result

    def chunks_of_cars(self, cars: int) -> Iterator[ArchiveRead]:
        """The records about `cars` cars at a time, in Car_ID order, every car's batteries in its chunk.

        A first pass decodes only the keys and Car_ID, to learn which batteries each car's (deduplicated)
        records name; a chunk then decodes those batteries' rows, so every copy of a record is there to
        deduplicate, and keeps its own cars' rows (a battery moved between cars is in both chunks, each
        with the rows of its car there), exactly as grouping the whole read by car would.
        """
        pairs = self._car_batteries()
        car_ids = np.sort(pairs[CAR_ID].unique())
        for start in range(0, len(car_ids), cars):
            chunk = car_ids[start : start + cars]
            read = self.read(batteries=pairs.loc[pairs[CAR_ID].isin(chunk), BATTERY_ID].unique())
            read.frame = read.frame[read.frame[CAR_ID].isin(chunk)].reset_index(drop=True)
            yield read

    def _car_batteries(self) -> pd.DataFrame:
        """Every (Car_ID, Battery_ID) pair of the deduplicated records, one row each."""
        pairs = pd.DataFrame({CAR_ID: pd.Series(dtype=object), BATTERY_ID: pd.Series(dtype=object)})
        decoded, _ = _wanted_columns([CAR_ID], False)
        for day in self.days:
            frame = self._read_day(day, decoded, None, ArchiveRead(pairs))
            if frame is not None:
                pairs = pd.concat([pairs, frame[[CAR_ID, BATTERY_ID]].drop_duplicates()]).drop_duplicates()
        return pairs.reset_index(drop=True)

    def _read_day(self, day: list[tuple[BlobProperties, bytes]], decoded: list[str], kept: RowFilter | None,
                  result: ArchiveRead) -> pd.DataFrame | None:  # fmt: skip
        """One day's files decoded and deduplicated (None when none was readable); notes them in `result`."""
        frames = []
        for blob, data in day:
            try:
                frames.append(read_archived_file(blob.name, data, blob.last_modified, decoded, kept))
            except InputError as error:
                if not self.skip_unreadable:
                    raise
                if blob.name not in self.skipped:
                    log.warning("ARCHIVE_SKIP_UNREADABLE: skipped %s", error)
                    self.skipped[blob.name] = str(error)
                result.skipped.append(str(error))
                continue
            result.files_read.append(blob.name)
        return latest_written(pd.concat(frames, ignore_index=True)) if frames else None


def load_telemetry_history(
    blob_service: BlobServiceClient,
    since: date | str | None = None,
    until: date | str | None = None,
    *,
    columns: Sequence[str] | None = None,
    skip_unreadable: bool = False,
) -> pd.DataFrame:
    """Every archived record of days `since`..`until` (each end open when None), typed per
    `shared.core.telemetry`, deduplicated, in day order (`read_archive` for the files read and skipped).
    Raises `InputError` naming the blob if an archived file is unreadable (unless `skip_unreadable`)."""
    return read_archive(blob_service, since, until, columns=columns, skip_unreadable=skip_unreadable).frame


def read_archived_file(name: str, data: bytes, last_modified: datetime, columns: Sequence[str],
                       kept: RowFilter | None = None) -> pd.DataFrame:  # fmt: skip
    """One archived file (Parquet, or CSV of the days before it) as typed `columns`, with ARCHIVED_AT;
    only the rows `kept` names (a column and its values) when given.

    Raises `InputError` naming the blob when it cannot be read or does not have the archive's columns.
    """
    where = f"archived telemetry {TELEMETRY_CONTAINER}/{name}"
    if name.endswith(".csv"):
        frame = _read_csv(where, data).assign(**{ARCHIVED_AT: _naive_utc(last_modified)})
        if kept is not None:
            frame = frame[frame[kept[0]].isin(kept[1].to_pylist())]
        return frame[list(columns)]
    try:
        schema = pq.read_schema(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{where}: not a readable Parquet file ({error})") from None
    decoded = [c for c in columns if c != ARCHIVED_AT or ARCHIVED_AT in schema.names]
    problems = [_schema_problem(schema, c) for c in decoded]
    problems = [p for p in problems if p]
    if problems:
        raise InputError(f"{where}: schema mismatch: {'; '.join(problems)}")
    try:
        rows = None if kept is None else pc.is_in(pc.field(kept[0]), value_set=kept[1])
        table = pq.read_table(io.BytesIO(data), columns=decoded, filters=rows)
        table = table.cast(pa.schema([SCHEMA.field(c) for c in decoded]))
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{where}: not a readable Parquet file ({error})") from None
    frame = table.to_pandas()
    for column in (BATTERY_ID, CAR_ID):
        if column in frame:
            frame[column] = frame[column].astype(object)
    if ARCHIVED_AT not in frame:
        frame[ARCHIVED_AT] = _naive_utc(last_modified)
    return frame[list(columns)]


def archive_days(first: date, last: date) -> list[str]:
    """The partition prefixes (`date=YYYY-MM-DD/`) of days `first`..`last`, oldest first."""
    return [f"date={first + timedelta(days=n):%Y-%m-%d}/" for n in range((last - first).days + 1)]


def list_archive(client: ContainerClient, prefixes: Iterable[str]) -> list[BlobProperties]:
    """The blobs under each prefix, in name order (empty when the container does not exist)."""
    with ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
        listed = pool.map(lambda prefix: _list_blobs(client, prefix), prefixes)
        return sorted((blob for blobs in listed for blob in blobs), key=lambda blob: blob.name)


def partition_day(blob_name: str) -> str:
    """The YYYY-MM-DD of an archive blob's partition, "" for a blob outside the layout."""
    match = _PARTITION.match(blob_name)
    return match.group(1) if match else ""


def dead_letter(
    blob_service: BlobServiceClient, dead_letters: list[DeadLetter], now: datetime, batch_id: str | None = None
) -> str | None:
    """Store a batch's dead letters as one JSON blob; return its name (None when there were none)."""
    if not dead_letters:
        return None
    container = ensure_container(blob_service, DEADLETTER_CONTAINER)
    blob = f"{DEADLETTER_PREFIX}date={now:%Y-%m-%d}/{_blob_name(now, batch_id)}.json"
    document = {
        "written_at": now.isoformat(),
        "count": len(dead_letters),
        "dead_letters": [letter.to_dict() for letter in dead_letters],
    }
    upload_bytes(container, blob, json.dumps(document, ensure_ascii=False, default=str).encode("utf-8"))
    return blob


def list_dead_letters(blob_service: BlobServiceClient, day: date | str | None = None) -> list[DeadLetter]:
    """The stored dead letters, of one arrival day or of all days, oldest blob first (for tests and ops)."""
    container = blob_service.get_container_client(DEADLETTER_CONTAINER)
    prefix = DEADLETTER_PREFIX if day is None else f"{DEADLETTER_PREFIX}date={pd.Timestamp(day):%Y-%m-%d}/"
    letters = []
    for name in list_blob_names(container, prefix):
        data = download_bytes(container, name)
        if data is not None:  # None: deleted by an operator since the listing
            letters += [DeadLetter.from_dict(letter) for letter in json.loads(data)["dead_letters"]]
    return letters


def dead_letter_names(blob_service: BlobServiceClient, prefix: str, first: date, last: date) -> list[str]:
    """The dead-letter documents under `prefix` (telemetry/, alerts/, scoring/, parked/: each is partitioned by
    arrival day) of days `first`..`last`: one listing per day, overlapped, so the cost follows the days asked
    for, not the history."""
    container = blob_service.get_container_client(DEADLETTER_CONTAINER)
    with ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
        per_day = pool.map(lambda day: list_blob_names(container, f"{prefix}{day}"), archive_days(first, last))
        return [name for names in per_day for name in names]


def dead_lettered_events(blob_service: BlobServiceClient, first: date, last: date) -> int:
    """How many telemetry events were dead-lettered on arrival days `first`..`last`: the documents' counts."""
    container = blob_service.get_container_client(DEADLETTER_CONTAINER)
    names = dead_letter_names(blob_service, DEADLETTER_PREFIX, first, last)
    with ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
        documents = list(pool.map(lambda name: download_bytes(container, name), names))
    return sum(int(json.loads(data)["count"]) for data in documents if data is not None)


# --- internals ----------------------------------------------------------------------------------------


def _blob_name(now: datetime, batch_id: str | None) -> str:
    if batch_id is not None:
        if not re.fullmatch(r"[A-Za-z0-9._=-]{1,200}", batch_id):
            raise ValueError(f"batch_id must be 1-200 letters, digits or . _ = -, got {batch_id!r}")
        return batch_id
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def _naive_utc(moment: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


def _wanted_columns(columns: Sequence[str] | None, keep_archived_at: bool) -> tuple[list[str], list[str]]:
    """(columns to decode, ARCHIVED_AT always among them for deduplication; columns to return)."""
    asked = set(COLUMNS if columns is None else columns)
    unknown = asked - set(COLUMNS)
    if unknown:
        raise ValueError(f"columns must be among the telemetry columns, got {sorted(unknown)}")
    output = [c for c in COLUMNS if c in asked or c in DEDUP_KEY]
    return [*output, ARCHIVED_AT], [*output, ARCHIVED_AT] if keep_archived_at else output


def _empty(columns: list[str]) -> pd.DataFrame:
    typed, _ = coerce_telemetry(pd.DataFrame(columns=COLUMNS, dtype=object))
    return typed.assign(**{ARCHIVED_AT: pd.Series(dtype="datetime64[ns]")})[columns]


def _list_blobs(client: ContainerClient, prefix: str) -> list[BlobProperties]:
    try:
        return list(client.list_blobs(name_starts_with=prefix))
    except ResourceNotFoundError:
        return []


def _list_days(client: ContainerClient, first: date | str | None, last: date | str | None) -> dict[str, list]:
    """Blobs by partition day, oldest day first: only the days' own prefixes when both ends are known."""
    start = None if first is None else pd.Timestamp(first).date()
    end = None if last is None else pd.Timestamp(last).date()
    blobs = list_archive(client, archive_days(start, end) if start and end else ["date="])
    days: dict[str, list] = {}
    for blob in blobs:
        day = partition_day(blob.name)
        if day and (start is None or day >= f"{start}") and (end is None or day <= f"{end}"):
            days.setdefault(day, []).append(blob)
    return dict(sorted(days.items()))


def _row_filter(batteries: Collection[str] | None, car_id: str | None) -> RowFilter | None:
    if batteries is not None and car_id is not None:
        raise ValueError("give batteries or car_id, not both")
    if car_id is not None:
        return CAR_ID, pa.array([car_id], pa.string())
    return None if batteries is None else (BATTERY_ID, pa.array(sorted(map(str, batteries)), pa.string()))


def _download_day(client: ContainerClient, blobs: list, relisted: bool = False) -> list[tuple[BlobProperties, bytes]]:
    """One day's files with their content. A file gone since the listing (a compaction removed it after
    writing its compacted file) makes the day be listed and downloaded again, once, so its rows are not
    missed."""
    downloaded = []
    for blob in blobs:
        data = download_bytes(client, blob.name)
        if data is None and not relisted:
            return _download_day(client, _list_blobs(client, f"date={partition_day(blob.name)}/"), relisted=True)
        if data is not None:
            downloaded.append((blob, data))
    return downloaded


def _schema_problem(schema: pa.Schema, column: str) -> str | None:
    if column not in schema.names:
        return f"no column {column}"
    found, expected = schema.field(column).type, SCHEMA.field(column).type
    compatible = (
        found == expected
        or (pa.types.is_timestamp(found) and pa.types.is_timestamp(expected))
        or (pa.types.is_string(expected) and (pa.types.is_large_string(found) or pa.types.is_string(found)))
        or (pa.types.is_floating(expected) and (pa.types.is_integer(found) or pa.types.is_floating(found)))
    )
    return None if compatible else f"column {column} is {found}, expected {expected}"


def _read_csv(where: str, data: bytes) -> pd.DataFrame:
    """One archived CSV (the days before Parquet), typed by `coerce_telemetry`; a bad value is named with its line."""
    try:
        raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{where}: not a readable CSV ({error})") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"{where}: missing column(s): {', '.join(missing)}")
    typed, problems = coerce_telemetry(raw[COLUMNS])
    if problems:
        raise InputError(f"{where}: {describe_problems(problems, line_offset=2)}")  # line 1 is the header
    return typed
