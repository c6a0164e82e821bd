"""The monitor's store: matured accuracy, reliability bins, input drift and retrain decisions, as Parquet in Blob.

Written by the nightly monitor (shared/handlers/monitoring.py), read by it (the cooldown, the history) and by
the dashboard. Container "monitoring" (names.MONITORING_CONTAINER); one file per day and model, so a night
rewrites only its own files and a re-run of a night overwrites them:

- `accuracy/date=<scored day>/<model version>.parquet`: core.monitoring.ACCURACY_COLUMNS, one row per
  (segment kind, segment) of that model's scores of that day, judged on the telemetry up to Matured_On:
  Scored_On, Matured_On (dates), Model_Version, Role ("champion" | "shadow"), Segment_Kind ("all" | "make" |
  "region" | "engine_type" | "battery_model"), Segment ("all" for the whole fleet), Batteries, Positives (ints),
  Brier, Recall, Precision, Average_Precision, NRMSE (floats, NaN where undefined), Alerts (int).
- `reliability/date=<scored day>/<model version>.parquet`: core.monitoring.RELIABILITY_COLUMNS, ten
  equal-width probability bins per (segment kind, segment): Bin ("0.0-0.1"), Count, Mean_Predicted,
  Observed_Rate.
- `drift/date=<day>.parquet`: core.monitoring.DRIFT_COLUMNS, one row per input feature of the champion:
  Day, Model_Version, Feature, PSI, Threshold, Drifted.
- `retrain/date=<day>.parquet`: core.monitoring.RETRAIN_COLUMNS, the night's decision: Day, Model_Version,
  Reason (why it triggered or why not), Triggered, Cooldown_Until (NaT unless it triggered), Retrain_Outcome
  (the retrain's summary as JSON text).
- `cars/segments.parquet`: the car attributes the accuracy is segmented by (Car_ID, Make, Region,
  Engine_Type, and Battery_Model when the car table has one), written with the car profiles.

The read functions return the stored history as one frame with those columns (empty, with the columns, when
nothing is stored), sorted by day.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pandas as pd
from azure.storage.blob import BlobServiceClient

from shared.adapters.storage import download_bytes, ensure_container, list_blob_names, upload_bytes
from shared.config.names import MONITORING_CONTAINER
from shared.core.monitoring import (
    ACCURACY_COLUMNS,
    COOLDOWN_UNTIL,
    DAY,
    DRIFT_COLUMNS,
    MATURED_ON,
    RELIABILITY_COLUMNS,
    RETRAIN_COLUMNS,
    SCORED_ON,
    SEGMENT_COLUMNS,
)
from shared.core.telemetry import CAR_ID

ACCURACY = "accuracy"
RELIABILITY = "reliability"
DRIFT = "drift"
RETRAIN = "retrain"
SEGMENTS_BLOB = "cars/segments.parquet"
_DATE_COLUMNS = (SCORED_ON, MATURED_ON, DAY, COOLDOWN_UNTIL)
_DOWNLOAD_THREADS = 8  # the history is many small files: overlap their round trips


def write_accuracy(blobs: BlobServiceClient, scored_on: date, model_version: str, accuracy: pd.DataFrame,
                   reliability: pd.DataFrame) -> str:  # fmt: skip
    """Store one model's matured accuracy and reliability bins for the scores of `scored_on`; the accuracy blob."""
    name = f"date={scored_on.isoformat()}/{model_version}.parquet"
    _write(blobs, f"{RELIABILITY}/{name}", reliability, RELIABILITY_COLUMNS)
    return _write(blobs, f"{ACCURACY}/{name}", accuracy, ACCURACY_COLUMNS)


def write_drift(blobs: BlobServiceClient, day: date, drift: pd.DataFrame) -> str:
    """Store the drift of the champion's features measured on `day`; the blob written."""
    return _write(blobs, f"{DRIFT}/date={day.isoformat()}.parquet", drift, DRIFT_COLUMNS)


def write_retrain_decision(blobs: BlobServiceClient, decision: pd.DataFrame) -> str:
    """Store the night's retrain decision (one row of RETRAIN_COLUMNS); the blob written."""
    day = pd.Timestamp(decision[DAY].iloc[0]).date()
    return _write(blobs, f"{RETRAIN}/date={day.isoformat()}.parquet", decision, RETRAIN_COLUMNS)


def read_accuracy(blobs: BlobServiceClient, first: date | None = None, last: date | None = None) -> pd.DataFrame:
    """The stored matured accuracy of scored days `first`..`last` (inclusive; open where None), every model."""
    return _read(blobs, ACCURACY, ACCURACY_COLUMNS, first, last)


def read_reliability(blobs: BlobServiceClient, first: date | None = None, last: date | None = None) -> pd.DataFrame:
    """The stored reliability bins of scored days `first`..`last` (inclusive; open where None), every model."""
    return _read(blobs, RELIABILITY, RELIABILITY_COLUMNS, first, last)


def read_drift(blobs: BlobServiceClient, first: date | None = None, last: date | None = None) -> pd.DataFrame:
    """The stored feature drift of days `first`..`last` (inclusive; open where None)."""
    return _read(blobs, DRIFT, DRIFT_COLUMNS, first, last)


def read_retrain_decisions(blobs: BlobServiceClient) -> pd.DataFrame:
    """Every night's retrain decision, oldest first (the last triggered one's Cooldown_Until is the cooldown)."""
    return _read(blobs, RETRAIN, RETRAIN_COLUMNS, None, None)


def scored_days_stored(blobs: BlobServiceClient) -> set[tuple[date, str]]:
    """(scored day, model version) pairs whose accuracy is stored: the nights already judged."""
    pairs = set()
    for name in list_blob_names(blobs.get_container_client(MONITORING_CONTAINER), f"{ACCURACY}/"):
        day, version = name.removeprefix(f"{ACCURACY}/date=").split("/", 1)
        pairs.add((date.fromisoformat(day), version.removesuffix(".parquet")))
    return pairs


def write_car_segments(blobs: BlobServiceClient, cars: pd.DataFrame) -> int:
    """Store the car table's segment attributes (those it has of SEGMENT_COLUMNS); the number of cars."""
    columns = [CAR_ID, *(column for column in SEGMENT_COLUMNS.values() if column in cars.columns)]
    segments = cars[columns].astype("string").drop_duplicates(CAR_ID, keep="last")
    upload_bytes(ensure_container(blobs, MONITORING_CONTAINER), SEGMENTS_BLOB, segments.to_parquet(index=False))
    return len(segments)


def read_car_segments(blobs: BlobServiceClient) -> pd.DataFrame:
    """Car_ID and the segment attributes stored (just Car_ID, empty, before any car table was written)."""
    data = download_bytes(blobs.get_container_client(MONITORING_CONTAINER), SEGMENTS_BLOB)
    return pd.DataFrame({CAR_ID: pd.Series(dtype="string")}) if data is None else pd.read_parquet(io.BytesIO(data))


def _write(blobs: BlobServiceClient, name: str, frame: pd.DataFrame, columns: Sequence[str]) -> str:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"monitoring table {name} lacks columns {missing}")
    upload_bytes(ensure_container(blobs, MONITORING_CONTAINER), name, _typed(frame).to_parquet(index=False))
    return f"{MONITORING_CONTAINER}/{name}"


def _read(blobs: BlobServiceClient, table: str, columns: list[str], first: date | None,
          last: date | None) -> pd.DataFrame:  # fmt: skip
    container = blobs.get_container_client(MONITORING_CONTAINER)
    names = [name for name in list_blob_names(container, f"{table}/date=")
             if _in_range(name.removeprefix(f"{table}/date=")[:10], first, last)]  # fmt: skip
    with ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
        blobs_read = [data for data in pool.map(lambda name: download_bytes(container, name), names) if data]
    frames = [pd.read_parquet(io.BytesIO(data)) for data in blobs_read]
    if not frames:
        return _typed(pd.DataFrame({column: pd.Series(dtype=object) for column in columns}))
    history = pd.concat(frames, ignore_index=True)
    key = next(column for column in (SCORED_ON, DAY) if column in history.columns)
    return history.sort_values(key, kind="stable", ignore_index=True)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Day columns as datetime64 (Parquet dates come back as objects otherwise), whatever came in."""
    return frame.assign(**{column: pd.to_datetime(frame[column]) for column in _DATE_COLUMNS if column in frame})


def _in_range(day: str, first: date | None, last: date | None) -> bool:
    return (first is None or day >= first.isoformat()) and (last is None or day <= last.isoformat())
