"""Training tracking: what every `train` (CLI and nightly timer) records about the model it produced.

After a model is trained and saved, `track_training` adds what a reviewer needs to trust it and writes
it both into the model directory (metadata.json) and into one MLflow run (shared/adapters/tracking.py decides
where runs go):
- the global feature importance (explanation.py), so a non-data-scientist sees what the model looks at;
- the fairness report across car groups (fairness.py) when a car table was given, with a warning per
  gap over its limit;
- in MLflow: parameters, the backtest metrics (the model's unprefixed, baselines as
  "<baseline>_<metric>"), the data-quality report, feature importance and fairness as JSON, the
  figures (predicted vs true, forecast vs actual for a few batteries, reliability diagram), for an
  iterative model (the LSTM) its per-epoch train and validation loss as stepped metrics
  (curve_train_loss, curve_validation_loss) and as training_results.png, the model directory's files
  and the same directory as an MLflow pyfunc model;
- the run id in metadata["mlflow_run_id"], so the registry's champion points at its run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.pyfunc import PythonModel, save_model

from shared.adapters.tracking import PROJECT_ROOT, TrainingRun, start_training_run, tracking_uri
from shared.models._lstm import training_curves
from shared.models.backtest import METHODS
from shared.models.base import Forecaster
from shared.models.explanation import feature_importance
from shared.models.fairness import fairness_report
from shared.models.loader import load_model
from shared.models.report import training_report

EXPERIMENT = "battery-forecaster"
TRACKED_METRICS = ("nrmse", "mae", "brier", "average_precision", "recall_at_threshold", "precision_at_threshold")
TRUTH_METRICS = ("brier", "average_precision", "recall_at_threshold", "precision_at_threshold")
PREDICTED_VS_TRUE_PNG = "predicted_vs_true.png"
FORECAST_VS_ACTUAL_PNG = "forecast_vs_actual.png"
RELIABILITY_PNG = "reliability.png"
PYFUNC_ARTIFACT_PATH = "mlflow_model"
FORECAST_EXAMPLES = 4

log = logging.getLogger(__name__)


def track_training(
    model: Forecaster,
    model_dir: str | Path,
    *,
    cars: pd.DataFrame | None = None,
    quality: Any = None,
    fairness_limits: Mapping[str, float] | None = None,
    environ: Mapping[str, str] = os.environ,
    experiment: str = EXPERIMENT,
) -> list[str]:
    """Add importance, fairness and the MLflow run id to the saved model in `model_dir`; log the run.

    Returns the fairness warnings (also logged, and kept in metadata["fairness"]["warnings"]).
    """
    model_dir = Path(model_dir)
    importance = feature_importance(model) if getattr(model, "booster", None) is not None else None
    if importance is not None:
        model.metadata["feature_importance"] = dict(zip(importance["feature"], importance["share"].round(6),
                                                        strict=True))  # fmt: skip
    backtest = getattr(model, "backtest", None)
    fairness = None
    warnings = []
    if cars is not None and backtest is not None and backtest.evaluation is not None:
        if backtest.evaluation["scored"].any():
            fairness = fairness_report(backtest.evaluation, cars, fairness_limits)
            warnings = fairness.warnings()
            model.metadata["fairness"] = {**fairness.to_dict(), "warnings": warnings}
        else:  # a fleet too small or too short for the backtest to score anyone: say so, train anyway
            warnings = ["fairness: not judged, the backtest scored no battery outcome"]
    for warning in warnings:
        log.warning(warning)

    with start_training_run(experiment, training_params(model.metadata),
                            tags={"model_version": model.version, "model_kind": str(model.metadata.get("model_kind"))},
                            uri=tracking_uri(environ)) as run:  # fmt: skip
        model.metadata["mlflow_run_id"] = run.run_id
        model.save(model_dir)
        run.log_metrics(backtest_metrics(model.metadata.get("backtest", {})))
        run.log_dict(model.metadata.get("data_quality", {}), "data_quality.json")
        run.client.log_text(run.run_id, training_report(model.metadata, quality), "report.md")
        if importance is not None:
            run.log_dict(model.metadata["feature_importance"], "feature_importance.json")
        if fairness is not None:
            run.log_dict(fairness.to_dict(), "fairness.json")
            run.log_metrics({f"fairness_{row.attribute}_{row.metric}_gap": row.gap
                             for row in fairness.gaps.itertuples()})  # fmt: skip
        _log_figures(run, model)
        if "training_curves" in model.metadata:  # an iterative model: its loss per epoch, and the figure
            title = f"{model.metadata.get('model_kind')} {model.version}"
            run.log_training_curves(training_curves(model.metadata), title)
        run.log_model_dir(model_dir)
        _log_pyfunc_model(run, model_dir)
    return warnings


def training_params(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar facts of a training (kind, window, rows, data range) and its hyper-parameters."""
    params = {name: value for name, value in metadata.items()
              if isinstance(value, str | int | float | bool) and name not in ("trained_at", "version")}  # fmt: skip
    for name, value in metadata.items():
        if name.endswith("_params") and isinstance(value, Mapping):
            params.update({f"{name.removesuffix('_params')}.{key}": v for key, v in value.items()})
    data_range = metadata.get("data_range") or {}
    params.update({f"data_{key}": value for key, value in data_range.items()})
    return params


def backtest_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The model's backtest metrics by name, each baseline's as "<baseline>_<name>"; unmeasurable left out.

    With a truth comparison (a simulated fleet): the truth's as "truth_<name>" (and "truth_<name>_se", its
    Monte Carlo standard error), and every method's ratios to it ("brier_to_truth", ...) named the same way."""
    metrics = summary.get("metrics", {})
    tracked = {
        (name if method == "model" else f"{method}_{name}"): float(metrics[method][name])
        for method in METHODS
        if method in metrics
        for name in TRACKED_METRICS
        if metrics[method].get(name) is not None
    }
    truth = summary.get("truth")
    if truth:
        tracked.update({f"truth_{name}": float(truth["metrics"][name]) for name in TRUTH_METRICS
                        if truth["metrics"].get(name) is not None})  # fmt: skip
        tracked.update({f"truth_{name}_se": float(error) for name, error in truth["standard_error"].items()
                        if error is not None})  # fmt: skip
        tracked.update(
            {
                (name if method == "model" else f"{method}_{name}"): float(ratio)
                for method, ratios in truth["ratios"].items()
                for name, ratio in ratios.items()
                if ratio is not None
            }
        )
    return tracked


def predicted_vs_true_figure(forecast: np.ndarray, actual: np.ndarray) -> Figure:
    """The lab's "Predicted vs True" chart: every reported forecast day of the backtest, with the y = x line."""
    known = ~np.isnan(actual)
    true, predicted = actual[known], forecast[known]
    figure = Figure(figsize=(5.5, 5), layout="constrained")
    axes = figure.subplots()
    axes.hexbin(true, predicted, gridsize=60, bins="log", mincnt=1, cmap="viridis")
    top = float(max(np.max(true, initial=0), np.max(predicted, initial=0)))
    axes.plot([0, top], [0, top], color="crimson", linewidth=1, label="predicted = true")
    axes.set(xlabel="true Daily_Cycles_Used", ylabel="predicted Daily_Cycles_Used",
             title=f"Predicted vs true ({known.sum():,} battery-days)")  # fmt: skip
    axes.legend(loc="upper left")
    return figure


def forecast_vs_actual_figure(
    evaluation: pd.DataFrame, forecast: np.ndarray, actual: np.ndarray, examples: int = FORECAST_EXAMPLES
) -> Figure:
    """30-day forecast against the actual days for the highest-risk fully reported forecasts of the backtest."""
    complete = ~np.isnan(actual).any(axis=1)
    rows = np.flatnonzero(complete)[np.argsort(-evaluation["probability"].to_numpy()[complete], kind="stable")]
    rows = rows[:examples]
    figure = Figure(figsize=(10, 2.6 * max(1, (len(rows) + 1) // 2)), layout="constrained")
    days = np.arange(1, forecast.shape[1] + 1)
    for axes, row in zip(figure.subplots(max(1, (len(rows) + 1) // 2), 2, squeeze=False).ravel(), rows, strict=False):
        axes.plot(days, actual[row], marker=".", label="actual")
        axes.plot(days, forecast[row], label="forecast")
        origin = pd.Timestamp(evaluation["origin"].iloc[row])
        axes.set(title=f"battery {evaluation['Battery_ID'].iloc[row]} from {origin:%Y-%m-%d}",
                 xlabel="day ahead", ylabel="cycles")  # fmt: skip
        axes.legend()
    return figure


def reliability_figure(reliability: list[dict]) -> Figure:
    """Mean predicted probability against the observed rate per bin, with the diagonal and bin counts."""
    rows = [row for row in reliability if row["count"]]
    figure = Figure(figsize=(5.5, 5), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    axes.plot([r["mean_predicted"] for r in rows], [r["observed_rate"] for r in rows], marker="o", label="model")
    for row in rows:
        axes.annotate(str(row["count"]), (row["mean_predicted"], row["observed_rate"]), fontsize=7,
                      textcoords="offset points", xytext=(4, -8))  # fmt: skip
    axes.set(xlabel="predicted P(rated life within 30 days)", ylabel="observed rate", xlim=(0, 1), ylim=(0, 1),
             title="Reliability (backtest)")  # fmt: skip
    axes.legend(loc="upper left")
    return figure


def _log_figures(run: TrainingRun, model: Forecaster) -> None:
    reliability = model.metadata.get("backtest", {}).get("reliability", {}).get("model")
    if reliability:
        run.log_figure(reliability_figure(reliability), RELIABILITY_PNG)
    backtest = getattr(model, "backtest", None)
    if backtest is None or backtest.forecast is None:
        return
    run.log_figure(predicted_vs_true_figure(backtest.forecast, backtest.actual), PREDICTED_VS_TRUE_PNG)
    run.log_figure(forecast_vs_actual_figure(backtest.evaluation, backtest.forecast, backtest.actual),
                   FORECAST_VS_ACTUAL_PNG)  # fmt: skip


def _log_pyfunc_model(run: TrainingRun, model_dir: Path) -> None:
    """The model directory as an MLflow pyfunc model (`mlflow.pyfunc.load_model(...).predict(telemetry)`
    gives the scores table), saved locally and uploaded, so it works offline with any tracking store."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / PYFUNC_ARTIFACT_PATH
        save_model(path, python_model=BatteryScorer(), artifacts={"model_dir": str(model_dir)},
                                 pip_requirements=_pip_requirements())  # fmt: skip
        run.client.log_artifacts(run.run_id, str(path), PYFUNC_ARTIFACT_PATH)


def _pip_requirements() -> list[str]:
    requirements = PROJECT_ROOT / "requirements.txt"
    lines = requirements.read_text().splitlines() if requirements.is_file() else []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "-"))]


class BatteryScorer(PythonModel):
    """pyfunc: clean telemetry (the Data columns) in, one scores row per battery (as of its last day) out."""

    def load_context(self, context) -> None:
        self.model = load_model(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from shared.core.preparation import prepare_telemetry
        from shared.core.windows import build_windows
        from shared.models.scoring import score_windows

        clean, _ = prepare_telemetry(model_input)
        windows = build_windows(clean, as_of=None, window_days=self.model.window_days)
        scores, _ = score_windows(self.model, windows, explain_from=0.0)  # offline use: explain every battery
        return scores
