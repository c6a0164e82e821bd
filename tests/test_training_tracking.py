"""`train` records an MLflow run: parameters, backtest metrics, the model, data quality, figures, fairness."""

from __future__ import annotations

import io
import json

import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from shared.adapters.training_tracking import EXPERIMENT, backtest_metrics
from shared.cli import main
from shared.devtools.fleet_simulator import simulate_fleet
from shared.models.loader import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CLI `train` of a 40-car fleet with its car table, tracked in a fresh SQLite store."""
    root = tmp_path_factory.mktemp("train")
    fleet = simulate_fleet(40, "2015-01-01", "2016-06-30", 3)
    fleet.telemetry.to_csv(root / "telemetry.csv", index=False, date_format="%Y-%m-%d")
    fleet.cars.to_csv(root / "cars.csv", index=False)
    uri = f"sqlite:///{(root / 'mlflow.db').as_posix()}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        code = main(["train", "--data", str(root / "telemetry.csv"), "--cars", str(root / "cars.csv"),
                     "--model-dir", str(root / "model")])  # fmt: skip
    assert code == 0
    return root, MlflowClient(tracking_uri=uri)


def test_the_run_is_finished_and_named_in_the_model_metadata(trained):
    root, client = trained
    metadata = load_model(root / "model").metadata
    run = client.get_run(metadata["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.tags["model_version"] == metadata["version"]
    assert run.data.params["model_kind"] == metadata["model_kind"]
    assert run.data.params["lightgbm.num_leaves"] == str(metadata["lightgbm_params"]["num_leaves"])


def test_the_backtest_metrics_are_logged_for_the_model_and_the_baselines(trained):
    root, client = trained
    metadata = load_model(root / "model").metadata
    metrics = client.get_run(metadata["mlflow_run_id"]).data.metrics
    backtest = metadata["backtest"]["metrics"]
    for method, prefix in (("model", ""), ("seasonal_naive", "seasonal_naive_"), ("recent_mean", "recent_mean_")):
        for name in ("nrmse", "mae", "brier"):
            assert metrics[prefix + name] == pytest.approx(backtest[method][name]), prefix + name


def test_the_logged_names_are_the_models_metrics_plain_and_each_baselines_prefixed():
    """Unmeasurable (None) and untracked ("alerts") metrics are left out."""
    summary = {"metrics": {
        "model": {"nrmse": 0.05, "mae": 0.1, "brier": 0.002, "average_precision": None, "alerts": 7},
        "seasonal_naive": {"nrmse": 0.07, "brier": 0.003},
        "recent_mean": {"recall_at_threshold": 0.5},
    }}  # fmt: skip
    assert backtest_metrics(summary) == {
        "nrmse": 0.05,
        "mae": 0.1,
        "brier": 0.002,
        "seasonal_naive_nrmse": 0.07,
        "seasonal_naive_brier": 0.003,
        "recent_mean_recall_at_threshold": 0.5,
    }
    assert backtest_metrics({}) == {}


def test_the_artifacts_hold_model_figures_quality_importance_and_fairness(trained):
    root, client = trained
    metadata = load_model(root / "model").metadata
    run_id = metadata["mlflow_run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"predicted_vs_true.png", "forecast_vs_actual.png", "reliability.png", "data_quality.json",
            "feature_importance.json", "fairness.json", "report.md", "model", "mlflow_model"} <= top  # fmt: skip
    for figure in ("predicted_vs_true.png", "forecast_vs_actual.png", "reliability.png"):
        image = Image.open(io.BytesIO(open(client.download_artifacts(run_id, figure), "rb").read()))  # noqa: SIM115
        assert image.format == "PNG" and image.width > 300
    model_files = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/model.txt", "model/metadata.json", "model/cars.csv"} <= model_files
    quality = json.loads(open(client.download_artifacts(run_id, "data_quality.json")).read())  # noqa: SIM115
    assert quality == metadata["data_quality"] and quality
    importance = json.loads(open(client.download_artifacts(run_id, "feature_importance.json")).read())  # noqa: SIM115
    assert sum(importance.values()) == pytest.approx(1.0, abs=1e-4)
    assert importance == metadata["feature_importance"]


def test_the_logged_mlflow_model_scores_telemetry(trained, tmp_path):
    root, client = trained
    run_id = load_model(root / "model").metadata["mlflow_run_id"]
    local = client.download_artifacts(run_id, "mlflow_model", str(tmp_path))
    scorer = mlflow.pyfunc.load_model(local)
    from shared.core.telemetry import read_telemetry_csv

    telemetry = read_telemetry_csv(root / "telemetry.csv")
    scores = scorer.predict(telemetry[telemetry["Battery_ID"].isin(telemetry["Battery_ID"].unique()[:3])])
    assert len(scores) >= 3 and scores["failure_probability_30d"].between(0, 1).all()
    assert all(r[0].startswith("battery has used") for r in scores["reasons"])


def test_fairness_is_in_the_metadata_and_the_training_report(trained):
    root, _ = trained
    metadata = load_model(root / "model").metadata
    assert {row["attribute"] for row in metadata["fairness"]["groups"]} == {"Make", "Region", "Engine_Type",
                                                                           "Model_Year_Band"}  # fmt: skip
    assert "## Fairness" in (root / "model" / "report.md").read_text()
