"""Compaction: each finished day's many small archive files merged into one Parquet file, crash-safely.

The streaming function writes one small file per batch and record day (thousands a day at fleet scale);
the nightly jobs would pay a round trip for each. Once a day is over, this writes the day's deduplicated
union as `date=YYYY-MM-DD/compacted.parquet`, reads it back and checks it (row count and Battery_ID+Date
key set equal to the union of its sources), and only then deletes the sources, each only if it is
unchanged since it was read (ETag). A crash or a rerun between the write and the deletes loses and
doubles nothing: readers deduplicate, and the next run folds the leftovers (and any late backlog that
landed in the day) into the compacted file again. An unreadable source is never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import pandas as pd
from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, BlobServiceClient, ContainerClient

from shared.adapters.archive import (
    SCHEMA,
    TELEMETRY_CONTAINER,
    list_archive,
    partition_day,
    read_archived_file,
    to_parquet,
)
from shared.adapters.storage import download_bytes, upload_bytes
from shared.core.deduplication import DEDUP_KEY, latest_written
from shared.core.telemetry import InputError

COMPACTED_NAME = "compacted.parquet"
log = logging.getLogger(__name__)


class CompactionError(RuntimeError):
    """The compacted file read back does not hold its sources; they are all kept. The message names the day."""


@dataclass
class CompactionSummary:
    """What one compaction run did: days merged, sources removed, and the files it had to leave."""

    days_compacted: int = 0
    files_removed: int = 0
    rows_written: int = 0
    skipped: list[str] = field(default_factory=list)  # unreadable sources (ARCHIVE_SKIP_UNREADABLE), kept
    changed: list[str] = field(default_factory=list)  # sources rewritten since they were read, kept for next run

    def to_dict(self) -> dict:
        return {"days_compacted": self.days_compacted, "files_removed": self.files_removed,
                "rows_written": self.rows_written, "skipped": len(self.skipped), "skipped_files": self.skipped,
                "changed_since_read": self.changed}  # fmt: skip


def compact_archive(
    blob_service: BlobServiceClient,
    today: date,
    *,
    container: str = TELEMETRY_CONTAINER,
    skip_unreadable: bool = False,
    after_write: Callable[[str], None] | None = None,
) -> CompactionSummary:
    """Compact every day before `today` that has more than one file (a compacted file counts as one).

    `after_write(blob)` is called between the verified write and the deletes (tests crash there).
    Raises `InputError` naming an unreadable source unless `skip_unreadable`.
    """
    client = blob_service.get_container_client(container)
    days: dict[str, list[BlobProperties]] = {}
    for blob in list_archive(client, ["date="]):
        days.setdefault(partition_day(blob.name), []).append(blob)
    summary = CompactionSummary()
    for day, blobs in sorted(days.items()):
        if day and day < today.isoformat() and len(blobs) > 1:
            _compact_day(client, day, blobs, skip_unreadable, after_write, summary)
    return summary


def _compact_day(client: ContainerClient, day: str, blobs: list[BlobProperties], skip_unreadable: bool,
                 after_write: Callable[[str], None] | None, summary: CompactionSummary) -> None:  # fmt: skip
    output = f"date={day}/{COMPACTED_NAME}"
    sources = _read_sources(client, blobs, skip_unreadable, summary)
    if not [name for name in sources if name != output]:
        return
    union = latest_written(pd.concat([frame for _, frame in sources.values()], ignore_index=True))
    union = union.sort_values(DEDUP_KEY, kind="stable", ignore_index=True)
    upload_bytes(client, output, to_parquet(union))
    _verify(client, output, union)
    if after_write is not None:
        after_write(output)
    for name, (etag, _) in sources.items():
        if name == output:
            continue
        try:
            client.delete_blob(name, etag=etag, match_condition=MatchConditions.IfNotModified)
            summary.files_removed += 1
        except ResourceModifiedError:  # a retried batch rewrote it since: its new rows are not verified yet
            summary.changed.append(name)
        except ResourceNotFoundError:  # removed by an earlier, interrupted run of this day
            pass
    summary.days_compacted += 1
    summary.rows_written += len(union)
    log.info("compacted %s: %d files into %s (%d rows)", day, len(sources), output, len(union))


def _read_sources(client: ContainerClient, blobs: list[BlobProperties], skip_unreadable: bool,
                  summary: CompactionSummary) -> dict[str, tuple[str, pd.DataFrame]]:  # fmt: skip
    """The day's readable files: name → (the ETag it was read at, its rows with ARCHIVED_AT)."""
    sources = {}
    for blob in blobs:
        try:
            downloader = client.download_blob(blob.name)
        except ResourceNotFoundError:  # removed since the listing
            continue
        data = downloader.readall()
        try:
            frame = read_archived_file(blob.name, data, downloader.properties.last_modified, SCHEMA.names)
        except InputError as error:
            if not skip_unreadable:
                raise
            log.warning("ARCHIVE_SKIP_UNREADABLE: compaction left %s", error)
            summary.skipped.append(str(error))
            continue
        sources[blob.name] = (downloader.properties.etag, frame)
    return sources


def _verify(client: ContainerClient, output: str, union: pd.DataFrame) -> None:
    """The compacted file as stored holds exactly the union's rows: same count, same key set."""
    data = download_bytes(client, output)
    if data is None:
        raise CompactionError(f"{output}: the compacted file is missing after it was written; sources kept")
    stored = read_archived_file(output, data, pd.Timestamp.now(tz="UTC"), SCHEMA.names)
    expected = pd.MultiIndex.from_frame(union[DEDUP_KEY]).sort_values()
    found = pd.MultiIndex.from_frame(stored[DEDUP_KEY]).sort_values()
    if len(stored) != len(union) or not found.equals(expected):
        raise CompactionError(f"{output}: holds {len(stored)} rows, its sources {len(union)} distinct records "
                              "(or other keys); sources kept")  # fmt: skip
