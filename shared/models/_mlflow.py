"""MLflow forecaster: an AutoML (MLflow pyfunc) forecasting model served behind the project's model surface.

Azure ML AutoML v2 leaves the best trial's model in MLflow format (`outputs/mlflow-model`: MLmodel,
conda.yaml, model.pkl). Its pyfunc `predict` takes one row per series and future day — the time column
`Date`, the series id `Battery_ID` and the other training columns, target left out — and returns one
forecast per row. The endpoint and the batch path need something else: `forecast(windows)` giving
(n, 30) daily cycles for the 30 days after each battery's as-of day, plus a failure-risk calibration.
`MlflowForecaster` is that adapter, a model kind like the LSTM: its directory is metadata.json
(model_kind "mlflow-pyfunc", the calibration) + the MLflow model in `mlflow-model/`, and
`loader.load_model` loads it.

The future frame. The columns the model's signature asks for are built from each battery's window:
identity (Battery_ID, Car_ID, Battery_Rated_Cycles) as it is; Battery_Age_Days counted on; trips and
trip minutes at the battery's last-28-day mean; Lifetime_Cycles_Used carried forward at its recent daily
pace (the rule windows.py uses for days a car does not report). The pyfunc interface takes no target
history, so an AutoML model's own lags come from its training data: the further the as-of day lies past
its training data, the more it imputes, which is why its risk is calibrated on exactly those days.

The calibration. An AutoML model cannot be refitted here, and it refuses to forecast inside its training
period, so the backtest's refit-then-calibrate (backtest.py) does not apply. `wrap_mlflow_model` instead
forecasts from origins AFTER the model's training data ends (`trained_until`), on telemetry that arrived
since, and fits the risk calibration (risk.py) to those held-out 30-day sums: out of sample by
construction. It needs at least 30 days of telemetry after `trained_until`. As in the backtest, the
earlier origins calibrate and the later ones are scored (Brier included, the champion rule's metric).

mlflow is imported only where a model is loaded or wrapped, so importing this module does not need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared.core.risk import ALERT_THRESHOLD, HORIZON_DAYS, VARIABILITY_DAYS, RiskCalibration
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    DAILY_CYCLES,
    DATE,
    LIFETIME_CYCLES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    InputError,
)
from shared.core.windows import BatteryWindows, FleetHistory, build_history
from shared.models._lightgbm import METADATA_FILE, json_default, known_mean, training_record
from shared.models.backtest import (
    METHODS,
    ORIGIN_STRIDE,
    calibration_from_outcomes,
    concatenate_outcomes,
    forecast_metrics,
    method_forecasters,
    origin_outcomes,
    recent_mean_forecast,
    score_outcomes,
)

MODEL_KIND = "mlflow-pyfunc"
MLFLOW_DIR = "mlflow-model"
MODEL_TITLE = "AutoML (MLflow) model"  # how its backtest tables name it
# The longest look-back anything here needs: the risk code's variability and the 28-day means.
WINDOW_DAYS = VARIABILITY_DAYS
# The columns the future frame can supply, in the order of the training data (the target left out).
FUTURE_COLUMNS = [DATE, BATTERY_ID, CAR_ID, AGE_DAYS, TRIPS, TRIP_MINUTES, LIFETIME_CYCLES, RATED_CYCLES]
# MLflow column types (mlflow.types.DataType names) that take whole numbers, and other numbers.
INTEGER_TYPES = {"integer", "long"}
NUMBER_TYPES = {"float", "double"}

logger = logging.getLogger(__name__)


@dataclass
class MlflowForecaster:
    """An MLflow pyfunc forecaster, the columns its signature names, its failure-risk calibration, its metadata."""

    pyfunc: Any  # mlflow.pyfunc.PyFuncModel (typed loosely so this module imports without mlflow)
    source: Path  # the MLflow model folder it was loaded from
    input_types: dict[str, str] | None = None  # column -> MLflow type name; None = no signature
    calibration: RiskCalibration | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.metadata.get("version", "unversioned")

    @property
    def window_days(self) -> int:
        return WINDOW_DAYS

    def forecast(self, windows: BatteryWindows) -> np.ndarray:
        """(n, 30) forecast daily cycles for the 30 days after each battery's as-of day.

        A battery the model returns no number for (AutoML leaves out series it did not train on when
        short-series handling is on) gets the recent-mean baseline instead; the count is logged.
        """
        if windows.window_days != self.window_days:
            raise ValueError(f"windows are {windows.window_days} days wide; this model needs {self.window_days}")
        if len(windows) == 0:
            return np.zeros((0, HORIZON_DAYS))
        output = self.pyfunc.predict(future_frame(windows, self.input_types))
        days = forecast_days(output, len(windows))
        missing = np.isnan(days).any(axis=1)
        if missing.any():
            logger.warning(
                "the MLflow model gave no forecast for %d of %d batteries; using their recent mean",
                int(missing.sum()),
                len(windows),
            )
            days[missing] = recent_mean_forecast(windows.take(np.flatnonzero(missing)))
        return np.maximum(days, 0.0)

    def wear_beyond(self, windows: BatteryWindows) -> None:
        """No season known past the horizon: days to rated life extrapolate the forecast's mean rate."""
        return None

    def save(self, model_dir: str | Path) -> None:
        """Write metadata.json and a copy of the MLflow model (unless it is already there) into model_dir."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        target = model_dir / MLFLOW_DIR
        if self.source.resolve() != target.resolve():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.source, target)
        metadata = {
            **self.metadata,
            "model_kind": MODEL_KIND,
            "mlflow_model": MLFLOW_DIR,
            "window_days": self.window_days,
            "input_types": self.input_types,
        }
        if self.calibration is not None:
            metadata["calibration"] = self.calibration.to_dict()
        (model_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=json_default))


def load_mlflow_forecaster(model_dir: str | Path, metadata: dict | None = None) -> MlflowForecaster:
    """The model in a directory written by `MlflowForecaster.save` (`loader.load_model` calls this), or,
    without metadata, a bare MLflow model folder (no calibration yet: what `wrap_mlflow_model` starts from).

    The signature is checked here, so a model that needs a column the future frame cannot build fails
    when the endpoint starts, not on its first request.
    """
    import mlflow.pyfunc

    model_dir = Path(model_dir)
    folder = model_dir / metadata.get("mlflow_model", MLFLOW_DIR) if metadata is not None else model_dir
    if not (folder / "MLmodel").is_file():
        raise FileNotFoundError(f"{folder}: no MLmodel file; not an MLflow model folder")
    pyfunc = mlflow.pyfunc.load_model(str(folder))
    schema = pyfunc.metadata.get_input_schema()
    input_types = None if schema is None else {spec.name: spec.type.name for spec in schema.inputs}
    if input_types is not None:
        unknown = [name for name in input_types if name not in FUTURE_COLUMNS]
        if unknown:
            raise InputError(
                f"{folder}: the model's signature needs column(s) {', '.join(unknown)}, "
                f"which the future frame cannot build (it has {', '.join(FUTURE_COLUMNS)})"
            )
    calibration = (metadata or {}).get("calibration")
    return MlflowForecaster(
        pyfunc=pyfunc,
        source=folder,
        input_types=input_types,
        calibration=RiskCalibration.from_dict(calibration) if calibration else None,
        metadata=metadata or {},
    )


def future_frame(windows: BatteryWindows, input_types: dict[str, str] | None = None) -> pd.DataFrame:
    """The pyfunc input: 30 rows per battery (battery by battery, day by day), the days after its as-of day.

    With `input_types` (the model's signature) only those columns, in that order and with whole numbers
    where the signature asks for them; without, every column of FUTURE_COLUMNS.
    """
    n = len(windows)
    ahead = np.arange(1, HORIZON_DAYS + 1, dtype=np.float64)
    days = windows.as_of.astype("datetime64[D]")[:, None] + np.arange(1, HORIZON_DAYS + 1).astype("timedelta64[D]")
    recent_pace = _recent_mean(windows.daily_cycles)

    def per_day(values: np.ndarray) -> np.ndarray:
        return np.repeat(np.asarray(values), HORIZON_DAYS)

    columns = {
        DATE: days.ravel().astype("datetime64[ns]"),
        BATTERY_ID: per_day(windows.battery_id.astype(str)),
        CAR_ID: per_day(windows.car_id.astype(str)),
        AGE_DAYS: (windows.age_days[:, None] + ahead).ravel(),
        TRIPS: per_day(_recent_mean(windows.trips)),
        TRIP_MINUTES: per_day(_recent_mean(windows.trip_minutes)),
        LIFETIME_CYCLES: (windows.lifetime_cycles[:, None] + recent_pace[:, None] * ahead).ravel(),
        RATED_CYCLES: per_day(windows.rated_cycles),
    }
    if input_types is None:
        return pd.DataFrame(columns, index=pd.RangeIndex(n * HORIZON_DAYS))
    frame = {name: _as_type(name, columns[name], kind) for name, kind in input_types.items()}
    return pd.DataFrame(frame, index=pd.RangeIndex(n * HORIZON_DAYS))


def _as_type(name: str, values: np.ndarray, kind: str) -> np.ndarray:
    """A column as the signature types it: AutoML reads numeric-looking ids (Battery_ID "17") as numbers,
    and MLflow refuses a float where its signature says integer."""
    if kind not in INTEGER_TYPES and kind not in NUMBER_TYPES:
        return values.astype(str) if kind == "string" else values
    try:
        numbers = pd.to_numeric(values).astype(np.float64)
    except ValueError as error:
        raise ValueError(f"the model's signature types {name} as {kind}, but {error}") from None
    return np.rint(np.nan_to_num(numbers)).astype(np.int64) if kind in INTEGER_TYPES else numbers


def forecast_days(output: Any, n: int) -> np.ndarray:
    """The pyfunc output (an array, a Series, or a one-column frame; one value per future-frame row) as (n, 30)."""
    if isinstance(output, pd.DataFrame):
        if DAILY_CYCLES in output.columns:
            output = output[DAILY_CYCLES]
        elif output.shape[1] == 1:
            output = output.iloc[:, 0]
        else:
            names = ", ".join(map(str, output.columns))
            raise ValueError(f"the MLflow model returned {output.shape[1]} columns ({names}); expected one per row")
    values = np.asarray(output, dtype=np.float64).reshape(-1)
    if len(values) != n * HORIZON_DAYS:
        raise ValueError(
            f"the MLflow model returned {len(values)} values for {n * HORIZON_DAYS} rows "
            f"({n} batteries x {HORIZON_DAYS} days)"
        )
    return values.reshape(n, HORIZON_DAYS)


def calibrate_after_training(
    model: MlflowForecaster, history: FleetHistory, trained_until: str, threshold: float = ALERT_THRESHOLD
) -> tuple[RiskCalibration, dict]:
    """Risk calibration and backtest metrics from origins on and after `trained_until` (the last day of the
    model's training data), every ORIGIN_STRIDE days while the 30 days after the origin are in `clean`.

    As in the backtest, the earlier origins calibrate and the later ones are scored — forecast and
    probability metrics (Brier included) for the model and the two baselines — so the registry's champion
    rule can compare this model with the others; the returned calibration pools all origins. With a
    single origin nothing is left to score probabilities on, and the metrics are the forecast's only.
    """
    first = int((np.datetime64(trained_until, "D") - history.first_day).astype(np.int64))
    last = history.n_days - 1 - HORIZON_DAYS
    if first < 0 or first > last:
        data_end = history.first_day + history.n_days - 1
        raise InputError(
            f"calibrating needs telemetry from {trained_until} (the end of the model's training data) "
            f"to at least {HORIZON_DAYS} days later; the telemetry runs {history.first_day} to {data_end}"
        )
    origins = np.arange(first, last + 1, ORIGIN_STRIDE)
    forecasters = method_forecasters(model.forecast)
    split = (len(origins) + 1) // 2
    held_out = origin_outcomes(history, origins[:split], forecasters, WINDOW_DAYS, model.wear_beyond)
    summary: dict[str, Any] = {
        "trained_until": str(trained_until),
        "model_title": MODEL_TITLE,
        "horizon_days": HORIZON_DAYS,
        "threshold": threshold,
        "calibration_origins": [str(history.first_day + int(day)) for day in origins[:split]],
    }
    if split == len(origins):
        summary["counts"] = held_out.counts()
        summary["metrics"] = {method: forecast_metrics(held_out.actual, held_out.forecast[method])
                              for method in METHODS}  # fmt: skip
        return calibration_from_outcomes(held_out, "model"), summary
    evaluated = origin_outcomes(history, origins[split:], forecasters, WINDOW_DAYS, model.wear_beyond)
    metrics, reliability, _ = score_outcomes(held_out, evaluated, threshold)
    summary |= {"cutoff": str(history.first_day + int(origins[split])),
                "evaluation_origins": [str(history.first_day + int(day)) for day in origins[split:]],
                "counts": evaluated.counts(), "metrics": metrics, "reliability": reliability}  # fmt: skip
    return calibration_from_outcomes(concatenate_outcomes(held_out, evaluated), "model"), summary


def wrap_mlflow_model(
    mlflow_model: str | Path,
    clean: pd.DataFrame,
    trained_until: str,
    model_dir: str | Path,
    *,
    quality: dict | None = None,
    source: dict | None = None,
) -> MlflowForecaster:
    """Make an MLflow forecasting model (e.g. the best AutoML trial's) a model directory the endpoint serves.

    Copies it to `model_dir/mlflow-model`, calibrates its failure risk after its training data
    (`calibrate_after_training`) and writes metadata.json; `source` (e.g. the AutoML job names) is kept
    in the metadata.
    """
    import mlflow

    model = load_mlflow_forecaster(mlflow_model)
    history = build_history(clean)
    model.calibration, summary = calibrate_after_training(model, history, trained_until)
    model.metadata.update(
        training_record(
            clean,
            history,
            summary,
            quality,
            f"mlflow-{_folder_digest(Path(mlflow_model))}",
            {"mlflow": mlflow.__version__},
        ),
        horizon_days=HORIZON_DAYS,
        source=source or {},
    )
    model.save(model_dir)
    return model


def _recent_mean(values: np.ndarray) -> np.ndarray:
    """Mean of each battery's known values over its window (the last WINDOW_DAYS days), 0 if none is known."""
    return np.nan_to_num(known_mean(values))


def _folder_digest(folder: Path) -> str:
    """A short digest of every file in the MLflow model folder, so two different models get different versions."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]
