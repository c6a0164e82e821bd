"""The nightly scores as stored by `nightly_batch_score`: `scores/date=YYYY-MM-DD/<model version>.parquet`.

Read back for the dashboard: the newest day's file of the champion (or, without one on that day, the
newest file written that day), decoding only the columns asked for, so the fleet's risk at 100,000
batteries is one blob download and a few columns of Parquet.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow.parquet as pq
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from shared.adapters.storage import download_bytes
from shared.config.names import SCORES_CONTAINER

_SCORES_FILE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/([^/]+)\.parquet")  # spark-<model>/ folders are not files


@dataclass(frozen=True)
class StoredScores:
    """One night's scores file: its day, the model version that scored it, its blob name and the rows."""

    day: str
    model_version: str
    blob: str
    frame: pd.DataFrame


def latest_scores(
    blobs: BlobServiceClient, columns: Sequence[str] | None = None, champion: str | None = None
) -> StoredScores | None:
    """The newest day's scores (the `champion`'s file that day if there is one, else the newest written),
    only `columns` decoded (all when None); None when no scores were written yet."""
    container = blobs.get_container_client(SCORES_CONTAINER)
    try:
        files = [
            (match[1], match[2], blob.last_modified, blob.name)
            for blob in container.list_blobs(name_starts_with="date=")
            if (match := _SCORES_FILE.fullmatch(blob.name))
        ]
    except ResourceNotFoundError:
        return None
    if not files:
        return None
    newest_day = max(day for day, *_ in files)
    that_day = [entry for entry in files if entry[0] == newest_day]
    day, version, _, name = max(that_day, key=lambda entry: (entry[1] == champion, entry[2]))
    data = download_bytes(container, name)
    if data is None:  # deleted since the listing
        return None
    frame = pq.read_table(io.BytesIO(data), columns=list(columns) if columns else None).to_pandas()
    return StoredScores(day, version, f"{SCORES_CONTAINER}/{name}", frame)
