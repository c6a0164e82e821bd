"""The monitor's store on Azurite: what the monitor writes, the history reads back, and an empty store's frames."""

from __future__ import annotations

import contextlib
import uuid
from datetime import date

import numpy as np
import pandas as pd
import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared.adapters import monitor_store
from shared.adapters.storage import blob_service
from shared.config.names import MONITORING_CONTAINER
from shared.core import monitoring as m


@pytest.fixture
def blobs(storage_connection: str):
    service = blob_service(storage_connection)
    with contextlib.suppress(ResourceNotFoundError):
        service.delete_container(MONITORING_CONTAINER)
    return service


def accuracy_row(day: str, version: str, role: str, brier: float) -> dict:
    return {m.SCORED_ON: pd.Timestamp(day), m.MATURED_ON: pd.Timestamp(day) + pd.Timedelta(days=30),
            m.MODEL_VERSION: version, m.ROLE: role, m.SEGMENT_KIND: m.ALL_SEGMENTS, m.SEGMENT: m.ALL_SEGMENTS,
            m.BATTERIES: 10, m.POSITIVES: 2, m.BRIER: brier, m.RECALL: 0.5, m.PRECISION: np.nan,
            m.AVERAGE_PRECISION: 0.7, m.NRMSE: 0.1, m.ALERTS: 1}  # fmt: skip


def test_an_empty_store_reads_as_empty_frames_with_the_columns(blobs):
    assert list(monitor_store.read_accuracy(blobs).columns) == m.ACCURACY_COLUMNS
    assert list(monitor_store.read_reliability(blobs).columns) == m.RELIABILITY_COLUMNS
    assert list(monitor_store.read_drift(blobs).columns) == m.DRIFT_COLUMNS
    assert list(monitor_store.read_retrain_decisions(blobs).columns) == m.RETRAIN_COLUMNS
    assert monitor_store.read_accuracy(blobs).empty
    assert list(monitor_store.read_car_segments(blobs).columns) == ["Car_ID"]


def test_accuracy_of_two_models_reads_back_in_day_order_within_the_range(blobs):
    reliability = pd.DataFrame(columns=m.RELIABILITY_COLUMNS)
    for day, brier in (("2016-03-02", 0.2), ("2016-03-01", 0.1), ("2016-03-03", 0.3)):
        monitor_store.write_accuracy(
            blobs,
            date.fromisoformat(day),
            "v1",
            pd.DataFrame([accuracy_row(day, "v1", m.CHAMPION, brier)]),
            reliability,
        )
    monitor_store.write_accuracy(
        blobs,
        date(2016, 3, 2),
        f"v2-{uuid.uuid4().hex[:4]}",
        pd.DataFrame([accuracy_row("2016-03-02", "v2", m.SHADOW, 0.05)]),
        reliability,
    )

    history = monitor_store.read_accuracy(blobs, date(2016, 3, 2), date(2016, 3, 3))

    assert list(history.columns) == m.ACCURACY_COLUMNS
    assert history[m.SCORED_ON].dt.strftime("%Y-%m-%d").tolist() == ["2016-03-02", "2016-03-02", "2016-03-03"]
    assert sorted(history[m.ROLE]) == [m.CHAMPION, m.CHAMPION, m.SHADOW]
    assert history[m.MATURED_ON].iloc[-1] == pd.Timestamp("2016-04-02")
    assert len(monitor_store.scored_days_stored(blobs)) == 4


def test_a_table_missing_a_column_is_refused_before_anything_is_written(blobs):
    with pytest.raises(ValueError, match="lacks columns"):
        monitor_store.write_drift(blobs, date(2016, 3, 1), pd.DataFrame(columns=[m.DAY]))  # not a drift table
    frame = pd.DataFrame([accuracy_row("2016-03-01", "v1", m.CHAMPION, 0.1)]).drop(columns=[m.BRIER])
    with pytest.raises(ValueError, match="Brier"):
        monitor_store.write_accuracy(blobs, date(2016, 3, 1), "v1", frame, pd.DataFrame(columns=m.RELIABILITY_COLUMNS))
