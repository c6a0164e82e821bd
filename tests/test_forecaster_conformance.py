"""Every model kind meets the one declared `Forecaster` protocol (scikit-learn's check_estimator idea).

Each kind is trained tiny on the shared small fleet, loaded through the one loader, and checked the same
way: the protocol's attributes and methods, the forecast's shape and range, the columns scoring makes of
it, and the same numbers after a save and reload. A new kind joins by adding one entry to KINDS.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _models import END, fleet, model_dir

from shared.core.alerts import REASONS, SCORE_COLUMNS
from shared.core.preparation import prepare_telemetry
from shared.core.risk import HORIZON_DAYS, INTERVAL_COLUMNS, RiskCalibration
from shared.core.windows import BatteryWindows, build_windows
from shared.models.base import Forecaster
from shared.models.loader import load_model
from shared.models.scoring import score_windows

MEMBERS = ("metadata", "calibration", "version", "window_days", "forecast", "save")


@functools.cache
def lstm_model_dir() -> Path:
    """An LSTM trained as tests/test_lstm.py trains it (3 epochs, 1,000 rows), saved once per process."""
    from shared.models._lstm import train_lstm

    clean, quality = prepare_telemetry(fleet().telemetry)
    model = train_lstm(clean, quality=quality.to_dict(), epochs=3, max_training_rows=1_000)
    directory = Path(tempfile.mkdtemp(prefix="lstm-model-"))
    model.save(directory)
    return directory


def mlflow_model_dir() -> Path:
    from _mlflow_model import wrapped_model_dir

    return wrapped_model_dir()


KINDS: dict[str, Callable[[], Path]] = {
    "lightgbm": model_dir,
    "lstm": lstm_model_dir,
    "mlflow-pyfunc": mlflow_model_dir,
}
NEEDS = {"lstm": "torch", "mlflow-pyfunc": "mlflow"}


PARAMS = [pytest.param(kind, marks=pytest.mark.slow) if kind == "lstm" else kind for kind in sorted(KINDS)]


@pytest.fixture(params=PARAMS, scope="module")
def kind(request: pytest.FixtureRequest) -> str:
    if request.param in NEEDS:
        pytest.importorskip(NEEDS[request.param], reason=f"the {request.param} kind needs {NEEDS[request.param]}")
    return request.param


@pytest.fixture(scope="module")
def model(kind: str) -> Forecaster:
    return load_model(KINDS[kind]())


@functools.cache
def windows(window_days: int) -> BatteryWindows:
    clean, _ = prepare_telemetry(fleet().telemetry)
    return build_windows(clean, as_of=END, window_days=window_days)


def test_each_kind_has_every_member_the_protocol_declares(model: Forecaster) -> None:
    assert isinstance(model, Forecaster)
    assert [name for name in MEMBERS if not hasattr(model, name)] == []
    assert isinstance(model.version, str) and model.version == model.metadata["version"]
    assert isinstance(model.window_days, int) and model.window_days > 0
    assert isinstance(model.calibration, RiskCalibration)  # trained models carry their calibration


def test_each_kind_forecasts_horizon_days_of_non_negative_cycles_per_window(model: Forecaster) -> None:
    given = windows(model.window_days)
    forecast = model.forecast(given)
    assert len(given) > 0
    assert forecast.shape == (len(given), HORIZON_DAYS)
    assert np.isfinite(forecast).all() and (forecast >= 0).all()
    assert model.forecast(given.take(np.arange(0))).shape == (0, HORIZON_DAYS)


def test_each_kind_scores_into_the_score_columns_one_row_per_window(model: Forecaster) -> None:
    given = windows(model.window_days)
    scores, forecast = score_windows(model, given, explain_from=0.0)
    assert list(scores.columns) == [*SCORE_COLUMNS, *INTERVAL_COLUMNS, REASONS]
    assert len(scores) == len(given) and forecast.shape == (len(given), HORIZON_DAYS)
    assert scores["failure_probability_30d"].between(0, 1).all()
    interval = scores[INTERVAL_COLUMNS].to_numpy()
    assert (interval >= 0).all() and (np.diff(interval, axis=1) >= 0).all()  # p10 <= p50 <= p90
    assert all(isinstance(reasons, list) and reasons for reasons in scores[REASONS])


def test_each_kind_gives_the_same_numbers_after_save_and_reload(model: Forecaster, tmp_path: Path) -> None:
    given = windows(model.window_days)
    model.save(tmp_path / "copy")
    reloaded = load_model(tmp_path / "copy")
    assert type(reloaded) is type(model)
    assert (reloaded.version, reloaded.window_days) == (model.version, model.window_days)
    np.testing.assert_array_equal(reloaded.forecast(given), model.forecast(given))
    np.testing.assert_array_equal(model.forecast(given), model.forecast(given))


def teardown_module() -> None:
    if lstm_model_dir.cache_info().currsize:
        shutil.rmtree(lstm_model_dir(), ignore_errors=True)
