"""Archive: the telemetry history and the dead-letter store, both in Blob storage.

Every good record the Event Hub function accepts is appended to the archive, the history the nightly
retraining and batch scoring read back; every event it cannot use is kept in the dead-letter store with
its reason. Between them, nothing a car sent is lost.

Layout (docs/architecture.md, "Data flow"):

- `telemetry/date=YYYY-MM-DD/<name>.csv` — container "telemetry", one CSV per batch and record day, in
  the telemetry columns. Partitioned by the record's own day, so `since` reads only the days it needs
  and a car's late backlog lands with its days.
- `deadletter/telemetry/date=YYYY-MM-DD/<name>.json` — container "deadletter", one JSON document per
  batch (`{"written_at", "count", "dead_letters": [...]}`), partitioned by the day it arrived (a bad
  event may have no usable date).

`<name>` is the batch id when the caller gives one (e.g. the Event Hub partition and first sequence
number): a batch the Functions retry policy runs again then overwrites its own blobs instead of
archiving its records twice. Without one, a timestamp and a random suffix.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime

import pandas as pd
from azure.storage.blob import BlobServiceClient

from shared.adapters.storage import (
    download_bytes,
    ensure_container,
    list_blob_names,
    upload_bytes,
    upload_creating_container,
)
from shared.config.names import DEADLETTER_CONTAINER, TELEMETRY_CONTAINER
from shared.core.events import DeadLetter
from shared.core.telemetry import COLUMNS, DATE, InputError, coerce_telemetry, describe_problems

DEADLETTER_PREFIX = "telemetry/"
_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})/")
_DOWNLOAD_THREADS = 8  # the nightly read is many small blobs: overlap their round trips


def archive_telemetry(
    blob_service: BlobServiceClient, good: pd.DataFrame, now: datetime, batch_id: str | None = None
) -> list[str]:
    """Append a batch's good records to the archive; return the blob names written (none for no records).

    One blob per record day in the batch. Dates are written as YYYY-MM-DD, or with the time when a
    record has one (12-hour rows of old cars).
    """
    if good.empty:
        return []
    name = _blob_name(now, batch_id)
    written = []
    for day, records in good[COLUMNS].groupby(good[DATE].dt.strftime("%Y-%m-%d"), sort=True):
        blob = f"date={day}/{name}.csv"
        upload_creating_container(blob_service, TELEMETRY_CONTAINER, blob, records.to_csv(index=False).encode())
        written.append(blob)
    return written


def load_telemetry_history(blob_service: BlobServiceClient, since: date | str | None = None) -> pd.DataFrame:
    """Every archived record (from day `since` on, if given), typed per `shared.core.telemetry`, in day order.

    Raw as archived: redelivered days appear more than once, and preparation deduplicates them as it
    does any telemetry. Raises `InputError` naming the blob if an archived file is unreadable.
    """
    container = blob_service.get_container_client(TELEMETRY_CONTAINER)
    first = None if since is None else pd.Timestamp(since).strftime("%Y-%m-%d")
    names = [n for n in list_blob_names(container, "date=") if first is None or _day_of(n) >= first]
    with ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
        contents = list(pool.map(lambda name: download_bytes(container, name), names))
    frames = [_read_archived(name, data) for name, data in zip(names, contents, strict=True) if data]
    if not frames:
        typed, _ = coerce_telemetry(pd.DataFrame(columns=COLUMNS, dtype=object))
        return typed
    raw = pd.concat(frames, ignore_index=True)
    typed, problems = coerce_telemetry(raw.drop(columns="blob"))
    if problems:
        blob = raw.at[problems[0].row, "blob"]
        in_blob = [p for p in problems if raw.at[p.row, "blob"] == blob]
        first_row = int(raw.index[raw["blob"] == blob][0])
        details = describe_problems(in_blob, line_offset=2 - first_row)  # line 1 of a blob is its header
        raise InputError(f"archived telemetry {TELEMETRY_CONTAINER}/{blob}: {details}")
    if first is not None:
        typed = typed[typed[DATE] >= pd.Timestamp(first)]
    return typed.sort_values(DATE, kind="stable", ignore_index=True)


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


def _blob_name(now: datetime, batch_id: str | None) -> str:
    if batch_id is not None:
        if not re.fullmatch(r"[A-Za-z0-9._=-]{1,200}", batch_id):
            raise ValueError(f"batch_id must be 1-200 letters, digits or . _ = -, got {batch_id!r}")
        return batch_id
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def _day_of(blob_name: str) -> str:
    match = _PARTITION.match(blob_name)
    return match.group(1) if match else ""


def _read_archived(name: str, data: bytes) -> pd.DataFrame:
    """One archived CSV as raw text columns, tagged with its blob name for error messages."""
    where = f"archived telemetry {TELEMETRY_CONTAINER}/{name}"
    try:
        raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{where}: not a readable CSV ({error})") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"{where}: missing column(s): {', '.join(missing)}")
    return raw[COLUMNS].assign(blob=name)
