"""The nightly timers on the Parquet archive, through the local host on Azurite: compaction, then the
bounded batch score (only the model's window of days read, batteries scored in chunks)."""

from __future__ import annotations

import io

import pandas as pd
from _models import model_dir
from _services import AT_RISK, LAST_DAY, TELEMETRY, backlogs, batteries

from shared.adapters.archive import TELEMETRY_CONTAINER
from shared.adapters.compaction import COMPACTED_NAME
from shared.adapters.registry import ModelRegistry
from shared.adapters.storage import download_bytes, list_blob_names
from shared.core.monitoring import FORECAST
from shared.core.risk import INTERVAL_COLUMNS
from shared.core.telemetry import BATTERY_ID
from shared.handlers.nightly import SCORES_CONTAINER, scoring_days
from shared.models.loader import load_model
from shared.models.scoring import BATCH_SCORE_COLUMNS, IN_SERVICE_DAYS

BROKEN = b"PAR1 truncated"


def stream_twice(harness) -> None:
    """The history through score_telemetry in two overlapping deliveries: days 15-20 are archived twice."""
    ModelRegistry(harness.services.blobs).promote_if_better(model_dir())
    harness.host.deliver_events("score_telemetry", backlogs(batteries(TELEMETRY, 1, 20)))
    harness.host.deliver_events("score_telemetry", backlogs(batteries(TELEMETRY, 15, 30)))


def scores(harness) -> pd.DataFrame:
    container = harness.services.blobs.get_container_client(SCORES_CONTAINER)
    [name] = list_blob_names(container)
    version = load_model(model_dir()).version
    assert name == f"date={LAST_DAY}/{version}.parquet"
    return pd.read_parquet(io.BytesIO(download_bytes(container, name)))


def files_per_day(names: list[str]) -> dict[str, list[str]]:
    days: dict[str, list[str]] = {}
    for name in names:
        days.setdefault(name.split("/")[0].removeprefix("date="), []).append(name)
    return days


def put(harness, name: str, data: bytes) -> None:
    harness.services.blobs.get_container_client(TELEMETRY_CONTAINER).upload_blob(name, data, overwrite=True)


def test_compaction_then_the_batch_score_on_the_compacted_archive(harness):
    stream_twice(harness)
    telemetry = harness.services.blobs.get_container_client(TELEMETRY_CONTAINER)
    before = files_per_day(list_blob_names(telemetry))
    several = {day for day, names in before.items() if len(names) > 1}
    assert len(before) == 30 and several, "the streaming writes left several files on some days"

    compaction = harness.host.fire_timer("compact_telemetry_archive")
    nightly = harness.host.fire_timer("nightly_batch_score_timer")

    assert compaction.succeeded and nightly.succeeded
    assert files_per_day(list_blob_names(telemetry)) == {
        day: [f"date={day}/{COMPACTED_NAME}"] if day in several else names for day, names in before.items()
    }
    assert nightly.enqueued == {"maintenance-alerts": 2}
    table = scores(harness)
    assert list(table.columns) == [*BATCH_SCORE_COLUMNS, "alert", "reasons", *INTERVAL_COLUMNS, FORECAST]
    assert sorted(table.loc[table["alert"], BATTERY_ID]) == sorted(AT_RISK.values())
    assert sorted(table[BATTERY_ID]) == ["B-PAST", "B-SAFE", "B-SOON"], "each battery once despite the overlap"


def test_batteries_scored_one_car_at_a_time_score_as_the_whole_fleet_at_once(harness):
    stream_twice(harness)
    harness.configure(BATCH_SCORE_CHUNK_BATTERIES="1")
    assert harness.host.fire_timer("nightly_batch_score_timer").succeeded
    one_at_a_time = scores(harness)
    harness.configure(BATCH_SCORE_CHUNK_BATTERIES="5000")
    assert harness.host.fire_timer("nightly_batch_score_timer").succeeded

    pd.testing.assert_frame_equal(one_at_a_time.sort_values(BATTERY_ID, ignore_index=True),
                                  scores(harness).sort_values(BATTERY_ID, ignore_index=True))  # fmt: skip


def test_the_batch_score_reads_only_the_models_window_of_days(harness):
    stream_twice(harness)
    window = scoring_days(load_model(model_dir()).window_days)
    outside = (pd.Timestamp(LAST_DAY) - pd.Timedelta(days=window)).strftime("%Y-%m-%d")
    put(harness, f"date={outside}/broken.parquet", BROKEN)  # the day before the window: never listed

    assert harness.host.fire_timer("nightly_batch_score_timer").succeeded
    assert window >= IN_SERVICE_DAYS


def test_an_unreadable_file_in_the_window_fails_the_batch_score_naming_it_unless_skipping_is_set(harness):
    stream_twice(harness)
    name = f"date={LAST_DAY}/broken.parquet"
    put(harness, name, BROKEN)

    failed = harness.host.fire_timer("nightly_batch_score_timer")
    harness.configure(ARCHIVE_SKIP_UNREADABLE="true")
    skipped = harness.host.fire_timer("nightly_batch_score_timer")

    assert not failed.succeeded and f"telemetry/{name}: not a readable Parquet file" in failed.error
    assert skipped.succeeded and len(scores(harness)) == 3
