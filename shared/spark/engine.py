"""`python -m shared score --engine spark`: the Spark job's scoring, collected into the in-process frames.

The CLI writes what `score_fleet` returns; this returns the same two frames from the Spark job, rows in
the in-process order (by Battery_ID, as the prepared frame is sorted), so both engines write identical
files for the same inputs.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.errors import PythonException

from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import BATTERY_ID, InputError
from shared.models.scoring import BATCH_SCORES_TABLE, forecast_frame
from shared.spark.job import FORECAST, read_telemetry, score_telemetry, spark_session

DEFAULT_MASTER = "local[*]"


def score_csv_on_spark(data_path: Path, model_dir: Path, as_of: date, threshold: float,
                       master: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """score_fleet's (scores, forecast) for a telemetry CSV, computed by the Spark job on `master`."""
    if not Path(data_path).is_file():
        raise InputError(f"{data_path}: no such file")
    spark = spark_session(master or DEFAULT_MASTER)
    telemetry = read_telemetry(spark, str(Path(data_path).resolve()), "csv", until=as_of)
    scored = score_telemetry(spark, telemetry, str(Path(model_dir).resolve()), as_of, threshold)
    try:
        collected = scored.toPandas()
    except PythonException as error:  # an executor's InputError: the input is bad, say what
        marker = "InputError: "
        text = str(error)
        if marker not in text:
            raise
        raise InputError(f"{data_path}: {text.split(marker, 1)[1].strip().splitlines()[0]}") from None
    return in_process_frames(collected, as_of)


def in_process_frames(scored: pd.DataFrame, as_of: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The collected SCORED rows as score_fleet's scores and forecast frames, in its row order."""
    scored = scored.sort_values(BATTERY_ID, kind="stable", ignore_index=True)
    scores = scored[BATCH_SCORES_TABLE].assign(reasons=scored["reasons"].map(list))
    forecast = np.array([np.asarray(values, dtype=np.float64) for values in scored[FORECAST]]).reshape(-1, HORIZON_DAYS)
    ids = scores[BATTERY_ID].to_numpy(dtype=object)
    return scores.assign(**{BATTERY_ID: ids}), forecast_frame(ids, as_of, forecast)
