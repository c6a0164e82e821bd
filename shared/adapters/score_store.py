"""The nightly scores in Blob: one Parquet file per day and model, the champion's and the shadow's.

Container "scores" (names.SCORES_CONTAINER):

- `date=<as_of>/<model version>.parquet`: the champion's scores of the night (the ones that alerted);
- `date=<as_of>/shadow/<model version>.parquet`: the shadow's, scored on the same batteries, never alerted.

Each holds shared.models.scoring.BATCH_SCORE_COLUMNS, `alert`, `reasons`, and `forecast_daily_cycles` (the 30
forecast days, a fixed-size list), so the monitor can judge the forecast once the days have passed.

The dashboard reads the newest champion file with only the columns it shows (`latest_scores`): at 100,000
batteries one download and a few columns decoded, not the reasons or the forecast.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from shared.adapters.storage import download_bytes, ensure_container, list_blob_names, upload_bytes
from shared.config.names import SCORES_CONTAINER
from shared.core.monitoring import CHAMPION, FORECAST, SHADOW
from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import CAR_ID

_CHAMPION_FILE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/([^/]+)\.parquet")  # not shadow/ nor spark-<model>/


@dataclass(frozen=True)
class StoredScores:
    """One model's scores of one day, and their (n, HORIZON_DAYS) forecast, rows alike."""

    version: str
    role: str  # CHAMPION or SHADOW
    scores: pd.DataFrame
    forecast: np.ndarray


def scores_blob(as_of: date, version: str, role: str = CHAMPION) -> str:
    """The blob name of a model's scores of a day."""
    folder = f"date={as_of.isoformat()}/" + ("shadow/" if role == SHADOW else "")
    return f"{folder}{version}.parquet"


def write_scores(blobs: BlobServiceClient, as_of: date, version: str, scores: pd.DataFrame, forecast: np.ndarray,
                 role: str = CHAMPION) -> str:  # fmt: skip
    """Store a model's scores of a day with their forecast; the blob name (in SCORES_CONTAINER)."""
    table = pa.Table.from_pandas(scores, preserve_index=False)
    days = pa.array(np.asarray(forecast, np.float64).reshape(-1), pa.float64())
    table = table.append_column(FORECAST, pa.FixedSizeListArray.from_arrays(days, HORIZON_DAYS))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    name = scores_blob(as_of, version, role)
    upload_bytes(ensure_container(blobs, SCORES_CONTAINER), name, sink.getvalue())
    return name


def read_scores(blobs: BlobServiceClient, as_of: date) -> list[StoredScores]:
    """Every model's stored scores of a day (champion first); files written before forecasts were stored,
    or by the Spark job (its own folder), are not these and are left out."""
    container = blobs.get_container_client(SCORES_CONTAINER)
    stored = []
    for name in list_blob_names(container, f"date={as_of.isoformat()}/"):
        role = SHADOW if "/shadow/" in name else CHAMPION
        if not name.endswith(".parquet") or name.count("/") != (2 if role == SHADOW else 1):
            continue
        data = download_bytes(container, name)
        table = None if data is None else pq.read_table(io.BytesIO(data))
        if table is None or FORECAST not in table.column_names:
            continue
        forecast = table.column(FORECAST).combine_chunks().flatten().to_numpy().reshape(-1, HORIZON_DAYS)
        version = name.rsplit("/", 1)[1].removesuffix(".parquet")
        stored.append(StoredScores(version, role, table.drop_columns([FORECAST]).to_pandas(), forecast))
    return sorted(stored, key=lambda item: item.role != CHAMPION)


@dataclass(frozen=True)
class LatestScores:
    """The newest night's champion scores: the day, the model version that scored it, the rows read."""

    day: str
    model_version: str
    scores: pd.DataFrame


def latest_scores(
    blobs: BlobServiceClient,
    columns: Sequence[str] | None = None,
    champion: str | None = None,
    car_id: str | None = None,
) -> LatestScores | None:
    """The newest day's champion scores (the file of `champion` that day if there is one, else the newest
    written), only those of `columns` the file has decoded (all when None), and with `car_id` only that car's
    rows (filtered as the file is decoded: a lookup does not turn the fleet's forecasts into objects); None
    when no scores were written yet."""
    container = blobs.get_container_client(SCORES_CONTAINER)
    try:
        files = [(match[1], match[2], blob.last_modified, blob.name)
                 for blob in container.list_blobs(name_starts_with="date=")
                 if (match := _CHAMPION_FILE.fullmatch(blob.name))]  # fmt: skip
    except ResourceNotFoundError:
        return None
    if not files:
        return None
    newest_day = max(day for day, *_ in files)
    day, version, _, name = max((f for f in files if f[0] == newest_day), key=lambda f: (f[1] == champion, f[2]))
    data = download_bytes(container, name)
    if data is None:  # deleted since the listing
        return None
    names = pq.read_schema(io.BytesIO(data)).names
    present = None if columns is None else [c for c in columns if c in names]
    rows = None if car_id is None else [(CAR_ID, "==", car_id)]
    return LatestScores(day, version, pq.read_table(io.BytesIO(data), columns=present, filters=rows).to_pandas())
