"""The Spark engine on local-mode PySpark against the in-process path, battery by battery.

One session for the module's tests (local[2], no UI, driver on loopback, few shuffle partitions): a Spark
session costs tens of seconds to start. The fleet and model are tests/_models.py's (40 cars, dirty
telemetry as the simulator writes it). Inputs are the CLI's CSV and the archive's Parquet layout
(`date=YYYY-MM-DD/*.parquet`); the job is also run as the file a cluster runs.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _models import fleet, model_dir

from shared.adapters.storage import ensure_container, upload_bytes
from shared.cli import main
from shared.config.names import ALERT_QUEUE, SCORES_CONTAINER, SPARK_OUTPUT_PREFIX
from shared.core.alerts import alerts_from_scores
from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import BATTERY_ID, DAILY_CYCLES, DATE, read_telemetry_csv
from shared.core.windows import TARGET, TRAINING_ARRAYS, training_samples
from shared.devtools.fleet_simulator import write_fleet
from shared.handlers.nightly import score_from_csv
from shared.models.loader import load_model
from shared.models.scoring import score_fleet

pytestmark = [pytest.mark.slow, pytest.mark.spark]
pyspark = pytest.importorskip("pyspark")

from shared.spark import job  # noqa: E402  (needs pyspark)
from shared.spark.engine import in_process_frames  # noqa: E402

AS_OF = date(2016, 6, 20)  # ten days before the fleet's last report: later rows must be left out
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spark():
    session = job.spark_session("local[2]", app_name="battery-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def telemetry_csv(tmp_path_factory) -> Path:
    return write_fleet(fleet(), tmp_path_factory.mktemp("fleet"))["telemetry"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The fleet's telemetry in the archive's layout: one Parquet file per record day under date=YYYY-MM-DD/."""
    root = tmp_path_factory.mktemp("archive") / "telemetry"
    telemetry = archived_records().assign(Archived_At=pd.Timestamp("2016-07-01 03:00"))
    days = telemetry.assign(date=telemetry[DATE].dt.strftime("%Y-%m-%d"))
    days.to_parquet(root, partition_cols=["date"], index=False)
    # An older copy of one day's records, with other values: the archive's readers keep the latest written.
    stale = telemetry[telemetry[DATE] == pd.Timestamp("2016-06-15")]
    stale = stale.assign(Daily_Trip_Duration=stale["Daily_Trip_Duration"] * 3, Archived_At=pd.Timestamp("2016-06-16"))
    stale.to_parquet(root / "date=2016-06-15" / "older-batch.parquet", index=False)
    return root


def archived_records() -> pd.DataFrame:
    """The fleet's records as the archive's readers return them: one per Battery_ID + Date."""
    return fleet().telemetry.drop_duplicates([BATTERY_ID, DATE], keep="last", ignore_index=True)


@pytest.fixture(scope="module")
def in_process_archive() -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = archived_records()
    clean, _ = prepare_telemetry(raw[raw[DATE] < pd.Timestamp(AS_OF) + pd.Timedelta(days=1)])
    return score_fleet(load_model(model_dir()), clean, AS_OF, threshold=0.8)


@pytest.fixture(scope="module")
def in_process(telemetry_csv) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = read_telemetry_csv(telemetry_csv)
    clean, _ = prepare_telemetry(raw[raw[DATE] < pd.Timestamp(AS_OF) + pd.Timedelta(days=1)])
    return score_fleet(load_model(model_dir()), clean, AS_OF, threshold=0.8)


def assert_same_scores(scores: pd.DataFrame, forecast: pd.DataFrame, expected: tuple[pd.DataFrame, pd.DataFrame]):
    """Same batteries in the same order, probabilities and forecasts equal to 1e-9, the rest equal."""
    want_scores, want_forecast = expected
    assert scores[BATTERY_ID].tolist() == want_scores[BATTERY_ID].tolist()
    np.testing.assert_allclose(scores["failure_probability_30d"], want_scores["failure_probability_30d"],
                               rtol=0, atol=1e-9)  # fmt: skip
    np.testing.assert_allclose(forecast[DAILY_CYCLES], want_forecast[DAILY_CYCLES], rtol=0, atol=1e-9)
    assert forecast[[BATTERY_ID, DATE]].equals(want_forecast[[BATTERY_ID, DATE]])
    assert scores["alert"].tolist() == want_scores["alert"].tolist()
    assert scores["reasons"].tolist() == want_scores["reasons"].tolist()


def test_cli_spark_engine_writes_exactly_the_pandas_engines_files(spark, telemetry_csv, in_process, tmp_path):
    common = ["score", "--data", str(telemetry_csv), "--model-dir", str(model_dir()), "--as-of", AS_OF.isoformat(),
              "--threshold", "0.8"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "pandas.csv"), "--forecast-out", str(tmp_path / "pandas-f.csv")]) == 0
    assert main([*common, "--out", str(tmp_path / "spark.csv"), "--forecast-out", str(tmp_path / "spark-f.csv"),
                 "--engine", "spark", "--master", "local[2]"]) == 0  # fmt: skip
    assert (tmp_path / "spark.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    assert (tmp_path / "spark-f.csv").read_bytes() == (tmp_path / "pandas-f.csv").read_bytes()
    scores = pd.read_csv(tmp_path / "spark.csv")
    assert len(scores) == len(in_process[0]) and scores["alert"].any()  # a fleet with alerts, not an empty file


def test_spark_scores_of_the_parquet_archive_equal_the_in_process_scores(spark, archive, in_process_archive):
    telemetry = job.read_telemetry(spark, str(archive), "parquet", until=AS_OF)
    scored = job.score_telemetry(spark, telemetry, str(model_dir()), AS_OF, 0.8, groups=5).toPandas()
    assert_same_scores(*in_process_frames(scored, AS_OF), in_process_archive)


def test_only_the_partitions_of_the_days_asked_for_are_read(spark, archive):
    since, until = date(2016, 6, 1), date(2016, 6, 10)
    telemetry = job.read_telemetry(spark, str(archive), "parquet", until=until, since=since)
    days = pd.to_datetime(telemetry.select(DATE).distinct().toPandas()[DATE])
    assert (days.min(), days.max()) == (pd.Timestamp(since), pd.Timestamp(until))
    plan = telemetry._jdf.queryExecution().executedPlan().toString()  # what the scan lists: pruned partitions
    assert "PartitionFilters: [" in plan and "2016-06-01" in plan.split("PartitionFilters: [", 1)[1].split("]")[0]


def test_spark_training_set_equals_the_in_process_one(spark, telemetry_csv):
    expected = training_samples(prepare_telemetry(read_telemetry_csv(telemetry_csv))[0])
    telemetry = job.read_telemetry(spark, str(telemetry_csv), "csv")
    built = job.training_set(telemetry, groups=7).toPandas()
    built = built.sort_values([BATTERY_ID, "As_Of"], ignore_index=True)
    assert len(expected) > 1000
    scalars = [c for c in expected.columns if c not in [*TRAINING_ARRAYS, TARGET]]
    pd.testing.assert_frame_equal(built[scalars], expected[scalars], check_dtype=False)
    for name in [*TRAINING_ARRAYS, TARGET]:
        np.testing.assert_array_equal(np.stack(built[name]), np.stack(expected[name]))


def test_bad_telemetry_is_an_input_error_naming_the_file_and_the_value(spark, telemetry_csv, tmp_path):
    bad = tmp_path / "bad.csv"
    text = telemetry_csv.read_text().splitlines()
    first = text[1].split(",")
    first[0] = "20x6-01-01"
    bad.write_text("\n".join([text[0], ",".join(first), *text[2:200]]) + "\n")
    with pytest.raises(Exception, match=r"bad\.csv.*20x6-01-01") as raised:
        score_from_csv(bad, model_dir(), AS_OF, tmp_path / "out.csv", threshold=0.8, engine="spark",
                       master="local[2]")  # fmt: skip
    assert type(raised.value).__name__ == "InputError"


def test_the_job_file_runs_as_a_cluster_runs_it_and_writes_parquet(spark, archive, in_process_archive, tmp_path):
    """`python shared/spark/job.py ...` from another folder, as spark_python_task and Azure ML run it."""
    scores_out, forecast_out = tmp_path / "scores", tmp_path / "forecast"
    command = [sys.executable, str(PROJECT_ROOT / "shared" / "spark" / "job.py"), "--master", "local[2]", "score",
               "--telemetry", archive.as_uri(), "--format", "parquet", "--model", model_dir().as_uri(),
               "--as-of", AS_OF.isoformat(), "--threshold", "0.8", "--groups", "3",
               "--scores-out", scores_out.as_uri(), "--forecast-out", forecast_out.as_uri()]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = pd.read_parquet(scores_out).sort_values(BATTERY_ID, ignore_index=True)
    forecast = pd.read_parquet(forecast_out).sort_values([BATTERY_ID, DATE], ignore_index=True)
    forecast[DATE] = pd.to_datetime(forecast[DATE]).astype("datetime64[ns]")
    scores["reasons"] = scores["reasons"].map(list)
    want_scores, want_forecast = in_process_archive
    assert_same_scores(scores, forecast, (want_scores, want_forecast.astype({DATE: "datetime64[ns]"})))


def test_the_alert_timer_queues_a_finished_spark_scores_alerts_once(spark, archive, in_process_archive, harness,
                                                                    tmp_path):  # fmt: skip
    """The nightly Spark score's folder, as the job writes it, in the app's scores container: nothing is queued
    while Spark is still writing (no _SUCCESS), then exactly the in-process path's alerts, then nothing again."""
    out = tmp_path / "spark"
    assert job.main(["score", "--telemetry", str(archive), "--format", "parquet", "--model", str(model_dir()),
                     "--as-of", AS_OF.isoformat(), "--threshold", "0.8", "--scores-out", str(out / "scores"),
                     "--forecast-out", str(out / "forecast")]) == 0  # fmt: skip
    services = harness.configure(SPARK_TARGET="databricks", SPARK_STORAGE_ACCOUNT="stbattery", DATABRICKS_JOB_ID="7",
                                 DATABRICKS_HOST="https://adb-1.2.azuredatabricks.net")  # fmt: skip
    harness.clock.now = datetime(2016, 6, 21, 3, 30, tzinfo=UTC)
    container = ensure_container(services.blobs, SCORES_CONTAINER)
    folder = f"date={AS_OF}/{SPARK_OUTPUT_PREFIX}v-spark"
    written = sorted((out / "scores").iterdir())  # part files, _SUCCESS, and the local file system's .crc files
    assert any(path.name == "_SUCCESS" for path in written) and any(path.suffix == ".crc" for path in written)
    for path in written:
        if path.name != "_SUCCESS":
            upload_bytes(container, f"{folder}/scores/{path.name}", path.read_bytes())

    still_writing = harness.host.fire_timer("alert_spark_scores_timer")
    upload_bytes(container, f"{folder}/scores/_SUCCESS", b"")
    finished = harness.host.fire_timer("alert_spark_scores_timer")
    again = harness.host.fire_timer("alert_spark_scores_timer")

    assert still_writing.succeeded and not sum(still_writing.enqueued.values())
    expected = alerts_from_scores(in_process_archive[0].assign(As_Of=pd.Timestamp(AS_OF)), 0.8, harness.clock.now,
                                  services.settings.service_booking_url, model_version="v-spark")  # fmt: skip
    assert 0 < len(expected) <= 32  # all of them visible to one peek
    assert finished.succeeded and finished.enqueued == {ALERT_QUEUE: len(expected)}
    assert sorted(alert["alert_id"] for alert in harness.queued()) == sorted(alert["alert_id"] for alert in expected)
    assert {alert["model_version"] for alert in harness.queued()} == {"v-spark"}
    assert again.succeeded and not sum(again.enqueued.values())
