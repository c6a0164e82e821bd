"""The PySpark job: nightly batch scoring and the training-set build, per group of cars.

Run as a file (what Databricks' spark_python_task and Azure ML's Spark job run):

    spark-submit shared/spark/job.py score --telemetry URI --format parquet --model URI --as-of YYYY-MM-DD \\
        --scores-out URI --forecast-out URI
    spark-submit shared/spark/job.py training-set --telemetry URI --format parquet --out URI

Every URI is whatever the cluster's Hadoop file systems read (abfss://, dbfs:/, file:/, a local path in
local mode); nothing here assumes a local disk but the driver's temporary folder for the code zip.

Why per group of cars: the in-process path's pure functions (coerce, prepare, in-service selection,
windows, forecast, risk) see one car's batteries together (a replaced battery is out of service because
its car has a newer one), so a group is a hash bucket of Car_IDs, and `applyInPandas` hands each group to
those same functions. A bucket holds many cars, so the vectorised numpy code still works on thousands of
batteries at a time. The model directory is shipped to the executors with `SparkContext.addFile` and the
`shared` package as a zip with `addPyFile`, so the executors need only the third-party packages
(numpy, pandas, pyarrow, lightgbm) installed.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import `shared` from the folder that holds it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd
from pyspark import SparkContext, SparkFiles
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from shared.core.preparation import prepare_telemetry
from shared.core.risk import HORIZON_DAYS, INTERVAL_COLUMNS
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    MEASURE_COLUMNS,
    RATED_CYCLES,
    InputError,
    coerce_telemetry,
    describe_problems,
)
from shared.core.windows import TARGET, TRAINING_ARRAYS, TRAINING_ORIGIN_EVERY_DAYS, training_samples
from shared.models.loader import load_model
from shared.models.scoring import BATCH_SCORES_TABLE, batteries_in_service, score_fleet

PACKAGE = Path(__file__).resolve().parents[1]
FORMATS = ("csv", "parquet")
# The archive's partition column (telemetry/date=YYYY-MM-DD/...): it names the record day, as Date does.
PARTITION = "date"
# When the archive wrote a row (shared/adapters/archive.py): of two copies of a Battery_ID + Date, the
# later one is the record, as the archive's own readers decide.
ARCHIVED_AT = "Archived_At"
GROUP = "_car_group"
FORECAST = "forecast_daily_cycles"
SCORED_COLUMNS = [*BATCH_SCORES_TABLE, FORECAST]
SCORED_SCHEMA = (
    f"{BATTERY_ID} string, {CAR_ID} string, failure_probability_30d double, days_to_rated_life double, "
    f"{LIFETIME_CYCLES} double, {RATED_CYCLES} double, alert boolean, reasons array<string>, "
    + "".join(f"{column} double, " for column in INTERVAL_COLUMNS)
    + f"{FORECAST} array<double>"
)
TRAINING_COLUMNS = [BATTERY_ID, CAR_ID, "As_Of", RATED_CYCLES, LIFETIME_CYCLES, AGE_DAYS, *TRAINING_ARRAYS, TARGET]
TRAINING_SCHEMA = (
    f"{BATTERY_ID} string, {CAR_ID} string, As_Of timestamp, {RATED_CYCLES} double, {LIFETIME_CYCLES} double, "
    f"{AGE_DAYS} double, " + ", ".join(f"{name} array<double>" for name in [*TRAINING_ARRAYS, TARGET])
)
# Groups per core of the cluster: enough for the scheduler to balance, few enough that a group holds
# thousands of batteries for the vectorised code.
GROUPS_PER_CORE = 4


# --- the session and the inputs -----------------------------------------------------------------------


def spark_session(master: str | None = None, app_name: str = "battery-nightly",
                  config: dict[str, str] | None = None) -> SparkSession:  # fmt: skip
    """The job's session: the cluster's own when `master` is None (spark-submit, Databricks, Azure ML).

    A local master (tests, the CLI, the benchmark) stays on this machine: driver on loopback, no UI, the
    Python workers on this interpreter, few shuffle partitions. `config` is set before the session starts
    (e.g. spark.driver.memory, which a running JVM cannot change).
    """
    builder = SparkSession.builder.appName(app_name)
    for key, value in (config or {}).items():
        builder = builder.config(key, value)
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # read when the context starts its workers
        builder = (builder.config("spark.ui.enabled", "false")
                   .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.sql.shuffle.partitions", "8"))  # fmt: skip
    spark = builder.getOrCreate()
    # Dates are days: no session time zone may shift them. Date (a column) and date (the archive's
    # partition) are two names, which Spark would otherwise call one.
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.caseSensitive", "true")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    # The archive's Parquet timestamps are nanoseconds (pandas' own), which Spark reads only as numbers.
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    ship_code(spark.sparkContext)
    return spark


@functools.cache
def ship_code(context: SparkContext) -> None:
    """Give the executors the `shared` package this driver runs, as a zip (once per Spark context)."""
    folder = Path(tempfile.mkdtemp(prefix="battery-spark-code-"))
    shutil.copytree(PACKAGE, folder / "shared", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    archive = shutil.make_archive(str(folder / "shared"), "zip", root_dir=folder, base_dir="shared")
    context.addPyFile(archive)


def read_telemetry(
    spark: SparkSession, uri: str, fmt: str, until: date | None = None, since: date | None = None
) -> DataFrame:
    """The telemetry columns of every `fmt` file at `uri` (a file, a folder, or the archive's root).

    Under the archive's `date=YYYY-MM-DD/` partitions only the days in [since, until] are listed and
    read; of several copies of a record (Archived_At) the latest written is kept. CSV columns stay
    text, so the executors type them with `coerce_telemetry` exactly as `read_telemetry_csv` does;
    Parquet columns are cast to the same shape (text ids and dates, float measures).
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    reader = spark.read.option("pathGlobFilter", f"*.{fmt}")
    frame = reader.option("header", "true").csv(uri) if fmt == "csv" else reader.parquet(uri)
    missing = [c for c in [DATE, BATTERY_ID, CAR_ID, *MEASURE_COLUMNS] if c not in frame.columns]
    if missing:
        raise InputError(f"{uri}: missing column(s): {', '.join(missing)}")
    if PARTITION in frame.columns:
        if until is not None:
            frame = frame.where(F.col(PARTITION) <= F.lit(until))
        if since is not None:
            frame = frame.where(F.col(PARTITION) >= F.lit(since))
    for name in (DATE, ARCHIVED_AT):
        if name in frame.columns and frame.schema[name].dataType.typeName() == "long":  # nanoseconds
            frame = frame.withColumn(name, F.timestamp_micros(F.floor(F.col(name) / 1000)))
    if ARCHIVED_AT in frame.columns:
        latest_first = Window.partitionBy(BATTERY_ID, DATE).orderBy(F.col(ARCHIVED_AT).desc())
        frame = frame.withColumn("_copy", F.row_number().over(latest_first)).where(F.col("_copy") == 1)
    measures = [F.col(c) if fmt == "csv" else F.col(c).cast("double") for c in MEASURE_COLUMNS]
    return frame.select(*[F.col(c).cast("string") for c in (DATE, BATTERY_ID, CAR_ID)], *measures)


def _by_car_group(telemetry: DataFrame, groups: int | None):
    count = groups or GROUPS_PER_CORE * telemetry.sparkSession.sparkContext.defaultParallelism
    return telemetry.withColumn(GROUP, F.pmod(F.xxhash64(CAR_ID), F.lit(count))).groupBy(GROUP)


# --- what one group runs (on an executor, in pandas) ---------------------------------------------------


def prepared_group(raw: pd.DataFrame, until: date | None = None) -> pd.DataFrame | None:
    """A group's rows typed, cut at `until` and prepared, as `score_from_csv` does; None if none is left."""
    typed, problems = coerce_telemetry(raw.reset_index(drop=True))
    if problems:
        raise InputError(f"telemetry: {describe_problems(problems)}")
    if until is not None:
        typed = typed[typed[DATE] < pd.Timestamp(until) + pd.Timedelta(days=1)]
    return None if typed.empty else prepare_telemetry(typed)[0]


def score_group(raw: pd.DataFrame, model, as_of: date, threshold: float) -> pd.DataFrame:
    """SCORED_COLUMNS for the batteries of a group in service on as_of: `score_fleet`'s scores and the
    30-day forecast as one array per battery."""
    clean = prepared_group(raw, until=as_of)
    if clean is None or batteries_in_service(clean, as_of).empty:
        return pd.DataFrame(columns=SCORED_COLUMNS)
    scores, forecast = score_fleet(model, clean, as_of, threshold=threshold)
    return scores.assign(**{FORECAST: list(forecast[DAILY_CYCLES].to_numpy().reshape(-1, HORIZON_DAYS))})


def training_group(raw: pd.DataFrame, every_days: int, until: date | None = None) -> pd.DataFrame:
    """TRAINING_COLUMNS of a group: `training_samples` of its prepared telemetry."""
    clean = prepared_group(raw, until=until)
    return pd.DataFrame(columns=TRAINING_COLUMNS) if clean is None else training_samples(clean, every_days)


@functools.lru_cache(maxsize=2)
def shipped_model(name: str):
    """The model directory `ship_model` added, loaded once per Python worker."""
    return load_model(SparkFiles.get(name))


# --- the job's steps ------------------------------------------------------------------------------------


def ship_model(spark: SparkSession, model_uri: str) -> str:
    """Add the model directory to the files every executor gets; return the name it has there."""
    spark.sparkContext.addFile(model_uri, recursive=True)
    return model_uri.rstrip("/").rsplit("/", 1)[-1]


def score_telemetry(
    spark: SparkSession, telemetry: DataFrame, model_uri: str, as_of: date, threshold: float,
    groups: int | None = None,
) -> DataFrame:  # fmt: skip
    """One row per battery in service on as_of: SCORED_SCHEMA, the in-process scores and forecasts."""
    name = ship_model(spark, model_uri)

    def score(raw: pd.DataFrame) -> pd.DataFrame:
        return score_group(raw, shipped_model(name), as_of, threshold)

    return _by_car_group(telemetry, groups).applyInPandas(score, SCORED_SCHEMA)


def training_set(
    telemetry: DataFrame, every_days: int = TRAINING_ORIGIN_EVERY_DAYS, until: date | None = None,
    groups: int | None = None,
) -> DataFrame:  # fmt: skip
    """TRAINING_SCHEMA rows: the windowed training samples of every battery (`training_samples`)."""

    def build(raw: pd.DataFrame) -> pd.DataFrame:
        return training_group(raw, every_days, until)

    return _by_car_group(telemetry, groups).applyInPandas(build, TRAINING_SCHEMA)


def forecast_rows(scored: DataFrame, as_of: date) -> DataFrame:
    """FORECAST rows (Battery_ID, Date, Daily_Cycles_Used) of scored batteries, 30 per battery."""
    days = scored.select(BATTERY_ID, F.posexplode(FORECAST).alias("day", DAILY_CYCLES))
    return days.select(BATTERY_ID, F.date_add(F.lit(as_of), F.col("day") + 1).alias(DATE), DAILY_CYCLES)


# --- the script -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--master", help="Spark master (default: the cluster's, as spark-submit sets it)")
    sub = parser.add_subparsers(dest="step", required=True)
    for name, help_text in (("score", "score every battery in service on a day"),
                            ("training-set", "build the windowed training samples")):  # fmt: skip
        step = sub.add_parser(name, help=help_text)
        step.add_argument("--telemetry", required=True, help="telemetry URI: a CSV file, a folder, the archive root")
        step.add_argument("--format", choices=FORMATS, default="parquet", help="files to read there")
        step.add_argument("--groups", type=int, help=f"car groups (default {GROUPS_PER_CORE} per core)")
    score = sub.choices["score"]
    score.add_argument("--model", required=True, help="model directory URI")
    score.add_argument("--as-of", required=True, type=date.fromisoformat, help="score as of this day")
    score.add_argument("--threshold", type=float, default=0.8, help="alert probability threshold")
    score.add_argument("--history-days", type=int, help="read only this many days before --as-of")
    score.add_argument("--scores-out", required=True, help="scores Parquet folder URI (overwritten)")
    score.add_argument("--forecast-out", required=True, help="forecast Parquet folder URI (overwritten)")
    training = sub.choices["training-set"]
    training.add_argument("--until", type=date.fromisoformat, help="use telemetry up to this day")
    training.add_argument("--every-days", type=int, default=TRAINING_ORIGIN_EVERY_DAYS, help="days between origins")
    training.add_argument("--out", required=True, help="training-set Parquet folder URI (overwritten)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spark = spark_session(args.master)
    if args.step == "score":
        since = args.as_of - timedelta(days=args.history_days) if args.history_days else None
        telemetry = read_telemetry(spark, args.telemetry, args.format, until=args.as_of, since=since)
        scored = score_telemetry(spark, telemetry, args.model, args.as_of, args.threshold, args.groups).persist()
        scored.drop(FORECAST).write.mode("overwrite").parquet(args.scores_out)
        forecast_rows(scored, args.as_of).write.mode("overwrite").parquet(args.forecast_out)
        print(f"scored {scored.count():,} batteries as of {args.as_of}: {args.scores_out}")
    else:
        telemetry = read_telemetry(spark, args.telemetry, args.format, until=args.until)
        samples = training_set(telemetry, args.every_days, args.until, args.groups)
        samples.write.mode("overwrite").parquet(args.out)
        print(f"training set written: {args.out}")
    return 0


if __name__ == "__main__":
    # Run from the importable module, not from __main__: the executors unpickle the group functions by
    # their module's name, and their own __main__ is pyspark's worker daemon.
    from shared.spark.job import main as job_main

    sys.exit(job_main())
