"""A stand-in for an AutoML forecasting model: a real MLflow pyfunc model with AutoML's input and output shape.

The real AutoML runtime (azureml-automl-runtime) pins pandas 1.5 and numpy 1.23 and cannot be installed
beside this project, so tests save a pyfunc model of their own: it takes one row per battery and future
day (Date, Battery_ID and the other training columns, no target) and returns one forecast per row, as
the AutoML model's pyfunc does. Its forecast is the row's trip minutes times the fleet's cycles per
minute (fitted on the training days), 10 % more on weekends, so every row's value depends on that row.
The class is pickled by value, so azmlinfsrv's workers load it without this tests folder on sys.path.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
from pathlib import Path

import cloudpickle
import mlflow.pyfunc
import numpy as np
import pandas as pd
from _models import fleet
from mlflow.models import infer_signature

from shared.core.preparation import prepare_telemetry
from shared.core.telemetry import BATTERY_ID, DAILY_CYCLES, DATE, TRIP_MINUTES
from shared.models._mlflow import FUTURE_COLUMNS, wrap_mlflow_model

TRAINED_UNTIL = "2016-04-30"  # the stand-in "trained" up to here; _models.fleet() runs to 2016-06-30
WEEKEND_FACTOR = 1.1


class StandInForecaster(mlflow.pyfunc.PythonModel):
    def __init__(self, cycles_per_minute: float) -> None:
        self.cycles_per_minute = cycles_per_minute

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        if DAILY_CYCLES in model_input.columns:
            raise ValueError("the target column is not an input")
        weekend = pd.to_datetime(model_input[DATE]).dt.day_of_week.to_numpy() >= 5
        return expected_forecast(model_input[TRIP_MINUTES].to_numpy(np.float64), weekend, self.cycles_per_minute)


class OracleForecaster(mlflow.pyfunc.PythonModel):
    """Knows the future: each row's actual Daily_Cycles_Used (0 for a day the battery did not report)."""

    def __init__(self, truth: dict[str, float]) -> None:
        self.truth = truth

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        keys = model_input[BATTERY_ID].astype(str) + "|" + pd.to_datetime(model_input[DATE]).dt.strftime("%Y-%m-%d")
        return keys.map(self.truth).fillna(0.0).to_numpy(np.float64)


def expected_forecast(trip_minutes: np.ndarray, weekend: np.ndarray, cycles_per_minute: float) -> np.ndarray:
    return trip_minutes * cycles_per_minute * np.where(weekend, WEEKEND_FACTOR, 1.0)


cloudpickle.register_pickle_by_value(sys.modules[__name__])


@functools.cache
def clean_telemetry() -> pd.DataFrame:
    return prepare_telemetry(fleet().telemetry)[0]


def save_stand_in(folder: Path, columns: list[str] = FUTURE_COLUMNS) -> float:
    """Save the stand-in, fitted on the days up to TRAINED_UNTIL, with a signature naming `columns`."""
    clean = clean_telemetry()
    seen = clean[clean[DATE] <= TRAINED_UNTIL]
    rate = float(seen[DAILY_CYCLES].sum() / seen[TRIP_MINUTES].sum())
    example = seen[[c for c in columns if c in seen.columns]].head(5)
    for missing in (c for c in columns if c not in seen.columns):
        example[missing] = 1.0
    mlflow.pyfunc.save_model(
        str(folder), python_model=StandInForecaster(rate), signature=infer_signature(example, np.zeros(len(example)))
    )
    return rate


def save_oracle(folder: Path) -> None:
    """Save the oracle, with the future frame's columns as its signature."""
    clean = clean_telemetry()
    truth = dict(zip(clean[BATTERY_ID].astype(str) + "|" + clean[DATE].dt.strftime("%Y-%m-%d"), clean[DAILY_CYCLES],
                     strict=True))  # fmt: skip
    example = clean[[c for c in FUTURE_COLUMNS if c in clean.columns]].head(5)
    mlflow.pyfunc.save_model(
        str(folder), python_model=OracleForecaster(truth), signature=infer_signature(example, np.zeros(len(example)))
    )


@functools.cache
def wrapped_model_dir() -> Path:
    """The stand-in wrapped as a model directory (removed when the test process ends)."""
    work = Path(tempfile.mkdtemp(prefix="mlflow-model-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    save_stand_in(work / "downloaded")
    wrap_mlflow_model(
        work / "downloaded", clean_telemetry(), TRAINED_UNTIL, work / "model", source={"automl_parent_job": "stand-in"}
    )
    return work / "model"
