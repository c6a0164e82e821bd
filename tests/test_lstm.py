"""The LSTM contender: trains on the small fleet (in process, and end to end through `python -m shared
train --model lstm` with its report and MLflow run), round-trips through its model directory, is served
by the endpoint (in process and under a real azmlinfsrv), competes under the registry's champion rule,
and stays out of the default install (loading a LightGBM model never imports torch)."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient

pytest.importorskip("torch", reason="the LSTM is an optional extra: pip install -r requirements-lstm.txt")

from _models import comparable_batteries, fleet, model_dir, request_items

from shared.adapters.registry import SERVING_REQUIREMENTS, ModelRegistry
from shared.adapters.storage import blob_service
from shared.cli import main
from shared.core.preparation import prepare_telemetry
from shared.core.risk import HORIZON_DAYS
from shared.core.windows import build_windows
from shared.devtools.inference_server import PROJECT_ROOT, running_endpoint
from shared.endpoint.server import score_request
from shared.models._lstm import (
    INPUT_DAYS,
    MODEL_KIND,
    TRAINING_CURVES_PNG,
    WEIGHTS_FILE,
    LstmForecaster,
    save_training_curves,
    train_lstm,
)
from shared.models.champion import model_metrics
from shared.models.loader import load_model

pytestmark = pytest.mark.slow
AS_OF = "2016-06-30"
EPOCHS = 3
TRAINING_ROWS = 1_000
# How much lower than the better baseline's the default-trained LSTM's NRMSE must be (measured: see the test).
LSTM_NRMSE_GAIN = 0.05


@functools.cache
def trained() -> tuple[LstmForecaster, Path]:
    """An LSTM trained on the endpoint tests' fleet, saved into a temporary model directory."""
    clean, quality = prepare_telemetry(fleet().telemetry)
    model = train_lstm(clean, quality=quality.to_dict(), epochs=EPOCHS, max_training_rows=TRAINING_ROWS)
    directory = Path(tempfile.mkdtemp(prefix="lstm-model-"))
    model.save(directory)
    save_training_curves(model, directory)
    return model, directory


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return request_items(comparable_batteries(fleet().telemetry, AS_OF))


@pytest.fixture(scope="module")
def cli_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MlflowClient]:
    """`python -m shared train --model lstm` on the small fleet's CSVs (default settings), tracked in a
    fresh SQLite store."""
    root = tmp_path_factory.mktemp("lstm-cli")
    fleet().telemetry.to_csv(root / "telemetry.csv", index=False, date_format="%Y-%m-%d")
    fleet().cars.to_csv(root / "cars.csv", index=False)
    uri = f"sqlite:///{(root / 'mlflow.db').as_posix()}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        code = main(["train", "--model", "lstm", "--data", str(root / "telemetry.csv"), "--cars",
                     str(root / "cars.csv"), "--model-dir", str(root / "model")])  # fmt: skip
    assert code == 0
    return root / "model", MlflowClient(tracking_uri=uri)


def teardown_module() -> None:
    if trained.cache_info().currsize:
        shutil.rmtree(trained()[1], ignore_errors=True)


def test_the_lstm_trains_with_a_backtest_against_the_same_baselines_and_records_its_loss_curves() -> None:
    model, directory = trained()
    metadata = model.metadata
    assert metadata["model_kind"] == MODEL_KIND and model.window_days == INPUT_DAYS
    assert set(metadata["backtest"]["metrics"]) == {"model", "seasonal_naive", "recent_mean"}
    assert metadata["backtest"]["counts"]["labelled"] > 0
    assert all(np.isfinite(model_metrics(metadata, "lstm")[name]) for name in ("nrmse", "brier", "mae"))
    curves = metadata["training_curves"]
    assert len(curves["train_loss"]) == len(curves["validation_loss"]) == EPOCHS
    assert curves["train_loss"][-1] < curves["train_loss"][0]  # it learned something
    assert (directory / TRAINING_CURVES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert model.calibration is not None and model.calibration.n_errors >= 20


def test_the_lstm_forecast_is_a_sane_30_day_forecast_on_the_scale_of_each_battery() -> None:
    model, _ = trained()
    clean, _ = prepare_telemetry(fleet().telemetry)
    windows = build_windows(clean, as_of=AS_OF, window_days=model.window_days)
    forecast = model.forecast(windows)
    assert forecast.shape == (len(windows), HORIZON_DAYS)
    assert np.isfinite(forecast).all() and (forecast >= 0).all()
    active = (~np.isnan(windows.daily_cycles[:, -28:])).any(axis=1)
    recent = np.nanmean(windows.daily_cycles[active, -28:], axis=1)
    # A scale-free network: heavy users get heavy forecasts (strong agreement with the recent level).
    assert active.sum() > 10
    assert np.corrcoef(recent, forecast[active].mean(axis=1))[0, 1] > 0.8


def test_the_lstm_round_trips_through_its_model_directory() -> None:
    model, directory = trained()
    loaded = load_model(directory)
    assert isinstance(loaded, LstmForecaster)
    assert loaded.version == model.version
    np.testing.assert_array_equal(loaded.calibration.z_quantiles, model.calibration.z_quantiles)
    clean, _ = prepare_telemetry(fleet().telemetry)
    windows = build_windows(clean, as_of=AS_OF, window_days=model.window_days)
    np.testing.assert_allclose(loaded.forecast(windows), model.forecast(windows), rtol=1e-6)
    assert json.loads((directory / "metadata.json").read_text())["model_kind"] == "lstm"


def test_the_endpoint_serves_an_lstm_model_directory_by_the_contract(items: list[dict]) -> None:
    _, directory = trained()
    response = score_request(load_model(directory), items)
    assert response["model_version"].count("lstm") == 1
    predictions = response["predictions"]
    assert len(predictions) == len(items) > 0
    for prediction in predictions:
        assert prediction["error"] is None
        assert 0.0 <= prediction["failure_probability_30d"] <= 1.0
        assert len(prediction["forecast_daily_cycles"]) == HORIZON_DAYS


def test_a_real_azmlinfsrv_serves_the_lstm_with_the_same_numbers_as_in_process(items: list[dict]) -> None:
    _, directory = trained()
    expected = score_request(load_model(directory), items[:3])
    with running_endpoint(directory, workers=1, timeout=180) as endpoint:
        answer = requests.post(endpoint.scoring_uri, json={"data": items[:3]}, timeout=60)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert served["model_version"] == expected["model_version"]
    for got, want in zip(served["predictions"], expected["predictions"], strict=True):
        assert got["failure_probability_30d"] == pytest.approx(want["failure_probability_30d"], abs=1e-9)


def with_backtest(source: Path, target: Path, version: str, *, nrmse: float, brier: float) -> Path:
    """A copy of a model directory under its own version whose backtest says `nrmse` and `brier`."""
    shutil.copytree(source, target)
    metadata = json.loads((target / "metadata.json").read_text())
    metadata["version"] = version
    metadata["backtest"]["metrics"]["model"].update(nrmse=nrmse, brier=brier)
    (target / "metadata.json").write_text(json.dumps(metadata))
    return target


def test_the_champion_rule_ranks_lightgbm_and_lstm_by_their_backtests_and_an_lstm_champion_serves(
    storage_connection: str, items: list[dict], tmp_path: Path
) -> None:
    """Backtests set by hand make the answer plain: against a LightGBM champion (NRMSE 0.050, Brier 0.0020) an
    LSTM with a better NRMSE but a Brier 50 % higher loses; one with the same NRMSE and half the Brier wins."""
    lightgbm = with_backtest(model_dir(), tmp_path / "lightgbm", "lightgbm-champion", nrmse=0.050, brier=0.0020)
    worse = with_backtest(trained()[1], tmp_path / "worse", "lstm-worse-brier", nrmse=0.040, brier=0.0030)
    better = with_backtest(trained()[1], tmp_path / "better", "lstm-half-the-brier", nrmse=0.050, brier=0.0010)
    # Served here by the development venv, which installs torch (requirements-lstm.txt): the registry is told so.
    serving = (*SERVING_REQUIREMENTS, PROJECT_ROOT / "requirements-lstm.txt")
    registry = ModelRegistry(blob_service(storage_connection), container=f"models-{uuid.uuid4().hex[:10]}",
                             serving_requirements=serving)  # fmt: skip
    assert registry.promote_if_better(lightgbm).promoted  # the first model
    assert not registry.promote_if_better(worse).promoted
    assert registry.champion_version() == "lightgbm-champion"
    assert registry.promote_if_better(better).promoted
    assert registry.champion_version() == "lstm-half-the-brier"
    champion = load_model(registry.download_champion(tmp_path / "champion"))
    assert isinstance(champion, LstmForecaster) and champion.version == "lstm-half-the-brier"
    assert all(p["error"] is None for p in score_request(champion, items[:2])["predictions"])


def test_loading_a_lightgbm_model_never_imports_torch() -> None:
    script = ("import sys; from shared.models.loader import load_model; "
              f"load_model({str(model_dir())!r}); assert 'torch' not in sys.modules, 'torch was imported'")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_cli_trains_an_lstm_end_to_end_into_a_model_dir_a_report_and_an_mlflow_run(cli_trained) -> None:
    directory, client = cli_trained
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["model_kind"] == MODEL_KIND
    assert (directory / WEIGHTS_FILE).is_file() and (directory / TRAINING_CURVES_PNG).is_file()
    assert isinstance(load_model(directory), LstmForecaster)
    report = (directory / "report.md").read_text()
    assert "| metric | LSTM model | Seasonal naive | Recent mean |" in report
    assert "the lstm model" in report.lower() and "LightGBM" not in report  # the verdict names it too
    run = client.get_run(metadata["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model_kind"] == MODEL_KIND
    assert run.data.metrics["nrmse"] == pytest.approx(metadata["backtest"]["metrics"]["model"]["nrmse"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {TRAINING_CURVES_PNG, "report.md", "fairness.json", "predicted_vs_true.png", "reliability.png"} <= artifacts
    assert f"model/{WEIGHTS_FILE}" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}


def test_the_lstm_with_its_default_training_beats_both_baselines_on_nrmse_by_a_margin(cli_trained) -> None:
    """Its default training (the CLI's) was 8.7-14.1 % below the better baseline over five fleets (seeds 1-5) and
    9.9-11.8 % over four torch seeds on this one: 5 % leaves room for that noise. A forecast 15 % high, or two
    epochs instead of six, fails it (three epochs on 1,000 rows, the in-process fixture above, give no margin)."""
    metrics = json.loads((cli_trained[0] / "metadata.json").read_text())["backtest"]["metrics"]
    better_baseline = min(metrics["seasonal_naive"]["nrmse"], metrics["recent_mean"]["nrmse"])
    assert metrics["model"]["nrmse"] <= (1 - LSTM_NRMSE_GAIN) * better_baseline


def test_the_lstm_s_loss_per_epoch_is_logged_as_stepped_mlflow_metrics(cli_trained) -> None:
    directory, client = cli_trained
    metadata = json.loads((directory / "metadata.json").read_text())
    curves = metadata["training_curves"]
    for name in ("train_loss", "validation_loss"):
        history = sorted(client.get_metric_history(metadata["mlflow_run_id"], f"curve_{name}"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, len(curves[name]) + 1))
        assert [m.value for m in history] == pytest.approx(curves[name])
    assert len(curves["validation_loss"]) == metadata["lstm_params"]["epochs_run"] >= 2
