"""The MLflow (AutoML) model kind: the future frame, mapping the pyfunc output back, wrapping with a
calibration after the training data, loading through load_model, and serving it with scoring/score.py
under a real azmlinfsrv. The model is a real MLflow pyfunc stand-in with AutoML's input/output shape
(tests/_mlflow_model.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _mlflow_model import (
    TRAINED_UNTIL,
    clean_telemetry,
    expected_forecast,
    save_stand_in,
    wrapped_model_dir,
)
from _models import batch_rows, comparable_batteries, fleet, request_items

from shared.adapters.scoring_client import ScoringClient
from shared.core.preparation import prepare_telemetry
from shared.core.risk import HORIZON_DAYS
from shared.core.telemetry import (
    AGE_DAYS,
    BATTERY_ID,
    CAR_ID,
    DATE,
    LIFETIME_CYCLES,
    RATED_CYCLES,
    TRIP_MINUTES,
    TRIPS,
    InputError,
)
from shared.core.windows import build_windows
from shared.devtools.inference_server import LocalEndpoint, running_endpoint
from shared.models._mlflow import (
    FUTURE_COLUMNS,
    MODEL_KIND,
    WINDOW_DAYS,
    MlflowForecaster,
    forecast_days,
    future_frame,
    load_mlflow_forecaster,
    wrap_mlflow_model,
)
from shared.models.backtest import backtest_markdown, recent_mean_forecast
from shared.models.champion import DEFAULT_RULE
from shared.models.explanation import battery_reasons
from shared.models.loader import load_model
from shared.models.scoring import score_fleet

AS_OF = "2016-06-30"


def windows(batteries: int = 3):
    """The windows on AS_OF of the first batteries that reported that day."""
    clean = clean_telemetry()
    chosen = clean.loc[clean[DATE] == AS_OF, BATTERY_ID].head(batteries)
    return build_windows(clean[clean[BATTERY_ID].isin(chosen)], as_of=AS_OF, window_days=WINDOW_DAYS)


class FixedOutput:
    """A pyfunc double that returns what it is given (for the output-shape checks only)."""

    def __init__(self, output) -> None:
        self.output = output

    def predict(self, frame: pd.DataFrame):
        return self.output(frame) if callable(self.output) else self.output


def test_the_future_frame_holds_30_days_after_each_batterys_as_of_day() -> None:
    window = windows()
    frame = future_frame(window)

    assert list(frame.columns) == FUTURE_COLUMNS and len(frame) == 3 * HORIZON_DAYS
    first = frame.iloc[:HORIZON_DAYS]
    assert (first[BATTERY_ID] == window.battery_id[0]).all()
    assert first[DATE].iloc[0] == pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    assert first[DATE].iloc[-1] == pd.Timestamp(AS_OF) + pd.Timedelta(days=30)
    assert first[AGE_DAYS].tolist() == (window.age_days[0] + np.arange(1, 31)).tolist()
    assert (first[RATED_CYCLES] == window.rated_cycles[0]).all()
    pace = np.nanmean(window.daily_cycles[0])
    assert np.allclose(first[LIFETIME_CYCLES], window.lifetime_cycles[0] + pace * np.arange(1, 31))
    assert np.allclose(first[TRIP_MINUTES], np.nanmean(window.trip_minutes[0]))


def test_the_signature_picks_the_columns_their_order_and_types() -> None:
    window = windows(batteries=10)
    window = window.take(np.flatnonzero([battery.isdigit() for battery in window.battery_id]))  # not "14#2"
    frame = future_frame(window, {TRIPS: "long", DATE: "datetime", BATTERY_ID: "long", CAR_ID: "string"})
    assert list(frame.columns) == [TRIPS, DATE, BATTERY_ID, CAR_ID]
    assert (frame[TRIPS].dtype, frame[BATTERY_ID].dtype) == (np.int64, np.int64)  # AutoML reads "17" as 17
    assert frame[BATTERY_ID].iloc[0] == int(window.battery_id[0])
    with pytest.raises(ValueError, match="the model's signature types Car_ID as long, but Unable to parse"):
        future_frame(window, {CAR_ID: "long"})


def test_the_forecast_maps_each_row_back_to_its_battery_and_day(tmp_path: Path) -> None:
    rate = save_stand_in(tmp_path / "model")
    model = load_mlflow_forecaster(tmp_path / "model")
    window = windows()

    forecast = model.forecast(window)

    days = window.as_of[:, None] + np.arange(1, 31).astype("timedelta64[D]")
    weekend = pd.DatetimeIndex(days.ravel()).day_of_week.to_numpy().reshape(3, 30) >= 5
    minutes = np.nanmean(window.trip_minutes, axis=1)[:, None]
    assert forecast.shape == (3, HORIZON_DAYS)
    assert np.allclose(forecast, expected_forecast(minutes, weekend, rate))
    assert model.forecast(window.take(np.array([], dtype=int))).shape == (0, HORIZON_DAYS)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (np.zeros(59), "returned 59 values for 60 rows (2 batteries x 30 days)"),
        (pd.DataFrame({"low": np.zeros(60), "high": np.zeros(60)}), "returned 2 columns (low, high)"),
    ],
)
def test_an_output_of_the_wrong_shape_is_refused_with_what_came_back(output, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        forecast_days(output, 2)


def test_a_one_column_frame_or_a_series_is_one_forecast_per_row() -> None:
    values = np.arange(60.0)
    assert np.array_equal(forecast_days(pd.DataFrame({"prediction": values}), 2), values.reshape(2, 30))
    assert np.array_equal(forecast_days(pd.Series(values), 2), values.reshape(2, 30))


def test_a_battery_the_model_leaves_out_gets_the_recent_mean(caplog) -> None:
    window = windows()

    def leave_out_the_second(frame: pd.DataFrame) -> np.ndarray:
        values = np.ones(len(frame))
        values[HORIZON_DAYS : 2 * HORIZON_DAYS] = np.nan
        return values

    model = MlflowForecaster(pyfunc=FixedOutput(leave_out_the_second), source=Path("."))
    forecast = model.forecast(window)
    assert np.array_equal(forecast[[0, 2]], np.ones((2, 30)))
    assert np.allclose(forecast[1], recent_mean_forecast(window.take(np.array([1])))[0])
    assert "no forecast for 1 of 3 batteries" in caplog.text


def test_a_signature_needing_a_column_the_frame_cannot_build_fails_at_load(tmp_path: Path) -> None:
    save_stand_in(tmp_path / "model", [*FUTURE_COLUMNS, "Outside_Temperature"])
    with pytest.raises(InputError, match="needs column\\(s\\) Outside_Temperature, which the future frame cannot"):
        load_mlflow_forecaster(tmp_path / "model")


def test_wrapping_calibrates_after_the_training_data_and_load_model_serves_the_kind() -> None:
    metadata = json.loads((wrapped_model_dir() / "metadata.json").read_text())
    model = load_model(wrapped_model_dir())

    assert isinstance(model, MlflowForecaster) and model.version == metadata["version"]
    assert metadata["model_kind"] == MODEL_KIND and metadata["source"] == {"automl_parent_job": "stand-in"}
    backtest = metadata["backtest"]
    calibrating, scored = backtest["calibration_origins"], backtest["evaluation_origins"]
    assert calibrating[0] == TRAINED_UNTIL and calibrating[-1] < scored[0] == backtest["cutoff"]
    assert scored[-1] <= "2016-05-31"  # 30 known days after each
    assert model.calibration.n_errors == metadata["calibration"]["n_errors"] >= 100  # all origins, pooled
    assert set(backtest["metrics"]) == {"model", "seasonal_naive", "recent_mean"}


def test_the_wrapped_models_backtest_scores_probabilities_so_the_champion_rule_can_rank_it() -> None:
    backtest = json.loads((wrapped_model_dir() / "metadata.json").read_text())["backtest"]
    for method in ("model", "seasonal_naive", "recent_mean"):
        assert 0 <= backtest["metrics"][method]["brier"] < 1
    better = {name: value * 0.9 for name, value in backtest["metrics"]["model"].items()
              if name in ("brier", "nrmse")}  # fmt: skip
    assert DEFAULT_RULE.decide(backtest["metrics"]["model"], better)[0] is False
    assert DEFAULT_RULE.decide(better, backtest["metrics"]["model"])[0] is True
    assert "| metric | AutoML (MLflow) model |" in backtest_markdown(backtest)


def test_with_a_single_origin_after_the_training_data_only_the_forecast_is_scored(tmp_path: Path) -> None:
    save_stand_in(tmp_path / "downloaded")
    model = wrap_mlflow_model(tmp_path / "downloaded", clean_telemetry(), "2016-05-31", tmp_path / "model")
    backtest = model.metadata["backtest"]
    assert backtest["calibration_origins"] == ["2016-05-31"] and "evaluation_origins" not in backtest
    assert "nrmse" in backtest["metrics"]["model"] and "brier" not in backtest["metrics"]["model"]
    assert model.calibration.n_errors > 0


def test_wrapping_needs_30_days_of_telemetry_after_the_training_data(tmp_path: Path) -> None:
    save_stand_in(tmp_path / "downloaded")
    with pytest.raises(InputError, match=r"needs telemetry from 2016-06-15 .* to at least 30 days later"):
        wrap_mlflow_model(tmp_path / "downloaded", clean_telemetry(), "2016-06-15", tmp_path / "model")


def test_reasons_for_this_kind_are_the_plain_facts() -> None:
    model = load_model(wrapped_model_dir())
    window = windows(batteries=2)
    reasons = battery_reasons(model, window, model.forecast(window))
    assert len(reasons) == 2
    for lines in reasons:
        assert lines[0].startswith("battery has used ") and lines[1].startswith("expected to use ")
        assert len(lines) == 2


@pytest.fixture(scope="module")
def server() -> Iterator[LocalEndpoint]:
    with running_endpoint(wrapped_model_dir(), workers=1, timeout=180) as endpoint:
        yield endpoint


@pytest.mark.slow
def test_score_py_serves_the_wrapped_model_with_the_batch_paths_probabilities(server: LocalEndpoint) -> None:
    telemetry = fleet().telemetry
    items = request_items(comparable_batteries(telemetry, AS_OF))
    clean, _ = prepare_telemetry(telemetry[telemetry[DATE] <= AS_OF])
    batch, forecast = score_fleet(load_model(wrapped_model_dir()), clean, AS_OF, threshold=0.8)

    online = ScoringClient(server.scoring_uri, chunk_size=7).score(items)

    rows = batch_rows(batch, [item["Battery_ID"] for item in items])
    assert len(online) == len(items) >= 10
    assert {p["Battery_ID"]: p["failure_probability_30d"] for p in online} == rows["failure_probability_30d"].to_dict()
    first = forecast[forecast[BATTERY_ID] == rows[BATTERY_ID].iloc[0]]["Daily_Cycles_Used"].tolist()
    assert online[0]["forecast_daily_cycles"] == pytest.approx(first) and online[0]["error"] is None
